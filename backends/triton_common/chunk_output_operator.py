"""Intra-chunk stage 2: the per-chunk output operator ``PInv = P @ (I + A)^-1``.

One program per (chunk, value head).  ``P = scale * tril(exp(G_i - G_j) rq_i rk_j q_i.k_j)``
(diagonal included) is the decay-masked intra-chunk attention; multiplied by the inverse
from ``chunk_gate_kkt_solve`` it maps the chunk's right-hand side ``r = beta v - (beta exp(G)
rk)(k h)`` straight to the intra-chunk part of the output, so the state stage computes
``o = (scale exp(G) rq)(q h) + PInv r`` without waiting for ``v_new``.  Also writes the
``scale exp(G) rq`` plane.  Kept apart from the solve so that neither kernel holds q, k and
the solve's 64x64 fp32 tiles in registers at once.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .chunk_rows import chunk_row_bounds

__all__ = ["chunk_output_operator_kernel", "aot_specs"]


@triton.jit
def chunk_output_operator_kernel(
    q, k, inv, chunk_table, pinv_out, planes,
    T, BT, scale,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, CHUNK: tl.constexpr, BK: tl.constexpr,
    IS_VARLEN: tl.constexpr, L2NORM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    HV: tl.constexpr = H * G
    pid = tl.program_id(0)          # value head fastest: the G heads of a group share k (q)
    i_c = pid // HV
    i_hv = pid % HV
    i_h = i_hv // G
    bos, eos = chunk_row_bounds(i_c, chunk_table, T, CHUNK, IS_VARLEN)

    o_t = tl.arange(0, CHUNK)
    o_k = tl.arange(0, BK)
    rows = bos + o_t
    m_t = rows < eos
    dt = inv.dtype.element_ty

    p_qk = (rows[:, None] * H + i_h) * K + o_k[None, :]
    qk = tl.zeros([CHUNK, CHUNK], dtype=tl.float32)
    ssq = tl.zeros([CHUNK], dtype=tl.float32)
    ssk = tl.zeros([CHUNK], dtype=tl.float32)
    for i_k in range(0, K // BK):
        b_q = tl.load(q + p_qk + i_k * BK, mask=m_t[:, None], other=0.0).to(dt)
        b_k = tl.load(k + p_qk + i_k * BK, mask=m_t[:, None], other=0.0).to(dt)
        qk = tl.dot(b_q, tl.trans(b_k), acc=qk, input_precision=DOT_PRECISION)
        if L2NORM:
            qf = b_q.to(tl.float32)
            kf = b_k.to(tl.float32)
            ssq += tl.sum(qf * qf, 1)
            ssk += tl.sum(kf * kf, 1)
    if L2NORM:
        rq = 1.0 / tl.sqrt(ssq + 1e-6)
        rk = 1.0 / tl.sqrt(ssk + 1e-6)
        qk = qk * rq[:, None] * rk[None, :]
    else:
        rq = tl.full([CHUNK], 1.0, tl.float32)

    plane = HV * BT
    p_pl = i_hv * BT + rows
    gc = tl.load(planes + 4 * plane + p_pl, mask=m_t, other=0.0)
    tl.store(planes + 2 * plane + p_pl, scale * tl.exp(gc) * rq, mask=m_t)
    causal = o_t[:, None] >= o_t[None, :]
    b_P = tl.where(causal, qk * scale * tl.exp(tl.where(causal, gc[:, None] - gc[None, :], 0.0)),
                   0.0)
    p_m = (i_hv * BT + rows)[:, None] * CHUNK + o_t[None, :]
    b_inv = tl.load(inv + p_m, mask=m_t[:, None], other=0.0)
    b_pinv = tl.dot(b_P.to(dt), b_inv, input_precision=DOT_PRECISION)
    tl.store(pinv_out + p_m, b_pinv.to(dt), mask=m_t[:, None])


def aot_specs(arch: str) -> list[dict]:
    """Configurations compiled ahead of time: K in {64, 128, 256}, fp16/bf16 inputs."""
    from .chunk_pipeline import config_for

    specs = []
    for dtype in ("bf16", "fp16"):  # fp32 inputs run on the reference on GPUs (backend.py)
        for K in (64, 128, 256):
            cfg = config_for(arch, K, 128)
            sig = {"q": f"*{dtype}", "k": f"*{dtype}", "inv": f"*{dtype}", "chunk_table": "*i32",
                   "pinv_out": f"*{dtype}", "planes": "*fp32", "T": "i32", "BT": "i32",
                   "scale": "fp32"}
            consts = dict(H=16, G=2, K=K, CHUNK=64, BK=cfg.gram_bk(K), IS_VARLEN=True,
                          L2NORM=True,
                          DOT_PRECISION="tf32")
            specs.append(dict(name=f"chunk_output_operator_K{K}_{dtype}",
                              fn=chunk_output_operator_kernel, signature=sig, constexprs=consts,
                              num_warps=cfg.operator_warps(K), num_stages=1))
    return specs
