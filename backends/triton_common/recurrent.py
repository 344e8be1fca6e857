"""Token-by-token gated delta rule kernel family (decode, spec decode, short sequences).

One Triton kernel, ``gated_delta_recurrent_kernel``, serves ``fused_recurrent_gated_delta_rule``
(plain, varlen, pools, speculative decoding), ``fused_sigmoid_gating_delta_rule_update`` and
the packed decode op; constexpr modes pick the gating, the beta activation, where the
starting state comes from and where states go.  Vendors differ only in the
``RecurrentConfig`` they pass to ``launch_recurrent``.

Work split: one program per (sequence, value head, BV-slice of V).  It owns the full K extent
of that slice, so every state element is read once and written once:

- K-first state ``[K, V]``: a ``[BK, BV]`` tile, rows of BV contiguous elements (V-contiguous
  loads), reductions over K (axis 0);
- V-first state ``[V, K]``: a ``[BV, BK]`` tile, BV rows of K contiguous elements.

The program id runs over V-slices fastest, so neighbouring programs stream one head's state
contiguously.  Both reductions of a step (``k @ S`` and ``q @ S``) read the state before the
update: ``q @ S_new = alpha * (q @ S) + (q . k) * u``, which shortens the dependency chain.

Packed tiles (``RecurrentConfig.packed``, for 16-bit states): the tile stays in the state
dtype in registers instead of float32 (half the registers per element).  A one-token
sequence widens each element where it is used: one two-operand reduction gives ``k @ S``
and ``q @ S``, and the new state is formed right before its store, so no float32 copy of
the tile is ever live.  Other lengths (spec decode, short prefill) run the token loop on
float32 slices of ``sub_bv`` columns, re-read one after the other; zero tokens pass the
state through.  Which one runs is decided per sequence in the kernel (no host sync).

Two-pass K-first tiles (``RecurrentConfig.chunk_k``): a one-token sequence reads its
``[K, BV]`` tile twice instead of holding it -- chunks of ``chunk_k`` rows for ``k @ S`` and
``q @ S`` (loads kept in L2 for the second read), then the same chunks again for the new
state.  Nothing bounds the tile by registers, so a program can own 128-byte row pieces (BV =
64 for 16-bit states); 64-byte pieces cap a K-first program near 0.86 of copy bandwidth on
H100, whatever it computes.  Other lengths run the float32 slices of the packed mode.

Safety: any pool index outside ``[0, slots)`` makes its sequence padding (outputs zero,
nothing read or written); indices are read in the kernel, so nothing syncs the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from .aot_util import TRITON_TY, divisibility_attrs, vendor_configs
from .launch import CachedLauncher, LaunchPlan

__all__ = [
    "RecurrentConfig", "GATE_NONE", "GATE_LOG", "GATE_RAW", "BETA_ONE", "BETA_GIVEN",
    "BETA_SIGMOID", "IDX_NONE", "IDX_POOL", "IDX_SPEC", "DST_NONE", "DST_NEW", "DST_INPLACE",
    "DST_SPEC_INPLACE", "DST_PER_TOKEN", "gated_delta_recurrent_kernel", "launch_recurrent",
    "plan_recurrent",
    "aot_specs",
]

# gate modes: g absent / g already log-space / g raw (g = -exp(A_log) * softplus(g + dt_bias))
GATE_NONE, GATE_LOG, GATE_RAW = 0, 1, 2
# beta modes: beta = 1 / beta given / beta = sigmoid(raw) (times 2 with NEG_EIGVAL)
BETA_ONE, BETA_GIVEN, BETA_SIGMOID = 0, 1, 2
# where the start state comes from: row n of h_src / pool[idx[n]] / pool[idx[n, nat[n] - 1]]
IDX_NONE, IDX_POOL, IDX_SPEC = 0, 1, 2
# where states go: nowhere / new [N, ...] / back to the start row / pool[idx[n, t]] per token /
# new [B*T, ...] per token
DST_NONE, DST_NEW, DST_INPLACE, DST_SPEC_INPLACE, DST_PER_TOKEN = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class RecurrentConfig:
    """Launch choices of the recurrent kernel; ``options`` holds vendor-only launch options
    (e.g. ``(("waves_per_eu", 2),)`` on HIP), passed through untouched."""

    BV: int
    num_warps: int
    num_stages: int = 1
    tiles: int = 1  # work items per program; the next item's state loads during this one
    options: tuple[tuple[str, Any], ...] = ()
    # keep the state tile in the state dtype in registers (16-bit states: half the registers
    # of a float32 tile); a one-token sequence widens each element where it is used, longer
    # ones run float32 slices of ``sub_bv`` columns (0: BV // 2) one after the other
    packed: bool = False
    sub_bv: int = 0
    # eviction policy of the state loads and stores ("" / "evict_first" / "evict_last")
    evict: str = ""
    # K-first states only: read the [K, BV] tile twice instead of holding it (0: hold it).  A
    # one-token sequence first streams chunks of ``chunk_k`` rows to form k.S and q.S, then
    # reads them again (from L1/L2: the first reads use ``chunk_evict``) to store the new
    # state.  Registers no longer bound the tile, so a program can own 128-byte row pieces
    # (BV = 64 for 16-bit states); other lengths run the float32 slices of ``sub_bv``
    chunk_k: int = 0
    chunk_evict: str = "evict_last"

    def slice_bv(self, bv: int) -> int:
        """Columns per float32 slice of a packed or two-pass tile of ``bv`` columns (``bv``
        when the tile is held unpacked)."""
        if not (self.packed or self.chunk_k):
            return bv
        return max(1, min(bv, self.sub_bv or bv // 2))


@triton.jit
def _item_start(item, idx, num_accepted, slots, idx_cols, s_idx0, s_idx1, HV: tl.constexpr,
                NV: tl.constexpr, IDX_MODE: tl.constexpr, HAS_NAT: tl.constexpr):
    """Coordinates of one work item and the pool row it starts from (0 when padding)."""
    i_v = item % NV
    i_nh = item // NV
    i_n = (i_nh // HV).to(tl.int64)
    i_hv = i_nh % HV
    if IDX_MODE == 0:
        src_row = i_n
        valid = i_n >= 0
    elif IDX_MODE == 1:
        src_row = tl.load(idx + i_n * s_idx0).to(tl.int64)
        valid = (src_row >= 0) & (src_row < slots)
    else:
        if HAS_NAT:
            j = tl.load(num_accepted + i_n).to(tl.int64) - 1
        else:
            j = i_n * 0
        j = tl.minimum(tl.maximum(j, 0), idx_cols - 1)
        src_row = tl.load(idx + i_n * s_idx0 + j * s_idx1).to(tl.int64)
        valid = (src_row >= 0) & (src_row < slots)
    src_row = tl.where(valid, src_row, 0)
    return i_v, i_n, i_hv, src_row, valid


@triton.jit
def _state_tile(i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                STATE_V_FIRST: tl.constexpr):
    """Element offsets and mask of one program's state tile inside a [K, V] / [V, K] head."""
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    if STATE_V_FIRST:
        tile = o_v[:, None] * K + o_k[None, :]
        mask = (o_v < V)[:, None] & (o_k < K)[None, :]
    else:
        tile = o_k[:, None] * V + o_v[None, :]
        mask = (o_k < K)[:, None] & (o_v < V)[None, :]
    return tile, mask


