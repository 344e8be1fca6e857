"""Launcher of the chunked gated delta rule pipeline (three kernels), driven by a config object.

A call's metadata fixes everything but the pointers, so ``plan_chunk_pipeline`` builds a
``ChunkPlan`` (allocation shapes, one ``LaunchPlan`` per kernel) that the backend keeps in
``CallMeta.scratch``; a repeated call allocates its buffers and makes three planned launches.

1. ``chunk_gate_kkt_solve`` (parallel over chunks x value heads): gates and their in-chunk
   cumulative sum, ``K K^T`` and ``(I + A)^-1``, per-token factors.
2. ``chunk_output_operator`` (same grid): ``P (I + A)^-1`` (decay-masked ``q k^T`` times the
   inverse).
3. ``chunk_state_output`` (parallel over value blocks x sequences x value heads): the
   chunk-to-chunk state recurrence fused with the output.

Everything a vendor may want to tune lives in :class:`ChunkConfig`; backends pass one in
(``config_for(arch, K, V)`` gives the defaults).  Varlen chunk bookkeeping is done with torch
ops on the device (no host synchronisation), sized by the bound ``T // 64 + N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .chunk_gate_kkt_solve import NUM_PLANES, chunk_gate_kkt_solve_kernel
from .chunk_output_operator import chunk_output_operator_kernel
from .chunk_state_output import chunk_state_output_kernel, chunk_state_output_vt_kernel
from .launch import CachedLauncher, LaunchPlan, contiguous_strides, fast_empty
from .varlen import memo_by_tensor, slot_chunks

__all__ = ["ChunkConfig", "ChunkPlan", "config_for", "chunk_table", "varlen_tables",
           "plan_chunk_pipeline", "run_chunk_pipeline"]


@dataclass(frozen=True)
class ChunkConfig:
    """Block sizes, warps and stages of the two kernels.

    ``state_bv``: columns of V per state program (None: chosen from the number of chains so
    that at least ``programs_per_sm * SMs`` programs run).  ``solve_precision``: precision of
    the fp32 products of the triangular solve for half inputs ("tf32", "tf32x3" or "ieee").
    ``fp32_precision``: precision of every product for fp32 inputs ("tf32x3": three tf32
    tensor-core products, about fp32 accuracy; "ieee" spills heavily at these tile sizes).
    """

    chunk: int = 64
    intra_warps_small: int = 4      # K <= 128
    intra_warps_large: int = 4      # K == 256
    intra_stages: int = 1
    operator_warps_small: int = 4   # chunk_output_operator, K <= 128
    operator_warps_large: int = 4
    gram_bk_max: int = 128          # K slice of the Gram products in stages 1 and 2
    solve_precision: str = "tf32"
    fp32_precision: str = "tf32x3"
    state_bv: int | None = None
    state_transposed: bool = False  # True: state held as [BV, K] (chunk_state_output_vt_kernel)
    state_bv_max: int = 64
    programs_per_sm: float = 1.5
    state_warps_small: int = 4      # K <= 128 and K * BV <= state_warps_split
    state_warps_large: int = 8
    state_warps_split: int = 128 * 64
    state_stages_small: int = 2     # K <= 128
    state_stages_large: int = 2     # K == 256 (about 175 KB of shared memory at BV = 16)

    def gram_bk(self, K: int) -> int:
        """Width of the K slices of the Gram products (k k^T, q k^T)."""
        return min(K, self.gram_bk_max)

    def operator_warps(self, K: int) -> int:
        return self.operator_warps_small if K <= 128 else self.operator_warps_large

    def intra_warps(self, K: int) -> int:
        return self.intra_warps_small if K <= 128 else self.intra_warps_large

    def state_warps(self, K: int, BV: int) -> int:
        small = K <= 128 and K * BV <= self.state_warps_split
        return self.state_warps_small if small else self.state_warps_large

    def state_stages(self, K: int) -> int:
        return self.state_stages_small if K <= 128 else self.state_stages_large

    def pick_bv(self, V: int, chains: int, sms: int) -> int:
        """Columns of V per state program for ``chains`` independent (sequence, head) chains."""
        if self.state_bv is not None:
            return min(self.state_bv, V)
        cap = min(V, self.state_bv_max)
        want = self.programs_per_sm * max(sms, 1)
        bv = cap
        while bv > 16 and chains * (V // bv) < want:
            bv //= 2
        return bv


# archs without wgmma (operands of mma.sync live in registers) and their shared memory
_AMPERE_LIKE = frozenset({"sm_80", "sm_86", "sm_87", "sm_89", "sm_120", "sm_121"})
_SMEM_99KB = frozenset({"sm_86", "sm_87", "sm_89", "sm_120", "sm_121"})


def config_for(arch: str, K: int, V: int) -> ChunkConfig:
    """Default configuration for an architecture and head dims.

    Tuned on H100 (sm_90, see docs/performance.md); sm_100 shares it except for value blocks
    of at most 32 (untuned there: at 64, ptxas for sm_100 spills 24 B in the K=128, V=64
    state kernel, which the compile check rejects).  Archs without wgmma
    keep matmul operands in registers, so they take narrower K slices and value blocks and
    more warps per state program (no register spills in ``python -m gdn_dispatch compile``);
    the 99 KB shared-memory parts run the state stage single-staged.
    """
    if arch in _AMPERE_LIKE:
        stages = 1 if arch in _SMEM_99KB else 2
        return ChunkConfig(state_bv_max=16 if K > 128 else 32, gram_bk_max=64,
                           state_warps_split=2048, state_stages_small=stages,
                           state_stages_large=1)
    if arch == "sm_100":
        return ChunkConfig(state_bv_max=16 if K > 128 else 32)
    return ChunkConfig(state_bv_max=16 if K > 128 else 64)


_TABLE_CACHE: dict = {}


def varlen_tables(cu_seqlens: torch.Tensor, device: torch.device, total_tokens: int,
                  chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cu_seqlens as int32 on device, chunk_table)``, memoised for the same live tensor
    (``varlen.memo_by_tensor``; not during CUDA-graph capture)."""
    def build() -> tuple[torch.Tensor, torch.Tensor]:
        cu = cu_seqlens.to(device=device, dtype=torch.int32).contiguous()
        return cu, chunk_table(cu, total_tokens, chunk)

    return memo_by_tensor(_TABLE_CACHE, cu_seqlens, (total_tokens, chunk, device), build)


