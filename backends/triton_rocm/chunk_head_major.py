"""Head-major chunked prefill kernels of the Triton-ROCm backend (chunk size 64).

Every intermediate is laid out head-major, ``[B, HV, T, ...]`` (one value head's tokens are
contiguous), so a program streams one contiguous slab per head.  The pipeline:

1. ``gate_cumsum_kkt_kernel`` (per value head, chunk): gate (raw ``g`` or the in-kernel
   ``-exp(A_log) * softplus(a + dt_bias)``), its cumulative sum inside the chunk, the
   effective beta, the strictly lower ``A = beta_i * (k_i . k_j) * exp(gc_i - gc_j)`` and
   the decay-masked intra-chunk attention ``S = scale * tril(q_i . k_j * exp(gc_i - gc_j))``.
   With ``L2NORM`` it also stores the inverse row norms of q and k (float32, per key head);
   the products fold them in as row / column scales instead of normalising tiles.
2. ``solve_wu_kernel`` (per value head, chunk): ``(I + A)^-1`` held in registers, built from
   its 16x16 diagonal blocks (forward substitution, all four at once in float32) and the
   block-lower part by the finite series ``(I - M)(I + M^2) Di`` (``M = Di L``, ``M^4 = 0``;
   four 64x64 products at the config's solve precision), then ``w = Ai (beta k exp(gc))``
   and ``u = Ai (beta v)`` as two 64-deep products.
3. ``state_recurrence_kernel`` (per V block, sequence, value head): walks the chunks, stores
   the state at each chunk start (``h``), ``v_new = u - w h`` and updates the state.  With
   ``STATE_VK`` the state's memory layout (``h0``, the final state, ``h``) is ``[V, K]``
   (variant ``opt_vk``), else ``[K, V]`` (``opt``).
4. ``output_kernel`` (per V block, value head, chunk): ``o = scale * exp(gc) q h + S v_new``
   written straight into ``[B, T, HV, V]``.

With ``FUSE_OUTPUT`` (a config choice) step 3 computes the output itself and steps 3-4 become
one kernel without the ``h`` / ``v_new`` round trip through memory.

Programs of the per-chunk kernels are ordered value head fastest, so the ``HV / H`` value
heads that share a key head read the same k (q) lines while they are in L2; the V blocks of
one chain in the scans are neighbours for the same reason.  The scans form their tile
offsets from the loop's token rows, so nothing loop-invariant of tile size stays live in
registers, and every operand they load feeds a product only, so the software pipeline
prefetches the next chunk's tiles.

Gate cumsums, betas and inverse norms are float32 (exponentiated or multiplied later); ``A``,
``S``, the inverse blocks, ``w``, ``u``, ``v_new`` and ``h`` use the element type of the
buffers the launcher allocates (the dtype policy's intermediate dtype); dots accumulate in
float32.  Element offsets inside a tile are int32 or are formed from int64 rows; every row
base (token, chunk or head index times a stride) is int64.

Each kernel module exposes ``aot_specs(arch)`` for ahead-of-time compilation.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl
from gdn_dispatch.backends.triton_common.triangular import unit_lower_inverse

from .configs import CHUNK_SIZE, prefill_config

__all__ = ["gate_cumsum_kkt_kernel", "solve_wu_kernel", "state_recurrence_kernel",
           "output_kernel", "aot_specs"]


@triton.jit
def _chunk_bounds(i_t, i_b, cu_seqlens, chunk_indices, T, BT: tl.constexpr,
                  IS_VARLEN: tl.constexpr):
    """(sequence id, first token of the chunk, end of the sequence) in the batch row's tokens;
    sequence id -1 marks a grid slot past the last chunk (varlen only)."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_t * 2).to(tl.int64)
        c = tl.load(chunk_indices + i_t * 2 + 1).to(tl.int64)
        i_safe = tl.maximum(i_n, 0)
        bos = tl.load(cu_seqlens + i_safe).to(tl.int64)
        eos = tl.load(cu_seqlens + i_safe + 1).to(tl.int64)
        tok0 = bos + c * BT
    else:
        i_n = i_b
        tok0 = i_t * BT
        eos = T.to(tl.int64) + 0 * i_t
    return i_n, tok0, eos


