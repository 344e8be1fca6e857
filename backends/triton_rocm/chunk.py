"""``chunk_gated_delta_rule`` of the Triton-ROCm backend: the head-major prefill launcher.

Variant choice: the state layout decides it.  ``state_v_first=False`` runs variant ``opt``
(state and per-chunk ``h`` kept ``[K, V]``); ``state_v_first=True`` runs ``opt_vk`` (kept
``[V, K]``, so V-first pools are read and written without a transpose).  Both share the
gate/KKT and solve kernels; they differ in the state recurrence and output kernels
(``STATE_VK``).  The config then picks the split scan (state kernel + output kernel) or the
fused scan (output computed inside the state kernel) from how many (sequence, head) chains
the call has, and the scan's V block from the chains and the device's CUs / SMs
(``PrefillConfig.use_fused`` / ``scan_bv``).  Products of fp32 operands run at the config's
precisions (``PrefillConfig.precisions``).

Intermediates (``A``, ``S``, the inverse blocks, ``w``, ``u``, ``v_new``, ``h``) take the
dtype policy's intermediate dtype (fp16 in -> fp16, bf16 -> bf16 where the device has bf16,
fp32 -> fp32); gate cumsums, betas and inverse norms stay float32.  ``capture_intermediates()``
hands them to a test (it runs the split scan, so ``h`` and ``v_new`` exist).
Variable-length batches need no host synchronisation: the chunk table is built on the device
for an upper bound of ``ceil(T / 64) + N`` chunks (memoised per ``cu_seqlens`` tensor), and
surplus grid slots exit at once.  The first call of a call metadata plans the four launches
(``triton_common.launch.LaunchPlan``: grid, scalars, constexprs, options) and the buffer
shapes into ``meta.scratch``; a repeated call allocates and launches (host time matters at
one 4096-token sequence).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import triton
from gdn_dispatch.backends.triton_common.launch import (
    CachedLauncher,
    LaunchPlan,
    contiguous_strides,
    fast_empty,
)
from gdn_dispatch.backends.triton_common.varlen import memo_by_tensor, slot_chunks

from gdn_dispatch.dtype_policy import policy_for
from gdn_dispatch.registry import CallMeta

from .chunk_head_major import (
    gate_cumsum_kkt_kernel,
    output_kernel,
    solve_wu_kernel,
    state_recurrence_kernel,
)
from .configs import CHUNK_SIZE, KernelLaunch, PrefillConfig, prefill_config

__all__ = ["chunk_gated_delta_rule", "capture_intermediates", "override_config", "chunk_table",
           "prefill_variant"]

_CAPTURE = threading.local()
_OVERRIDE = threading.local()


@contextlib.contextmanager
def override_config(cfg: PrefillConfig) -> Iterator[PrefillConfig]:
    """Within the block, prefill calls in this thread use ``cfg`` instead of the arch table
    (config sweeps in benchmarks)."""
    prev = getattr(_OVERRIDE, "cfg", None)
    _OVERRIDE.cfg = cfg
    try:
        yield cfg
    finally:
        _OVERRIDE.cfg = prev


@contextlib.contextmanager
def capture_intermediates() -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each prefill call in this thread stores its intermediates (and the
    inverse blocks ``Ai``, computed only in this mode) into the yielded dict; such calls run
    the split scan."""
    box: dict[str, torch.Tensor] = {}
    prev = getattr(_CAPTURE, "box", None)
    _CAPTURE.box = box
    try:
        yield box
    finally:
        _CAPTURE.box = prev


def prefill_variant(state_v_first: bool) -> str:
    """``"opt_vk"`` for V-first states, else ``"opt"``."""
    return "opt_vk" if state_v_first else "opt"