@triton.jit
def _widen(x):
    """``x`` as float32.  bf16 widens by a shift of its bits: a different op from ``.to``, so
    the compiler does not merge it with an earlier conversion of the same tile (which would
    keep a float32 copy of the whole tile live between the two uses)."""
    if x.dtype == tl.bfloat16:
        y = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def _add2(a0, a1, b0, b1):
    return a0 + b0, a1 + b1


@triton.jit
def _token_inputs(p_q, p_k, p_v, p_g, p_beta, o_k, o_v, mask_k, mask_v, b_A, b_bias,
                  softplus_beta, softplus_threshold, L2NORM: tl.constexpr,
                  GATE_MODE: tl.constexpr, HAS_DT_BIAS: tl.constexpr, BETA_MODE: tl.constexpr,
                  NEG_EIGVAL: tl.constexpr):
    """q, k (l2-normalised if asked), v, beta and the decay alpha of one token."""
    b_q = tl.load(p_q + o_k, mask=mask_k, other=0).to(tl.float32)
    b_k = tl.load(p_k + o_k, mask=mask_k, other=0).to(tl.float32)
    b_v = tl.load(p_v + o_v, mask=mask_v, other=0).to(tl.float32)
    if L2NORM:
        b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + 1e-6)
        b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
    b_beta, b_alpha = _token_gates(p_g, p_beta, b_A, b_bias, softplus_beta, softplus_threshold,
                                   GATE_MODE, HAS_DT_BIAS, BETA_MODE, NEG_EIGVAL)
    return b_q, b_k, b_v, b_beta, b_alpha


@triton.jit
def _token_gates(p_g, p_beta, b_A, b_bias, softplus_beta, softplus_threshold,
                 GATE_MODE: tl.constexpr, HAS_DT_BIAS: tl.constexpr, BETA_MODE: tl.constexpr,
                 NEG_EIGVAL: tl.constexpr):
    """beta and the decay alpha of one token."""
    if BETA_MODE == 0:
        b_beta = 1.0
    elif BETA_MODE == 1:
        b_beta = tl.load(p_beta).to(tl.float32)
    else:
        b_beta = tl.sigmoid(tl.load(p_beta).to(tl.float32))
        if NEG_EIGVAL:
            b_beta = b_beta * 2.0
    if GATE_MODE != 0:
        b_g = tl.load(p_g).to(tl.float32)
        if GATE_MODE == 2:
            if HAS_DT_BIAS:
                b_g = b_g + b_bias
            b_x = b_g * softplus_beta
            b_sp = tl.where(b_x <= softplus_threshold,
                            tl.log(1.0 + tl.exp(b_x)) / softplus_beta, b_g)
            b_g = -b_A * b_sp
        b_alpha = tl.exp(b_g)
    else:
        b_alpha = 1.0
    return b_beta, b_alpha


@triton.jit
def _token_state_store(b_h, h_dst, idx, t, i_n, tok0, valid, head_off, tile, mask_h, slots,
                       idx_cols, s_dst, s_idx0, s_idx1, DST_MODE: tl.constexpr,
                       EVICT: tl.constexpr):
    """The state after token ``t`` where per-token modes put it (DST_SPEC_INPLACE,
    DST_PER_TOKEN); nothing otherwise."""
    if DST_MODE == 3:
        col_ok = t < idx_cols
        d_row = tl.load(idx + i_n * s_idx0 + t * s_idx1, mask=col_ok, other=-1).to(tl.int64)
        d_ok = valid & (d_row >= 0) & (d_row < slots)
        d_row = tl.where(d_ok, d_row, 0)
        tl.store(h_dst + d_row * s_dst + head_off + tile, b_h.to(h_dst.dtype.element_ty),
                 mask=tl.where(d_ok, mask_h, False), eviction_policy=EVICT)
    if DST_MODE == 4:  # only with IDX_SPEC
        b_keep = tl.where(valid, b_h, 0.0)
        tl.store(h_dst + (tok0 + t) * s_dst + head_off + tile,
                 b_keep.to(h_dst.dtype.element_ty), mask=mask_h, eviction_policy=EVICT)


@triton.jit
def _final_state_store(b_h, h_dst, i_n, src_row, valid, head_off, tile, mask_h, s_dst,
                       IDX_MODE: tl.constexpr, DST_MODE: tl.constexpr, EVICT: tl.constexpr):
    """The final state where DST_NEW / DST_INPLACE put it; nothing otherwise."""
    if DST_MODE == 1:
        if IDX_MODE != 0:
            b_h = tl.where(valid, b_h, 0.0)
        tl.store(h_dst + i_n * s_dst + head_off + tile, b_h.to(h_dst.dtype.element_ty),
                 mask=mask_h, eviction_policy=EVICT)
    if DST_MODE == 2:
        tl.store(h_dst + src_row * s_dst + head_off + tile, b_h.to(h_dst.dtype.element_ty),
                 mask=tl.where(valid, mask_h, False), eviction_policy=EVICT)


