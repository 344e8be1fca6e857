"""The public ops of gdn_dispatch (the v1 contract of shared/API.md).

Each function validates its call, picks a backend through the registry and runs it.  Shapes:
``q, k`` ``[B, T, H, K]``; ``v`` ``[B, T, HV, V]`` with ``HV % H == 0`` (value head ``hv``
uses key head ``hv // (HV // H)``); ``g, beta`` ``[B, T, HV]``; one state is ``[K, V]``
("kv", ``state_v_first=False``) or ``[V, K]`` ("vk", ``state_v_first=True``).

.. warning:: With ``K == V`` a state in the wrong layout has the right shape.  Ops 1-2
   (fla call sites) default to ``state_v_first=False``; ops 3-4 (vLLM / SGLang call sites)
   default to ``state_v_first=True``.  Pass the flag that matches your pool.
"""

from __future__ import annotations

from typing import Any

import torch

from . import validation as val
from .dispatch import OP_SPECS, OpSpec, run

__all__ = [
    "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule",
    "fused_sigmoid_gating_delta_rule_update", "fused_recurrent_gated_delta_rule_packed_decode",
    "fused_gdn_gating", "fused_qkvzba_split_reshape_cat", "l2norm", "PAD_SLOT_ID",
]

PAD_SLOT_ID = -1


def _call(spec: OpSpec, args: tuple) -> Any:
    """Eager: dispatch.run.  While torch.compile traces: the op's torch.library custom op."""
    if torch.compiler.is_compiling():
        return custom_ops.compiled_call(spec.name, args)
    return run(spec, args)


def _spec(name: str, params: str, device_arg: int, scale_arg: int | None,
          value_args: tuple[int, ...] = ()) -> OpSpec:
    spec = OpSpec(name=name, params=tuple(params.split()),
                  validate=getattr(val, "validate_" + name),
                  values=getattr(val, "values_" + name, None), device_arg=device_arg,
                  scale_arg=scale_arg, value_args=value_args)
    OP_SPECS[name] = spec
    return spec


_CHUNK = _spec(
    "chunk_gated_delta_rule",
    "q k v g beta scale initial_state output_final_state use_qk_l2norm_in_kernel "
    "use_beta_sigmoid_in_kernel allow_neg_eigval state_v_first cu_seqlens use_gate_in_kernel "
    "A_log dt_bias", 0, 5, (12,))


