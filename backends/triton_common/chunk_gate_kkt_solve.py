"""Intra-chunk stage 1 of the chunked gated delta rule: gates, K K^T, triangular solve.

One program per (chunk of 64 tokens, value head); k comes from the value head's key head
(``hv // G``, ``G = HV // H``; the G programs of a group read the same lines, which L2
serves).  The program

1. activates the gates in registers (``g = -exp(A_log) * softplus(a + dt_bias)`` when the
   gate is computed here, ``beta = sigmoid(b)`` (x2 with negative eigenvalues)) and takes
   the in-chunk cumulative sum ``G`` of ``g`` (the gate cumsum is fused here);
2. forms ``A = strict_tril(beta_i exp(G_i - G_j) k_i.k_j)`` from ``k k^T`` (l2-normalisation
   enters as row/column scalings of the Gram matrix, normalised k is never materialised);
3. inverts ``I + A`` (``triangular.unit_lower_inverse``): the four 16x16 diagonal blocks by right-looking forward substitution
   in registers (all four at once as a ``[4, 16, 16]`` tensor), then the strictly
   block-lower part by the finite series ``(I + A)^-1 = (I - M)(I + M^2) Di`` with
   ``Di`` the block-diagonal inverse and ``M = Di L`` (``M^4 = 0``): four 64x64
   tensor-core products (tf32 for half inputs);
4. stores ``Inv = (I + A)^-1`` (intermediate dtype, ``[HV, BT, 64]``) and four of the five
   per-token float32 planes ``[5, HV, BT]``: beta, ``beta exp(G) rk``, (``scale exp(G) rq``
   comes from ``chunk_output_operator``), ``exp(G_last - G) rk`` and ``G`` (``rk, rq``:
   inverse l2 norms of k and q, 1 without l2norm).

Neither ``w`` nor ``u`` (two ``[T, K|V]`` tensors per value head) is ever written: the state
stage applies ``Inv`` to ``beta v - (beta exp(G) rk)(k h)`` itself.  q is not read here, which
keeps this kernel at about 130 registers (four programs per SM).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .chunk_rows import chunk_row_bounds
from .triangular import unit_lower_inverse

__all__ = ["chunk_gate_kkt_solve_kernel", "NUM_PLANES", "aot_specs"]

NUM_PLANES = 5  # beta, kfac, qfac, ufac, gcum


@triton.jit
def chunk_gate_kkt_solve_kernel(
    k, g, beta, A_log, dt_bias, chunk_table,
    inv_out, planes,
    T, BT,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, CHUNK: tl.constexpr, BK: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_G: tl.constexpr, HAS_BETA: tl.constexpr,
    GATE_IN_KERNEL: tl.constexpr, HAS_DT_BIAS: tl.constexpr, BETA_SIGMOID: tl.constexpr,
    NEG_EIGVAL: tl.constexpr, L2NORM: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SOLVE_PRECISION: tl.constexpr,
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
    dt = inv_out.dtype.element_ty

    # k k^T over BK-wide slices of K (bounds the registers a slice of k takes)
    p_k = (rows[:, None] * H + i_h) * K + o_k[None, :]
    kk = tl.zeros([CHUNK, CHUNK], dtype=tl.float32)
    ssk = tl.zeros([CHUNK], dtype=tl.float32)
    for i_k in range(0, K // BK):
        b_k = tl.load(k + p_k + i_k * BK, mask=m_t[:, None], other=0.0).to(dt)
        kk = tl.dot(b_k, tl.trans(b_k), acc=kk, input_precision=DOT_PRECISION)
        if L2NORM:
            kf = b_k.to(tl.float32)
            ssk += tl.sum(kf * kf, 1)
    if L2NORM:
        rk = 1.0 / tl.sqrt(ssk + 1e-6)
        kk = kk * rk[:, None] * rk[None, :]
    else:
        rk = tl.full([CHUNK], 1.0, tl.float32)

    strict = o_t[:, None] > o_t[None, :]

    p_tok = rows * HV + i_hv
    if HAS_G:
        b_g = tl.load(g + p_tok, mask=m_t, other=0.0).to(tl.float32)
        if GATE_IN_KERNEL:
            x = b_g
            if HAS_DT_BIAS:
                x = x + tl.load(dt_bias + i_hv).to(tl.float32)
            softplus = tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))
            b_g = -tl.exp(tl.load(A_log + i_hv).to(tl.float32)) * softplus
        b_g = tl.where(m_t, b_g, 0.0)
        gc = tl.cumsum(b_g, 0)
    else:
        gc = tl.zeros([CHUNK], dtype=tl.float32)
    if HAS_BETA:
        b_beta = tl.load(beta + p_tok, mask=m_t, other=0.0).to(tl.float32)
        if BETA_SIGMOID:
            b_beta = tl.sigmoid(b_beta)
            if NEG_EIGVAL:
                b_beta = b_beta * 2.0
    else:
        b_beta = tl.full([CHUNK], 1.0, tl.float32)
    b_beta = tl.where(m_t, b_beta, 0.0)
    g_last = tl.sum(tl.where(o_t == CHUNK - 1, gc, 0.0), 0)

    # per-token factors used by the state stage (qfac is written by chunk_output_operator)
    p_pl = i_hv * BT + rows
    plane = HV * BT
    tl.store(planes + p_pl, b_beta, mask=m_t)
    tl.store(planes + plane + p_pl, b_beta * tl.exp(gc) * rk, mask=m_t)
    tl.store(planes + 3 * plane + p_pl, tl.exp(g_last - gc) * rk, mask=m_t)
    tl.store(planes + 4 * plane + p_pl, gc, mask=m_t)

    b_A = tl.where(strict, kk * tl.exp(tl.where(strict, gc[:, None] - gc[None, :], 0.0))
                   * b_beta[:, None], 0.0)

    b_inv = unit_lower_inverse(b_A, CHUNK, SOLVE_PRECISION).to(dt)
    p_out = (i_hv * BT + rows)[:, None] * CHUNK + o_t[None, :]
    tl.store(inv_out + p_out, b_inv, mask=m_t[:, None])


def aot_specs(arch: str) -> list[dict]:
    """Configurations compiled ahead of time: K in {64, 128, 256}, fp16/bf16 inputs."""
    from .chunk_pipeline import ChunkConfig, config_for

    specs = []
    for dtype in ("bf16", "fp16"):  # fp32 inputs run on the reference on GPUs (backend.py)
        for K in (64, 128, 256):
            cfg: ChunkConfig = config_for(arch, K, 128)
            half = dtype != "fp32"
            sig = {
                "k": f"*{dtype}", "g": "*fp32", "beta": f"*{dtype}",
                "A_log": "*fp32", "dt_bias": "*fp32", "chunk_table": "*i32",
                "inv_out": f"*{dtype}", "planes": "*fp32", "T": "i32", "BT": "i32",
            }
            consts = dict(H=16, G=2, K=K, CHUNK=64, BK=cfg.gram_bk(K), IS_VARLEN=True, HAS_G=True, HAS_BETA=True,
                          GATE_IN_KERNEL=False, HAS_DT_BIAS=False, BETA_SIGMOID=False,
                          NEG_EIGVAL=False, L2NORM=True,
                          DOT_PRECISION="tf32" if half else cfg.fp32_precision,
                          SOLVE_PRECISION=cfg.solve_precision if half else cfg.fp32_precision)
            specs.append(dict(name=f"chunk_gate_kkt_solve_K{K}_{dtype}",
                              fn=chunk_gate_kkt_solve_kernel, signature=sig, constexprs=consts,
                              num_warps=cfg.intra_warps(K), num_stages=cfg.intra_stages))
    return specs
