"""Reference token-by-token ops: ``fused_recurrent_gated_delta_rule``,
``fused_sigmoid_gating_delta_rule_update`` and ``fused_recurrent_gated_delta_rule_packed_decode``.

All three compute their gating, then share one core: ``recurrent_scan`` (the recurrence of
API.md, vectorized over sequences and heads, a Python loop over time steps only) wrapped by
``gated_delta_recurrent`` (state sources and sinks: plain initial states, pools indexed per
sequence, speculative-decoding ``[N, T_max]`` indices).

State-pool semantics (the executable contract):

- no indices: sequence n starts from ``initial_state[n]`` (zeros if None).  The final state
  is a new tensor with ``output_final_state``, or written into ``initial_state`` (returned)
  with ``inplace_final_state``.
- indices ``[N]``: sequence n starts from ``pool[idx[n]]``; ``inplace`` writes its final
  state back there and returns the pool; otherwise ``output_final_state`` returns a new
  ``[N, HV, ., .]`` tensor (zero rows for padded sequences).
- indices ``[N, T_max]``: start ``pool[idx[n, nat[n] - 1]]`` (``nat`` =
  ``num_accepted_tokens``, default 1).  ``inplace``: the state after token t goes to
  ``pool[idx[n, t]]`` (skipped where that index is padding); otherwise the pool is untouched
  and a new ``[B*T, HV, ., .]`` tensor holds the state after every token (zeros elsewhere).
- a start index of -1, or any index outside ``[0, slots)``, is padding: that sequence's
  outputs are zero and no state is read or written.  No other pool slot changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gdn_dispatch.dtype_policy import DtypePolicy, policy_for
from gdn_dispatch.registry import CallMeta

from .gating import activated_gates, l2_normalize
from .sequences import SequenceLayout, head_index, sequence_layout

__all__ = [
    "fused_recurrent_gated_delta_rule", "fused_sigmoid_gating_delta_rule_update",
    "fused_recurrent_gated_delta_rule_packed_decode", "recurrent_scan", "gated_delta_recurrent",
]

StepHook = Callable[[int, torch.Tensor], None]


def recurrent_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                   beta: torch.Tensor, live: torch.Tensor, state: torch.Tensor, scale: float,
                   on_step: StepHook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence over padded sequences, one time step at a time.

    q, k ``[N, T, HV, K]`` (key heads already repeated per value head), v ``[N, T, HV, V]``,
    g, beta ``[N, T, HV]``, live ``[N, T]`` bool (False: the step leaves the state as it is),
    state ``[N, HV, K, V]``.  ``on_step(t, S)`` sees the state after step t.
    Returns ``(o [N, T, HV, V], final state)``; outputs of dead steps are unspecified.
    """
    N, T = live.shape
    o = torch.empty(v.shape, dtype=state.dtype, device=state.device)
    S = state
    for t in range(T):
        decayed = S * g[:, t].exp()[..., None, None]
        kt = k[:, t]
        u = beta[:, t, :, None] * (v[:, t] - torch.einsum("nhk,nhkv->nhv", kt, decayed))
        stepped = decayed + kt[..., :, None] * u[..., None, :]
        S = torch.where(live[:, t, None, None, None], stepped, S)
        o[:, t] = scale * torch.einsum("nhk,nhkv->nhv", q[:, t], S)
        if on_step is not None:
            on_step(t, S)
    return o, S


def _as_kv(state: torch.Tensor, v_first: bool, dtype: torch.dtype) -> torch.Tensor:
    state = state.to(dtype)
    return state.transpose(-1, -2) if v_first else state


def _as_layout(state: torch.Tensor, v_first: bool, dtype: torch.dtype) -> torch.Tensor:
    return (state.transpose(-1, -2) if v_first else state).to(dtype)


def _start_slots(indices: torch.Tensor, num_accepted: torch.Tensor | None) -> torch.Tensor:
    """The pool slot each sequence starts from (int64 ``[N]``)."""
    idx = indices.to(torch.int64)
    if idx.dim() == 1:
        return idx
    if num_accepted is None:
        return idx[:, 0]
    col = (num_accepted.to(torch.int64) - 1).clamp(0, idx.shape[1] - 1)
    return idx.gather(1, col[:, None])[:, 0]


def _token_slots(indices: torch.Tensor, T_pad: int) -> torch.Tensor:
    """Spec-decoding write slots ``[N, T_pad]``, -1 beyond the index tensor's columns."""
    idx = indices.to(torch.int64)[:, :T_pad]
    if idx.shape[1] < T_pad:
        idx = torch.nn.functional.pad(idx, (0, T_pad - idx.shape[1]), value=-1)
    return idx