@triton.jit
def _inv_norm(b):
    """``1 / sqrt(sum(x^2) + 1e-6)`` of each row of ``b``, in float32."""
    bf = b.to(tl.float32)
    return 1.0 / tl.sqrt(tl.sum(bf * bf, axis=1) + 1e-6)


@triton.jit
def _tile(R: tl.constexpr, C: tl.constexpr, r0, s_r, r_end, c0, c_end):
    """int32 element offsets and mask of the tile rows ``r0 .. r0 + R``, columns ``c0 .. c0 +
    C`` of a row-major slab with row stride ``s_r`` (valid below ``r_end`` / ``c_end``)."""
    o_r = r0 + tl.arange(0, R)
    o_c = c0 + tl.arange(0, C)
    return (o_r[:, None] * s_r + o_c[None, :],
            (o_r < r_end)[:, None] & (o_c < c_end)[None, :])


@triton.jit
def _tile_t(R: tl.constexpr, C: tl.constexpr, r0, s_c, r_end, c0, c_end):
    """Like ``_tile`` for the transposed view: element ``(r, c)`` of the tile is element
    ``(c, r)`` of a row-major slab with row stride ``s_c`` (rows of the tile are its columns)."""
    o_r = r0 + tl.arange(0, R)
    o_c = c0 + tl.arange(0, C)
    return (o_c[None, :] * s_c + o_r[:, None],
            (o_r < r_end)[:, None] & (o_c < c_end)[None, :])


@triton.jit
def _load_tile(base, row0, rows_end, s_row, D: tl.constexpr, BR: tl.constexpr,
               BD: tl.constexpr):
    """Rows ``row0 .. row0 + BR`` (zeros at and past ``rows_end``) of a row-major ``[*, D]``
    slab with row stride ``s_row``; the row offset goes into the scalar base so the per-element
    offsets stay int32."""
    off, m = _tile(BR, BD, 0, s_row, (rows_end - row0).to(tl.int32), 0, D)
    return tl.load(base + row0 * s_row + off, mask=m, other=0.0)


