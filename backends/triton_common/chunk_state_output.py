"""State stage of the chunked gated delta rule: the chunk-to-chunk recurrence fused with the output.

One program per (value block of ``BV`` columns, sequence, value head) walks the chunks of its
sequence in order, holding its ``[K, BV]`` slice of the state in float32 registers.  Columns of
the state evolve independently (every operation acts on whole columns), so splitting V over
programs is exact and gives ``V / BV`` times more parallel chains: one 4096-token sequence with
32 value heads still fills the GPU.  Per chunk (``h`` = state entering the chunk)::

    r     = beta * v - kfac * (k @ h)          # kfac = beta exp(G) rk
    v_new = Inv @ r                            # Inv  = (I + A)^-1 from the intra stage
    o     = qfac * (q @ h) + PInv @ r          # qfac = scale exp(G) rq, PInv = P Inv
    h     = exp(G_last) h + k^T @ (ufac * v_new)   # ufac = exp(G_last - G) rk

The output never waits for the state of the next chunk and the state is never written to
memory between chunks (only the final one, when asked).  Both state layouts are served:
``[K, V]`` (``STATE_V_FIRST=False``) and ``[V, K]``.  ``SPLIT_K`` keeps the state as two
row halves (same products, half the live operand tiles; experimental, off by default).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["chunk_state_output_kernel", "chunk_state_output_vt_kernel", "aot_specs"]


@triton.jit
def chunk_state_output_kernel(
    q, k, v, inv, pinv, planes, h0, ht, o, cu_seqlens,
    T, BT,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr,
    CHUNK: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr, STATE_V_FIRST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SPLIT_K: tl.constexpr = False,
):
    NV: tl.constexpr = V // BV
    pid = tl.program_id(0)          # value blocks of one (sequence, head) are neighbours
    i_v = pid % NV
    i_nh = pid // NV
    i_n = i_nh // HV
    i_hv = i_nh % HV
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    n_chunks = tl.cdiv(eos - bos, CHUNK)
    dt = inv.dtype.element_ty

    o_t = tl.arange(0, CHUNK)
    BK: tl.constexpr = K // 2 if SPLIT_K else K   # SPLIT_K: state held as two row halves
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    if STATE_V_FIRST:
        p_state = i_nh.to(tl.int64) * (K * V) + o_v[None, :] * K + o_k[:, None]
        step_k = 1
    else:
        p_state = i_nh.to(tl.int64) * (K * V) + o_k[:, None] * V + o_v[None, :]
        step_k = V
    if HAS_H0:
        b_h = tl.load(h0 + p_state).to(tl.float32)
    else:
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if SPLIT_K:
        if HAS_H0:
            b_h2 = tl.load(h0 + p_state + BK * step_k).to(tl.float32)
        else:
            b_h2 = tl.zeros([BK, BV], dtype=tl.float32)

    plane = HV * BT
    for i_c in range(0, n_chunks):
        rows = bos + i_c * CHUNK + o_t
        m_t = rows < eos
        p_qk = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p_qk, mask=m_t[:, None], other=0.0).to(dt)
        b_q = tl.load(q + p_qk, mask=m_t[:, None], other=0.0).to(dt)
        p_v = (rows[:, None] * HV + i_hv) * V + o_v[None, :]
        b_v = tl.load(v + p_v, mask=m_t[:, None], other=0.0).to(tl.float32)
        p_m = (i_hv * BT + rows)[:, None] * CHUNK + o_t[None, :]
        b_inv = tl.load(inv + p_m, mask=m_t[:, None], other=0.0)
        b_pinv = tl.load(pinv + p_m, mask=m_t[:, None], other=0.0)
        p_pl = i_hv * BT + rows
        b_beta = tl.load(planes + p_pl, mask=m_t, other=0.0)
        b_kfac = tl.load(planes + plane + p_pl, mask=m_t, other=0.0)
        b_qfac = tl.load(planes + 2 * plane + p_pl, mask=m_t, other=0.0)
        b_ufac = tl.load(planes + 3 * plane + p_pl, mask=m_t, other=0.0)
        last = tl.minimum(bos + i_c * CHUNK + CHUNK, eos) - 1
        decay = tl.exp(tl.load(planes + 4 * plane + i_hv * BT + last))

        b_hd = b_h.to(dt)
        b_kh = tl.dot(b_k, b_hd, input_precision=DOT_PRECISION)
        b_qh = tl.dot(b_q, b_hd, input_precision=DOT_PRECISION)
        if SPLIT_K:
            b_k2 = tl.load(k + p_qk + BK, mask=m_t[:, None], other=0.0).to(dt)
            b_q2 = tl.load(q + p_qk + BK, mask=m_t[:, None], other=0.0).to(dt)
            b_hd2 = b_h2.to(dt)
            b_kh = tl.dot(b_k2, b_hd2, acc=b_kh, input_precision=DOT_PRECISION)
            b_qh = tl.dot(b_q2, b_hd2, acc=b_qh, input_precision=DOT_PRECISION)
        b_r = (b_v * b_beta[:, None] - b_kh * b_kfac[:, None]).to(dt)
        b_vn = tl.dot(b_inv, b_r, input_precision=DOT_PRECISION)
        b_o = tl.dot(b_pinv, b_r, acc=b_qh * b_qfac[:, None], input_precision=DOT_PRECISION)
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_t[:, None])
        b_u = (b_vn * b_ufac[:, None]).to(dt)
        b_h = tl.dot(tl.trans(b_k), b_u, acc=b_h * decay, input_precision=DOT_PRECISION)
        if SPLIT_K:
            b_h2 = tl.dot(tl.trans(b_k2), b_u, acc=b_h2 * decay, input_precision=DOT_PRECISION)

    if STORE_HT:
        tl.store(ht + p_state, b_h.to(ht.dtype.element_ty))
        if SPLIT_K:
            tl.store(ht + p_state + BK * step_k, b_h2.to(ht.dtype.element_ty))


@triton.jit
def chunk_state_output_vt_kernel(
    q, k, v, inv, pinv, planes, h0, ht, o, cu_seqlens,
    T, BT,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr,
    CHUNK: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr, STATE_V_FIRST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Same recurrence with the state held transposed, ``hT = [BV, K]``.

    Every product then has its register-resident operand on the left (``hT @ k^T``,
    ``rT @ Inv^T``, ``uT @ k``) and a loaded tile on the right, so the chain from one chunk's
    state to the next never stages an operand through shared memory.
    """
    NV: tl.constexpr = V // BV
    pid = tl.program_id(0)          # value blocks of one (sequence, head) are neighbours
    i_v = pid % NV
    i_nh = pid // NV
    i_n = i_nh // HV
    i_hv = i_nh % HV
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    n_chunks = tl.cdiv(eos - bos, CHUNK)
    dt = inv.dtype.element_ty

    o_t = tl.arange(0, CHUNK)
    o_k = tl.arange(0, K)
    o_v = i_v * BV + tl.arange(0, BV)
    if STATE_V_FIRST:
        p_state = i_nh.to(tl.int64) * (K * V) + o_v[:, None] * K + o_k[None, :]
    else:
        p_state = i_nh.to(tl.int64) * (K * V) + o_k[None, :] * V + o_v[:, None]
    if HAS_H0:
        b_h = tl.load(h0 + p_state).to(tl.float32)
    else:
        b_h = tl.zeros([BV, K], dtype=tl.float32)

    plane = HV * BT
    for i_c in range(0, n_chunks):
        rows = bos + i_c * CHUNK + o_t
        m_t = rows < eos
        p_qk = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p_qk, mask=m_t[:, None], other=0.0).to(dt)          # [C, K]
        b_q = tl.load(q + p_qk, mask=m_t[:, None], other=0.0).to(dt)
        p_v = (rows[None, :] * HV + i_hv) * V + o_v[:, None]                  # [BV, C]
        b_v = tl.load(v + p_v, mask=m_t[None, :], other=0.0).to(tl.float32)
        p_m = (i_hv * BT + rows)[:, None] * CHUNK + o_t[None, :]
        b_inv = tl.load(inv + p_m, mask=m_t[:, None], other=0.0)              # [C, C]
        b_pinv = tl.load(pinv + p_m, mask=m_t[:, None], other=0.0)
        p_pl = i_hv * BT + rows
        b_beta = tl.load(planes + p_pl, mask=m_t, other=0.0)
        b_kfac = tl.load(planes + plane + p_pl, mask=m_t, other=0.0)
        b_qfac = tl.load(planes + 2 * plane + p_pl, mask=m_t, other=0.0)
        b_ufac = tl.load(planes + 3 * plane + p_pl, mask=m_t, other=0.0)
        last = tl.minimum(bos + i_c * CHUNK + CHUNK, eos) - 1
        decay = tl.exp(tl.load(planes + 4 * plane + i_hv * BT + last))

        b_hd = b_h.to(dt)
        b_kh = tl.dot(b_hd, tl.trans(b_k), input_precision=DOT_PRECISION)     # [BV, C]
        b_qh = tl.dot(b_hd, tl.trans(b_q), input_precision=DOT_PRECISION)
        b_r = (b_v * b_beta[None, :] - b_kh * b_kfac[None, :]).to(dt)
        b_vn = tl.dot(b_r, tl.trans(b_inv), input_precision=DOT_PRECISION)
        b_o = tl.dot(b_r, tl.trans(b_pinv), acc=b_qh * b_qfac[None, :],
                     input_precision=DOT_PRECISION)
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_t[None, :])
        b_u = (b_vn * b_ufac[None, :]).to(dt)
        b_h = tl.dot(b_u, b_k, acc=b_h * decay, input_precision=DOT_PRECISION)

    if STORE_HT:
        tl.store(ht + p_state, b_h.to(ht.dtype.element_ty))