def chunk_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None, initial_state: torch.Tensor | None = None,
    output_final_state: bool = False, use_qk_l2norm_in_kernel: bool = False,
    use_beta_sigmoid_in_kernel: bool = False, allow_neg_eigval: bool = False,
    state_v_first: bool = False, cu_seqlens: torch.Tensor | None = None, *,
    use_gate_in_kernel: bool = False, A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule (prefill / training lengths); same results as the recurrence.

    Args:
        q, k: ``[B, T, H, K]``.  v: ``[B, T, HV, V]``.
        g: ``[B, T, HV]`` log-space decay (``<= 0``); with ``use_gate_in_kernel=True`` the raw
            gate input ``a`` and ``g = -exp(A_log) * softplus(a + dt_bias)``.  None: no decay.
        beta: ``[B, T, HV]``; with ``use_beta_sigmoid_in_kernel=True`` raw logits and
            ``beta = sigmoid(b)`` (``2 * sigmoid(b)`` with ``allow_neg_eigval``; the flag has
            no effect on a precomputed beta).  None: ``beta = 1``.
        scale: defaults to ``K ** -0.5``.
        initial_state: ``[N, HV, K, V]`` (``[N, HV, V, K]`` with ``state_v_first``), N = B or
            ``len(cu_seqlens) - 1``.
        cu_seqlens: ``[N+1]`` int32/int64 offsets; requires ``B == 1``.
        A_log, dt_bias: ``[HV]`` (with ``use_gate_in_kernel``).
    Returns:
        ``o`` ``[B, T, HV, V]`` in ``v.dtype``; the final state ``[N, HV, K, V]`` (layout as
        ``state_v_first``; dtype of ``initial_state``, else float32) or None unless
        ``output_final_state``.
    """
    return _call(_CHUNK, (q, k, v, g, beta, scale, initial_state, output_final_state,
                          use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                          state_v_first, cu_seqlens, use_gate_in_kernel, A_log, dt_bias))


_RECURRENT = _spec(
    "fused_recurrent_gated_delta_rule",
    "q k v g beta scale initial_state output_final_state use_qk_l2norm_in_kernel "
    "use_gate_in_kernel A_log dt_bias use_beta_sigmoid_in_kernel allow_neg_eigval state_v_first "
    "cu_seqlens ssm_state_indices num_accepted_tokens inplace_final_state", 0, 5, (15, 16, 17))


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None,
    beta: torch.Tensor | None = None, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False, use_gate_in_kernel: bool = False,
    A_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
    use_beta_sigmoid_in_kernel: bool = False, allow_neg_eigval: bool = False,
    state_v_first: bool = False, cu_seqlens: torch.Tensor | None = None, *,
    ssm_state_indices: torch.Tensor | None = None,
    num_accepted_tokens: torch.Tensor | None = None, inplace_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token gated delta rule (decode and short sequences).

    Shapes and gating flags as ``chunk_gated_delta_rule``; ``g`` and ``beta`` may be None
    (no decay, ``beta = 1``).  State handling:

    - no ``ssm_state_indices``: ``initial_state`` ``[N, HV, K, V]`` (or V-first); the final
      state is returned when ``output_final_state`` (a new tensor), or written into
      ``initial_state`` and returned when ``inplace_final_state``.
    - ``ssm_state_indices`` ``[N]``: ``initial_state`` is a pool ``[slots, HV, K, V]``;
      sequence n starts from ``pool[idx[n]]``.  ``inplace_final_state=True`` writes its final
      state back there and returns the pool; otherwise a new ``[N, HV, K, V]`` final state is
      returned when ``output_final_state`` (rows of padded sequences are zeros).
    - ``ssm_state_indices`` ``[N, T_max]`` (speculative decoding): the state after token t of
      sequence n goes to ``pool[idx[n, t]]``; with ``num_accepted_tokens`` ``[N]`` sequence n
      starts from ``pool[idx[n, num_accepted_tokens[n] - 1]]`` (else ``pool[idx[n, 0]]``).
      With ``inplace_final_state=True`` the pool is written and returned; otherwise the pool
      is untouched and a new ``[B*T, HV, K, V]`` tensor holds the state after every token.
    - index ``-1`` (``PAD_SLOT_ID``; any index outside ``[0, slots)`` is treated alike): that
      sequence's outputs are zeros and no state is read or written.
    Returns ``(o [B, T, HV, V], final_state or None)``.
    """
    return _call(_RECURRENT, (q, k, v, g, beta, scale, initial_state, output_final_state,
                              use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias,
                              use_beta_sigmoid_in_kernel, allow_neg_eigval, state_v_first,
                              cu_seqlens, ssm_state_indices, num_accepted_tokens,
                              inplace_final_state))


_SIGMOID_UPDATE = _spec(
    "fused_sigmoid_gating_delta_rule_update",
    "A_log a dt_bias softplus_beta softplus_threshold q k v b initial_state_source "
    "initial_state_indices scale use_qk_l2norm_in_kernel cu_seqlens state_v_first", 5, 11,
    (10, 13))


def fused_sigmoid_gating_delta_rule_update(
    A_log: torch.Tensor, a: torch.Tensor, dt_bias: torch.Tensor | None, softplus_beta: float,
    softplus_threshold: float, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    b: torch.Tensor, initial_state_source: torch.Tensor, initial_state_indices: torch.Tensor,
    scale: float | None = None, use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None, *, state_v_first: bool = True,
) -> torch.Tensor:
    """Decode with gating fused in (SGLang's call site); updates the pool in place.

    ``a, b``: raw ``[B, T, HV]`` (or ``[B*T, HV]``); ``g = -exp(A_log) * softplus(a +
    dt_bias)`` with the given softplus beta/threshold, ``beta = sigmoid(b)``.
    ``initial_state_source``: pool ``[slots, HV, V, K]`` (default ``state_v_first=True``) or
    ``[slots, HV, K, V]``; sequence n starts from and ends in ``pool[idx[n]]``; ``-1`` skips
    (zeros out, no state touched).  q, k, v may be strided views of one packed projection.
    Returns ``o`` ``[B, T, HV, V]``.
    """
    return _call(_SIGMOID_UPDATE, (A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k,
                                   v, b, initial_state_source, initial_state_indices, scale,
                                   use_qk_l2norm_in_kernel, cu_seqlens, state_v_first))


