"""Decode-side ops (2-7) of the Triton-ROCm backend: the shared ``triton_common`` kernels run
with this backend's wave64-aware configs (``configs.recurrent_config`` etc.; HIP-only options
only when the probe's target is HIP).

Each function is the implementation the registry calls after validation (the op's
parameters in API order plus ``meta``); it allocates outputs, maps the call's state handling
onto the recurrent kernel's modes and launches: no validation, no host syncs, no copies.
"""

from __future__ import annotations

import torch
from gdn_dispatch.backends.triton_common import recurrent as rec
from gdn_dispatch.backends.triton_common.gating import launch_gdn_gating, launch_l2norm
from gdn_dispatch.backends.triton_common.split import launch_split

from gdn_dispatch.dtype_policy import policy_for
from gdn_dispatch.registry import CallMeta

from .configs import gating_config, l2norm_config, recurrent_config, split_config

__all__ = ["fused_recurrent_gated_delta_rule", "fused_sigmoid_gating_delta_rule_update",
           "fused_recurrent_gated_delta_rule_packed_decode", "fused_gdn_gating",
           "fused_qkvzba_split_reshape_cat", "l2norm"]


def _hip(meta: CallMeta) -> bool:
    return meta.probe.triton_target == "hip"


def _new_state(rows: int, meta: CallMeta, v_first: bool, like: torch.Tensor) -> torch.Tensor:
    dtype = policy_for(meta.dtype, meta.probe, meta.state_dtype).state
    shape = (rows, meta.HV, meta.V, meta.K) if v_first else (rows, meta.HV, meta.K, meta.V)
    return torch.empty(shape, dtype=dtype, device=like.device)


def _state_plan(initial_state, idx, output_final_state, inplace, rows_new, rows_per_token,
                meta, v_first, like):
    """(index mode, destination mode, destination tensor) of op 2's state handling."""
    if idx is None or idx.dim() == 1:
        idx_mode = rec.IDX_NONE if idx is None else rec.IDX_POOL
        if inplace:
            return idx_mode, rec.DST_INPLACE, initial_state
        if output_final_state:
            return idx_mode, rec.DST_NEW, _new_state(rows_new, meta, v_first, like)
        return idx_mode, rec.DST_NONE, None
    if inplace:
        return rec.IDX_SPEC, rec.DST_SPEC_INPLACE, initial_state
    # speculative decoding without in-place: the pool is untouched, every token's state kept
    return rec.IDX_SPEC, rec.DST_PER_TOKEN, _new_state(rows_per_token, meta, v_first, like)


def fused_recurrent_gated_delta_rule(
    q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
    use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel, allow_neg_eigval,
    state_v_first, cu_seqlens, ssm_state_indices, num_accepted_tokens, inplace_final_state,
    *, meta: CallMeta,
):
    """Op 2; see ``gdn_dispatch.fused_recurrent_gated_delta_rule``."""
    B, T, H, K = q.shape
    HV, V = meta.HV, meta.V
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    o = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    idx_mode, dst_mode, h_dst = _state_plan(initial_state, ssm_state_indices,
                                            output_final_state, inplace_final_state, N, B * T,
                                            meta, state_v_first, v)
    if g is None:
        gate_mode = rec.GATE_NONE
    else:
        gate_mode = rec.GATE_RAW if use_gate_in_kernel else rec.GATE_LOG
    if beta is None:
        beta_mode = rec.BETA_ONE
    else:
        beta_mode = rec.BETA_SIGMOID if use_beta_sigmoid_in_kernel else rec.BETA_GIVEN
    cfg = recurrent_config(meta.probe, state_v_first, meta.state_dtype or torch.float32, K, V,
                           N * HV)
    rec.launch_recurrent(
        q, k, v, o, config=cfg, N=N, T=T, H=H, HV=HV, K=K, V=V, scale=scale,
        q_strides=q.stride()[:3], k_strides=k.stride()[:3], v_strides=v.stride()[:3],
        o_strides=o.stride()[:3], g=g, gate_mode=gate_mode,
        A_log=A_log if use_gate_in_kernel else None,
        dt_bias=dt_bias if use_gate_in_kernel else None, beta=beta, beta_mode=beta_mode,
        neg_eigval=bool(allow_neg_eigval and use_beta_sigmoid_in_kernel),
        l2norm=bool(use_qk_l2norm_in_kernel), state_v_first=bool(state_v_first),
        cu_seqlens=cu_seqlens, h_src=initial_state, h_dst=h_dst, idx=ssm_state_indices,
        idx_mode=idx_mode, num_accepted=num_accepted_tokens, dst_mode=dst_mode)
    return o, h_dst