def gated_delta_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float, policy: DtypePolicy, *, l2norm: bool, cu_seqlens: torch.Tensor | None,
    initial_state: torch.Tensor | None, indices: torch.Tensor | None,
    num_accepted: torch.Tensor | None, inplace: bool, output_final_state: bool,
    v_first: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one recurrent core of the reference (see the module docstring for the state rules).

    q, k ``[B, T, H, K]``, v ``[B, T, HV, V]``; g, beta activated ``[B, T, HV]`` in
    ``policy.compute``.  Returns ``(o [B, T, HV, V] in policy.output, final_state)``.
    """
    cd = policy.compute
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    dev = q.device
    qf, kf = q.to(cd), k.to(cd)
    if l2norm:
        qf, kf = l2_normalize(qf), l2_normalize(kf)
    layout = sequence_layout(B, T, cu_seqlens, 1, dev)
    heads = head_index(H, HV, dev)
    qp = layout.pack(qf).index_select(2, heads)
    kp = layout.pack(kf).index_select(2, heads)
    vp, gp, bp = layout.pack(v.to(cd)), layout.pack(g), layout.pack(beta)
    N = layout.N

    if indices is None:
        valid = torch.ones(N, dtype=torch.bool, device=dev)
        start = None
        state = (torch.zeros(N, HV, K, V, dtype=cd, device=dev) if initial_state is None
                 else _as_kv(initial_state, v_first, cd))
    else:
        pool = initial_state
        assert pool is not None  # validation guarantees it
        slots = pool.shape[0]
        start = _start_slots(indices, num_accepted)
        valid = (start >= 0) & (start < slots)
        state = torch.zeros(N, HV, K, V, dtype=cd, device=dev)
        if slots > 0:
            read = _as_kv(pool[start.clamp(0, slots - 1)], v_first, cd)
            state = torch.where(valid[:, None, None, None], read, state)
    live = layout.mask & valid[:, None]

    spec = indices is not None and indices.dim() == 2
    on_step, per_token = None, None
    if spec:
        on_step, per_token = _spec_sink(initial_state, indices, layout, live, inplace, v_first)
    o_pad, final = recurrent_scan(qp, kp, vp, gp, bp, live, state, scale, on_step)
    o_pad = o_pad * live[:, :, None, None].to(cd)
    o = layout.unpack(o_pad).to(policy.output).contiguous()

    if spec:
        return o, (initial_state if inplace else per_token)
    if indices is None:
        if inplace:
            initial_state.copy_(_as_layout(final, v_first, initial_state.dtype))
            return o, initial_state
        if output_final_state:
            return o, _as_layout(final, v_first, policy.state).contiguous()
        return o, None
    if inplace:
        if bool(valid.any()):
            initial_state[start[valid]] = _as_layout(final[valid], v_first, initial_state.dtype)
        return o, initial_state
    if output_final_state:
        final = torch.where(valid[:, None, None, None], final, torch.zeros_like(final))
        return o, _as_layout(final, v_first, policy.state).contiguous()
    return o, None


def _spec_sink(pool: torch.Tensor, indices: torch.Tensor, layout: SequenceLayout,
               live: torch.Tensor, inplace: bool,
               v_first: bool) -> tuple[StepHook, torch.Tensor | None]:
    """Where speculative decoding puts the state after each token: the pool slot
    ``idx[n, t]`` (inplace) or row ``b*T + t`` of a new ``[B*T, HV, ., .]`` tensor."""
    slots = pool.shape[0]
    if inplace:
        write_slots = _token_slots(indices, layout.T_pad)

        def to_pool(t: int, S: torch.Tensor) -> None:
            slot = write_slots[:, t]
            ok = live[:, t] & (slot >= 0) & (slot < slots)
            if bool(ok.any()):
                pool[slot[ok]] = _as_layout(S[ok], v_first, pool.dtype)

        return to_pool, None
    per_token = torch.zeros(layout.B * layout.T, *pool.shape[1:], dtype=pool.dtype,
                            device=pool.device)

    def to_rows(t: int, S: torch.Tensor) -> None:
        ok = live[:, t]
        if bool(ok.any()):
            per_token[layout.pos[:, t][ok]] = _as_layout(S[ok], v_first, pool.dtype)

    return to_rows, per_token


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
    beta: torch.Tensor | None, scale: float, initial_state: torch.Tensor | None,
    output_final_state: bool, use_qk_l2norm_in_kernel: bool, use_gate_in_kernel: bool,
    A_log: torch.Tensor | None, dt_bias: torch.Tensor | None, use_beta_sigmoid_in_kernel: bool,
    allow_neg_eigval: bool, state_v_first: bool, cu_seqlens: torch.Tensor | None,
    ssm_state_indices: torch.Tensor | None, num_accepted_tokens: torch.Tensor | None,
    inplace_final_state: bool, *, meta: CallMeta,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token gated delta rule with the state rules of this module's docstring.

    Gating as ``gating.activated_gates`` (softplus beta 1, threshold 20 in kernel).  Returns
    ``(o [B, T, HV, V] in v.dtype, final_state or None)``.
    """
    policy = policy_for(meta.dtype, meta.probe, meta.state_dtype)
    B, T, HV = v.shape[0], v.shape[1], v.shape[2]
    gate, strength = activated_gates(g, beta, (B, T, HV), policy.compute, v.device,
                                     gate_in_kernel=use_gate_in_kernel, A_log=A_log,
                                     dt_bias=dt_bias, beta_sigmoid=use_beta_sigmoid_in_kernel,
                                     neg_eigval=allow_neg_eigval)
    return gated_delta_recurrent(
        q, k, v, gate, strength, scale, policy, l2norm=use_qk_l2norm_in_kernel,
        cu_seqlens=cu_seqlens, initial_state=initial_state, indices=ssm_state_indices,
        num_accepted=num_accepted_tokens, inplace=inplace_final_state,
        output_final_state=output_final_state, v_first=state_v_first)