def chunk_table(cu_seqlens: torch.Tensor, T: int,
                chunk: int = CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Device-side chunk bookkeeping of a varlen batch, without reading ``cu_seqlens``.

    Returns ``(table [slots, 2] int32: (sequence, chunk in sequence), -1 for surplus slots;
    offsets [N] int32: global index of each sequence's first chunk; slots)``.
    """
    N = cu_seqlens.numel() - 1
    slots = triton.cdiv(T, chunk) + N
    seq, local, valid, starts = slot_chunks(cu_seqlens, slots, chunk)
    table = torch.stack([torch.where(valid, seq, -1), torch.where(valid, local, 0)], 1)
    return table.to(torch.int32).contiguous(), starts.to(torch.int32), slots


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


_TABLES: dict = {}


def _chunk_table_cached(cu_seqlens: torch.Tensor, T: int,
                        chunk: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``chunk_table`` memoised for the same live ``cu_seqlens`` tensor
    (``varlen.memo_by_tensor``; not during CUDA-graph capture)."""
    return memo_by_tensor(_TABLES, cu_seqlens, (T, chunk, cu_seqlens.device),
                          lambda: chunk_table(cu_seqlens, T, chunk))


def _launcher(fn) -> CachedLauncher:
    return CachedLauncher(fn, n_runtime=fn.arg_names.index("K"))


_KKT = _launcher(gate_cumsum_kkt_kernel)
_SOLVE = _launcher(solve_wu_kernel)
_STATE = _launcher(state_recurrence_kernel)
_OUTPUT = _launcher(output_kernel)


def _launch_plan(launcher: CachedLauncher, grid: tuple[int, ...], scalars: tuple,
                 consts: dict, kl: KernelLaunch, probe, device: int) -> LaunchPlan:
    """A ``LaunchPlan``: everything but the pointers fixed (HIP-only options only on HIP)."""
    kw = kl.launch_kwargs(probe)
    nw, ns = kw.pop("num_warps"), kw.pop("num_stages")
    return LaunchPlan(launcher, grid, scalars, launcher.constexpr_tuple(consts), nw, ns,
                      tuple(kw.items()), device=device)


class _Plan:
    """What one call metadata fixes of the four launches: buffer shapes and dtypes, grids,
    scalars, constexprs and launch options.  Holds no tensors and no pointers."""

    __slots__ = ("device", "alloc", "buffers", "varlen", "T", "chunk", "l2norm", "fused",
                 "store_ai", "v_first", "copies", "kkt", "solve", "state", "output", "bv_state",
                 "cfg_name")

    def buffer(self, name: str) -> torch.Tensor:
        shape, strides, dtype = self.buffers[name]
        if self.alloc is not None:
            return self.alloc(shape, strides, dtype)
        return torch.empty(shape, device=self.device, dtype=dtype)


def _plan(q, k, v, g, beta, scale, initial_state, output_final_state, l2norm, beta_sigmoid,
          neg_eigval, v_first, cu_seqlens, gate_in_kernel, A_log, dt_bias, meta: CallMeta,
          cfg: PrefillConfig, store_ai: bool) -> _Plan:
    """Plan a call with ``B * T > 0`` from its metadata (shapes, strides, dtypes, flags)."""
    probe = meta.probe
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    dev = q.device
    device = q.get_device()
    device = device if device >= 0 else 0
    pol = policy_for(v.dtype, probe, meta.state_dtype)
    idt = pol.intermediate
    BT = cfg.chunk_size
    BK, BVfull = _pow2(K), _pow2(V)
    varlen = cu_seqlens is not None
    if varlen:
        N = cu_seqlens.numel() - 1
        slots = triton.cdiv(T, BT) + N
    else:
        N = B
        slots = triton.cdiv(T, BT)
    NT = slots  # per-chunk state slots per (batch row, head)
    prec, solve_prec = cfg.precisions(idt != torch.float32)
    cus = probe.multiprocessors or 1
    chains = N * HV
    fused = not store_ai and cfg.use_fused(chains, V, cus)
    f32 = torch.float32
    p = _Plan()
    p.device, p.varlen, p.T, p.chunk, p.l2norm = dev, varlen, T, BT, l2norm
    p.fused, p.store_ai, p.v_first, p.cfg_name = fused, store_ai, v_first, cfg.name
    p.alloc = fast_empty(dev)
    state_shape = (N, HV, *((V, K) if v_first else (K, V)))
    shapes = {
        "gc": ((B, HV, T), f32), "beta": ((B, HV, T), f32), "A": ((B, HV, T, BT), idt),
        "S": ((B, HV, T, BT), idt), "w": ((B, HV, T, K), idt), "u": ((B, HV, T, V), idt),
        "rq": ((B, H, T), f32), "rk": ((B, H, T), f32),
        "v_new": ((B, HV, T, V), idt), "h": ((B, HV, NT, *((V, K) if v_first else (K, V))), idt),
        "o": ((B, T, HV, V), v.dtype),
        "ht": (state_shape, initial_state.dtype if initial_state is not None else pol.state),
    }
    p.buffers = {name: (shape, contiguous_strides(shape), dtype)
                 for name, (shape, dtype) in shapes.items()}
    p.copies = tuple(t is not None and not t.is_contiguous()
                     for t in (g, beta, A_log, dt_bias, initial_state))
    sk = (k.stride(0), k.stride(1), k.stride(2))
    sv = (v.stride(0), v.stride(1), v.stride(2))
    sq = (q.stride(0), q.stride(1), q.stride(2))
    so = contiguous_strides((B, T, HV, V))[:3]
    p.kkt = _launch_plan(_KKT, (slots * B * H,), (float(scale), T, B, *sq, *sk, H, HV), dict(
        K=K, BK=BK, BT=BT, HAS_G=g is not None, GATE_IN_KERNEL=gate_in_kernel,
        HAS_DT_BIAS=dt_bias is not None, HAS_BETA=beta is not None, BETA_SIGMOID=beta_sigmoid,
        NEG_EIGVAL=neg_eigval and beta_sigmoid, L2NORM=l2norm, IS_VARLEN=varlen,
        PRECISION=prec), cfg.kkt, probe, device)
    p.solve = _launch_plan(_SOLVE, (slots * B * HV,), (T, B, *sk, *sv, H, HV), dict(
        K=K, V=V, BK=BK, BV=BVfull, BT=BT, L2NORM=l2norm, IS_VARLEN=varlen,
        STORE_AI=store_ai, PRECISION=prec, SOLVE_PRECISION=solve_prec), cfg.solve, probe,
        device)
    p.bv_state = bv_state = cfg.scan_bv(fused, V, chains, cus)
    p.state = _launch_plan(
        _STATE, (triton.cdiv(V, bv_state) * chains,), (float(scale), T, NT, *sq, *sk, *so, H, HV),
        dict(K=K, V=V, BK=BK, BV=bv_state, BT=BT, STATE_VK=v_first,
             HAS_H0=initial_state is not None, STORE_FINAL=bool(output_final_state),
             FUSE_OUTPUT=fused, L2NORM=l2norm, IS_VARLEN=varlen, PRECISION=prec),
        cfg.scan_launch(fused, BK, bv_state), probe, device)
    p.output = None
    if not fused:
        bv_out = min(cfg.output_bv, BVfull)
        p.output = _launch_plan(
            _OUTPUT, (triton.cdiv(V, bv_out) * B * HV * slots,),
            (float(scale), T, NT, B, *sq, *so, H, HV),
            dict(K=K, V=V, BK=BK, BV=bv_out, BT=BT, STATE_VK=v_first, L2NORM=l2norm,
                 IS_VARLEN=varlen, PRECISION=prec), cfg.output, probe, device)
    return p


def _execute(p: _Plan, q, k, v, g, beta, initial_state, output_final_state, cu_seqlens,
             A_log, dt_bias, box: dict | None):
    """Allocate the buffers of a planned call and make its launches."""
    cg, cb, ca, cd, ch = p.copies
    if cg:
        g = g.contiguous()
    if cb:
        beta = beta.contiguous()
    if ca:
        A_log = A_log.contiguous()
    if cd:
        dt_bias = dt_bias.contiguous()
    if ch:
        initial_state = initial_state.contiguous()
    if p.varlen:
        table, offsets, _ = _chunk_table_cached(cu_seqlens, p.T, p.chunk)
    buf = p.buffer
    gc = buf("gc")
    beta_eff = buf("beta")
    A = buf("A")
    S = buf("S")
    w = buf("w")
    u = buf("u")
    if p.l2norm:
        rq = buf("rq")
        rk = buf("rk")
    else:
        rq = rk = gc
    if p.fused:
        v_new = h = A  # never touched
    else:
        v_new = buf("v_new")
        h = buf("h")
    if p.store_ai:
        shape, _, dtype = p.buffers["A"]
        Ai = torch.zeros(shape, device=p.device, dtype=dtype)
    else:
        Ai = A
    o = buf("o")
    dummy = gc
    cu_a = cu_seqlens if p.varlen else dummy
    tab_a = table if p.varlen else dummy
    p.kkt.launch(q, k, g if g is not None else dummy, beta if beta is not None else dummy,
                 A_log if A_log is not None else dummy, dt_bias if dt_bias is not None else dummy,
                 gc, beta_eff, A, S, rq, rk, cu_a, tab_a)
    p.solve.launch(k, v, gc, beta_eff, A, rk, w, u, Ai, cu_a, tab_a)
    ht = buf("ht") if output_final_state else None
    p.state.launch(q, k, w, u, S, gc, rq, rk, h, v_new, o,
                   initial_state if initial_state is not None else dummy,
                   ht if ht is not None else dummy, cu_a, offsets if p.varlen else dummy)
    if p.output is not None:
        p.output.launch(q, v_new, h, S, gc, rq, o, cu_a, tab_a)
    if box is not None:
        box.update(gc=gc, beta=beta_eff, A=A, S=S, Ai=Ai, w=w, u=u, v_new=v_new, h=h,
                   variant=prefill_variant(p.v_first), config=p.cfg_name, fused=p.fused,
                   state_bv=p.bv_state)
    return o, ht


_PLAN_KEY = "triton_rocm.chunk_plan"


def _run(q, k, v, g, beta, scale, initial_state, output_final_state, l2norm, beta_sigmoid,
         neg_eigval, v_first, cu_seqlens, gate_in_kernel, A_log, dt_bias, meta: CallMeta,
         cfg: PrefillConfig | None, box: dict | None):
    """One call: the plan kept in ``meta.scratch`` (a config override or an intermediate
    capture plans afresh and keeps nothing), then the launches."""
    B, T = q.shape[0], q.shape[1]
    if B * T == 0:  # nothing to scan: the final state is the initial one
        HV, V, K = v.shape[2], v.shape[3], q.shape[3]
        o = torch.empty(B, T, HV, V, device=q.device, dtype=v.dtype)
        if not output_final_state:
            return o, None
        N = cu_seqlens.numel() - 1 if cu_seqlens is not None else B
        shape = (N, HV, V, K) if v_first else (N, HV, K, V)
        if initial_state is None:
            state = policy_for(v.dtype, meta.probe, meta.state_dtype).state
            return o, torch.zeros(shape, device=q.device, dtype=state)
        return o, initial_state.clone()
    keep = cfg is None and box is None
    plan = meta.scratch.get(_PLAN_KEY) if keep else None
    if plan is None:
        plan = _plan(q, k, v, g, beta, scale, initial_state, output_final_state, l2norm,
                     beta_sigmoid, neg_eigval, v_first, cu_seqlens, gate_in_kernel, A_log,
                     dt_bias, meta, cfg or prefill_config(meta.probe), box is not None)
        if keep:
            meta.scratch[_PLAN_KEY] = plan
    return _execute(plan, q, k, v, g, beta, initial_state, output_final_state, cu_seqlens,
                    A_log, dt_bias, box)


def chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state,
                           use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                           state_v_first, cu_seqlens, use_gate_in_kernel, A_log, dt_bias, *,
                           meta: CallMeta):
    """Backend implementation of op 1 (validated arguments, ``scale`` already a float)."""
    cfg = getattr(_OVERRIDE, "cfg", None)
    box = getattr(_CAPTURE, "box", None)
    return _run(q, k, v, g, beta, scale, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                bool(state_v_first), cu_seqlens, use_gate_in_kernel, A_log, dt_bias, meta, cfg,
                box)