def fused_sigmoid_gating_delta_rule_update(
    A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k, v, b, initial_state_source,
    initial_state_indices, scale, use_qk_l2norm_in_kernel, cu_seqlens, state_v_first,
    *, meta: CallMeta,
):
    """Op 3: gating and beta sigmoid in the kernel, pool updated in place; returns ``o``."""
    B, T, H, K = q.shape
    HV, V = meta.HV, meta.V
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    o = torch.empty((B, T, HV, V), dtype=v.dtype, device=v.device)
    cfg = recurrent_config(meta.probe, state_v_first, initial_state_source.dtype, K, V, N * HV)
    rec.launch_recurrent(
        q, k, v, o, config=cfg, N=N, T=T, H=H, HV=HV, K=K, V=V, scale=scale,
        q_strides=q.stride()[:3], k_strides=k.stride()[:3], v_strides=v.stride()[:3],
        o_strides=o.stride()[:3], g=a, gate_mode=rec.GATE_RAW, A_log=A_log, dt_bias=dt_bias,
        softplus_beta=float(softplus_beta), softplus_threshold=float(softplus_threshold),
        beta=b, beta_mode=rec.BETA_SIGMOID, l2norm=bool(use_qk_l2norm_in_kernel),
        state_v_first=bool(state_v_first), cu_seqlens=cu_seqlens,
        h_src=initial_state_source, h_dst=initial_state_source, idx=initial_state_indices,
        idx_mode=rec.IDX_POOL, dst_mode=rec.DST_INPLACE)
    return o


def fused_recurrent_gated_delta_rule_packed_decode(
    mixed_qkv, a, b, A_log, dt_bias, scale, initial_state, out, ssm_state_indices,
    use_qk_l2norm_in_kernel, state_v_first, *, meta: CallMeta,
):
    """Op 4: q, k, v read in place from the packed rows; ``out`` and the pool written."""
    H, K, HV, V = meta.H, meta.K, meta.HV, meta.V
    N = mixed_qkv.shape[0]
    s_row = mixed_qkv.stride(0)
    cfg = recurrent_config(meta.probe, state_v_first, initial_state.dtype, K, V, N * HV)
    rec.launch_recurrent(
        mixed_qkv, mixed_qkv, mixed_qkv, out, config=cfg, N=N, T=1, H=H, HV=HV, K=K, V=V,
        scale=scale, q_strides=(s_row, 0, K), k_strides=(s_row, 0, K), v_strides=(s_row, 0, V),
        o_strides=out.stride()[:3], k_off=H * K, v_off=2 * H * K, g=a, gate_mode=rec.GATE_RAW,
        A_log=A_log, dt_bias=dt_bias, beta=b, beta_mode=rec.BETA_SIGMOID,
        l2norm=bool(use_qk_l2norm_in_kernel), state_v_first=bool(state_v_first),
        h_src=initial_state, h_dst=initial_state, idx=ssm_state_indices,
        idx_mode=rec.IDX_POOL, dst_mode=rec.DST_INPLACE)
    return out, initial_state


def fused_gdn_gating(A_log, a, b, dt_bias, beta, threshold, *, meta: CallMeta):
    """Op 5: ``g`` float32 ``[1, N, HV]`` and ``beta_output`` ``[1, N, HV]`` in b's dtype."""
    N, HV = a.shape
    g = torch.empty((1, N, HV), dtype=torch.float32, device=a.device)
    beta_out = torch.empty((1, N, HV), dtype=b.dtype, device=b.device)
    launch_gdn_gating(A_log, a, b, dt_bias, g, beta_out, beta, threshold,
                      config=gating_config(meta.probe.arch, _hip(meta)))
    return g, beta_out


def fused_qkvzba_split_reshape_cat(mixed_qkvz, mixed_ba, num_heads_qk, num_heads_v, head_qk,
                                   head_v, layout, *, meta: CallMeta):
    """Op 6: one kernel launch, outputs new contiguous tensors."""
    N = mixed_qkvz.shape[0]
    dev, dt = mixed_qkvz.device, mixed_qkvz.dtype
    qkv = torch.empty((N, 2 * num_heads_qk * head_qk + num_heads_v * head_v), dtype=dt,
                      device=dev)
    z = torch.empty((N, num_heads_v, head_v), dtype=dt, device=dev)
    b = torch.empty((N, num_heads_v), dtype=mixed_ba.dtype, device=dev)
    a = torch.empty((N, num_heads_v), dtype=mixed_ba.dtype, device=dev)
    launch_split(mixed_qkvz, mixed_ba, qkv, z, b, a, num_heads_qk, num_heads_v, head_qk, head_v,
                 layout, config=split_config(meta.probe.arch, _hip(meta)))
    return qkv, z, b, a


def l2norm(x, eps, *, meta: CallMeta):
    """Op 7: float32 math, a new contiguous tensor in x's dtype."""
    D = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.dim() == 1:
        x2d = x.unsqueeze(0)
    else:
        try:
            x2d = x.view(-1, D)
        except RuntimeError:  # leading dims not mergeable: one copy
            x2d = x.reshape(-1, D)
    launch_l2norm(x2d, y, eps, config=l2norm_config(meta.probe.arch, D, _hip(meta)))
    return y
