"""Decode-side ops (2-7 of API.md) over the ``triton_common`` launchers, shared by the Triton
backends.

A backend binds one ``DecodeOps`` to its config choices (``DecodeConfigs``) and exposes the
bound methods as its module-level op functions.  Each method is the implementation the
registry calls after validation: all of the op's parameters in API order plus ``meta``.  It
only allocates outputs, picks a config and calls a launcher: no validation, no host syncs, no
copies of strided inputs, so every op can be captured in a CUDA graph.

Ops 2-4 plan their launch on the first call of a call metadata and keep the plan in
``meta.scratch`` (one CallMeta per distinct call metadata and backend, see
``gdn_dispatch.registry.CallMeta``).  A plan holds what the metadata determines: output
shapes/dtypes, which tensors go where, and a ``LaunchPlan`` (grid, strides, config,
constexprs, compiled kernels per pointer alignment).  Never tensor data or pointers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from gdn_dispatch.backends.triton_common import recurrent as rec
from gdn_dispatch.backends.triton_common.gating import RowConfig, launch_gdn_gating, launch_l2norm
from gdn_dispatch.backends.triton_common.launch import fast_empty
from gdn_dispatch.backends.triton_common.split import SplitConfig, launch_split

from gdn_dispatch.dtype_policy import policy_for
from gdn_dispatch.probe import DeviceProbe
from gdn_dispatch.registry import CallMeta

__all__ = ["OP_NAMES", "DecodeConfigs", "DecodeOps"]

OP_NAMES = ("fused_recurrent_gated_delta_rule", "fused_sigmoid_gating_delta_rule_update",
            "fused_recurrent_gated_delta_rule_packed_decode", "fused_gdn_gating",
            "fused_qkvzba_split_reshape_cat", "l2norm")


@dataclass(frozen=True)
class DecodeConfigs:
    """A backend's kernel configs for the decode ops, each chosen from the call's probe.

    ``recurrent(probe, state_v_first, state_dtype, K, V, n_heads_total, *, tokens_per_seq=1,
    per_token_states=False)`` (tokens per sequence on average, rounded up; whether a state is
    stored after every token),
    ``gating(probe)``, ``l2norm(probe, D)``, ``split(probe)``.
    """

    recurrent: Callable[..., rec.RecurrentConfig]
    gating: Callable[[DeviceProbe], RowConfig]
    l2norm: Callable[[DeviceProbe, int], RowConfig]
    split: Callable[[DeviceProbe], SplitConfig]


def _tokens_per_seq(tokens: int, sequences: int) -> int:
    """Tokens per sequence of a call, on average (rounded up; 1 for an empty call)."""
    return max(1, -(-tokens // max(sequences, 1)))


def _new_state(rows: int, meta: CallMeta, v_first: bool, like: torch.Tensor) -> torch.Tensor:
    HV, K, V = meta.HV, meta.K, meta.V
    dtype = policy_for(meta.dtype, meta.probe, meta.state_dtype).state
    shape = (rows, HV, V, K) if v_first else (rows, HV, K, V)
    return torch.empty(shape, dtype=dtype, device=like.device)


class _RecurrentPlan:
    """Op 2 of one call metadata: output allocation, final-state handling and the launch."""

    __slots__ = ("o_shape", "o_strides", "o_dtype", "device", "o_like_v", "state_shape",
                 "state_strides", "state_dtype", "state_like_h0", "inplace", "gate_params",
                 "launch", "alloc")

    def __init__(self, v: torch.Tensor, o: torch.Tensor, h0: torch.Tensor | None,
                 new_state: torch.Tensor | None, inplace: bool, gate_params: bool, launch):
        self.o_shape, self.o_dtype, self.device = tuple(o.shape), o.dtype, o.device
        self.o_strides = o.stride()
        self.alloc = fast_empty(o.device)  # (shape, strides, dtype) -> tensor, or None
        # torch.empty_like is the cheapest allocation; it gives the planned (contiguous)
        # strides only when the template is contiguous, which the metadata key fixes
        self.o_like_v = v.is_contiguous()
        self.state_shape = tuple(new_state.shape) if new_state is not None else None
        self.state_dtype = new_state.dtype if new_state is not None else None
        self.state_strides = new_state.stride() if new_state is not None else None
        self.state_like_h0 = (new_state is not None and h0 is not None and h0.is_contiguous()
                              and h0.shape == new_state.shape and h0.dtype == new_state.dtype)
        self.inplace = inplace
        self.gate_params = gate_params
        self.launch = launch


class DecodeOps:
    """The six decode ops of one backend: ``configs`` picks kernel configs, ``plan_prefix``
    names its plans in ``meta.scratch`` (``"<prefix>.recurrent"`` etc.)."""

    __slots__ = ("configs", "_recurrent_key", "_sigmoid_key", "_packed_key")

    def __init__(self, configs: DecodeConfigs, plan_prefix: str):
        self.configs = configs
        self._recurrent_key = f"{plan_prefix}.recurrent"
        self._sigmoid_key = f"{plan_prefix}.sigmoid_update"
        self._packed_key = f"{plan_prefix}.packed_decode"

    # -- op 2 ------------------------------------------------------------------------------
    def _plan_fused_recurrent(
        self, q, k, v, g, beta, scale, initial_state, output_final_state,
        use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel,
        allow_neg_eigval, state_v_first, cu_seqlens, ssm_state_indices, num_accepted_tokens,
        inplace_final_state, meta: CallMeta,
    ) -> tuple[_RecurrentPlan, torch.Tensor, torch.Tensor | None]:
        """Plan op 2 for this call's metadata; returns ``(plan, o, h_dst)`` of this first call."""
        B, T, H, K = q.shape
        HV, V = meta.HV, meta.V
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        o = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        idx = ssm_state_indices
        new_state = None
        inplace = False
        dst_mode = rec.DST_NONE
        if idx is None or idx.dim() == 1:
            idx_mode = rec.IDX_NONE if idx is None else rec.IDX_POOL
            if inplace_final_state:
                inplace, dst_mode = True, rec.DST_INPLACE
            elif output_final_state:
                new_state, dst_mode = _new_state(N, meta, state_v_first, v), rec.DST_NEW
        else:
            idx_mode = rec.IDX_SPEC
            if inplace_final_state:
                inplace, dst_mode = True, rec.DST_SPEC_INPLACE
            else:  # the pool stays untouched; a new tensor holds the state after every token
                new_state = _new_state(B * T, meta, state_v_first, v)
                dst_mode = rec.DST_PER_TOKEN
        h_dst = initial_state if inplace else new_state
        if g is None:
            gate_mode = rec.GATE_NONE
        else:
            gate_mode = rec.GATE_RAW if use_gate_in_kernel else rec.GATE_LOG
        if beta is None:
            beta_mode = rec.BETA_ONE
        else:
            beta_mode = rec.BETA_SIGMOID if use_beta_sigmoid_in_kernel else rec.BETA_GIVEN
        state_dtype = meta.state_dtype or torch.float32
        cfg = self.configs.recurrent(meta.probe, state_v_first, state_dtype, K, V, N * HV,
                                     tokens_per_seq=_tokens_per_seq(B * T, N),
                                     per_token_states=idx_mode == rec.IDX_SPEC)
        gate_params = bool(use_gate_in_kernel)
        launch = rec.plan_recurrent(
            q, k, v, o, config=cfg, N=N, T=T, H=H, HV=HV, K=K, V=V, scale=scale,
            q_strides=q.stride()[:3], k_strides=k.stride()[:3], v_strides=v.stride()[:3],
            o_strides=o.stride()[:3], g=g, gate_mode=gate_mode,
            A_log=A_log if gate_params else None, dt_bias=dt_bias if gate_params else None,
            beta=beta, beta_mode=beta_mode,
            neg_eigval=bool(allow_neg_eigval and use_beta_sigmoid_in_kernel),
            l2norm=bool(use_qk_l2norm_in_kernel), state_v_first=bool(state_v_first),
            cu_seqlens=cu_seqlens, h_src=initial_state, h_dst=h_dst, idx=idx, idx_mode=idx_mode,
            num_accepted=num_accepted_tokens, dst_mode=dst_mode)
        plan = _RecurrentPlan(v, o, initial_state, new_state, inplace, gate_params, launch)
        return plan, o, h_dst

    def fused_recurrent_gated_delta_rule(
        self, q, k, v, g, beta, scale, initial_state, output_final_state,
        use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel,
        allow_neg_eigval, state_v_first, cu_seqlens, ssm_state_indices, num_accepted_tokens,
        inplace_final_state, *, meta: CallMeta,
    ):
        """Op 2 on the recurrent kernel; see ``gdn_dispatch.fused_recurrent_gated_delta_rule``.

        The first call of a metadata plans the launch into ``meta.scratch``; repeated calls
        allocate the outputs and launch."""
        plan = meta.scratch.get(self._recurrent_key)
        if plan is None:
            plan, o, h_dst = self._plan_fused_recurrent(
                q, k, v, g, beta, scale, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias,
                use_beta_sigmoid_in_kernel, allow_neg_eigval, state_v_first, cu_seqlens,
                ssm_state_indices, num_accepted_tokens, inplace_final_state, meta)
            meta.scratch[self._recurrent_key] = plan
        elif plan.alloc is not None:
            o = plan.alloc(plan.o_shape, plan.o_strides, plan.o_dtype)
            if plan.inplace:
                h_dst = initial_state
            elif plan.state_shape is not None:
                h_dst = plan.alloc(plan.state_shape, plan.state_strides, plan.state_dtype)
            else:
                h_dst = None
        else:
            if plan.o_like_v:
                o = torch.empty_like(v)
            else:
                o = torch.empty(plan.o_shape, dtype=plan.o_dtype, device=plan.device)
            if plan.inplace:
                h_dst = initial_state
            elif plan.state_like_h0:
                h_dst = torch.empty_like(initial_state)
            elif plan.state_shape is not None:
                h_dst = torch.empty(plan.state_shape, dtype=plan.state_dtype,
                                    device=plan.device)
            else:
                h_dst = None
        if plan.launch is not None:
            if plan.gate_params:
                plan.launch.launch(q, k, v, g, beta, A_log, dt_bias, o, initial_state, h_dst,
                                   cu_seqlens, ssm_state_indices, num_accepted_tokens)
            else:
                plan.launch.launch(q, k, v, g, beta, None, None, o, initial_state, h_dst,
                                   cu_seqlens, ssm_state_indices, num_accepted_tokens)
        return o, h_dst

    # -- op 3 ------------------------------------------------------------------------------
    def fused_sigmoid_gating_delta_rule_update(
        self, A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k, v, b,
        initial_state_source, initial_state_indices, scale, use_qk_l2norm_in_kernel,
        cu_seqlens, state_v_first, *, meta: CallMeta,
    ):
        """Op 3: gating and beta sigmoid in the kernel, pool updated in place; returns ``o``."""
        plan = meta.scratch.get(self._sigmoid_key)
        if plan is None:
            B, T, H, K = q.shape
            HV, V = meta.HV, meta.V
            N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
            o = torch.empty((B, T, HV, V), dtype=v.dtype, device=v.device)
            cfg = self.configs.recurrent(meta.probe, state_v_first, initial_state_source.dtype,
                                         K, V, N * HV, tokens_per_seq=_tokens_per_seq(B * T, N))
            launch = rec.plan_recurrent(
                q, k, v, o, config=cfg, N=N, T=T, H=H, HV=HV, K=K, V=V, scale=scale,
                q_strides=q.stride()[:3], k_strides=k.stride()[:3], v_strides=v.stride()[:3],
                o_strides=o.stride()[:3], g=a, gate_mode=rec.GATE_RAW, A_log=A_log,
                dt_bias=dt_bias, softplus_beta=float(softplus_beta),
                softplus_threshold=float(softplus_threshold), beta=b,
                beta_mode=rec.BETA_SIGMOID, l2norm=bool(use_qk_l2norm_in_kernel),
                state_v_first=bool(state_v_first), cu_seqlens=cu_seqlens,
                h_src=initial_state_source, h_dst=initial_state_source,
                idx=initial_state_indices, idx_mode=rec.IDX_POOL, dst_mode=rec.DST_INPLACE)
            # (o shape, o dtype, device, launch, fast allocator or None, o strides)
            plan = meta.scratch[self._sigmoid_key] = (tuple(o.shape), o.dtype, o.device, launch,
                                                      fast_empty(o.device), o.stride())
        elif plan[4] is not None:
            o = plan[4](plan[0], plan[5], plan[1])
        else:
            o = torch.empty(plan[0], dtype=plan[1], device=plan[2])
        if plan[3] is not None:
            plan[3].launch(q, k, v, a, b, A_log, dt_bias, o, initial_state_source,
                           initial_state_source, cu_seqlens, initial_state_indices, None)
        return o

    # -- op 4 ------------------------------------------------------------------------------
    def fused_recurrent_gated_delta_rule_packed_decode(
        self, mixed_qkv, a, b, A_log, dt_bias, scale, initial_state, out, ssm_state_indices,
        use_qk_l2norm_in_kernel, state_v_first, *, meta: CallMeta,
    ):
        """Op 4: q, k, v read in place from the packed rows; ``out`` and the pool written."""
        launch = meta.scratch.get(self._packed_key, False)
        if launch is False:
            H, K, HV, V = meta.H, meta.K, meta.HV, meta.V
            N = mixed_qkv.shape[0]
            s_row = mixed_qkv.stride(0)
            cfg = self.configs.recurrent(meta.probe, state_v_first, initial_state.dtype, K, V,
                                         N * HV)
            launch = meta.scratch[self._packed_key] = rec.plan_recurrent(
                mixed_qkv, mixed_qkv, mixed_qkv, out, config=cfg, N=N, T=1, H=H, HV=HV, K=K,
                V=V, scale=scale, q_strides=(s_row, 0, K), k_strides=(s_row, 0, K),
                v_strides=(s_row, 0, V), o_strides=out.stride()[:3], k_off=H * K,
                v_off=2 * H * K, g=a, gate_mode=rec.GATE_RAW, A_log=A_log, dt_bias=dt_bias,
                beta=b, beta_mode=rec.BETA_SIGMOID, l2norm=bool(use_qk_l2norm_in_kernel),
                state_v_first=bool(state_v_first), h_src=initial_state, h_dst=initial_state,
                idx=ssm_state_indices, idx_mode=rec.IDX_POOL, dst_mode=rec.DST_INPLACE)
        if launch is not None:
            launch.launch(mixed_qkv, mixed_qkv, mixed_qkv, a, b, A_log, dt_bias, out,
                          initial_state, initial_state, None, ssm_state_indices, None)
        return out, initial_state

    # -- ops 5-7 ---------------------------------------------------------------------------
    def fused_gdn_gating(self, A_log, a, b, dt_bias, beta, threshold, *, meta: CallMeta):
        """Op 5: ``g`` float32 ``[1, N, HV]`` and ``beta_output`` ``[1, N, HV]`` in b's dtype."""
        N, HV = a.shape
        g = torch.empty((1, N, HV), dtype=torch.float32, device=a.device)
        beta_out = torch.empty((1, N, HV), dtype=b.dtype, device=b.device)
        launch_gdn_gating(A_log, a, b, dt_bias, g, beta_out, beta, threshold,
                          config=self.configs.gating(meta.probe))
        return g, beta_out

    def fused_qkvzba_split_reshape_cat(self, mixed_qkvz, mixed_ba, num_heads_qk, num_heads_v,
                                       head_qk, head_v, layout, *, meta: CallMeta):
        """Op 6: one kernel launch per call, outputs new contiguous tensors."""
        N = mixed_qkvz.shape[0]
        dev, dt = mixed_qkvz.device, mixed_qkvz.dtype
        qkv = torch.empty((N, 2 * num_heads_qk * head_qk + num_heads_v * head_v), dtype=dt,
                          device=dev)
        z = torch.empty((N, num_heads_v, head_v), dtype=dt, device=dev)
        b = torch.empty((N, num_heads_v), dtype=mixed_ba.dtype, device=dev)
        a = torch.empty((N, num_heads_v), dtype=mixed_ba.dtype, device=dev)
        launch_split(mixed_qkvz, mixed_ba, qkv, z, b, a, num_heads_qk, num_heads_v, head_qk,
                     head_v, layout, config=self.configs.split(meta.probe))
        return qkv, z, b, a

    def l2norm(self, x, eps, *, meta: CallMeta):
        """Op 7: float32 math, a new contiguous tensor in x's dtype."""
        D = x.shape[-1]
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if x.dim() == 1:
            x2d = x.unsqueeze(0)
        else:
            try:
                x2d = x.view(-1, D)
            except RuntimeError:  # leading dims not mergeable: one copy, then a plain row walk
                x2d = x.reshape(-1, D)
        launch_l2norm(x2d, y, eps, config=self.configs.l2norm(meta.probe, D))
        return y