def aot_specs(arch: str) -> list[dict]:
    """Configurations compiled ahead of time: K, V in {64, 128, 256}, fp16/bf16 inputs."""
    from .chunk_pipeline import config_for

    specs = []
    for dtype in ("bf16", "fp16"):  # fp32 inputs run on the reference on GPUs (backend.py)
        for K in (64, 128, 256):
            for V in (64, 128, 256):
                cfg = config_for(arch, K, V)
                for BV in (bv for bv in (16, 32, 64, 128) if bv <= min(V, cfg.state_bv_max)):
                    sig = {
                        "q": f"*{dtype}", "k": f"*{dtype}", "v": f"*{dtype}",
                        "inv": f"*{dtype}", "pinv": f"*{dtype}", "planes": "*fp32",
                        "h0": "*fp32", "ht": "*fp32", "o": f"*{dtype}", "cu_seqlens": "*i32",
                        "T": "i32", "BT": "i32",
                    }
                    consts = dict(H=16, HV=32, K=K, V=V, BV=BV, CHUNK=64, IS_VARLEN=True,
                                  HAS_H0=True, STORE_HT=True, STATE_V_FIRST=False,
                                  DOT_PRECISION="tf32" if dtype != "fp32" else cfg.fp32_precision)
                    fn = (chunk_state_output_vt_kernel if cfg.state_transposed
                          else chunk_state_output_kernel)
                    specs.append(dict(
                        name=f"chunk_state_output_K{K}_V{V}_BV{BV}_{dtype}",
                        fn=fn, signature=sig, constexprs=consts,
                        num_warps=cfg.state_warps(K, BV), num_stages=cfg.state_stages(K)))
    return specs