def chunk_table(cu_seqlens: torch.Tensor, total_tokens: int, chunk: int) -> torch.Tensor:
    """``[T // chunk + N, 2]`` int32 rows ``(first token, end token)`` of every chunk.

    Computed on the device of ``cu_seqlens`` without host synchronisation; slots past the
    last chunk are ``(0, 0)`` (their programs store nothing).
    """
    cu = cu_seqlens.to(torch.int64)
    seq, local, valid, _ = slot_chunks(cu, total_tokens // chunk + cu.numel() - 1, chunk)
    first = cu[seq] + local * chunk
    end = torch.minimum(first + chunk, cu[seq + 1])
    zero = torch.zeros_like(first)
    return torch.stack([torch.where(valid, first, zero), torch.where(valid, end, zero)],
                       1).to(torch.int32).contiguous()


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


_KKT = CachedLauncher(chunk_gate_kkt_solve_kernel,
                      n_runtime=chunk_gate_kkt_solve_kernel.arg_names.index("H"))
_OPERATOR = CachedLauncher(chunk_output_operator_kernel,
                           n_runtime=chunk_output_operator_kernel.arg_names.index("H"))
_STATE = CachedLauncher(chunk_state_output_kernel,
                        n_runtime=chunk_state_output_kernel.arg_names.index("H"))
_STATE_VT = CachedLauncher(chunk_state_output_vt_kernel,
                           n_runtime=chunk_state_output_vt_kernel.arg_names.index("H"))


@dataclass
class ChunkPlan:
    """What one call metadata fixes of the pipeline: allocations and the three launches."""

    copy_q: bool
    copy_k: bool
    copy_v: bool
    copy_g: bool
    copy_beta: bool
    copy_h0: bool
    inter_shape: tuple[int, ...]
    inter_strides: tuple[int, ...]
    planes_shape: tuple[int, ...]
    planes_strides: tuple[int, ...]
    inter_dtype: torch.dtype
    o_shape: tuple[int, ...]
    o_dtype: torch.dtype
    o_strides: tuple[int, ...]
    final_strides: tuple[int, ...] | None
    alloc: object         # launch.fast_empty(device): (shape, strides, dtype) -> tensor, or None
    o_like_v: bool        # o may be torch.empty_like(v) (cheapest allocation)
    final_like_h0: bool   # the final state may be torch.empty_like(initial_state)
    final_shape: tuple[int, ...] | None
    final_dtype: torch.dtype | None
    device: torch.device
    chunk: int
    kkt: LaunchPlan | None
    operator: LaunchPlan | None
    state: LaunchPlan


def _needs_copy(t: torch.Tensor | None) -> bool:
    return t is not None and not t.is_contiguous()


def plan_chunk_pipeline(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
    beta: torch.Tensor | None, scale: float, initial_state: torch.Tensor | None,
    output_final_state: bool, l2norm: bool, beta_sigmoid: bool, neg_eigval: bool,
    state_v_first: bool, cu_seqlens: torch.Tensor | None, gate_in_kernel: bool,
    A_log: torch.Tensor | None, dt_bias: torch.Tensor | None, *,
    inter_dtype: torch.dtype, config: ChunkConfig, num_sms: int | None = None,
) -> ChunkPlan:
    """Plan the pipeline for this call's metadata (reads shapes, strides and dtypes only)."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    C = config.chunk
    BT = B * T
    dev = q.device
    varlen = cu_seqlens is not None
    if varlen:
        N = cu_seqlens.shape[0] - 1
        n_slots = BT // C + N
    else:
        N = B
        n_slots = B * triton_cdiv(T, C)
    half = inter_dtype != torch.float32
    dot_prec = "tf32" if half else config.fp32_precision
    device = q.get_device()
    device = device if device >= 0 else 0
    kkt = operator = None
    if n_slots > 0:
        kkt = LaunchPlan(
            _KKT, (n_slots * HV,), (T, BT), _KKT.constexpr_tuple(dict(
                H=H, G=HV // H, K=K, CHUNK=C, BK=config.gram_bk(K), IS_VARLEN=varlen,
                HAS_G=g is not None, HAS_BETA=beta is not None, GATE_IN_KERNEL=gate_in_kernel,
                HAS_DT_BIAS=dt_bias is not None, BETA_SIGMOID=beta_sigmoid,
                NEG_EIGVAL=neg_eigval and beta_sigmoid, L2NORM=l2norm, DOT_PRECISION=dot_prec,
                SOLVE_PRECISION=config.solve_precision if half else config.fp32_precision)),
            config.intra_warps(K), config.intra_stages, device=device)
        operator = LaunchPlan(
            _OPERATOR, (n_slots * HV,), (T, BT, scale), _OPERATOR.constexpr_tuple(dict(
                H=H, G=HV // H, K=K, CHUNK=C, BK=config.gram_bk(K), IS_VARLEN=varlen,
                L2NORM=l2norm, DOT_PRECISION=dot_prec)),
            config.operator_warps(K), 1, device=device)
    final_shape = final_dtype = None
    if output_final_state:
        final_dtype = initial_state.dtype if initial_state is not None else torch.float32
        final_shape = (N, HV, V, K) if state_v_first else (N, HV, K, V)
    sms = num_sms if num_sms is not None else _num_sms(dev)
    BV = config.pick_bv(V, N * HV, sms)
    launcher = _STATE_VT if config.state_transposed else _STATE
    state = LaunchPlan(
        launcher, ((V // BV) * N * HV,), (T, BT), launcher.constexpr_tuple(dict(
            H=H, HV=HV, K=K, V=V, BV=BV, CHUNK=C, IS_VARLEN=varlen,
            HAS_H0=initial_state is not None, STORE_HT=output_final_state,
            STATE_V_FIRST=state_v_first, DOT_PRECISION=dot_prec)),
        config.state_warps(K, BV), config.state_stages(K), device=device)
    return ChunkPlan(
        copy_q=_needs_copy(q), copy_k=_needs_copy(k), copy_v=_needs_copy(v),
        copy_g=_needs_copy(g), copy_beta=_needs_copy(beta), copy_h0=_needs_copy(initial_state),
        inter_shape=(HV, BT, C), inter_strides=(BT * C, C, 1),
        planes_shape=(NUM_PLANES, HV, BT), planes_strides=(HV * BT, BT, 1),
        inter_dtype=inter_dtype,
        o_shape=(B, T, HV, V), o_dtype=v.dtype, o_like_v=v.is_contiguous(),
        o_strides=contiguous_strides((B, T, HV, V)),
        final_strides=contiguous_strides(final_shape) if final_shape is not None else None,
        alloc=fast_empty(dev),
        final_like_h0=(final_shape is not None and initial_state is not None
                       and initial_state.is_contiguous()
                       and tuple(initial_state.shape) == final_shape),
        final_shape=final_shape,
        final_dtype=final_dtype, device=dev, chunk=C, kkt=kkt, operator=operator, state=state)


_PLAN_KEY = "chunk_pipeline"


def run_chunk_pipeline(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
    beta: torch.Tensor | None, scale: float, initial_state: torch.Tensor | None,
    output_final_state: bool, l2norm: bool, beta_sigmoid: bool, neg_eigval: bool,
    state_v_first: bool, cu_seqlens: torch.Tensor | None, gate_in_kernel: bool,
    A_log: torch.Tensor | None, dt_bias: torch.Tensor | None, *,
    inter_dtype: torch.dtype, config: ChunkConfig, num_sms: int | None = None,
    plan_cache: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the three-kernel chunked pipeline; arguments as ``chunk_gated_delta_rule``.

    ``inter_dtype``: dtype of ``Inv``/``PInv`` and of the matmul operands (from the dtype
    policy).  ``plan_cache``: a dict that lives as long as this call metadata (a backend
    passes ``meta.scratch``); the plan is kept there and reused.  Returns
    ``(o, final_state or None)``.
    """
    plan = plan_cache.get(_PLAN_KEY) if plan_cache is not None else None
    if plan is None:
        plan = plan_chunk_pipeline(
            q, k, v, g, beta, scale, initial_state, output_final_state, l2norm, beta_sigmoid,
            neg_eigval, state_v_first, cu_seqlens, gate_in_kernel, A_log, dt_bias,
            inter_dtype=inter_dtype, config=config, num_sms=num_sms)
        if plan_cache is not None:
            plan_cache[_PLAN_KEY] = plan
    if plan.copy_q:
        q = q.contiguous()
    if plan.copy_k:
        k = k.contiguous()
    if plan.copy_v:
        v = v.contiguous()
    if plan.copy_g:
        g = g.contiguous()
    if plan.copy_beta:
        beta = beta.contiguous()
    if plan.copy_h0:
        initial_state = initial_state.contiguous()
    dev = plan.device
    if cu_seqlens is not None:
        cu, table = varlen_tables(cu_seqlens, dev, plan.inter_shape[1], plan.chunk)
    else:
        cu = table = None
    alloc = plan.alloc
    if alloc is not None:
        inv = alloc(plan.inter_shape, plan.inter_strides, plan.inter_dtype)
        pinv = alloc(plan.inter_shape, plan.inter_strides, plan.inter_dtype)
        planes = alloc(plan.planes_shape, plan.planes_strides, torch.float32)
    else:
        inv = torch.empty(plan.inter_shape, device=dev, dtype=plan.inter_dtype)
        pinv = torch.empty_like(inv)
        planes = torch.empty(plan.planes_shape, device=dev, dtype=torch.float32)
    dummy = planes  # absent pointers
    if plan.kkt is not None:
        tab = table if table is not None else dummy
        plan.kkt.launch(k, g if g is not None else dummy, beta if beta is not None else dummy,
                        A_log if A_log is not None else dummy,
                        dt_bias if dt_bias is not None else dummy, tab, inv, planes)
        plan.operator.launch(q, k, inv, tab, pinv, planes)
    final = None
    if alloc is not None:
        o = alloc(plan.o_shape, plan.o_strides, plan.o_dtype)
        if plan.final_shape is not None:
            final = alloc(plan.final_shape, plan.final_strides, plan.final_dtype)
    else:
        o = (torch.empty_like(v) if plan.o_like_v
             else torch.empty(plan.o_shape, device=dev, dtype=plan.o_dtype))
        if plan.final_like_h0:
            final = torch.empty_like(initial_state)
        elif plan.final_shape is not None:
            final = torch.empty(plan.final_shape, device=dev, dtype=plan.final_dtype)
    plan.state.launch(q, k, v, inv, pinv, planes,
                      initial_state if initial_state is not None else dummy,
                      final if final is not None else dummy, o, cu if cu is not None else dummy)
    return o, final


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