@triton.jit(do_not_specialize=["T"])
def gate_cumsum_kkt_kernel(
    q, k, g, beta, A_log, dt_bias, gc_out, beta_out, A_out, S_out, rq_out, rk_out,
    cu_seqlens, chunk_indices, scale, T, BATCH, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, H, HV,
    K: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr,
    HAS_G: tl.constexpr, GATE_IN_KERNEL: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    HAS_BETA: tl.constexpr, BETA_SIGMOID: tl.constexpr, NEG_EIGVAL: tl.constexpr,
    L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (key head, chunk): ``k k^T`` and ``q k^T`` (and the inverse norms) are
    formed once, then gated for each of the ``HV / H`` value heads of the key head."""
    pid = tl.program_id(0).to(tl.int64)      # key head fastest (1-D: no grid-y limit)
    i_bk = pid % (BATCH * H)
    i_t = pid // (BATCH * H)
    i_b = i_bk // H
    i_h = i_bk % H
    i_n, tok0, eos = _chunk_bounds(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    if i_n < 0:
        return
    o_t = tl.arange(0, BT)
    tok = tok0 + o_t
    m_t = tok < eos

    b_k = _load_tile(k + i_b * s_kb + i_h * s_kh, tok0, eos, s_kt, K, BT, BK)
    b_q = _load_tile(q + i_b * s_qb + i_h * s_qh, tok0, eos, s_qt, K, BT, BK)
    b_kk = tl.dot(b_k, tl.trans(b_k), input_precision=PRECISION)
    b_qk = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)
    if L2NORM:
        # inverse row norms of q and k (per key head); later kernels fold them into per-row
        # scales instead of normalising tiles
        b_rk = _inv_norm(b_k)
        b_rq = _inv_norm(b_q)
        tl.store(rk_out + (i_b * H + i_h) * T + tok, b_rk, mask=m_t)
        tl.store(rq_out + (i_b * H + i_h) * T + tok, b_rq, mask=m_t)
        b_kk = b_kk * b_rk[:, None] * b_rk[None, :]
        b_qk = b_qk * b_rq[:, None] * b_rk[None, :]
    causal = o_t[:, None] >= o_t[None, :]
    strict = o_t[:, None] > o_t[None, :]
    off_a, m_a = _tile(BT, BT, 0, BT, (eos - tok0).to(tl.int32), 0, BT)
    G = HV // H
    for j in range(0, G):
        i_hv = i_h * G + j
        row0 = (i_b * HV + i_hv) * T + tok0    # head-major row of the chunk's first token
        src = (i_b * T + tok) * HV + i_hv      # [B, T, HV] index of each token
        if HAS_G:
            gv = tl.load(g + src, mask=m_t, other=0.0).to(tl.float32)
            if GATE_IN_KERNEL:
                if HAS_DT_BIAS:
                    gv = gv + tl.load(dt_bias + i_hv).to(tl.float32)
                soft = tl.where(gv > 20.0, gv, tl.log(1.0 + tl.exp(tl.minimum(gv, 20.0))))
                gv = -tl.exp(tl.load(A_log + i_hv).to(tl.float32)) * soft
            gv = tl.where(m_t, gv, 0.0)
            gc = tl.cumsum(gv, axis=0)
        else:
            gc = tl.zeros([BT], dtype=tl.float32)
        tl.store(gc_out + row0 + o_t, gc, mask=m_t)
        if HAS_BETA:
            bv = tl.load(beta + src, mask=m_t, other=0.0).to(tl.float32)
            if BETA_SIGMOID:
                bv = tl.sigmoid(bv)
                if NEG_EIGVAL:
                    bv = bv * 2.0
        else:
            bv = tl.where(m_t, 1.0, 0.0)
        tl.store(beta_out + row0 + o_t, bv, mask=m_t)
        # exp(gc_i - gc_j) on and below the diagonal (<= 1 there), shared by A and S
        dec = tl.exp(tl.where(causal, gc[:, None] - gc[None, :], 0.0))
        b_A = tl.where(strict, b_kk * dec * bv[:, None], 0.0)
        tl.store(A_out + row0 * BT + off_a, b_A.to(A_out.dtype.element_ty), mask=m_a)
        # the decay-masked intra-chunk attention (scale folded in) for the output; columns
        # past the end of the sequence are zero (their k rows are)
        b_S = tl.where(causal, b_qk * dec * scale, 0.0)
        tl.store(S_out + row0 * BT + off_a, b_S.to(S_out.dtype.element_ty), mask=m_a)


@triton.jit(do_not_specialize=["T"])
def solve_wu_kernel(
    k, v, gc_buf, beta_buf, A_buf, rk_buf, w_out, u_out, Ai_out, cu_seqlens, chunk_indices,
    T, BATCH, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, H, HV,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr, STORE_AI: tl.constexpr,
    PRECISION: tl.constexpr, SOLVE_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)      # value head fastest (1-D: no grid-y limit)
    i_bh = pid % (BATCH * HV)
    i_t = pid // (BATCH * HV)
    i_b = i_bh // HV
    i_hv = i_bh % HV
    i_h = i_hv // (HV // H)
    i_n, tok0, eos = _chunk_bounds(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    if i_n < 0:
        return
    o_t = tl.arange(0, BT)
    tok = tok0 + o_t
    m_t = tok < eos
    nvalid = (eos - tok0).to(tl.int32)
    row0 = (i_b * HV + i_hv) * T + tok0
    dt = w_out.dtype.element_ty

    off_a, m_a = _tile(BT, BT, 0, BT, nvalid, 0, BT)
    b_A = tl.load(A_buf + row0 * BT + off_a, mask=m_a, other=0.0)
    # A I: exact (16-bit A, float32 accumulation; fp32 A at the fp32 precision), and it hands
    # A over in the matrix-core accumulator layout, in which the block reshapes and the
    # row / column reductions of the substitution below need a fifth of the cross-lane
    # shuffles of the load's layout (and compile about 6x faster)
    eye = tl.where(o_t[:, None] == o_t[None, :], 1.0, 0.0).to(b_A.dtype)
    b_A = tl.dot(b_A, eye, input_precision=PRECISION)
    b_Ai = unit_lower_inverse(b_A, BT, SOLVE_PRECISION).to(dt)
    if STORE_AI:
        tl.store(Ai_out + row0 * BT + off_a, b_Ai, mask=m_a)

    b_beta = tl.load(beta_buf + row0 + o_t, mask=m_t, other=0.0)
    # w = Ai (beta * exp(gc) * rk * k)
    kscale = b_beta * tl.exp(tl.load(gc_buf + row0 + o_t, mask=m_t, other=0.0))
    if L2NORM:
        kscale = kscale * tl.load(rk_buf + (i_b * H + i_h) * T + tok, mask=m_t, other=0.0)
    b_k = _load_tile(k + i_b * s_kb + i_h * s_kh, tok0, eos, s_kt, K, BT, BK)
    b_k = (b_k.to(tl.float32) * kscale[:, None]).to(dt)
    # w = (k^T Ai^T)^T and u likewise: the inverse is the right (shared-memory) operand.
    # Taken as the left (register) operand it reaches the product through a direct
    # accumulator-to-operand layout conversion, which gave wrong w / u on sm_90 (Triton 3.6,
    # 4 warps) for K, V <= 32
    b_AiT = tl.trans(b_Ai)
    b_w = tl.trans(tl.dot(tl.trans(b_k), b_AiT, input_precision=PRECISION))
    off_w, m_w = _tile(BT, BK, 0, K, nvalid, 0, K)
    tl.store(w_out + row0 * K + off_w, b_w.to(dt), mask=m_w)

    # u = Ai (beta * v)
    b_v = _load_tile(v + i_b * s_vb + i_hv * s_vh, tok0, eos, s_vt, V, BT, BV)
    b_v = (b_v.to(tl.float32) * b_beta[:, None]).to(dt)
    b_u = tl.trans(tl.dot(tl.trans(b_v), b_AiT, input_precision=PRECISION))
    off_u, m_u = _tile(BT, BV, 0, V, nvalid, 0, V)
    tl.store(u_out + row0 * V + off_u, b_u.to(dt), mask=m_u)


@triton.jit
def _rows(base, rows, m_rows, s_row, cols, MASK_COLS: tl.constexpr, n_cols):
    """Load ``[R, C]``: rows ``rows`` (int64 row indices of a slab with row stride ``s_row``,
    valid where ``m_rows``), columns ``cols``; zeros elsewhere.  Offsets are formed here,
    from the loop-variant rows, so that no loop-invariant offset tile stays live in
    registers across a scan."""
    p = base + rows[:, None] * s_row + cols[None, :]
    if MASK_COLS:
        return tl.load(p, mask=m_rows[:, None] & (cols < n_cols)[None, :], other=0.0)
    return tl.load(p, mask=m_rows[:, None], other=0.0)


@triton.jit(do_not_specialize=["T"])
def state_recurrence_kernel(
    q, k, w_buf, u_buf, S_buf, gc_buf, rq_buf, rk_buf, h_out, vnew_out, o, h0, ht,
    cu_seqlens, chunk_offsets, scale,
    T, NT, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_ob, s_ot, s_oh, H, HV,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    STATE_VK: tl.constexpr, HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
    FUSE_OUTPUT: tl.constexpr, L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The chunk-to-chunk state scan.  Unfused: stores ``h`` and ``v_new`` for
    ``output_kernel``.  ``FUSE_OUTPUT``: computes the chunk's output in the scan instead (no
    ``h`` / ``v_new`` traffic, a longer sequential step).

    The state tile is ``[BK, BV]`` in registers for both variants; ``STATE_VK`` is the memory
    layout of ``h0``, ``ht`` and the per-chunk ``h`` (``[V, K]``, else ``[K, V]``).  (Holding
    it as ``[BV, BK]`` with every product transposed needed more registers on sm_90, gfx942
    and gfx950 alike, and kept the transposed loads out of the software pipeline.)"""
    NV: tl.constexpr = (V + BV - 1) // BV
    pid = tl.program_id(0).to(tl.int64)      # the V blocks of one chain are neighbours
    i_v = pid % NV
    i_nh = pid // NV
    i_n = i_nh // HV
    i_hv = i_nh % HV
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        i_b = i_n * 0
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        if FUSE_OUTPUT:
            c0 = i_n * 0
        else:
            c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        i_b = i_n
        bos = i_n * 0
        eos = T.to(tl.int64) + 0 * i_n
        c0 = i_n * 0
    dt = w_buf.dtype.element_ty
    MK: tl.constexpr = K != BK          # pad columns of K to mask
    MV: tl.constexpr = V % BV != 0      # pad columns of V to mask
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    # the state tile [BK, BV] and its element offsets in a [K, V] / [V, K] block
    if STATE_VK:
        off_s = o_v[None, :] * K + o_k[:, None]
    else:
        off_s = o_k[:, None] * V + o_v[None, :]
    m_s = (o_k < K)[:, None] & (o_v < V)[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += tl.load(h0 + i_nh * K * V + off_s, mask=m_s, other=0.0).to(tl.float32)

    hbase = h_out + ((i_b * HV + i_hv) * NT + c0) * K * V
    rowbase = (i_b * HV + i_hv) * T
    krowbase = (i_b * H + i_h) * T
    kbase = k + i_b * s_kb + i_h * s_kh
    qbase = q + i_b * s_qb + i_h * s_qh
    obase = o + i_b * s_ob + i_hv * s_oh
    wbase = w_buf + rowbase * K
    ubase = u_buf + rowbase * V
    Sbase = S_buf + rowbase * BT
    vnbase = vnew_out + rowbase * V
    n_chunks = tl.cdiv(eos - bos, BT)
    for c in range(0, n_chunks):
        t0 = bos + c * BT
        rows = t0 + o_t                  # int64 token rows of the chunk
        m_t = rows < eos
        b_w = _rows(wbase, rows, m_t, K, o_k, MK, K)
        b_k = _rows(kbase, rows, m_t, s_kt, o_k, MK, K).to(dt)
        last = tl.minimum(t0 + BT, eos) - 1
        g_last = tl.load(gc_buf + rowbase + last)
        b_g = tl.load(gc_buf + rowbase + rows, mask=m_t, other=0.0)
        b_kscale = tl.exp(g_last - b_g)
        if L2NORM:
            b_rk = tl.load(rk_buf + krowbase + rows, mask=m_t, other=0.0)
            b_kscale = b_kscale * b_rk
        if FUSE_OUTPUT:
            b_q = _rows(qbase, rows, m_t, s_qt, o_k, MK, K).to(dt)
            b_S = _rows(Sbase, rows, m_t, BT, o_t, False, BT)
            b_qscale = tl.exp(b_g) * scale
            if L2NORM:
                b_qscale = b_qscale * tl.load(rq_buf + krowbase + rows, mask=m_t, other=0.0)
        b_hd = b_h.to(dt)
        if not FUSE_OUTPUT:
            tl.store(hbase + c * K * V + off_s, b_hd, mask=m_s)
        b_vn = _rows(ubase, rows, m_t, V, o_v, MV, V).to(tl.float32)         # [BT, BV]
        b_vn -= tl.dot(b_w, b_hd, input_precision=PRECISION)
        b_vnd = b_vn.to(dt)
        p_out = rows[:, None] * s_ot + o_v[None, :]
        m_out = m_t[:, None] & (o_v < V)[None, :]
        if FUSE_OUTPUT:
            b_o = tl.dot(b_q, b_hd, input_precision=PRECISION)             # [BT, BV]
            b_o = b_o * b_qscale[:, None]
            b_o += tl.dot(b_S, b_vnd, input_precision=PRECISION)
            tl.store(obase + p_out, b_o.to(o.dtype.element_ty), mask=m_out)
        else:
            tl.store(vnbase + rows[:, None] * V + o_v[None, :], b_vnd, mask=m_out)
        b_vs = (b_vn * b_kscale[:, None]).to(dt)
        b_h = b_h * tl.exp(g_last)
        b_h += tl.dot(tl.trans(b_k), b_vs, input_precision=PRECISION)
    if STORE_FINAL:
        tl.store(ht + i_nh * K * V + off_s, b_h.to(ht.dtype.element_ty), mask=m_s)


@triton.jit(do_not_specialize=["T"])
def output_kernel(
    q, vnew_buf, h_buf, S_buf, gc_buf, rq_buf, o, cu_seqlens, chunk_indices, scale,
    T, NT, BATCH, s_qb, s_qt, s_qh, s_ob, s_ot, s_oh, H, HV,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    STATE_VK: tl.constexpr, L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``o = exp(gc) rq scale (q h) + S v_new`` of one chunk and V block (``S``: the
    decay-masked intra-chunk attention from ``gate_cumsum_kkt_kernel``)."""
    NV: tl.constexpr = (V + BV - 1) // BV
    pid = tl.program_id(0).to(tl.int64)      # V block, then value head, then chunk
    i_v = pid % NV
    i_bh = (pid // NV) % (BATCH * HV)
    i_t = pid // NV // (BATCH * HV)
    i_b = i_bh // HV
    i_hv = i_bh % HV
    i_h = i_hv // (HV // H)
    i_n, tok0, eos = _chunk_bounds(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    if i_n < 0:
        return
    dt = vnew_buf.dtype.element_ty
    o_t = tl.arange(0, BT)
    nv = (eos - tok0).to(tl.int32)
    m_t = o_t < nv
    v0 = (i_v * BV).to(tl.int32)
    row0 = (i_b * HV + i_hv) * T + tok0

    b_q = _load_tile(q + i_b * s_qb + i_h * s_qh, tok0, eos, s_qt, K, BT, BK).to(dt)
    # the state at the start of this chunk (grid slot i_t is the chunk's global index)
    hb = h_buf + ((i_b * HV + i_hv) * NT + i_t) * K * V
    if STATE_VK:
        off_h, m_h = _tile(BV, BK, v0, K, V, 0, K)
        b_h = tl.load(hb + off_h, mask=m_h, other=0.0)
        b_o = tl.dot(b_q, tl.trans(b_h), input_precision=PRECISION)
    else:
        off_h, m_h = _tile(BK, BV, 0, V, K, v0, V)
        b_h = tl.load(hb + off_h, mask=m_h, other=0.0)
        b_o = tl.dot(b_q, b_h, input_precision=PRECISION)
    b_qscale = tl.exp(tl.load(gc_buf + row0 + o_t, mask=m_t, other=0.0)) * scale
    if L2NORM:
        b_qscale = b_qscale * tl.load(rq_buf + (i_b * H + i_h) * T + tok0 + o_t, mask=m_t,
                                      other=0.0)
    b_o = b_o * b_qscale[:, None]
    off_s, m_s = _tile(BT, BT, 0, BT, nv, 0, BT)
    b_S = tl.load(S_buf + row0 * BT + off_s, mask=m_s, other=0.0)
    off_v, m_v = _tile(BT, BV, 0, V, nv, v0, V)
    b_vn = tl.load(vnew_buf + row0 * V + off_v, mask=m_v, other=0.0)
    b_o += tl.dot(b_S, b_vn, input_precision=PRECISION)
    off_o, _ = _tile(BT, BV, 0, s_ot, nv, v0, V)
    tl.store(o + i_b * s_ob + tok0 * s_ot + i_hv * s_oh + off_o,
             b_o.to(o.dtype.element_ty), mask=m_v)


# -- ahead-of-time compilation specs ------------------------------------------------------
_TY = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}


def aot_specs(arch: str) -> list[dict[str, Any]]:
    """One spec per kernel and configuration used on ``arch`` (K = V = 128, the Qwen3-Next
    head size; fp16 and bf16 inputs, varlen, both state layouts, every gating flag on; the
    scans at every V block the config can pick)."""
    cfg = prefill_config(arch)
    target = "hip" if arch.startswith("gfx") else "cuda"
    BK = BV = 128
    dims = {"H": "i32", "HV": "i32"}
    prec, solve_prec = cfg.precisions(True)
    specs: list[dict[str, Any]] = []
    for dname in ("bf16", "fp16"):
        x = _TY[dname]
        f32 = "*fp32"
        strides_k = {"s_kb": "i64", "s_kt": "i64", "s_kh": "i64"}
        strides_q = {"s_qb": "i64", "s_qt": "i64", "s_qh": "i64"}
        cons: dict[str, Any] = {
            "K": 128, "BK": BK, "BT": CHUNK_SIZE, "HAS_G": True, "GATE_IN_KERNEL": True,
            "HAS_DT_BIAS": True, "HAS_BETA": True, "BETA_SIGMOID": True, "NEG_EIGVAL": False,
            "L2NORM": True, "IS_VARLEN": True, "PRECISION": prec}
        sig = {"q": x, "k": x, "g": x, "beta": x, "A_log": f32, "dt_bias": f32,
               "gc_out": f32, "beta_out": f32, "A_out": x, "S_out": x, "rq_out": f32,
               "rk_out": f32, "cu_seqlens": "*i32", "chunk_indices": "*i32",
               "scale": "fp32", "T": "i32", "BATCH": "i32", **strides_q, **strides_k,
               **dims}
        sig.update({n: "constexpr" for n in cons})
        specs.append(_spec(f"gate_cumsum_kkt_{dname}", gate_cumsum_kkt_kernel, sig, cons,
                           cfg.kkt, target))

        cons = {"K": 128, "V": 128, "BK": BK, "BV": BV, "BT": CHUNK_SIZE, "L2NORM": True,
                "IS_VARLEN": True, "STORE_AI": False, "PRECISION": prec,
                "SOLVE_PRECISION": solve_prec}
        sig = {"k": x, "v": x, "gc_buf": f32, "beta_buf": f32, "A_buf": x, "rk_buf": f32,
               "w_out": x, "u_out": x, "Ai_out": x, "cu_seqlens": "*i32",
               "chunk_indices": "*i32", "T": "i32", "BATCH": "i32", **strides_k,
               "s_vb": "i64", "s_vt": "i64", "s_vh": "i64", **dims}
        sig.update({n: "constexpr" for n in cons})
        specs.append(_spec(f"solve_wu_{dname}", solve_wu_kernel, sig, cons, cfg.solve, target))

        for vk in (False, True):
            variant = "opt_vk" if vk else "opt"
            for fused in (False, True):
                fixed = cfg.fused_bv if fused else cfg.state_bv
                bvs = [fixed] if fixed is not None else [
                    b for b in (16, 32, 64, 128) if b <= cfg.state_bv_max]
                for bv in bvs:
                    cons = {"K": 128, "V": 128, "BK": BK, "BV": bv, "BT": CHUNK_SIZE,
                            "STATE_VK": vk, "HAS_H0": True, "STORE_FINAL": True,
                            "FUSE_OUTPUT": fused, "L2NORM": True, "IS_VARLEN": True,
                            "PRECISION": prec}
                    sig = {"q": x, "k": x, "w_buf": x, "u_buf": x, "S_buf": x,
                           "gc_buf": f32, "rq_buf": f32, "rk_buf": f32, "h_out": x, "vnew_out": x, "o": x, "h0": f32,
                           "ht": f32, "cu_seqlens": "*i32", "chunk_offsets": "*i32",
                           "scale": "fp32", "T": "i32", "NT": "i32", **strides_q,
                           **strides_k, "s_ob": "i64", "s_ot": "i64", "s_oh": "i64", **dims}
                    sig.update({n: "constexpr" for n in cons})
                    kind = "state_output_fused" if fused else "state_recurrence"
                    suffix = "" if fixed is not None else f"_BV{bv}"
                    specs.append(_spec(f"{kind}_{variant}_{dname}{suffix}",
                                       state_recurrence_kernel, sig, cons,
                                       cfg.scan_launch(fused, BK, bv), target))

            cons = {"K": 128, "V": 128, "BK": BK, "BV": cfg.output_bv, "BT": CHUNK_SIZE,
                    "STATE_VK": vk, "L2NORM": True, "IS_VARLEN": True, "PRECISION": prec}
            sig = {"q": x, "vnew_buf": x, "h_buf": x, "S_buf": x, "gc_buf": f32,
                   "rq_buf": f32, "o": x, "cu_seqlens": "*i32", "chunk_indices": "*i32",
                   "scale": "fp32", "T": "i32", "NT": "i32", "BATCH": "i32", **strides_q,
                   "s_ob": "i64", "s_ot": "i64", "s_oh": "i64", **dims}
            sig.update({n: "constexpr" for n in cons})
            specs.append(_spec(f"output_{variant}_{dname}", output_kernel, sig, cons,
                               cfg.output, target))
    return specs


def _spec(name: str, fn: Any, signature: dict[str, str], constexprs: dict[str, Any],
          launch: Any, target: str) -> dict[str, Any]:
    opts = launch.compile_options(target)
    # pointers 16-byte aligned and strides multiples of 16 elements, as Triton's JIT
    # specializes them for the usual (contiguous or packed-projection) inputs
    div16 = [["tt.divisibility", 16]]
    attrs = {n: div16 for n, ty in signature.items()
             if ty.startswith("*") or (n.startswith("s_") and ty in ("i32", "i64"))}
    spec: dict[str, Any] = {"name": name, "fn": fn, "signature": signature,
                            "constexprs": constexprs, "num_warps": opts.pop("num_warps"),
                            "num_stages": opts.pop("num_stages"), "attrs": attrs}
    if opts:
        spec["options"] = opts
    return spec
