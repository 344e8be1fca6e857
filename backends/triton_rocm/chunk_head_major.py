"""Head-major chunked prefill kernels of the Triton-ROCm backend (chunk size 64).

Every intermediate is laid out head-major, ``[B, HV, T, ...]`` (one value head's tokens are
contiguous), so a program streams one contiguous slab per head.  The pipeline:

1. ``gate_cumsum_kkt_kernel`` (per chunk, value head): gate (raw ``g`` or the in-kernel
   ``-exp(A_log) * softplus(a + dt_bias)``), its cumulative sum inside the chunk, the
   effective beta, and the strictly lower ``A = beta_i * (k_i . k_j) * exp(gc_i - gc_j)``.
   With ``L2NORM`` it also stores the inverse row norms of q and k (float32, per key head);
   the later kernels fold them into per-row scales instead of normalising tiles.
2. ``solve_wu_kernel`` (per chunk, value head): ``(I + A)^-1`` from 16x16 blocks held in
   registers (diagonal blocks by a power product, off-diagonal blocks by block forward
   substitution), then ``w = Ai (beta k exp(gc))`` and ``u = Ai (beta v)``.
3. ``state_recurrence_kernel`` (per sequence, value head, V block): walks the chunks, stores
   the state at each chunk start (``h``), ``v_new = u - w h`` and updates the state.  With
   ``STATE_VK`` the state lives as ``[V, K]`` (variant ``opt_vk``), else ``[K, V]`` (``opt``).
4. ``output_kernel`` (per chunk, value head, V block): ``o = scale * (exp(gc) q h +
   mask(q k^T exp(gc_i - gc_j)) v_new)`` written straight into ``[B, T, HV, V]``.

With ``FUSE_OUTPUT`` (chosen by the config when the scan has enough programs to fill the
device) step 3 computes the output itself and steps 3-4 become one kernel without the ``h`` /
``v_new`` round trip through memory.

Gate cumsums, betas and inverse norms are float32 (exponentiated or multiplied later); ``A``,
the inverse blocks, ``w``, ``u``, ``v_new`` and ``h`` use the element type of the buffers the
launcher allocates (the dtype policy's intermediate dtype); dots accumulate in float32.

Each kernel module exposes ``aot_specs(arch)`` for ahead-of-time compilation.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

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
def _load_rows(base, tok, m_t, s_t, o_d, D: tl.constexpr, L2NORM: tl.constexpr):
    """Load rows ``[BT, BD]`` of a [*, T, *, D] input at token positions ``tok``, optionally
    L2-normalised (float32 math), in the input element type."""
    b = tl.load(base + tok[:, None] * s_t + o_d[None, :],
                mask=m_t[:, None] & (o_d[None, :] < D), other=0.0)
    if L2NORM:
        bf = b.to(tl.float32)
        bf = bf / tl.sqrt(tl.sum(bf * bf, axis=1) + 1e-6)[:, None]
        b = bf.to(b.dtype)
    return b


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
def _load_tile(base, row0, rows_end, s_row, D: tl.constexpr, BR: tl.constexpr,
               BD: tl.constexpr, L2NORM: tl.constexpr):
    """Rows ``row0 .. row0 + BR`` (zeros at and past ``rows_end``) of a row-major ``[*, D]``
    slab with row stride ``s_row``; the row offset goes into the scalar base so the per-element
    offsets stay int32.  Optionally L2-normalised per row in float32."""
    off, m = _tile(BR, BD, 0, s_row, (rows_end - row0).to(tl.int32), 0, D)
    b = tl.load(base + row0 * s_row + off, mask=m, other=0.0)
    if L2NORM:
        bf = b.to(tl.float32)
        bf = bf / tl.sqrt(tl.sum(bf * bf, axis=1) + 1e-6)[:, None]
        b = bf.to(b.dtype)
    return b


@triton.jit(do_not_specialize=["T"])
def gate_cumsum_kkt_kernel(
    q, k, g, beta, A_log, dt_bias, gc_out, beta_out, A_out, rq_out, rk_out, cu_seqlens,
    chunk_indices, T, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, H, HV,
    K: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr,
    HAS_G: tl.constexpr, GATE_IN_KERNEL: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    HAS_BETA: tl.constexpr, BETA_SIGMOID: tl.constexpr, NEG_EIGVAL: tl.constexpr,
    L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // HV
    i_hv = i_bh % HV
    i_h = i_hv // (HV // H)
    i_n, tok0, eos = _chunk_bounds(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    if i_n < 0:
        return
    o_t = tl.arange(0, BT)
    tok = tok0 + o_t
    m_t = tok < eos
    row = (i_b * HV + i_hv) * T + tok          # head-major row of each token
    src = (i_b * T + tok) * HV + i_hv          # [B, T, HV] index of each token

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
    tl.store(gc_out + row, gc, mask=m_t)

    if HAS_BETA:
        bv = tl.load(beta + src, mask=m_t, other=0.0).to(tl.float32)
        if BETA_SIGMOID:
            bv = tl.sigmoid(bv)
            if NEG_EIGVAL:
                bv = bv * 2.0
    else:
        bv = tl.where(m_t, 1.0, 0.0)
    tl.store(beta_out + row, bv, mask=m_t)

    o_k = tl.arange(0, BK)
    b_k = _load_rows(k + i_b * s_kb + i_h * s_kh, tok, m_t, s_kt, o_k, K, False)
    b_kb = (b_k.to(tl.float32) * bv[:, None]).to(b_k.dtype)
    b_A = tl.dot(b_kb, tl.trans(b_k), input_precision=PRECISION)
    if L2NORM:
        # inverse row norms of q and k, stored once per key head; later kernels fold them
        # into per-row scales instead of normalising tiles
        b_rk = _inv_norm(b_k)
        b_rq = _inv_norm(_load_rows(q + i_b * s_qb + i_h * s_qh, tok, m_t, s_qt, o_k, K, False))
        krow = (i_b * H + i_h) * T + tok
        if i_hv % (HV // H) == 0:
            tl.store(rk_out + krow, b_rk, mask=m_t)
            tl.store(rq_out + krow, b_rq, mask=m_t)
        b_A = b_A * b_rk[:, None] * b_rk[None, :]
    keep = (o_t[:, None] > o_t[None, :]) & m_t[:, None]
    b_A = tl.where(keep, b_A * tl.exp(gc[:, None] - gc[None, :]), 0.0)
    tl.store(A_out + row[:, None] * BT + o_t[None, :], b_A.to(A_out.dtype.element_ty),
             mask=m_t[:, None])


@triton.jit
def _load_block16(A_out, row0, rows_valid, i: tl.constexpr, j: tl.constexpr,
                  BT: tl.constexpr):
    """The [16, 16] block (i, j) of one chunk's A as float32."""
    o = tl.arange(0, 16)
    r = i * 16 + o
    p = A_out + (row0 + r)[:, None] * BT + (j * 16 + o)[None, :]
    return tl.load(p, mask=(r < rows_valid)[:, None], other=0.0).to(tl.float32)