@triton.jit
def _run_tokens(b_h, p_q, p_k, p_v, p_g, p_beta, p_o, h_dst, idx, o_k, o_v, mask_k, mask_v,
                tile, mask_h, valid, seq_len, i_n, tok0, src_row, head_off, b_A, b_bias,
                scale, softplus_beta, softplus_threshold, slots, idx_cols,
                s_qt, s_kt, s_vt, s_gt, s_bt, s_ot, s_dst, s_idx0, s_idx1,
                STATE_V_FIRST: tl.constexpr, L2NORM: tl.constexpr, GATE_MODE: tl.constexpr,
                HAS_DT_BIAS: tl.constexpr, BETA_MODE: tl.constexpr, NEG_EIGVAL: tl.constexpr,
                IDX_MODE: tl.constexpr, DST_MODE: tl.constexpr, EVICT: tl.constexpr):
    """``seq_len`` tokens of one sequence on a float32 state tile ``b_h`` (columns ``o_v``),
    then the final state to its destination."""
    for t in range(0, seq_len):
        b_q, b_k, b_v, b_beta, b_alpha = _token_inputs(
            p_q, p_k, p_v, p_g, p_beta, o_k, o_v, mask_k, mask_v, b_A, b_bias, softplus_beta,
            softplus_threshold, L2NORM, GATE_MODE, HAS_DT_BIAS, BETA_MODE, NEG_EIGVAL)
        # both reductions read the state before the update
        if STATE_V_FIRST:
            b_kS = tl.sum(b_h * b_k[None, :], 1)
            b_qS = tl.sum(b_h * b_q[None, :], 1)
        else:
            b_kS = tl.sum(b_h * b_k[:, None], 0)
            b_qS = tl.sum(b_h * b_q[:, None], 0)
        b_qk = tl.sum(b_q * b_k)
        if GATE_MODE != 0:
            b_kS = b_kS * b_alpha
            b_qS = b_qS * b_alpha
        b_u = b_beta * (b_v - b_kS)
        b_o = scale * (b_qS + b_qk * b_u)
        if IDX_MODE != 0:
            b_o = tl.where(valid, b_o, 0.0)
        tl.store(p_o + o_v, b_o.to(p_o.dtype.element_ty), mask=mask_v)
        if GATE_MODE != 0:
            b_h = b_h * b_alpha
        if STATE_V_FIRST:
            b_h = b_h + b_u[:, None] * b_k[None, :]
        else:
            b_h = b_h + b_k[:, None] * b_u[None, :]
        _token_state_store(b_h, h_dst, idx, t, i_n, tok0, valid, head_off, tile, mask_h, slots,
                           idx_cols, s_dst, s_idx0, s_idx1, DST_MODE, EVICT)
        p_q += s_qt
        p_k += s_kt
        p_v += s_vt
        if GATE_MODE != 0:
            p_g += s_gt
        if BETA_MODE != 0:
            p_beta += s_bt
        p_o += s_ot
    _final_state_store(b_h, h_dst, i_n, src_row, valid, head_off, tile, mask_h, s_dst,
                       IDX_MODE, DST_MODE, EVICT)


@triton.jit
def _packed_item(raw, q, k, v, g, beta, o, h_src, h_dst, idx, b_A, b_bias, scale,
                 softplus_beta, softplus_threshold, slots, idx_cols, row, bos, seq_len, i_n,
                 i_h, i_hv, i_v, tok0, src_row, valid, tile, mask_h, k_off, v_off,
                 s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_gb, s_gt, s_bb, s_bt,
                 s_ob, s_ot, s_oh, s_src, s_dst, s_idx0, s_idx1, K: tl.constexpr,
                 V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, SBV: tl.constexpr,
                 STATE_V_FIRST: tl.constexpr, L2NORM: tl.constexpr, GATE_MODE: tl.constexpr,
                 HAS_DT_BIAS: tl.constexpr, BETA_MODE: tl.constexpr, NEG_EIGVAL: tl.constexpr,
                 IDX_MODE: tl.constexpr, HAS_H0: tl.constexpr, DST_MODE: tl.constexpr,
                 EVICT: tl.constexpr, CHUNK_K: tl.constexpr, KEEP_EVICT: tl.constexpr):
    """One work item with the state tile ``raw`` held in the state dtype (config ``packed``),
    or not held at all (``CHUNK_K > 0``: a one-token sequence reads the tile twice, see
    ``_two_pass_token``; ``raw`` is unused).

    A one-token sequence (decode) widens each element where it is used: one two-operand
    reduction gives k.S and q.S, and the new state is formed right before its store, so no
    float32 copy of the tile is ever live.  Zero tokens: the state passes through.  Longer
    sequences run the token loop on float32 slices of SBV columns, one after the other
    (re-read from h_src).
    """
    head_off = i_hv * (K * V)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    mask_k = o_k < K
    mask_v = o_v < V
    p_q = q + row * s_qb + bos * s_qt + i_h * s_qh
    p_k = k + k_off + row * s_kb + bos * s_kt + i_h * s_kh
    p_v = v + v_off + row * s_vb + bos * s_vt + i_hv * s_vh
    if GATE_MODE != 0:
        p_g = g + row * s_gb + bos * s_gt + i_hv
    else:
        p_g = g
    if BETA_MODE != 0:
        p_beta = beta + row * s_bb + bos * s_bt + i_hv
    else:
        p_beta = beta
    p_o = o + row * s_ob + bos * s_ot + i_hv * s_oh
    if CHUNK_K > 0:
        if seq_len == 1:
            _two_pass_token(p_q, p_k, p_v, p_g, p_beta, p_o, h_src, h_dst, idx, i_v, valid, i_n,
                            tok0, src_row, head_off, b_A, b_bias, scale, softplus_beta,
                            softplus_threshold, slots, idx_cols, s_src, s_dst, s_idx0, s_idx1,
                            K, V, BK, BV, CHUNK_K, L2NORM, GATE_MODE, HAS_DT_BIAS, BETA_MODE,
                            NEG_EIGVAL, IDX_MODE, HAS_H0, DST_MODE, EVICT, KEEP_EVICT)
        else:  # no token (pass-through) or several: float32 slices
            _slices_item(p_q, p_k, p_v, p_g, p_beta, p_o, h_src, h_dst, idx, o_k, mask_k, i_v,
                         valid, seq_len, i_n, tok0, src_row, head_off, b_A, b_bias, scale,
                         softplus_beta, softplus_threshold, slots, idx_cols, s_qt, s_kt, s_vt,
                         s_gt, s_bt, s_ot, s_src, s_dst, s_idx0, s_idx1, K, V, BK, BV, SBV,
                         STATE_V_FIRST, L2NORM, GATE_MODE, HAS_DT_BIAS, BETA_MODE, NEG_EIGVAL,
                         IDX_MODE, HAS_H0, DST_MODE, EVICT)
    elif seq_len == 1:
        b_q, b_k, b_v, b_beta, b_alpha = _token_inputs(
            p_q, p_k, p_v, p_g, p_beta, o_k, o_v, mask_k, mask_v, b_A, b_bias, softplus_beta,
            softplus_threshold, L2NORM, GATE_MODE, HAS_DT_BIAS, BETA_MODE, NEG_EIGVAL)
        if HAS_H0:
            # one reduction of two operands: each widened element feeds both sums and dies
            # (two reductions keep a float32 copy of the whole tile live between them)
            b_hf = raw.to(tl.float32)
            if STATE_V_FIRST:
                b_kS, b_qS = tl.reduce((b_hf * b_k[None, :], b_hf * b_q[None, :]), 1, _add2)
            else:
                b_kS, b_qS = tl.reduce((b_hf * b_k[:, None], b_hf * b_q[:, None]), 0, _add2)
        else:
            b_kS = tl.zeros([BV], dtype=tl.float32)
            b_qS = tl.zeros([BV], dtype=tl.float32)
        b_qk = tl.sum(b_q * b_k)
        if GATE_MODE != 0:
            b_kS = b_kS * b_alpha
            b_qS = b_qS * b_alpha
        b_u = b_beta * (b_v - b_kS)
        b_o = scale * (b_qS + b_qk * b_u)
        if IDX_MODE != 0:
            b_o = tl.where(valid, b_o, 0.0)
        tl.store(p_o + o_v, b_o.to(p_o.dtype.element_ty), mask=mask_v)
        # the new state, formed right before its store from the tile in its own dtype
        if STATE_V_FIRST:
            b_new = b_u[:, None] * b_k[None, :]
        else:
            b_new = b_k[:, None] * b_u[None, :]
        if HAS_H0:
            if GATE_MODE != 0:
                b_new = _widen(raw) * b_alpha + b_new
            else:
                b_new = _widen(raw) + b_new
        _token_state_store(b_new, h_dst, idx, 0, i_n, tok0, valid, head_off, tile, mask_h,
                           slots, idx_cols, s_dst, s_idx0, s_idx1, DST_MODE, EVICT)
        _final_state_store(b_new, h_dst, i_n, src_row, valid, head_off, tile, mask_h, s_dst,
                           IDX_MODE, DST_MODE, EVICT)
    elif seq_len <= 0:
        # no token: the state passes through (this use also keeps the tile load ahead of the
        # branch: with one use the compiler sinks it behind the cu_seqlens load)
        if HAS_H0:
            b_same = raw.to(tl.float32)
        elif STATE_V_FIRST:
            b_same = tl.zeros([BV, BK], dtype=tl.float32)
        else:
            b_same = tl.zeros([BK, BV], dtype=tl.float32)
        _final_state_store(b_same, h_dst, i_n, src_row, valid, head_off, tile, mask_h, s_dst,
                           IDX_MODE, DST_MODE, EVICT)
    else:
        _slices_item(p_q, p_k, p_v, p_g, p_beta, p_o, h_src, h_dst, idx, o_k, mask_k, i_v,
                     valid, seq_len, i_n, tok0, src_row, head_off, b_A, b_bias, scale,
                     softplus_beta, softplus_threshold, slots, idx_cols, s_qt, s_kt, s_vt,
                     s_gt, s_bt, s_ot, s_src, s_dst, s_idx0, s_idx1, K, V, BK, BV, SBV,
                     STATE_V_FIRST, L2NORM, GATE_MODE, HAS_DT_BIAS, BETA_MODE, NEG_EIGVAL,
                     IDX_MODE, HAS_H0, DST_MODE, EVICT)