_PACKED = _spec(
    "fused_recurrent_gated_delta_rule_packed_decode",
    "mixed_qkv a b A_log dt_bias scale initial_state out ssm_state_indices "
    "use_qk_l2norm_in_kernel state_v_first", 0, 5, (8,))


def fused_recurrent_gated_delta_rule_packed_decode(
    mixed_qkv: torch.Tensor, a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor,
    dt_bias: torch.Tensor | None, scale: float | None, initial_state: torch.Tensor,
    out: torch.Tensor, ssm_state_indices: torch.Tensor, use_qk_l2norm_in_kernel: bool = False,
    *, state_v_first: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token per sequence straight from the packed projection (vLLM's call site).

    ``mixed_qkv`` ``[N, 2*H*K + HV*V]`` (q, then k, then v, head-major inside each; may be
    a strided view); ``a, b`` ``[N, HV]`` raw gates (softplus beta 1, threshold 20);
    ``initial_state`` pool ``[slots, HV, V, K]`` (default) or ``[slots, HV, K, V]`` with
    ``state_v_first=False``, updated in place at ``ssm_state_indices`` ``[N]``; ``out``
    ``[N, 1, HV, V]`` written in place (zeros for ``-1``).  Returns ``(out, initial_state)``.
    """
    return _call(_PACKED, (mixed_qkv, a, b, A_log, dt_bias, scale, initial_state, out,
                           ssm_state_indices, use_qk_l2norm_in_kernel, state_v_first))


_GATING = _spec("fused_gdn_gating", "A_log a b dt_bias beta threshold", 1, None)


def fused_gdn_gating(A_log: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                     dt_bias: torch.Tensor | None, beta: float = 1.0,
                     threshold: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """GDN gating: ``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta_output = sigmoid(b)``.

    ``a, b`` ``[N, HV]``; softplus uses ``beta`` and ``threshold`` as ``torch.nn.functional
    .softplus``.  Returns ``g`` float32 ``[1, N, HV]`` and ``beta_output`` ``[1, N, HV]`` in
    ``b.dtype``.
    """
    return _call(_GATING, (A_log, a, b, dt_bias, beta, threshold))


_SPLIT = _spec("fused_qkvzba_split_reshape_cat",
               "mixed_qkvz mixed_ba num_heads_qk num_heads_v head_qk head_v layout", 0, None)


def fused_qkvzba_split_reshape_cat(
    mixed_qkvz: torch.Tensor, mixed_ba: torch.Tensor, num_heads_qk: int, num_heads_v: int,
    head_qk: int, head_v: int, layout: str = "interleaved",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split one fused projection into ``(mixed_qkv, z, b, a)``.

    ``mixed_qkvz`` ``[N, 2*Hqk*Dk + 2*Hv*Dv]``, ``mixed_ba`` ``[N, 2*Hv]``.
    ``layout="interleaved"`` (Qwen3-Next): per key head h, ``[q_h, k_h, v_h (Hv/Hqk heads),
    z_h (Hv/Hqk heads)]`` and ``[b_h, a_h]`` (Hv/Hqk each).  ``layout="contiguous"``
    (Qwen3.5): ``[q (all heads), k, v, z]`` and ``[b, a]``.
    Returns ``mixed_qkv`` ``[N, 2*Hqk*Dk + Hv*Dv]`` (q, k, v head-major), ``z`` ``[N, Hv,
    Dv]``, ``b`` ``[N, Hv]``, ``a`` ``[N, Hv]``, all new contiguous tensors.
    """
    return _call(_SPLIT, (mixed_qkvz, mixed_ba, num_heads_qk, num_heads_v, head_qk, head_v,
                          layout))


_L2NORM = _spec("l2norm", "x eps", 0, None)


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x**2, -1) + eps)`` computed in float32, returned in ``x.dtype``."""
    return _call(_L2NORM, (x, eps))


PUBLIC_OPS: dict[str, Any] = {name: globals()[name] for name in OP_SPECS}

from . import custom_ops  # noqa: E402  (registers torch.ops.gdn_dispatch.*; needs OP_SPECS)