def fused_sigmoid_gating_delta_rule_update(
    A_log: torch.Tensor, a: torch.Tensor, dt_bias: torch.Tensor | None, softplus_beta: float,
    softplus_threshold: float, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    b: torch.Tensor, initial_state_source: torch.Tensor, initial_state_indices: torch.Tensor,
    scale: float, use_qk_l2norm_in_kernel: bool, cu_seqlens: torch.Tensor | None,
    state_v_first: bool, *, meta: CallMeta,
) -> torch.Tensor:
    """Decode with gating fused in: ``g = -exp(A_log) * softplus(a + dt_bias)`` (given
    softplus beta / threshold), ``beta = sigmoid(b)``; the pool is read from and written
    back at ``initial_state_indices[n]`` (padding: zero outputs, nothing touched).
    Returns ``o`` ``[B, T, HV, V]`` in ``v.dtype``."""
    policy = policy_for(meta.dtype, meta.probe, meta.state_dtype)
    B, T, HV = v.shape[0], v.shape[1], v.shape[2]
    gate, strength = activated_gates(a, b, (B, T, HV), policy.compute, v.device,
                                     gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                                     beta_sigmoid=True, softplus_beta=softplus_beta,
                                     threshold=softplus_threshold)
    o, _ = gated_delta_recurrent(
        q, k, v, gate, strength, scale, policy, l2norm=use_qk_l2norm_in_kernel,
        cu_seqlens=cu_seqlens, initial_state=initial_state_source,
        indices=initial_state_indices, num_accepted=None, inplace=True,
        output_final_state=False, v_first=state_v_first)
    return o


def fused_recurrent_gated_delta_rule_packed_decode(
    mixed_qkv: torch.Tensor, a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor,
    dt_bias: torch.Tensor | None, scale: float, initial_state: torch.Tensor, out: torch.Tensor,
    ssm_state_indices: torch.Tensor, use_qk_l2norm_in_kernel: bool, state_v_first: bool, *,
    meta: CallMeta,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token per sequence from the packed ``[N, 2*H*K + HV*V]`` projection (q, k,
    v head-major); gating with softplus beta 1, threshold 20 and ``sigmoid(b)``.  The pool
    is updated in place at ``ssm_state_indices``; ``out`` ``[N, 1, HV, V]`` is written in
    place (zeros for padding).  Returns ``(out, initial_state)``."""
    policy = policy_for(meta.dtype, meta.probe, meta.state_dtype)
    H, K, HV, V = meta.H, meta.K, meta.HV, meta.V
    N = mixed_qkv.shape[0]
    q = mixed_qkv[:, : H * K].reshape(N, 1, H, K)
    k = mixed_qkv[:, H * K: 2 * H * K].reshape(N, 1, H, K)
    v = mixed_qkv[:, 2 * H * K:].reshape(N, 1, HV, V)
    gate, strength = activated_gates(a, b, (N, 1, HV), policy.compute, mixed_qkv.device,
                                     gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                                     beta_sigmoid=True)
    o, _ = gated_delta_recurrent(
        q, k, v, gate, strength, scale, policy, l2norm=use_qk_l2norm_in_kernel,
        cu_seqlens=None, initial_state=initial_state, indices=ssm_state_indices,
        num_accepted=None, inplace=True, output_final_state=False, v_first=state_v_first)
    out.copy_(o)
    return out, initial_state