@triton.jit
def _two_pass_token(p_q, p_k, p_v, p_g, p_beta, p_o, h_src, h_dst, idx, i_v, valid, i_n, tok0,
                    src_row, head_off, b_A, b_bias, scale, softplus_beta, softplus_threshold,
                    slots, idx_cols, s_src, s_dst, s_idx0, s_idx1, K: tl.constexpr,
                    V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, CK: tl.constexpr,
                    L2NORM: tl.constexpr, GATE_MODE: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
                    BETA_MODE: tl.constexpr, NEG_EIGVAL: tl.constexpr, IDX_MODE: tl.constexpr,
                    HAS_H0: tl.constexpr, DST_MODE: tl.constexpr, EVICT: tl.constexpr,
                    KEEP_EVICT: tl.constexpr):
    """One token of a K-first work item whose [K, BV] tile is read twice, never held.

    Pass 1 streams chunks of CK rows (all issued at once: the loop is unrolled) and
    accumulates k.S and q.S elementwise, reduced once at the end; pass 2 reads the chunks
    again (L1 or L2 hits: pass 1 loads with KEEP_EVICT) and stores the new state.  q and k
    rows of a chunk are re-read from memory (L1) and scaled by their l2-norm factors.
    """
    o_k = tl.arange(0, BK)
    mask_k = o_k < K
    o_v = i_v * BV + tl.arange(0, BV)
    mask_v = o_v < V
    b_q = tl.load(p_q + o_k, mask=mask_k, other=0).to(tl.float32)
    b_k = tl.load(p_k + o_k, mask=mask_k, other=0).to(tl.float32)
    b_v = tl.load(p_v + o_v, mask=mask_v, other=0).to(tl.float32)
    if L2NORM:
        r_q = tl.rsqrt(tl.sum(b_q * b_q) + 1e-6)
        r_k = tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
    else:
        r_q = 1.0
        r_k = 1.0
    b_qk = tl.sum(b_q * b_k) * (r_q * r_k)
    b_beta, b_alpha = _token_gates(p_g, p_beta, b_A, b_bias, softplus_beta, softplus_threshold,
                                   GATE_MODE, HAS_DT_BIAS, BETA_MODE, NEG_EIGVAL)
    if HAS_H0:
        src = h_src + src_row * s_src + head_off
        acc_k = tl.zeros([CK, BV], dtype=tl.float32)
        acc_q = tl.zeros([CK, BV], dtype=tl.float32)
        for c in tl.static_range(BK // CK):
            rows = c * CK + tl.arange(0, CK)
            m_r = rows < K
            b_h = tl.load(src + rows[:, None] * V + o_v[None, :],
                          mask=tl.where(valid, m_r[:, None] & mask_v[None, :], False), other=0,
                          eviction_policy=KEEP_EVICT).to(tl.float32)
            k_c = tl.load(p_k + rows, mask=m_r, other=0).to(tl.float32)
            q_c = tl.load(p_q + rows, mask=m_r, other=0).to(tl.float32)
            acc_k += b_h * k_c[:, None]
            acc_q += b_h * q_c[:, None]
        b_kS = tl.sum(acc_k, 0) * r_k
        b_qS = tl.sum(acc_q, 0) * r_q
        if GATE_MODE != 0:
            b_kS = b_kS * b_alpha
            b_qS = b_qS * b_alpha
    else:
        b_kS = tl.zeros([BV], dtype=tl.float32)
        b_qS = tl.zeros([BV], dtype=tl.float32)
    b_u = b_beta * (b_v - b_kS)
    b_o = scale * (b_qS + b_qk * b_u)
    if IDX_MODE != 0:
        b_o = tl.where(valid, b_o, 0.0)
    tl.store(p_o + o_v, b_o.to(p_o.dtype.element_ty), mask=mask_v)
    b_ku = b_u * r_k
    for c in tl.range(0, BK // CK):
        rows = c * CK + tl.arange(0, CK)
        m_r = rows < K
        c_tile = rows[:, None] * V + o_v[None, :]
        c_mask = m_r[:, None] & mask_v[None, :]
        k_c = tl.load(p_k + rows, mask=m_r, other=0).to(tl.float32)
        b_new = k_c[:, None] * b_ku[None, :]
        if HAS_H0:
            b_h = tl.load(h_src + src_row * s_src + head_off + c_tile, mask=tl.where(valid, c_mask, False), other=0,
                          eviction_policy="evict_first").to(tl.float32)
            if GATE_MODE != 0:
                b_new = b_h * b_alpha + b_new
            else:
                b_new = b_h + b_new
        _token_state_store(b_new, h_dst, idx, 0, i_n, tok0, valid, head_off, c_tile, c_mask,
                           slots, idx_cols, s_dst, s_idx0, s_idx1, DST_MODE, EVICT)
        _final_state_store(b_new, h_dst, i_n, src_row, valid, head_off, c_tile, c_mask, s_dst,
                           IDX_MODE, DST_MODE, EVICT)


@triton.jit
def _slices_item(p_q, p_k, p_v, p_g, p_beta, p_o, h_src, h_dst, idx, o_k, mask_k, i_v, valid,
                 seq_len, i_n, tok0, src_row, head_off, b_A, b_bias, scale, softplus_beta,
                 softplus_threshold, slots, idx_cols, s_qt, s_kt, s_vt, s_gt, s_bt, s_ot,
                 s_src, s_dst, s_idx0, s_idx1, K: tl.constexpr, V: tl.constexpr,
                 BK: tl.constexpr, BV: tl.constexpr, SBV: tl.constexpr,
                 STATE_V_FIRST: tl.constexpr, L2NORM: tl.constexpr, GATE_MODE: tl.constexpr,
                 HAS_DT_BIAS: tl.constexpr, BETA_MODE: tl.constexpr, NEG_EIGVAL: tl.constexpr,
                 IDX_MODE: tl.constexpr, HAS_H0: tl.constexpr, DST_MODE: tl.constexpr,
                 EVICT: tl.constexpr):
    """``seq_len`` tokens of one work item on float32 slices of SBV columns, one after the
    other, each read from ``h_src`` (a tile that is not held in registers as a whole)."""
    for s in tl.static_range(BV // SBV):
        s_tile, s_mask = _state_tile(i_v * (BV // SBV) + s, K, V, BK, SBV, STATE_V_FIRST)
        s_v = (i_v * (BV // SBV) + s) * SBV + tl.arange(0, SBV)
        if HAS_H0:
            b_h = tl.load(h_src + src_row * s_src + head_off + s_tile,
                          mask=tl.where(valid, s_mask, False), other=0).to(tl.float32)
        elif STATE_V_FIRST:
            b_h = tl.zeros([SBV, BK], dtype=tl.float32)
        else:
            b_h = tl.zeros([BK, SBV], dtype=tl.float32)
        _run_tokens(b_h, p_q, p_k, p_v, p_g, p_beta, p_o, h_dst, idx, o_k, s_v, mask_k,
                    s_v < V, s_tile, s_mask, valid, seq_len, i_n, tok0, src_row, head_off,
                    b_A, b_bias, scale, softplus_beta, softplus_threshold, slots, idx_cols,
                    s_qt, s_kt, s_vt, s_gt, s_bt, s_ot, s_dst, s_idx0, s_idx1,
                    STATE_V_FIRST, L2NORM, GATE_MODE, HAS_DT_BIAS, BETA_MODE, NEG_EIGVAL,
                    IDX_MODE, DST_MODE, EVICT)


@triton.jit(do_not_specialize=["slots", "idx_cols"])
def gated_delta_recurrent_kernel(
    q, k, v, g, beta, A_log, dt_bias, o, h_src, h_dst, cu_seqlens, idx, num_accepted,
    scale, softplus_beta, softplus_threshold, T, slots, idx_cols, k_off, v_off,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh,
    s_gb, s_gt, s_bb, s_bt, s_ob, s_ot, s_oh, s_src, s_dst, s_idx0, s_idx1,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, TILES: tl.constexpr,
    STATE_V_FIRST: tl.constexpr, L2NORM: tl.constexpr, GATE_MODE: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, BETA_MODE: tl.constexpr, NEG_EIGVAL: tl.constexpr,
    IS_VARLEN: tl.constexpr, IDX_MODE: tl.constexpr, HAS_NAT: tl.constexpr,
    HAS_H0: tl.constexpr, DST_MODE: tl.constexpr,
    PACKED: tl.constexpr = False, SBV: tl.constexpr = 0, EVICT: tl.constexpr = "",
    CHUNK_K: tl.constexpr = 0, KEEP_EVICT: tl.constexpr = "",
):
    NV: tl.constexpr = (V + BV - 1) // BV
    first = tl.program_id(0) * TILES
    i_v, i_n, i_hv, src_row, valid = _item_start(first, idx, num_accepted, slots, idx_cols,
                                                 s_idx0, s_idx1, HV, NV, IDX_MODE, HAS_NAT)
    tile, mask_h = _state_tile(i_v, K, V, BK, BV, STATE_V_FIRST)
    HOLD: tl.constexpr = HAS_H0 and CHUNK_K == 0  # the tile is loaded up front and held
    if HOLD:
        h_raw = tl.load(h_src + src_row * s_src + i_hv * (K * V) + tile,
                        mask=tl.where(valid, mask_h, False), other=0, eviction_policy=EVICT)
    for j in tl.static_range(TILES):
        # -- this item's state (loaded one item ahead) -------------------------------------
        if PACKED or CHUNK_K > 0:
            if HOLD:
                cur_raw = h_raw  # stays in the state dtype
            else:
                cur_raw = 0.0
        elif HAS_H0:
            b_h = h_raw.to(tl.float32)
        else:
            if STATE_V_FIRST:
                b_h = tl.zeros([BV, BK], dtype=tl.float32)
            else:
                b_h = tl.zeros([BK, BV], dtype=tl.float32)
        # -- prefetch the next item's state while this one computes -------------------------
        if j + 1 < TILES:
            n_v, n_n, n_hv, n_row, n_valid = _item_start(
                first + j + 1, idx, num_accepted, slots, idx_cols, s_idx0, s_idx1, HV, NV,
                IDX_MODE, HAS_NAT)
            n_tile, n_mask = _state_tile(n_v, K, V, BK, BV, STATE_V_FIRST)
            if HOLD:
                h_raw = tl.load(h_src + n_row * s_src + n_hv * (K * V) + n_tile,
                                mask=tl.where(n_valid, n_mask, False), other=0,
                                eviction_policy=EVICT)

        # -- the recurrence of this item -------------------------------------------------------
        i_h = i_hv // (HV // H)
        head_off = i_hv * (K * V)
        o_k = tl.arange(0, BK)
        o_v = i_v * BV + tl.arange(0, BV)
        mask_k = o_k < K
        mask_v = o_v < V
        if IS_VARLEN:
            bos = tl.load(cu_seqlens + i_n).to(tl.int64)
            seq_len = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
            row = i_n * 0
            tok0 = bos
        else:
            bos = i_n * 0
            seq_len = T
            row = i_n
            tok0 = i_n * T
        if GATE_MODE == 2:
            b_A = tl.exp(tl.load(A_log + i_hv).to(tl.float32))
            if HAS_DT_BIAS:
                b_bias = tl.load(dt_bias + i_hv).to(tl.float32)
        if PACKED or CHUNK_K > 0:
            _packed_item(cur_raw, q, k, v, g, beta, o, h_src, h_dst, idx, b_A if GATE_MODE == 2
                         else 0.0, b_bias if GATE_MODE == 2 and HAS_DT_BIAS else 0.0,
                         scale, softplus_beta, softplus_threshold, slots, idx_cols,
                         row, bos, seq_len, i_n, i_h, i_hv, i_v, tok0, src_row, valid, tile,
                         mask_h, k_off, v_off, s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt,
                         s_vh, s_gb, s_gt, s_bb, s_bt, s_ob, s_ot, s_oh, s_src, s_dst, s_idx0,
                         s_idx1, K, V, BK, BV, SBV, STATE_V_FIRST, L2NORM, GATE_MODE,
                         HAS_DT_BIAS, BETA_MODE, NEG_EIGVAL, IDX_MODE, HAS_H0, DST_MODE, EVICT,
                         CHUNK_K, KEEP_EVICT)
        else:
            # The same token loop as ``_run_tokens``, kept inline: routing it through the
            # helper reorders the generated code of the measured fp32 / unpacked kernels
            # (PTX differs on 36 of 72 specs); merge once a GPU run can re-measure them.
            # The gates come from ``_token_gates`` (compiled code identical to the inline
            # copy it replaced: sm_80, sm_90 PTX and gfx942 asm, debug info stripped).
            p_q = q + row * s_qb + bos * s_qt + i_h * s_qh + o_k
            p_k = k + k_off + row * s_kb + bos * s_kt + i_h * s_kh + o_k
            p_v = v + v_off + row * s_vb + bos * s_vt + i_hv * s_vh + o_v
            p_g = g + row * s_gb + bos * s_gt + i_hv if GATE_MODE != 0 else g
            p_beta = beta + row * s_bb + bos * s_bt + i_hv if BETA_MODE != 0 else beta
            p_o = o + row * s_ob + bos * s_ot + i_hv * s_oh + o_v

            for t in range(0, seq_len):
                b_q = tl.load(p_q, mask=mask_k, other=0).to(tl.float32)
                b_k = tl.load(p_k, mask=mask_k, other=0).to(tl.float32)
                b_v = tl.load(p_v, mask=mask_v, other=0).to(tl.float32)
                if L2NORM:
                    b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + 1e-6)
                    b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
                # both reductions read the state before the update
                if STATE_V_FIRST:
                    b_kS = tl.sum(b_h * b_k[None, :], 1)
                    b_qS = tl.sum(b_h * b_q[None, :], 1)
                else:
                    b_kS = tl.sum(b_h * b_k[:, None], 0)
                    b_qS = tl.sum(b_h * b_q[:, None], 0)
                b_qk = tl.sum(b_q * b_k)
                b_beta, b_alpha = _token_gates(
                    p_g, p_beta, b_A if GATE_MODE == 2 else 0.0,
                    b_bias if GATE_MODE == 2 and HAS_DT_BIAS else 0.0, softplus_beta,
                    softplus_threshold, GATE_MODE, HAS_DT_BIAS, BETA_MODE, NEG_EIGVAL)
                if GATE_MODE != 0:
                    b_kS = b_kS * b_alpha
                    b_qS = b_qS * b_alpha
                b_u = b_beta * (b_v - b_kS)
                b_o = scale * (b_qS + b_qk * b_u)
                if IDX_MODE != 0:
                    b_o = tl.where(valid, b_o, 0.0)
                tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=mask_v)
                if GATE_MODE != 0:
                    if STATE_V_FIRST:
                        b_h = b_h * b_alpha + b_u[:, None] * b_k[None, :]
                    else:
                        b_h = b_h * b_alpha + b_k[:, None] * b_u[None, :]
                else:
                    if STATE_V_FIRST:
                        b_h = b_h + b_u[:, None] * b_k[None, :]
                    else:
                        b_h = b_h + b_k[:, None] * b_u[None, :]
                _token_state_store(b_h, h_dst, idx, t, i_n, tok0, valid, head_off, tile,
                                   mask_h, slots, idx_cols, s_dst, s_idx0, s_idx1, DST_MODE,
                                   EVICT)

                p_q += s_qt
                p_k += s_kt
                p_v += s_vt
                if GATE_MODE != 0:
                    p_g += s_gt
                if BETA_MODE != 0:
                    p_beta += s_bt
                p_o += s_ot

            _final_state_store(b_h, h_dst, i_n, src_row, valid, head_off, tile, mask_h, s_dst,
                               IDX_MODE, DST_MODE, EVICT)

        if j + 1 < TILES:
            i_v, i_n, i_hv, src_row, valid = n_v, n_n, n_hv, n_row, n_valid
            tile, mask_h = n_tile, n_mask


_LAUNCHER = CachedLauncher(gated_delta_recurrent_kernel,
                           n_runtime=gated_delta_recurrent_kernel.arg_names.index("H"))


def plan_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, *,
    config: RecurrentConfig, N: int, T: int, H: int, HV: int, K: int, V: int, scale: float,
    q_strides: tuple[int, int, int], k_strides: tuple[int, int, int],
    v_strides: tuple[int, int, int], o_strides: tuple[int, int, int],
    k_off: int = 0, v_off: int = 0,
    g: torch.Tensor | None = None, gate_mode: int = GATE_NONE,
    A_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
    softplus_beta: float = 1.0, softplus_threshold: float = 20.0,
    beta: torch.Tensor | None = None, beta_mode: int = BETA_ONE, neg_eigval: bool = False,
    l2norm: bool = False, state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    h_src: torch.Tensor | None = None, h_dst: torch.Tensor | None = None,
    idx: torch.Tensor | None = None, idx_mode: int = IDX_NONE,
    num_accepted: torch.Tensor | None = None, dst_mode: int = DST_NONE,
) -> LaunchPlan | None:
    """A reusable launch of ``gated_delta_recurrent_kernel`` (None when there is no work).

    Arguments as ``launch_recurrent``; the tensors are read for metadata only (shapes,
    strides, which are None).  Launch with ``plan.launch(q, k, v, g, beta, A_log, dt_bias,
    o, h_src, h_dst, cu_seqlens, idx, num_accepted)`` -- tensors with the same metadata and
    None in the same places (A_log/dt_bias None unless ``gate_mode == GATE_RAW``).
    """
    if N == 0:
        return None
    BK = _pow2(K)
    BV = min(config.BV, _pow2(V))
    SBV = config.slice_bv(BV)
    CK = 0 if state_v_first or not config.chunk_k else min(config.chunk_k, BK)
    items = N * HV * ((V + BV - 1) // BV)
    tiles = config.tiles if not CK else 1
    while tiles > 1 and items % tiles:
        tiles //= 2
    if g is None:
        s_gb = s_gt = 0
    elif g.dim() == 2:
        s_gt = g.stride(0)
        s_gb = T * s_gt
    else:
        s_gb, s_gt = g.stride(0), g.stride(1)
    if beta is None:
        s_bb = s_bt = 0
    elif beta.dim() == 2:
        s_bt = beta.stride(0)
        s_bb = T * s_bt
    else:
        s_bb, s_bt = beta.stride(0), beta.stride(1)
    if idx is not None:
        if idx.dim() == 2:
            s_idx0, s_idx1 = idx.stride()
            idx_cols = idx.shape[1]
        else:
            s_idx0, s_idx1, idx_cols = idx.stride(0), 0, 1
    else:
        s_idx0 = s_idx1 = 0
        idx_cols = 1
    if h_src is not None:
        slots, s_src = h_src.shape[0], h_src.stride(0)
    else:
        slots, s_src = N, 0
    device = q.get_device()
    return LaunchPlan(
        _LAUNCHER, (items // tiles,),
        (scale, softplus_beta, softplus_threshold, T, slots, idx_cols, k_off, v_off,
         q_strides[0], q_strides[1], q_strides[2], k_strides[0], k_strides[1], k_strides[2],
         v_strides[0], v_strides[1], v_strides[2], s_gb, s_gt, s_bb, s_bt,
         o_strides[0], o_strides[1], o_strides[2], s_src,
         h_dst.stride(0) if h_dst is not None else 0, s_idx0, s_idx1),
        (H, HV, K, V, BK, BV, tiles, state_v_first, l2norm, gate_mode, dt_bias is not None,
         beta_mode, neg_eigval, cu_seqlens is not None, idx_mode, num_accepted is not None,
         h_src is not None, dst_mode, config.packed, SBV, config.evict, CK,
         config.chunk_evict if CK else ""),
        config.num_warps, config.num_stages, config.options, device if device >= 0 else 0)


def launch_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, *,
    config: RecurrentConfig, N: int, T: int, H: int, HV: int, K: int, V: int, scale: float,
    q_strides: tuple[int, int, int], k_strides: tuple[int, int, int],
    v_strides: tuple[int, int, int], o_strides: tuple[int, int, int],
    k_off: int = 0, v_off: int = 0,
    g: torch.Tensor | None = None, gate_mode: int = GATE_NONE,
    A_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
    softplus_beta: float = 1.0, softplus_threshold: float = 20.0,
    beta: torch.Tensor | None = None, beta_mode: int = BETA_ONE, neg_eigval: bool = False,
    l2norm: bool = False, state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    h_src: torch.Tensor | None = None, h_dst: torch.Tensor | None = None,
    idx: torch.Tensor | None = None, idx_mode: int = IDX_NONE,
    num_accepted: torch.Tensor | None = None, dst_mode: int = DST_NONE,
) -> None:
    """Launch ``gated_delta_recurrent_kernel`` (no allocation, no host sync).

    ``q_strides`` etc. are (batch, token, head) strides in elements; ``k_off``/``v_off`` are
    element offsets of k and v from their base pointers (packed projections pass one tensor
    three times).  ``g``/``beta`` may be ``[B, T, HV]`` or ``[B*T, HV]``.  ``h_src`` is the
    initial state or pool (rows along dim 0), ``h_dst`` where states go (see DST_*).
    Callers that repeat a launch keep a ``plan_recurrent`` instead (cheaper per call).
    """
    plan = plan_recurrent(
        q, k, v, o, config=config, N=N, T=T, H=H, HV=HV, K=K, V=V, scale=scale,
        q_strides=q_strides, k_strides=k_strides, v_strides=v_strides, o_strides=o_strides,
        k_off=k_off, v_off=v_off, g=g, gate_mode=gate_mode, A_log=A_log, dt_bias=dt_bias,
        softplus_beta=softplus_beta, softplus_threshold=softplus_threshold, beta=beta,
        beta_mode=beta_mode, neg_eigval=neg_eigval, l2norm=l2norm, state_v_first=state_v_first,
        cu_seqlens=cu_seqlens, h_src=h_src, h_dst=h_dst, idx=idx, idx_mode=idx_mode,
        num_accepted=num_accepted, dst_mode=dst_mode)
    if plan is None:
        return
    _LAUNCHER.launch(plan.grid, (q, k, v, g, beta, A_log, dt_bias, o, h_src, h_dst, cu_seqlens,
                                 idx, num_accepted, *plan.scalars),
                     plan.constexprs, plan.num_warps, plan.num_stages, plan.options)


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


# -- AOT description ------------------------------------------------------------------------
_INT_ARGS = ("T", "slots", "idx_cols", "k_off", "v_off", "s_qb", "s_qt", "s_qh", "s_kb", "s_kt",
             "s_kh", "s_vb", "s_vt", "s_vh", "s_gb", "s_gt", "s_bb", "s_bt", "s_ob", "s_ot",
             "s_oh", "s_src", "s_dst", "s_idx0", "s_idx1")


def recurrent_aot_spec(*, io_dtype: torch.dtype, state_dtype: torch.dtype, config: RecurrentConfig,
                       H: int, HV: int, K: int, V: int, state_v_first: bool, variant: str,
                       gate_dtype: torch.dtype = torch.float32, tag: str = "") -> dict[str, Any]:
    """One AOT compile description of the recurrent kernel.

    ``variant``: "fused_recurrent" (g log-space, beta given, initial state in, new final state
    out), "pool_decode" (varlen, pool [N] in place, gating and beta sigmoid in kernel, l2norm:
    op 2 as engines call it and op 3), "packed_decode" (op 4) or "spec_decode" (as
    "pool_decode" with a pool [N, T] and ``num_accepted_tokens``: a state stored per token).
    ``tag``: appended to the name (to tell configs of one variant apart).
    """
    io, st = "*" + TRITON_TY[io_dtype], "*" + TRITON_TY[state_dtype]
    sig: dict[str, str] = {name: io for name in ("q", "k", "v", "o")}
    const: dict[str, Any] = {}
    spec = variant == "spec_decode"
    pool = variant in ("pool_decode", "packed_decode", "spec_decode")
    sig["g"] = "*" + TRITON_TY[gate_dtype if variant == "fused_recurrent" else io_dtype]
    sig["beta"] = io
    if pool:
        sig["A_log"] = "*fp32"
        sig["dt_bias"] = "*fp32"
    else:
        const["A_log"] = const["dt_bias"] = None
    sig["h_src"] = st
    sig["h_dst"] = st
    if variant in ("pool_decode", "spec_decode"):
        sig["cu_seqlens"] = "*i32"
    else:
        const["cu_seqlens"] = None
    if pool:
        sig["idx"] = "*i32"
    else:
        const["idx"] = None
    if spec:
        sig["num_accepted"] = "*i32"
    else:
        const["num_accepted"] = None
    for name in ("scale", "softplus_beta", "softplus_threshold"):
        sig[name] = "fp32"
    for name in _INT_ARGS:
        sig[name] = "i32"
    const.update(H=H, HV=HV, K=K, V=V, BK=triton.next_power_of_2(K),
                 BV=min(config.BV, triton.next_power_of_2(V)), TILES=config.tiles,
                 STATE_V_FIRST=state_v_first,
                 L2NORM=pool, GATE_MODE=GATE_RAW if pool else GATE_LOG, HAS_DT_BIAS=pool,
                 BETA_MODE=BETA_SIGMOID if pool else BETA_GIVEN, NEG_EIGVAL=False,
                 IS_VARLEN=variant in ("pool_decode", "spec_decode"),
                 IDX_MODE=IDX_SPEC if spec else IDX_POOL if pool else IDX_NONE,
                 HAS_NAT=spec, HAS_H0=True,
                 DST_MODE=DST_SPEC_INPLACE if spec else DST_INPLACE if pool else DST_NEW,
                 PACKED=config.packed,
                 SBV=config.slice_bv(min(config.BV, triton.next_power_of_2(V))),
                 EVICT=config.evict, CHUNK_K=0, KEEP_EVICT="")
    if config.chunk_k and not state_v_first:
        const.update(CHUNK_K=min(config.chunk_k, triton.next_power_of_2(K)),
                     KEEP_EVICT=config.chunk_evict, TILES=1)
    fn = gated_delta_recurrent_kernel
    ordered = {name: ("constexpr" if name in const else sig[name]) for name in fn.arg_names}
    layout = "vk" if state_v_first else "kv"
    # what the JIT would see for Qwen3-Next tensors: 16-byte aligned pointers, strides % 16
    aligned = [name for name, ty in ordered.items()
               if ty.startswith("*") or (ty == "i32" and name.startswith("s_")
                                         and not name.startswith("s_idx"))
               or name in ("k_off", "v_off")]
    return {
        "name": f"gated_delta_recurrent_{variant}_{layout}_{TRITON_TY[io_dtype]}_state{TRITON_TY[state_dtype]}"
                f"_K{K}_V{V}_HV{HV}_H{H}{tag}",
        "kernel": fn,
        "signature": ordered,
        "constexprs": const,
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
        "options": dict(config.options),
        "divisible_by_16": aligned,
        "attrs": divisibility_attrs(fn, aligned),
    }


def aot_specs(arch: str) -> list[dict[str, Any]]:
    """AOT compile descriptions of the recurrent kernels served on ``arch`` ("sm_90", ...).

    Each dict: ``name``, ``kernel`` (the JITFunction), ``signature`` (every argument name in
    order -> Triton type string, "constexpr" for compile-time ones), ``constexprs`` (name ->
    value, None for absent pointers), ``num_warps``, ``num_stages``, ``options`` (extra
    backend options), ``divisible_by_16`` (argument names the JIT would mark 16-divisible
    for these shapes) and ``attrs`` (the same as ``ASTSource`` attrs).  Compile with
    ``triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget(...),
    options={"num_warps": ..., "num_stages": ..., **options})``.  Covers Qwen3-Next shapes
    (K = V = 128, H = 16, HV = 32) for every config the vendor's table picks: the large-batch
    one with bf16 and fp16 inputs, each other batch bucket's (and the multi-token ones) where
    it differs, with bf16 inputs, in the variants that can run it.
    """
    config_for = getattr(vendor_configs(arch), "recurrent_config_for_arch", None)
    if config_for is None:
        return []
    out = []
    one_token = ("fused_recurrent", "pool_decode", "packed_decode")
    for v_first in (False, True):
        for state_dtype in (torch.float32, torch.bfloat16):
            large = config_for(arch, v_first, state_dtype, 128, 128, 1 << 20)
            try:  # one token per sequence with per-token stores (spec pool, T = 1)
                spec_large = config_for(arch, v_first, state_dtype, 128, 128, 1 << 20,
                                        per_token_states=True)
            except TypeError:  # a vendor table without a store-mode argument
                spec_large = large
            # (config, input dtype, variants, name tag); the spec-decode state modes too, so
            # every vendor's targets compile them
            wanted = [(large, torch.bfloat16, one_token, ""), (large, torch.float16, one_token, ""),
                      (spec_large, torch.bfloat16, ("spec_decode",), "")]
            # one-token buckets: 1, 132, 1056 heads (tiny / small / medium on 132 SMs)
            wanted += [(config_for(arch, v_first, state_dtype, 128, 128, n), torch.bfloat16,
                        one_token, f"_n{n}") for n in (1, 132, 1056)]
            for n in (1, 1 << 20):  # several tokens per sequence, both state-store modes
                for per_token in (False, True):
                    try:
                        cfg = config_for(arch, v_first, state_dtype, 128, 128, n,
                                         tokens_per_seq=2, per_token_states=per_token)
                    except TypeError:  # a vendor table without multi-token entries
                        continue
                    wanted.append((cfg, torch.bfloat16, ("spec_decode",) if per_token
                                   else ("fused_recurrent", "pool_decode"),
                                   f"_multi_n{n}" + ("_per_token" if per_token else "")))
            seen: set = set()
            for cfg, io_dtype, variants, tag in wanted:
                for variant in variants:
                    if (cfg, io_dtype, variant) in seen:
                        continue
                    seen.add((cfg, io_dtype, variant))
                    out.append(recurrent_aot_spec(io_dtype=io_dtype, state_dtype=state_dtype,
                                                  config=cfg, H=16, HV=32, K=128, V=128,
                                                  state_v_first=v_first, variant=variant,
                                                  tag=tag))
    return out
