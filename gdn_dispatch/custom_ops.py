"""torch.library custom ops: how ``torch.compile`` sees the public ops.

Every public op is registered as ``torch.ops.gdn_dispatch.<op>`` with a fake (meta)
implementation and its mutated arguments declared, so a compiled graph holds one node per op
and never breaks.  The public functions in ``api.py`` stay plain Python in eager mode (a
custom-op call costs several microseconds); only while Dynamo traces do they route here
through ``compiled_call``.  Inside a custom op the backend is still chosen per call by
``dispatch.run``.

Custom-op outputs may not alias inputs, so each op returns only the tensors it creates:

- an optional output (a final state the caller did not ask for) is returned as an empty
  tensor and turned back into None by ``compiled_call``;
- an in-place updated input (a state pool, ``out``) is declared mutated and not returned;
  ``compiled_call`` hands back the caller's own tensor, exactly as the eager op does.

``fused_recurrent_gated_delta_rule`` is registered twice: the plain op (nothing mutated) and
``fused_recurrent_gated_delta_rule_inplace`` (``initial_state`` mutated), picked by
``inplace_final_state``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .dispatch import OP_SPECS, run
from .dtype_policy import policy_for
from .probe import probe_device

__all__ = ["NAMESPACE", "CUSTOM_OPS", "compiled_call", "custom_op_names", "torch_op"]

NAMESPACE = "gdn_dispatch"

# -- schemas -------------------------------------------------------------------------------
# Parameter names and order are those of ``OpSpec.params`` (checked at registration).
_Q_K_V = "Tensor q, Tensor k, Tensor v, Tensor? g, Tensor? beta, float? scale"

_SCHEMAS: dict[str, str] = {
    "chunk_gated_delta_rule":
        f"({_Q_K_V}, Tensor? initial_state, bool output_final_state, "
        "bool use_qk_l2norm_in_kernel, bool use_beta_sigmoid_in_kernel, bool allow_neg_eigval, "
        "bool state_v_first, Tensor? cu_seqlens, bool use_gate_in_kernel, Tensor? A_log, "
        "Tensor? dt_bias) -> (Tensor, Tensor)",
    "fused_recurrent_gated_delta_rule":
        f"({_Q_K_V}, Tensor{{state}}? initial_state, bool output_final_state, "
        "bool use_qk_l2norm_in_kernel, bool use_gate_in_kernel, Tensor? A_log, "
        "Tensor? dt_bias, bool use_beta_sigmoid_in_kernel, bool allow_neg_eigval, "
        "bool state_v_first, Tensor? cu_seqlens, Tensor? ssm_state_indices, "
        "Tensor? num_accepted_tokens, bool inplace_final_state) -> {returns}",
    "fused_sigmoid_gating_delta_rule_update":
        "(Tensor A_log, Tensor a, Tensor? dt_bias, float softplus_beta, "
        "float softplus_threshold, Tensor q, Tensor k, Tensor v, Tensor b, "
        "Tensor(a!) initial_state_source, Tensor initial_state_indices, float? scale, "
        "bool use_qk_l2norm_in_kernel, Tensor? cu_seqlens, bool state_v_first) -> Tensor",
    "fused_recurrent_gated_delta_rule_packed_decode":
        "(Tensor mixed_qkv, Tensor a, Tensor b, Tensor A_log, Tensor? dt_bias, float? scale, "
        "Tensor(a!) initial_state, Tensor(b!) out, Tensor ssm_state_indices, "
        "bool use_qk_l2norm_in_kernel, bool state_v_first) -> ()",
    "fused_gdn_gating":
        "(Tensor A_log, Tensor a, Tensor b, Tensor? dt_bias, float beta, float threshold) "
        "-> (Tensor, Tensor)",
    "fused_qkvzba_split_reshape_cat":
        "(Tensor mixed_qkvz, Tensor mixed_ba, int num_heads_qk, int num_heads_v, int head_qk, "
        "int head_v, str layout) -> (Tensor, Tensor, Tensor, Tensor)",
    "l2norm": "(Tensor x, float eps) -> Tensor",
}


# -- shapes shared by the fake and the real side -------------------------------------------
def _no_tensor(like: torch.Tensor) -> torch.Tensor:
    """The placeholder returned for an optional output that was not asked for."""
    return like.new_empty(0)


def _recurrent_returns_state(args: Sequence[Any]) -> bool:
    """Whether a non-inplace ``fused_recurrent_gated_delta_rule`` call returns a state:
    with ``output_final_state``, and always with ``[N, T_max]`` indices (per-token states)."""
    indices = args[16]
    return bool(args[7]) or (indices is not None and indices.dim() == 2)


def _state_inner(HV: Any, K: Any, V: Any, v_first: bool) -> tuple[Any, Any, Any]:
    return (HV, V, K) if v_first else (HV, K, V)


def _created_state_dtype(v: torch.Tensor, initial_state: torch.Tensor | None) -> torch.dtype:
    sd = initial_state.dtype if initial_state is not None else None
    return policy_for(v.dtype, probe_device("cpu"), sd).state


# -- fake implementations (shapes only; read no data) --------------------------------------
def _fake_chunk(*a: Any) -> tuple[torch.Tensor, torch.Tensor]:
    q, v, h0, want, v_first, cu = a[0], a[2], a[6], a[7], a[11], a[12]
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    o = v.new_empty(B, T, HV, V)
    if not want:
        return o, _no_tensor(q)
    N = cu.shape[0] - 1 if cu is not None else B
    st = q.new_empty(N, *_state_inner(HV, K, V, v_first), dtype=_created_state_dtype(v, h0))
    return o, st


def _fake_recurrent(*a: Any) -> tuple[torch.Tensor, torch.Tensor]:
    q, v, h0, v_first, cu, idx = a[0], a[2], a[6], a[14], a[15], a[16]
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    o = v.new_empty(B, T, HV, V)
    if not _recurrent_returns_state(a):
        return o, _no_tensor(q)
    if idx is not None and idx.dim() == 2:
        rows = B * T
    elif idx is not None:
        rows = idx.shape[0]
    else:
        rows = cu.shape[0] - 1 if cu is not None else B
    st = q.new_empty(rows, *_state_inner(HV, K, V, v_first), dtype=_created_state_dtype(v, h0))
    return o, st


def _fake_recurrent_inplace(*a: Any) -> torch.Tensor:
    q, v = a[0], a[2]
    return v.new_empty(*q.shape[:2], *v.shape[2:])


def _fake_sigmoid_update(*a: Any) -> torch.Tensor:
    q, v = a[5], a[7]
    return v.new_empty(*q.shape[:2], *v.shape[2:])


def _fake_packed_decode(*a: Any) -> None:
    return None


def _fake_gating(*a: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a_in, b = a[1], a[2]
    N, HV = a_in.shape
    return a_in.new_empty(1, N, HV, dtype=torch.float32), b.new_empty(1, N, HV)


def _fake_split(*a: Any) -> tuple[torch.Tensor, ...]:
    x, Hqk, Hv, Dk, Dv = a[0], a[2], a[3], a[4], a[5]
    N = x.shape[0]
    return (x.new_empty(N, 2 * Hqk * Dk + Hv * Dv), x.new_empty(N, Hv, Dv),
            x.new_empty(N, Hv), x.new_empty(N, Hv))


def _fake_l2norm(*a: Any) -> torch.Tensor:
    return a[0].new_empty(a[0].shape)


# -- real implementations: dispatch, then keep only the tensors the op created ------------
def _real_chunk(*a: Any) -> tuple[torch.Tensor, torch.Tensor]:
    o, st = run(OP_SPECS["chunk_gated_delta_rule"], a)
    return o.contiguous(), (st.contiguous() if a[7] else _no_tensor(a[0]))


def _real_recurrent(*a: Any) -> tuple[torch.Tensor, torch.Tensor]:
    o, st = run(OP_SPECS["fused_recurrent_gated_delta_rule"], a)
    if not _recurrent_returns_state(a) or st is None:
        return o.contiguous(), _no_tensor(a[0])
    return o.contiguous(), st.contiguous()


def _real_recurrent_inplace(*a: Any) -> torch.Tensor:
    o, _pool = run(OP_SPECS["fused_recurrent_gated_delta_rule"], a)
    return o.contiguous()


def _real_sigmoid_update(*a: Any) -> torch.Tensor:
    return run(OP_SPECS["fused_sigmoid_gating_delta_rule_update"], a).contiguous()


def _real_packed_decode(*a: Any) -> None:
    run(OP_SPECS["fused_recurrent_gated_delta_rule_packed_decode"], a)


def _real_new_outputs(op: str) -> Callable[..., Any]:
    """The real implementation of an op whose outputs are all new tensors."""

    def real(*a: Any) -> Any:
        res = run(OP_SPECS[op], a)
        if isinstance(res, tuple):
            return tuple(t.contiguous() for t in res)
        return res.contiguous()

    real.__name__ = f"_real_{op}"
    return real


# -- the table -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CustomOpDecl:
    """One registered custom op: its torch name, the public op it serves and its pieces."""

    name: str                       # torch.ops.gdn_dispatch.<name>
    public_op: str                  # the api.py op whose arguments it takes
    schema: str
    mutates: tuple[str, ...]
    fake: Callable[..., Any]
    real: Callable[..., Any]


def _recurrent_schema(inplace: bool) -> str:
    return _SCHEMAS["fused_recurrent_gated_delta_rule"].format(
        state="(a!)" if inplace else "", returns="Tensor" if inplace else "(Tensor, Tensor)")


CUSTOM_OPS: dict[str, CustomOpDecl] = {d.name: d for d in (
    CustomOpDecl("chunk_gated_delta_rule", "chunk_gated_delta_rule",
                 _SCHEMAS["chunk_gated_delta_rule"], (), _fake_chunk, _real_chunk),
    CustomOpDecl("fused_recurrent_gated_delta_rule", "fused_recurrent_gated_delta_rule",
                 _recurrent_schema(False), (), _fake_recurrent, _real_recurrent),
    CustomOpDecl("fused_recurrent_gated_delta_rule_inplace", "fused_recurrent_gated_delta_rule",
                 _recurrent_schema(True), ("initial_state",), _fake_recurrent_inplace,
                 _real_recurrent_inplace),
    CustomOpDecl("fused_sigmoid_gating_delta_rule_update",
                 "fused_sigmoid_gating_delta_rule_update",
                 _SCHEMAS["fused_sigmoid_gating_delta_rule_update"], ("initial_state_source",),
                 _fake_sigmoid_update, _real_sigmoid_update),
    CustomOpDecl("fused_recurrent_gated_delta_rule_packed_decode",
                 "fused_recurrent_gated_delta_rule_packed_decode",
                 _SCHEMAS["fused_recurrent_gated_delta_rule_packed_decode"],
                 ("initial_state", "out"), _fake_packed_decode, _real_packed_decode),
    CustomOpDecl("fused_gdn_gating", "fused_gdn_gating", _SCHEMAS["fused_gdn_gating"], (),
                 _fake_gating, _real_new_outputs("fused_gdn_gating")),
    CustomOpDecl("fused_qkvzba_split_reshape_cat", "fused_qkvzba_split_reshape_cat",
                 _SCHEMAS["fused_qkvzba_split_reshape_cat"], (), _fake_split,
                 _real_new_outputs("fused_qkvzba_split_reshape_cat")),
    CustomOpDecl("l2norm", "l2norm", _SCHEMAS["l2norm"], (), _fake_l2norm,
                 _real_new_outputs("l2norm")),
)}


def _schema_params(schema: str) -> tuple[str, ...]:
    inner = schema[schema.index("(") + 1:schema.index(") ->")]
    return tuple(part.strip().split()[-1] for part in inner.split(","))


def _register(decl: CustomOpDecl) -> None:
    params = _schema_params(decl.schema)
    if params != OP_SPECS[decl.public_op].params:
        raise RuntimeError(f"custom op schema of {decl.name} does not match the parameters of "
                           f"{decl.public_op}: {params} != {OP_SPECS[decl.public_op].params}")
    op = torch.library.custom_op(f"{NAMESPACE}::{decl.name}", decl.real,
                                 mutates_args=decl.mutates, schema=decl.schema)
    op.register_fake(decl.fake)


def _register_all() -> None:
    if hasattr(torch.ops, NAMESPACE) and hasattr(getattr(torch.ops, NAMESPACE), "l2norm"):
        return  # already registered (a module reload)
    for decl in CUSTOM_OPS.values():
        _register(decl)


_register_all()


def torch_op(name: str) -> Any:
    """The ``torch.ops.gdn_dispatch.<name>`` overload packet."""
    return getattr(getattr(torch.ops, NAMESPACE), name)


def custom_op_names() -> list[str]:
    """Names of every registered custom op (``torch.ops.gdn_dispatch.<name>``)."""
    return list(CUSTOM_OPS)


# -- what a public function returns while compiling ----------------------------------------
def _call_chunk(args: tuple) -> Any:
    o, st = torch.ops.gdn_dispatch.chunk_gated_delta_rule(*args)
    return o, (st if args[7] else None)


def _call_recurrent(args: tuple) -> Any:
    if args[18]:  # inplace_final_state: the state (pool) is updated and returned
        o = torch.ops.gdn_dispatch.fused_recurrent_gated_delta_rule_inplace(*args)
        return o, args[6]
    o, st = torch.ops.gdn_dispatch.fused_recurrent_gated_delta_rule(*args)
    return o, (st if _recurrent_returns_state(args) else None)


def _call_sigmoid_update(args: tuple) -> Any:
    return torch.ops.gdn_dispatch.fused_sigmoid_gating_delta_rule_update(*args)


def _call_packed_decode(args: tuple) -> Any:
    torch.ops.gdn_dispatch.fused_recurrent_gated_delta_rule_packed_decode(*args)
    return args[7], args[6]  # (out, initial_state), both updated in place


def _call_gating(args: tuple) -> Any:
    return tuple(torch.ops.gdn_dispatch.fused_gdn_gating(*args))


def _call_split(args: tuple) -> Any:
    return tuple(torch.ops.gdn_dispatch.fused_qkvzba_split_reshape_cat(*args))


def _call_l2norm(args: tuple) -> Any:
    return torch.ops.gdn_dispatch.l2norm(*args)


_CALLS: dict[str, Callable[[tuple], Any]] = {
    "chunk_gated_delta_rule": _call_chunk,
    "fused_recurrent_gated_delta_rule": _call_recurrent,
    "fused_sigmoid_gating_delta_rule_update": _call_sigmoid_update,
    "fused_recurrent_gated_delta_rule_packed_decode": _call_packed_decode,
    "fused_gdn_gating": _call_gating,
    "fused_qkvzba_split_reshape_cat": _call_split,
    "l2norm": _call_l2norm,
}


def compiled_call(op: str, args: tuple) -> Any:
    """Run public op ``op`` (full positional ``args`` in API order) through its custom op and
    return what the eager function returns.  ``api.py`` calls this only while compiling."""
    return _CALLS[op](args)