@triton.jit
def _invert_unit_lower16(b_A, PRECISION: tl.constexpr):
    """``(I + L)^-1`` of a strictly lower [16, 16] block L, as the product
    ``(I - L)(I + L^2)(I + L^4)(I + L^8)`` (L is nilpotent: L^16 = 0)."""
    o = tl.arange(0, 16)
    eye = tl.where(o[:, None] == o[None, :], 1.0, 0.0)
    n = -tl.where(o[:, None] > o[None, :], b_A, 0.0)
    x = eye + n
    p = tl.dot(n, n, input_precision=PRECISION)
    x = x + tl.dot(x, p, input_precision=PRECISION)
    p = tl.dot(p, p, input_precision=PRECISION)
    x = x + tl.dot(x, p, input_precision=PRECISION)
    p = tl.dot(p, p, input_precision=PRECISION)
    x = x + tl.dot(x, p, input_precision=PRECISION)
    return x


@triton.jit
def _load_scaled16(base, tok0, i: tl.constexpr, eos, s_t, o_d, D: tl.constexpr,
                   coef_ptr, row0, USE_GATE: tl.constexpr, gc_ptr, HAS_RK: tl.constexpr, rk_ptr,
                   krow0):
    """Rows ``16 i .. 16 i + 15`` of a chunk of k or v scaled by beta (and exp(gc))."""
    o = tl.arange(0, 16)
    r = i * 16 + o
    tok = tok0 + r
    m = tok < eos
    b = _load_rows(base, tok, m, s_t, o_d, D, False).to(tl.float32)
    c = tl.load(coef_ptr + row0 + r, mask=m, other=0.0)
    if USE_GATE:
        c = c * tl.exp(tl.load(gc_ptr + row0 + r, mask=m, other=0.0))
    if HAS_RK:
        c = c * tl.load(rk_ptr + krow0 + r, mask=m, other=0.0)
    return b * c[:, None]


