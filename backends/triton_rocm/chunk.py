"""``chunk_gated_delta_rule`` of the Triton-ROCm backend: the head-major prefill launcher.

Variant choice: the state layout decides it.  ``state_v_first=False`` runs variant ``opt``
(state and per-chunk ``h`` kept ``[K, V]``); ``state_v_first=True`` runs ``opt_vk`` (kept
``[V, K]``, so V-first pools are read and written without a transpose).  Both share the
gate/KKT and solve kernels; they differ in the state recurrence and output kernels
(``STATE_VK``).  The config then picks the split scan (state kernel + output kernel) or the
fused scan (output computed inside the state kernel) from how many programs the scan has.

Intermediates (``A``, the inverse blocks, ``w``, ``u``, ``v_new``, ``h``) take the dtype
policy's intermediate dtype (fp16 in -> fp16, bf16 -> bf16 where the device has bf16, fp32 ->
fp32); gate cumsums, betas and inverse norms stay float32.  ``capture_intermediates()``
hands them to a test (it runs the split scan, so ``h`` and ``v_new`` exist).
Variable-length batches need no host synchronisation: the chunk table is built on the device
for an upper bound of ``ceil(T / 64) + N`` chunks, and surplus grid slots exit at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import triton

from gdn_dispatch.dtype_policy import policy_for
from gdn_dispatch.registry import CallMeta

from .chunk_head_major import (
    gate_cumsum_kkt_kernel,
    output_kernel,
    solve_wu_kernel,
    state_recurrence_kernel,
)
from .configs import CHUNK_SIZE, PrefillConfig, prefill_config

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
    cu = cu_seqlens.to(torch.int64)
    N = cu.numel() - 1
    slots = triton.cdiv(T, chunk) + N
    n_chunks = (cu[1:] - cu[:-1] + chunk - 1) // chunk
    ends = torch.cumsum(n_chunks, 0)
    starts = ends - n_chunks
    slot = torch.arange(slots, device=cu.device, dtype=torch.int64)
    seq = torch.searchsorted(ends, slot, right=True)
    valid = seq < N
    seq_c = seq.clamp(max=max(N - 1, 0))
    local = slot - starts[seq_c]
    table = torch.stack([torch.where(valid, seq_c, -1), torch.where(valid, local, 0)], 1)
    return table.to(torch.int32).contiguous(), starts.to(torch.int32), slots


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _run(q, k, v, g, beta, scale, initial_state, output_final_state, l2norm, beta_sigmoid,
         neg_eigval, v_first, cu_seqlens, gate_in_kernel, A_log, dt_bias, meta: CallMeta,
         cfg: PrefillConfig, box: dict | None):
    probe = meta.probe
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    dev = q.device
    pol = policy_for(v.dtype, probe, meta.state_dtype)
    idt = pol.intermediate
    BT = cfg.chunk_size
    BK, BVfull = _pow2(K), _pow2(V)
    varlen = cu_seqlens is not None
    if varlen:
        table, offsets, slots = chunk_table(cu_seqlens, T, BT)
        N = cu_seqlens.numel() - 1
        cu = cu_seqlens
    else:
        slots = triton.cdiv(T, BT)
        N = B
        table = offsets = cu = None
    NT = slots  # per-chunk state slots per (batch row, head)
    if B * T == 0:  # nothing to scan: the final state is the initial one
        o = torch.empty(B, T, HV, V, device=dev, dtype=v.dtype)
        if not output_final_state:
            return o, None
        shape = (N, HV, V, K) if v_first else (N, HV, K, V)
        if initial_state is None:
            return o, torch.zeros(shape, device=dev, dtype=pol.state)
        return o, initial_state.clone()
    prec = "ieee"

    f32 = torch.float32
    gc = torch.empty(B, HV, T, device=dev, dtype=f32)
    beta_eff = torch.empty(B, HV, T, device=dev, dtype=f32)
    A = torch.empty(B, HV, T, BT, device=dev, dtype=idt)
    w = torch.empty(B, HV, T, K, device=dev, dtype=idt)
    u = torch.empty(B, HV, T, V, device=dev, dtype=idt)
    # inverse L2 norms of q and k rows per key head (float32), folded into row scales later
    if l2norm:
        rq = torch.empty(B, H, T, device=dev, dtype=f32)
        rk = torch.empty(B, H, T, device=dev, dtype=f32)
    else:
        rq = rk = torch.empty(1, device=dev, dtype=f32)
    # the unfused scan hands h and v_new to the output kernel; the fused one needs neither
    bv_unfused = min(cfg.state_bv, BVfull)
    fused = box is None and cfg.use_fused(N * HV * triton.cdiv(V, bv_unfused),
                                          probe.multiprocessors)
    if fused:
        v_new = h = torch.empty(1, device=dev, dtype=idt)
    else:
        v_new = torch.empty(B, HV, T, V, device=dev, dtype=idt)
        h = torch.empty(B, HV, NT, *((V, K) if v_first else (K, V)), device=dev, dtype=idt)
    Ai = torch.zeros(B, HV, T, BT, device=dev, dtype=idt) if box is not None else A
    o = torch.empty(B, T, HV, V, device=dev, dtype=v.dtype)

    g_in = g.contiguous() if g is not None else None
    beta_in = beta.contiguous() if beta is not None else None
    a_log = A_log.contiguous() if A_log is not None else None
    dtb = dt_bias.contiguous() if dt_bias is not None else None
    dummy = gc
    sk = (k.stride(0), k.stride(1), k.stride(2))
    sv = (v.stride(0), v.stride(1), v.stride(2))
    sq = (q.stride(0), q.stride(1), q.stride(2))
    so = (o.stride(0), o.stride(1), o.stride(2))

    gate_cumsum_kkt_kernel[(slots, B * HV)](
        q, k, g_in if g_in is not None else dummy, beta_in if beta_in is not None else dummy,
        a_log if a_log is not None else dummy, dtb if dtb is not None else dummy,
        gc, beta_eff, A, rq, rk, cu if varlen else dummy, table if varlen else dummy,
        T, *sq, *sk, H, HV,
        K=K, BK=BK, BT=BT, HAS_G=g is not None, GATE_IN_KERNEL=gate_in_kernel,
        HAS_DT_BIAS=dt_bias is not None, HAS_BETA=beta is not None, BETA_SIGMOID=beta_sigmoid,
        NEG_EIGVAL=neg_eigval and beta_sigmoid, L2NORM=l2norm, IS_VARLEN=varlen,
        PRECISION=prec, **cfg.kkt.launch_kwargs(probe))

    solve_wu_kernel[(slots, B * HV)](
        k, v, gc, beta_eff, A, rk, w, u, Ai, cu if varlen else dummy, table if varlen else dummy,
        T, *sk, *sv, H, HV,
        K=K, V=V, BK=BK, BV=BVfull, BT=BT, L2NORM=l2norm, IS_VARLEN=varlen,
        STORE_AI=box is not None, PRECISION=prec, **cfg.solve.launch_kwargs(probe))

    h0 = None
    if initial_state is not None:
        h0 = initial_state if initial_state.is_contiguous() else initial_state.contiguous()
    ht = None
    if output_final_state:
        st_dtype = initial_state.dtype if initial_state is not None else pol.state
        ht = torch.empty(N, HV, *((V, K) if v_first else (K, V)), device=dev, dtype=st_dtype)
    bv_state = min(cfg.fused_bv, BVfull) if fused else bv_unfused
    state_launch = cfg.fused if fused else cfg.state
    state_recurrence_kernel[(triton.cdiv(V, bv_state), N * HV)](
        q, k, w, u, gc, rq, rk, h, v_new, o, h0 if h0 is not None else dummy,
        ht if ht is not None else dummy, cu if varlen else dummy,
        offsets if varlen else dummy, float(scale), T, NT, *sq, *sk, *so, H, HV,
        K=K, V=V, BK=BK, BV=bv_state, BT=BT, STATE_VK=v_first, HAS_H0=h0 is not None,
        STORE_FINAL=ht is not None, FUSE_OUTPUT=fused, L2NORM=l2norm, IS_VARLEN=varlen,
        PRECISION=prec, **state_launch.launch_kwargs(probe))

    if not fused:
        bv_out = min(cfg.output_bv, BVfull)
        output_kernel[(triton.cdiv(V, bv_out), slots, B * HV)](
            q, k, v_new, h, gc, rq, rk, o, cu if varlen else dummy, table if varlen else dummy,
            float(scale), T, NT, *sq, *sk, *so, H, HV,
            K=K, V=V, BK=BK, BV=bv_out, BT=BT, STATE_VK=v_first, L2NORM=l2norm,
            IS_VARLEN=varlen, PRECISION=prec, **cfg.output.launch_kwargs(probe))

    if box is not None:
        box.update(gc=gc, beta=beta_eff, A=A, Ai=Ai, w=w, u=u, v_new=v_new, h=h,
                   variant=prefill_variant(v_first), config=cfg.name, fused=fused)
    return o, ht


def chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state,
                           use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                           state_v_first, cu_seqlens, use_gate_in_kernel, A_log, dt_bias, *,
                           meta: CallMeta):
    """Backend implementation of op 1 (validated arguments, ``scale`` already a float)."""
    cfg = getattr(_OVERRIDE, "cfg", None) or prefill_config(meta.probe)
    box = getattr(_CAPTURE, "box", None)
    return _run(q, k, v, g, beta, scale, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                bool(state_v_first), cu_seqlens, use_gate_in_kernel, A_log, dt_bias, meta, cfg,
                box)