@triton.jit
def _store_rows16(out, row0, i: tl.constexpr, rows_valid, b, o_d, D: tl.constexpr,
                  ROW_STRIDE: tl.constexpr):
    o = tl.arange(0, 16)
    r = i * 16 + o
    tl.store(out + (row0 + r)[:, None] * ROW_STRIDE + o_d[None, :], b.to(out.dtype.element_ty),
             mask=(r < rows_valid)[:, None] & (o_d[None, :] < D))


@triton.jit(do_not_specialize=["T"])
def solve_wu_kernel(
    k, v, gc_buf, beta_buf, A_buf, rk_buf, w_out, u_out, Ai_out, cu_seqlens, chunk_indices,
    T, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, H, HV,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr,
    STORE_AI: tl.constexpr, PRECISION: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // HV
    i_hv = i_bh % HV
    i_h = i_hv // (HV // H)
    i_n, tok0, eos = _chunk_bounds(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    if i_n < 0:
        return
    row0 = (i_b * HV + i_hv) * T + tok0
    nvalid = eos - tok0
    dt = w_out.dtype.element_ty

    # inverse of (I + A): diagonal blocks, then block forward substitution
    x00 = _invert_unit_lower16(_load_block16(A_buf, row0, nvalid, 0, 0, BT), PRECISION)
    x11 = _invert_unit_lower16(_load_block16(A_buf, row0, nvalid, 1, 1, BT), PRECISION)
    x22 = _invert_unit_lower16(_load_block16(A_buf, row0, nvalid, 2, 2, BT), PRECISION)
    x33 = _invert_unit_lower16(_load_block16(A_buf, row0, nvalid, 3, 3, BT), PRECISION)
    a10 = _load_block16(A_buf, row0, nvalid, 1, 0, BT)
    a20 = _load_block16(A_buf, row0, nvalid, 2, 0, BT)
    a21 = _load_block16(A_buf, row0, nvalid, 2, 1, BT)
    a30 = _load_block16(A_buf, row0, nvalid, 3, 0, BT)
    a31 = _load_block16(A_buf, row0, nvalid, 3, 1, BT)
    a32 = _load_block16(A_buf, row0, nvalid, 3, 2, BT)
    x10 = -tl.dot(x11, tl.dot(a10, x00, input_precision=PRECISION), input_precision=PRECISION)
    x21 = -tl.dot(x22, tl.dot(a21, x11, input_precision=PRECISION), input_precision=PRECISION)
    x32 = -tl.dot(x33, tl.dot(a32, x22, input_precision=PRECISION), input_precision=PRECISION)
    x20 = -tl.dot(x22, tl.dot(a20, x00, input_precision=PRECISION)
                  + tl.dot(a21, x10, input_precision=PRECISION), input_precision=PRECISION)
    x31 = -tl.dot(x33, tl.dot(a31, x11, input_precision=PRECISION)
                  + tl.dot(a32, x21, input_precision=PRECISION), input_precision=PRECISION)
    x30 = -tl.dot(x33, tl.dot(a30, x00, input_precision=PRECISION)
                  + tl.dot(a31, x10, input_precision=PRECISION)
                  + tl.dot(a32, x20, input_precision=PRECISION), input_precision=PRECISION)
    # the inverse blocks in the intermediate dtype
    x00 = x00.to(dt)
    x10 = x10.to(dt)
    x11 = x11.to(dt)
    x20 = x20.to(dt)
    x21 = x21.to(dt)
    x22 = x22.to(dt)
    x30 = x30.to(dt)
    x31 = x31.to(dt)
    x32 = x32.to(dt)
    x33 = x33.to(dt)
    if STORE_AI:
        o16 = tl.arange(0, 16)
        _store_rows16(Ai_out, row0, 0, nvalid, x00, o16, 16, BT)
        _store_rows16(Ai_out + 16, row0, 1, nvalid, x11, o16, 16, BT)
        _store_rows16(Ai_out + 32, row0, 2, nvalid, x22, o16, 16, BT)
        _store_rows16(Ai_out + 48, row0, 3, nvalid, x33, o16, 16, BT)
        _store_rows16(Ai_out, row0, 1, nvalid, x10, o16, 16, BT)
        _store_rows16(Ai_out, row0, 2, nvalid, x20, o16, 16, BT)
        _store_rows16(Ai_out + 16, row0, 2, nvalid, x21, o16, 16, BT)
        _store_rows16(Ai_out, row0, 3, nvalid, x30, o16, 16, BT)
        _store_rows16(Ai_out + 16, row0, 3, nvalid, x31, o16, 16, BT)
        _store_rows16(Ai_out + 32, row0, 3, nvalid, x32, o16, 16, BT)

    # w = Ai (beta * exp(gc) * k)
    o_k = tl.arange(0, BK)
    kb = k + i_b * s_kb + i_h * s_kh
    krow0 = (i_b * H + i_h) * T + tok0
    k0 = _load_scaled16(kb, tok0, 0, eos, s_kt, o_k, K, beta_buf, row0, True, gc_buf,
                          L2NORM, rk_buf, krow0).to(dt)
    k1 = _load_scaled16(kb, tok0, 1, eos, s_kt, o_k, K, beta_buf, row0, True, gc_buf,
                          L2NORM, rk_buf, krow0).to(dt)
    k2 = _load_scaled16(kb, tok0, 2, eos, s_kt, o_k, K, beta_buf, row0, True, gc_buf,
                          L2NORM, rk_buf, krow0).to(dt)
    k3 = _load_scaled16(kb, tok0, 3, eos, s_kt, o_k, K, beta_buf, row0, True, gc_buf,
                          L2NORM, rk_buf, krow0).to(dt)
    w0 = tl.dot(x00, k0, input_precision=PRECISION)
    w1 = tl.dot(x10, k0, input_precision=PRECISION) + tl.dot(x11, k1, input_precision=PRECISION)
    w2 = (tl.dot(x20, k0, input_precision=PRECISION) + tl.dot(x21, k1, input_precision=PRECISION)
          + tl.dot(x22, k2, input_precision=PRECISION))
    w3 = (tl.dot(x30, k0, input_precision=PRECISION) + tl.dot(x31, k1, input_precision=PRECISION)
          + tl.dot(x32, k2, input_precision=PRECISION) + tl.dot(x33, k3, input_precision=PRECISION))
    _store_rows16(w_out, row0, 0, nvalid, w0, o_k, K, K)
    _store_rows16(w_out, row0, 1, nvalid, w1, o_k, K, K)
    _store_rows16(w_out, row0, 2, nvalid, w2, o_k, K, K)
    _store_rows16(w_out, row0, 3, nvalid, w3, o_k, K, K)

    # u = Ai (beta * v)
    o_v = tl.arange(0, BV)
    vb = v + i_b * s_vb + i_hv * s_vh
    v0 = _load_scaled16(vb, tok0, 0, eos, s_vt, o_v, V, beta_buf, row0, False, gc_buf,
                          False, rk_buf, krow0).to(dt)
    v1 = _load_scaled16(vb, tok0, 1, eos, s_vt, o_v, V, beta_buf, row0, False, gc_buf,
                          False, rk_buf, krow0).to(dt)
    v2 = _load_scaled16(vb, tok0, 2, eos, s_vt, o_v, V, beta_buf, row0, False, gc_buf,
                          False, rk_buf, krow0).to(dt)
    v3 = _load_scaled16(vb, tok0, 3, eos, s_vt, o_v, V, beta_buf, row0, False, gc_buf,
                          False, rk_buf, krow0).to(dt)
    u0 = tl.dot(x00, v0, input_precision=PRECISION)
    u1 = tl.dot(x10, v0, input_precision=PRECISION) + tl.dot(x11, v1, input_precision=PRECISION)
    u2 = (tl.dot(x20, v0, input_precision=PRECISION) + tl.dot(x21, v1, input_precision=PRECISION)
          + tl.dot(x22, v2, input_precision=PRECISION))
    u3 = (tl.dot(x30, v0, input_precision=PRECISION) + tl.dot(x31, v1, input_precision=PRECISION)
          + tl.dot(x32, v2, input_precision=PRECISION) + tl.dot(x33, v3, input_precision=PRECISION))
    _store_rows16(u_out, row0, 0, nvalid, u0, o_v, V, V)
    _store_rows16(u_out, row0, 1, nvalid, u1, o_v, V, V)
    _store_rows16(u_out, row0, 2, nvalid, u2, o_v, V, V)
    _store_rows16(u_out, row0, 3, nvalid, u3, o_v, V, V)


@triton.jit(do_not_specialize=["T"])
def state_recurrence_kernel(
    q, k, w_buf, u_buf, gc_buf, rq_buf, rk_buf, h_out, vnew_out, o, h0, ht, cu_seqlens,
    chunk_offsets, scale,
    T, NT, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_ob, s_ot, s_oh, H, HV,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    STATE_VK: tl.constexpr, HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
    FUSE_OUTPUT: tl.constexpr, L2NORM: tl.constexpr, IS_VARLEN: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The chunk-to-chunk state scan.  Unfused: stores ``h`` and ``v_new`` for
    ``output_kernel``.  ``FUSE_OUTPUT``: computes the chunk's output in the scan instead (no
    ``h`` / ``v_new`` traffic, a longer sequential step)."""
    i_v = tl.program_id(0).to(tl.int64)
    i_nh = tl.program_id(1).to(tl.int64)
    i_n = i_nh // HV
    i_hv = i_nh % HV
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        i_b = i_n * 0
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        i_b = i_n
        bos = i_n * 0
        eos = T.to(tl.int64) + 0 * i_n
        c0 = i_n * 0
    dt = w_buf.dtype.element_ty
    o_t = tl.arange(0, BT)
    v0 = (i_v * BV).to(tl.int32)
    # the state tile: [BK, BV] ("kv") or [BV, BK] ("vk") of one [K, V] / [V, K] block
    if STATE_VK:
        b_h = tl.zeros([BV, BK], dtype=tl.float32)
    else:
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if STATE_VK:
        off_s, m_s = _tile(BV, BK, v0, K, V, 0, K)
    else:
        off_s, m_s = _tile(BK, BV, 0, V, K, v0, V)
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
    n_chunks = tl.cdiv(eos - bos, BT)
    for c in range(0, n_chunks):
        b_hd = b_h.to(dt)
        if not FUSE_OUTPUT:
            tl.store(hbase + c * K * V + off_s, b_hd, mask=m_s)
        t0 = bos + c * BT
        tok = t0 + o_t
        m_t = tok < eos
        b_w = _load_tile(wbase, t0, eos, K, K, BT, BK, False)
        off_tv, m_tv = _tile(BT, BV, 0, V, (eos - t0).to(tl.int32), v0, V)
        b_u = tl.load(ubase + t0 * V + off_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_k = _load_tile(kbase, t0, eos, s_kt, K, BT, BK, False).to(dt)
        if STATE_VK:
            b_vn = b_u - tl.dot(b_w, tl.trans(b_hd), input_precision=PRECISION)
        else:
            b_vn = b_u - tl.dot(b_w, b_hd, input_precision=PRECISION)
        b_vnd = b_vn.to(dt)
        last = tl.minimum(t0 + BT, eos) - 1
        g_last = tl.load(gc_buf + rowbase + last)
        b_g = tl.load(gc_buf + rowbase + tok, mask=m_t, other=0.0)
        b_kscale = tl.exp(g_last - b_g)
        if L2NORM:
            b_rk = tl.load(rk_buf + krowbase + tok, mask=m_t, other=0.0)
            b_kscale = b_kscale * b_rk
        if FUSE_OUTPUT:
            b_q = _load_tile(qbase, t0, eos, s_qt, K, BT, BK, False).to(dt)
            if STATE_VK:
                b_o = tl.dot(b_q, tl.trans(b_hd), input_precision=PRECISION)
            else:
                b_o = tl.dot(b_q, b_hd, input_precision=PRECISION)
            b_qscale = tl.exp(b_g)
            b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)
            b_dec = tl.exp(b_g[:, None] - b_g[None, :])
            if L2NORM:
                b_rq = tl.load(rq_buf + krowbase + tok, mask=m_t, other=0.0)
                b_qscale = b_qscale * b_rq
                b_dec = b_dec * b_rq[:, None] * b_rk[None, :]
            b_o = b_o * b_qscale[:, None]
            causal = (o_t[:, None] >= o_t[None, :]) & m_t[None, :]
            b_s = tl.where(causal, b_s * b_dec, 0.0)
            b_o += tl.dot(b_s.to(dt), b_vnd, input_precision=PRECISION)
            off_o, _ = _tile(BT, BV, 0, s_ot, 0, v0, V)
            tl.store(obase + t0 * s_ot + off_o, (b_o * scale).to(o.dtype.element_ty),
                     mask=m_tv)
        else:
            tl.store(vnew_out + (rowbase + t0) * V + off_tv, b_vnd, mask=m_tv)
        b_vn = tl.where(m_t[:, None], b_vn * b_kscale[:, None], 0.0).to(dt)
        b_h = b_h * tl.exp(g_last)
        if STATE_VK:
            b_h += tl.dot(tl.trans(b_vn), b_k, input_precision=PRECISION)
        else:
            b_h += tl.dot(tl.trans(b_k), b_vn, input_precision=PRECISION)
    if STORE_FINAL:
        tl.store(ht + i_nh * K * V + off_s, b_h.to(ht.dtype.element_ty), mask=m_s)


@triton.jit(do_not_specialize=["T"])
def output_kernel(
    q, k, vnew_buf, h_buf, gc_buf, rq_buf, rk_buf, o, cu_seqlens, chunk_indices, scale,
    T, NT, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_ob, s_ot, s_oh, H, HV,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, STATE_VK: tl.constexpr, L2NORM: tl.constexpr,
    IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
):
    i_v = tl.program_id(0).to(tl.int64)
    i_t = tl.program_id(1).to(tl.int64)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // HV
    i_hv = i_bh % HV
    i_h = i_hv // (HV // H)
    i_n, tok0, eos = _chunk_bounds(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    if i_n < 0:
        return
    dt = vnew_buf.dtype.element_ty
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    tok = tok0 + o_t
    m_t = tok < eos
    row = (i_b * HV + i_hv) * T + tok

    b_q = _load_rows(q + i_b * s_qb + i_h * s_qh, tok, m_t, s_qt, o_k, K, False).to(dt)
    b_k = _load_rows(k + i_b * s_kb + i_h * s_kh, tok, m_t, s_kt, o_k, K, False).to(dt)
    # the state at the start of this chunk (grid slot i_t is the chunk's global index)
    hb = h_buf + ((i_b * HV + i_hv) * NT + i_t) * K * V
    if STATE_VK:
        b_h = tl.load(hb + o_v[:, None] * K + o_k[None, :], mask=m_v[:, None] & m_k[None, :],
                      other=0.0)
        b_o = tl.dot(b_q, tl.trans(b_h), input_precision=PRECISION)
    else:
        b_h = tl.load(hb + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :],
                      other=0.0)
        b_o = tl.dot(b_q, b_h, input_precision=PRECISION)
    b_g = tl.load(gc_buf + row, mask=m_t, other=0.0)
    b_qscale = tl.exp(b_g)
    b_dec = tl.exp(b_g[:, None] - b_g[None, :])
    if L2NORM:
        krow = (i_b * H + i_h) * T + tok
        b_rq = tl.load(rq_buf + krow, mask=m_t, other=0.0)
        b_rk = tl.load(rk_buf + krow, mask=m_t, other=0.0)
        b_qscale = b_qscale * b_rq
        b_dec = b_dec * b_rq[:, None] * b_rk[None, :]
    b_o = b_o * b_qscale[:, None]
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)
    causal = (o_t[:, None] >= o_t[None, :]) & m_t[:, None] & m_t[None, :]
    b_s = tl.where(causal, b_s * b_dec, 0.0)
    b_vn = tl.load(vnew_buf + row[:, None] * V + o_v[None, :],
                   mask=m_t[:, None] & m_v[None, :], other=0.0)
    b_o += tl.dot(b_s.to(dt), b_vn, input_precision=PRECISION)
    b_o = b_o * scale
    tl.store(o + i_b * s_ob + tok[:, None] * s_ot + i_hv * s_oh + o_v[None, :],
             b_o.to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


# -- ahead-of-time compilation specs ------------------------------------------------------
_TY = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}


def aot_specs(arch: str) -> list[dict[str, Any]]:
    """One spec per kernel and configuration used on ``arch`` (K = V = 128, the Qwen3-Next
    head size; fp16 and bf16 inputs, varlen, both state layouts, every gating flag on)."""
    cfg = prefill_config(arch)
    target = "hip" if arch.startswith("gfx") else "cuda"
    BK = BV = 128
    dims = {"H": "i32", "HV": "i32"}
    specs: list[dict[str, Any]] = []
    for dname in ("bf16", "fp16"):
        x = _TY[dname]
        f32 = "*fp32"
        strides_k = {"s_kb": "i64", "s_kt": "i64", "s_kh": "i64"}
        strides_q = {"s_qb": "i64", "s_qt": "i64", "s_qh": "i64"}
        cons: dict[str, Any] = {
            "K": 128, "BK": BK, "BT": CHUNK_SIZE, "HAS_G": True, "GATE_IN_KERNEL": True,
            "HAS_DT_BIAS": True, "HAS_BETA": True, "BETA_SIGMOID": True, "NEG_EIGVAL": False,
            "L2NORM": True, "IS_VARLEN": True, "PRECISION": "ieee"}
        sig = {"q": x, "k": x, "g": x, "beta": x, "A_log": f32, "dt_bias": f32,
               "gc_out": f32, "beta_out": f32, "A_out": x, "rq_out": f32, "rk_out": f32,
               "cu_seqlens": "*i32", "chunk_indices": "*i32", "T": "i32", **strides_q,
               **strides_k, **dims}
        sig.update({n: "constexpr" for n in cons})
        specs.append(_spec(f"gate_cumsum_kkt_{dname}", gate_cumsum_kkt_kernel, sig, cons,
                           cfg.kkt, target))

        cons = {"K": 128, "V": 128, "BK": BK, "BV": BV, "BT": CHUNK_SIZE, "L2NORM": True,
                "IS_VARLEN": True,
                "STORE_AI": False, "PRECISION": "ieee"}
        sig = {"k": x, "v": x, "gc_buf": f32, "beta_buf": f32, "A_buf": x, "rk_buf": f32,
               "w_out": x,
               "u_out": x, "Ai_out": x, "cu_seqlens": "*i32", "chunk_indices": "*i32",
               "T": "i32", **strides_k, "s_vb": "i64", "s_vt": "i64", "s_vh": "i64", **dims}
        sig.update({n: "constexpr" for n in cons})
        specs.append(_spec(f"solve_wu_{dname}", solve_wu_kernel, sig, cons, cfg.solve, target))

        for vk in (False, True):
            variant = "opt_vk" if vk else "opt"
            for fused in (False, True):
                launch = cfg.fused if fused else cfg.state
                cons = {"K": 128, "V": 128, "BK": BK,
                        "BV": cfg.fused_bv if fused else cfg.state_bv, "BT": CHUNK_SIZE,
                        "STATE_VK": vk, "HAS_H0": True, "STORE_FINAL": True,
                        "FUSE_OUTPUT": fused, "L2NORM": True, "IS_VARLEN": True,
                        "PRECISION": "ieee"}
                sig = {"q": x, "k": x, "w_buf": x, "u_buf": x, "gc_buf": f32, "rq_buf": f32,
                       "rk_buf": f32, "h_out": x,
                       "vnew_out": x, "o": x, "h0": f32, "ht": f32, "cu_seqlens": "*i32",
                       "chunk_offsets": "*i32", "scale": "fp32", "T": "i32", "NT": "i32",
                       "s_qb": "i64", "s_qt": "i64", "s_qh": "i64", **strides_k,
                       "s_ob": "i64", "s_ot": "i64", "s_oh": "i64", **dims}
                sig.update({n: "constexpr" for n in cons})
                kind = "state_output_fused" if fused else "state_recurrence"
                specs.append(_spec(f"{kind}_{variant}_{dname}", state_recurrence_kernel,
                                   sig, cons, launch, target))

            cons = {"K": 128, "V": 128, "BK": BK, "BV": cfg.output_bv, "BT": CHUNK_SIZE, "STATE_VK": vk,
                    "L2NORM": True, "IS_VARLEN": True, "PRECISION": "ieee"}
            sig = {"q": x, "k": x, "vnew_buf": x, "h_buf": x, "gc_buf": f32, "rq_buf": f32,
                   "rk_buf": f32, "o": x,
                   "cu_seqlens": "*i32", "chunk_indices": "*i32", "scale": "fp32",
                   "T": "i32", "NT": "i32", "s_qb": "i64", "s_qt": "i64", "s_qh": "i64",
                   **strides_k, "s_ob": "i64", "s_ot": "i64", "s_oh": "i64", **dims}
            sig.update({n: "constexpr" for n in cons})
            specs.append(_spec(f"output_{variant}_{dname}", output_kernel, sig, cons,
                               cfg.output, target))
    return specs


def _spec(name: str, fn: Any, signature: dict[str, str], constexprs: dict[str, Any],
          launch: Any, target: str) -> dict[str, Any]:
    opts = launch.compile_options(target)
    spec: dict[str, Any] = {"name": name, "fn": fn, "signature": signature,
                            "constexprs": constexprs, "num_warps": opts.pop("num_warps"),
                            "num_stages": opts.pop("num_stages")}
    if opts:
        spec["options"] = opts
    return spec
