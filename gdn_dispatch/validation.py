"""Validation shared by every backend: shapes, dtypes, devices, strides, index tensors.

Each ``validate_<op>`` checks a call's metadata (never tensor contents) and returns the
``CallMeta`` selection needs, or raises ``GDNInputError`` naming the argument, the expected
and the received.  Because these checks read metadata only, the dispatcher caches their
result by the call's metadata.  ``values_<op>`` checks contents (``cu_seqlens`` order,
indices within the pool); the dispatcher runs those only for CPU tensors or with
``GDN_CHECK_VALUES=1``, and never while a CUDA graph is being captured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import GDNInputError
from .probe import DeviceProbe
from .registry import CallMeta, dtype_name

FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
INDEX_DTYPES = frozenset({torch.int32, torch.int64})


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _fmt(dims: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


class _Checker:
    """Small helper bound to one op and one reference device."""

    def __init__(self, op: str, device: torch.device):
        self.op = op
        self.device = device

    def fail(self, name: str, expected: str, received: str) -> None:
        raise GDNInputError(name, expected, received, op=self.op)

    def tensor(self, name: str, t: Any, *, ndim: int | Sequence[int] | None = None,
               dtypes: frozenset[torch.dtype] | None = FLOAT_DTYPES,
               last_contiguous: bool = True) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            self.fail(name, "a torch.Tensor", type(t).__name__)
        if t.device != self.device:
            self.fail(name, f"a tensor on {self.device} (the device of the other inputs)",
                      f"a tensor on {t.device}")
        if ndim is not None:
            allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
            if t.dim() not in allowed:
                self.fail(name, " or ".join(f"{n}-D" for n in allowed) + " tensor",
                          f"{t.dim()}-D tensor of shape {_shape(t)}")
        if dtypes is not None and t.dtype not in dtypes:
            self.fail(name, "dtype " + "/".join(sorted(dtype_name(d) for d in dtypes)),
                      f"dtype {dtype_name(t.dtype)}")
        if last_contiguous and t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
            self.fail(name, "a tensor whose last dimension is contiguous (stride 1)",
                      f"strides {tuple(t.stride())}")
        return t

    def shape(self, name: str, t: torch.Tensor, expected: Sequence[Any]) -> None:
        if tuple(t.shape) != tuple(expected):
            self.fail(name, f"shape {_fmt(expected)}", f"shape {_shape(t)}")

    def state(self, name: str, t: Any, rows: int | None, HV: int, K: int, V: int,
              v_first: bool, what: str) -> torch.Tensor:
        """A state or state pool: [rows, HV, K, V] (or [rows, HV, V, K]), inner dims dense."""
        t = self.tensor(name, t, ndim=4)
        inner = (HV, V, K) if v_first else (HV, K, V)
        layout = "[{}, HV={}, V={}, K={}]" if v_first else "[{}, HV={}, K={}, V={}]"
        exp = layout.format(rows if rows is not None else "slots", *inner)
        if tuple(t.shape[1:]) != inner or (rows is not None and t.shape[0] != rows):
            hint = ""
            if tuple(t.shape[1:]) == (HV, K, V) and v_first and K != V:
                hint = " (this is the [K, V] layout: pass state_v_first=False)"
            elif tuple(t.shape[1:]) == (HV, V, K) and not v_first and K != V:
                hint = " (this is the [V, K] layout: pass state_v_first=True)"
            self.fail(name, f"{what} of shape {exp}", f"shape {_shape(t)}{hint}")
        s = t.stride()
        if s[3] != 1 or s[2] != t.shape[3] or s[1] != t.shape[2] * t.shape[3]:
            self.fail(name, f"{what} whose [HV, {'V, K' if v_first else 'K, V'}] block per "
                      "row is contiguous (any stride between rows)", f"strides {tuple(s)}")
        return t

    def cu_seqlens(self, cu: Any, B: int, T: int) -> int:
        cu = self.tensor("cu_seqlens", cu, ndim=1, dtypes=INDEX_DTYPES, last_contiguous=False)
        if cu.shape[0] < 2:
            self.fail("cu_seqlens", "shape [N+1] with N >= 1", f"shape {_shape(cu)}")
        if B != 1:
            self.fail("q", "batch size B == 1 when cu_seqlens is given", f"B = {B}")
        return cu.shape[0] - 1

    def indices(self, name: str, t: Any, N: int, ndim: Sequence[int] = (1,)) -> torch.Tensor:
        t = self.tensor(name, t, ndim=tuple(ndim), dtypes=INDEX_DTYPES, last_contiguous=False)
        if t.shape[0] != N:
            self.fail(name, f"first dimension N = {N} (one row per sequence)",
                      f"shape {_shape(t)}")
        return t

    def head_vector(self, name: str, t: Any, HV: int) -> torch.Tensor:
        t = self.tensor(name, t, ndim=1, last_contiguous=True)
        if t.shape[0] != HV:
            self.fail(name, f"shape [HV] = [{HV}]", f"shape {_shape(t)}")
        return t


def _qkv(c: _Checker, q: Any, k: Any, v: Any) -> tuple[int, int, int, int, int, int]:
    q = c.tensor("q", q, ndim=4)
    k = c.tensor("k", k, ndim=4)
    v = c.tensor("v", v, ndim=4)
    B, T, H, K = q.shape
    c.shape("k", k, (B, T, H, K))
    if v.shape[0] != B or v.shape[1] != T:
        c.fail("v", f"shape [B={B}, T={T}, HV, V]", f"shape {_shape(v)}")
    HV, V = v.shape[2], v.shape[3]
    if k.dtype != q.dtype or v.dtype != q.dtype:
        bad, t = ("k", k) if k.dtype != q.dtype else ("v", v)
        c.fail(bad, f"dtype {dtype_name(q.dtype)} (the dtype of q)", f"dtype {dtype_name(t.dtype)}")
    if H == 0 or HV % H != 0:
        c.fail("v", f"a number of value heads HV divisible by the key heads H = {H}",
               f"HV = {HV}")
    if K == 0 or V == 0:
        c.fail("q" if K == 0 else "v", "non-empty head dimensions", f"K = {K}, V = {V}")
    return B, T, H, K, HV, V


def _per_head(c: _Checker, name: str, t: Any, B: int, T: int, HV: int) -> torch.Tensor:
    t = c.tensor(name, t, ndim=3)
    c.shape(name, t, (B, T, HV))
    return t


def _gate_params(c: _Checker, A_log: Any, dt_bias: Any, HV: int, required: bool) -> None:
    if A_log is None:
        if required:
            c.fail("A_log", f"a tensor of shape [HV] = [{HV}] (use_gate_in_kernel=True)", "None")
    else:
        c.head_vector("A_log", A_log, HV)
    if dt_bias is not None:
        c.head_vector("dt_bias", dt_bias, HV)


def _scale(c: _Checker, scale: Any) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        c.fail("scale", "a float or None", type(scale).__name__)


def _flags(**named: Any) -> frozenset[str]:
    return frozenset(name for name, on in named.items() if on)


# -- op 1 ----------------------------------------------------------------------------------
def validate_chunk_gated_delta_rule(args: Sequence[Any], probe: DeviceProbe) -> CallMeta:
    (q, k, v, g, beta, scale, initial_state, output_final_state, l2norm, beta_sigmoid,
     neg_eigval, v_first, cu_seqlens, gate_in_kernel, A_log, dt_bias) = args
    op = "chunk_gated_delta_rule"
    c = _Checker(op, q.device if isinstance(q, torch.Tensor) else torch.device("cpu"))
    B, T, H, K, HV, V = _qkv(c, q, k, v)
    if g is None:
        if gate_in_kernel:
            c.fail("g", f"the raw gate input of shape [B, T, HV] = [{B}, {T}, {HV}] "
                   "(use_gate_in_kernel=True)", "None")
    else:
        _per_head(c, "g", g, B, T, HV)
    if beta is None:
        if beta_sigmoid:
            c.fail("beta", "raw beta logits of shape [B, T, HV] (use_beta_sigmoid_in_kernel=True)",
                   "None")
    else:
        _per_head(c, "beta", beta, B, T, HV)
    _scale(c, scale)
    if gate_in_kernel:
        _gate_params(c, A_log, dt_bias, HV, required=True)
    N = c.cu_seqlens(cu_seqlens, B, T) if cu_seqlens is not None else B
    state_dtype = None
    if initial_state is not None:
        st = c.state("initial_state", initial_state, N, HV, K, V, bool(v_first),
                     "initial state (one per sequence)")
        state_dtype = st.dtype
    flags = _flags(cu_seqlens=cu_seqlens is not None, initial_state=initial_state is not None,
                   output_final_state=output_final_state, l2norm=l2norm,
                   gate_in_kernel=gate_in_kernel, beta_sigmoid=beta_sigmoid,
                   neg_eigval=neg_eigval and beta_sigmoid, state_v_first=v_first,
                   no_gate=g is None, no_beta=beta is None)
    return CallMeta(op=op, probe=probe, dtype=v.dtype, state_dtype=state_dtype, K=K, V=V, H=H,
                    HV=HV, flags=flags, tokens=B * T)


def values_chunk_gated_delta_rule(args: Sequence[Any]) -> None:
    _check_cu_seqlens("chunk_gated_delta_rule", args[12], args[0].shape[1])


# -- op 2 ----------------------------------------------------------------------------------
def validate_fused_recurrent_gated_delta_rule(args: Sequence[Any], probe: DeviceProbe) -> CallMeta:
    (q, k, v, g, beta, scale, initial_state, output_final_state, l2norm, gate_in_kernel, A_log,
     dt_bias, beta_sigmoid, neg_eigval, v_first, cu_seqlens, indices, num_accepted,
     inplace) = args
    op = "fused_recurrent_gated_delta_rule"
    c = _Checker(op, q.device if isinstance(q, torch.Tensor) else torch.device("cpu"))
    B, T, H, K, HV, V = _qkv(c, q, k, v)
    if g is None:
        if gate_in_kernel:
            c.fail("g", "the raw gate input of shape [B, T, HV] (use_gate_in_kernel=True)", "None")
    else:
        _per_head(c, "g", g, B, T, HV)
    if beta is None:
        if beta_sigmoid:
            c.fail("beta", "raw beta logits of shape [B, T, HV] (use_beta_sigmoid_in_kernel=True)",
                   "None")
    else:
        _per_head(c, "beta", beta, B, T, HV)
    _scale(c, scale)
    if gate_in_kernel:
        _gate_params(c, A_log, dt_bias, HV, required=True)
    N = c.cu_seqlens(cu_seqlens, B, T) if cu_seqlens is not None else B
    state_dtype = None
    spec = False
    if indices is not None:
        if initial_state is None:
            c.fail("initial_state", "a state pool [slots, HV, ...] when ssm_state_indices is given",
                   "None")
        idx = c.indices("ssm_state_indices", indices, N, ndim=(1, 2))
        spec = idx.dim() == 2
        if spec and cu_seqlens is None and idx.shape[1] < T:
            c.fail("ssm_state_indices", f"shape [N, T_max] with T_max >= T = {T}",
                   f"shape {_shape(idx)}")
        st = c.state("initial_state", initial_state, None, HV, K, V, bool(v_first), "state pool")
        state_dtype = st.dtype
    elif initial_state is not None:
        st = c.state("initial_state", initial_state, N, HV, K, V, bool(v_first),
                     "initial state (one per sequence)")
        state_dtype = st.dtype
    if num_accepted is not None:
        if not spec:
            c.fail("num_accepted_tokens", "None unless ssm_state_indices is [N, T_max]",
                   "a tensor" + ("" if indices is not None else " with no ssm_state_indices"))
        c.indices("num_accepted_tokens", num_accepted, N, ndim=(1,))
    if inplace and initial_state is None:
        c.fail("initial_state", "a state (pool) to update when inplace_final_state=True", "None")
    flags = _flags(cu_seqlens=cu_seqlens is not None, initial_state=initial_state is not None,
                   output_final_state=output_final_state, l2norm=l2norm,
                   gate_in_kernel=gate_in_kernel, beta_sigmoid=beta_sigmoid,
                   neg_eigval=neg_eigval and beta_sigmoid, state_v_first=v_first,
                   pool=indices is not None, spec_indices=spec,
                   num_accepted_tokens=num_accepted is not None, inplace_final_state=inplace,
                   no_gate=g is None, no_beta=beta is None)
    return CallMeta(op=op, probe=probe, dtype=v.dtype, state_dtype=state_dtype, K=K, V=V, H=H,
                    HV=HV, flags=flags, tokens=B * T)


def values_fused_recurrent_gated_delta_rule(args: Sequence[Any]) -> None:
    op = "fused_recurrent_gated_delta_rule"
    q, initial_state, cu, idx, nat = args[0], args[6], args[15], args[16], args[17]
    _check_cu_seqlens(op, cu, q.shape[1])
    if idx is not None:
        _check_indices(op, "ssm_state_indices", idx, initial_state.shape[0])
    if nat is not None:
        lo = int(nat.min()) if nat.numel() else 1
        hi = int(nat.max()) if nat.numel() else 1
        if lo < 1 or hi > idx.shape[1]:
            raise GDNInputError("num_accepted_tokens", f"values in [1, {idx.shape[1]}]",
                                f"values in [{lo}, {hi}]", op=op)


# -- op 3 ----------------------------------------------------------------------------------
def _raw_gate(c: _Checker, name: str, t: Any, B: int, T: int, HV: int) -> None:
    t = c.tensor(name, t, ndim=(2, 3))
    ok = tuple(t.shape) == (B, T, HV) if t.dim() == 3 else tuple(t.shape) == (B * T, HV)
    if not ok:
        c.fail(name, f"shape [B, T, HV] = [{B}, {T}, {HV}] or [B*T, HV] = [{B * T}, {HV}]",
               f"shape {_shape(t)}")


def validate_fused_sigmoid_gating_delta_rule_update(args: Sequence[Any],
                                                    probe: DeviceProbe) -> CallMeta:
    (A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k, v, b, pool, indices, scale,
     l2norm, cu_seqlens, v_first) = args
    op = "fused_sigmoid_gating_delta_rule_update"
    c = _Checker(op, q.device if isinstance(q, torch.Tensor) else torch.device("cpu"))
    B, T, H, K, HV, V = _qkv(c, q, k, v)
    _raw_gate(c, "a", a, B, T, HV)
    _raw_gate(c, "b", b, B, T, HV)
    c.head_vector("A_log", A_log, HV)
    if dt_bias is not None:
        c.head_vector("dt_bias", dt_bias, HV)
    for name, val in (("softplus_beta", softplus_beta), ("softplus_threshold", softplus_threshold)):
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            c.fail(name, "a number", type(val).__name__)
    if softplus_beta == 0:
        c.fail("softplus_beta", "a non-zero number", "0")
    _scale(c, scale)
    N = c.cu_seqlens(cu_seqlens, B, T) if cu_seqlens is not None else B
    st = c.state("initial_state_source", pool, None, HV, K, V, bool(v_first), "state pool")
    c.indices("initial_state_indices", indices, N, ndim=(1,))
    flags = _flags(cu_seqlens=cu_seqlens is not None, l2norm=l2norm, state_v_first=v_first,
                   pool=True, gate_in_kernel=True, beta_sigmoid=True, initial_state=True,
                   inplace_final_state=True)
    return CallMeta(op=op, probe=probe, dtype=v.dtype, state_dtype=st.dtype, K=K, V=V, H=H,
                    HV=HV, flags=flags, tokens=B * T)


def values_fused_sigmoid_gating_delta_rule_update(args: Sequence[Any]) -> None:
    op = "fused_sigmoid_gating_delta_rule_update"
    _check_cu_seqlens(op, args[13], args[5].shape[1])
    _check_indices(op, "initial_state_indices", args[10], args[9].shape[0])


# -- op 4 ----------------------------------------------------------------------------------
def packed_decode_dims(mixed_qkv: torch.Tensor, pool: torch.Tensor,
                       v_first: bool) -> tuple[int, int, int, int]:
    """(H, K, HV, V) of a packed decode call, read from the pool and the packed width."""
    HV = pool.shape[1]
    V, K = (pool.shape[2], pool.shape[3]) if v_first else (pool.shape[3], pool.shape[2])
    rest = mixed_qkv.shape[-1] - HV * V
    H = rest // (2 * K) if K else 0
    return H, K, HV, V


def validate_fused_recurrent_gated_delta_rule_packed_decode(args: Sequence[Any],
                                                            probe: DeviceProbe) -> CallMeta:
    (mixed_qkv, a, b, A_log, dt_bias, scale, pool, out, indices, l2norm, v_first) = args
    op = "fused_recurrent_gated_delta_rule_packed_decode"
    c = _Checker(op, mixed_qkv.device if isinstance(mixed_qkv, torch.Tensor)
                 else torch.device("cpu"))
    c.tensor("mixed_qkv", mixed_qkv, ndim=2)
    pool = c.tensor("initial_state", pool, ndim=4)
    N = mixed_qkv.shape[0]
    H, K, HV, V = packed_decode_dims(mixed_qkv, pool, bool(v_first))
    width = mixed_qkv.shape[1]
    if H <= 0 or 2 * H * K + HV * V != width or HV % H != 0:
        c.fail("mixed_qkv", f"width 2*H*K + HV*V with K={K}, HV={HV}, V={V} (from the "
               f"{'[slots, HV, V, K]' if v_first else '[slots, HV, K, V]'} pool) and HV % H == 0",
               f"width {width}")
    c.state("initial_state", pool, None, HV, K, V, bool(v_first), "state pool")
    for name, t in (("a", a), ("b", b)):
        t = c.tensor(name, t, ndim=2)
        c.shape(name, t, (N, HV))
    c.head_vector("A_log", A_log, HV)
    if dt_bias is not None:
        c.head_vector("dt_bias", dt_bias, HV)
    _scale(c, scale)
    out = c.tensor("out", out, ndim=4, dtypes=frozenset({mixed_qkv.dtype}))
    if tuple(out.shape) != (N, 1, HV, V):
        hint = ""
        if tuple(out.shape) == (N, 1, HV, K) and K != V:
            hint = (" (the pool looks transposed: pass state_v_first="
                     f"{not v_first} for a {'[slots, HV, K, V]' if v_first else '[slots, HV, V, K]'}"
                     " pool)")
        c.fail("out", f"shape [N, 1, HV, V] = [{N}, 1, {HV}, {V}] (V read from the pool)",
               f"shape {_shape(out)}{hint}")
    c.indices("ssm_state_indices", indices, N, ndim=(1,))
    flags = _flags(l2norm=l2norm, state_v_first=v_first, pool=True, gate_in_kernel=True,
                   beta_sigmoid=True, initial_state=True, inplace_final_state=True)
    return CallMeta(op=op, probe=probe, dtype=mixed_qkv.dtype, state_dtype=pool.dtype, K=K, V=V,
                    H=H, HV=HV, flags=flags, tokens=N)


def values_fused_recurrent_gated_delta_rule_packed_decode(args: Sequence[Any]) -> None:
    _check_indices("fused_recurrent_gated_delta_rule_packed_decode", "ssm_state_indices",
                   args[8], args[6].shape[0])


# -- op 5 ----------------------------------------------------------------------------------
def validate_fused_gdn_gating(args: Sequence[Any], probe: DeviceProbe) -> CallMeta:
    A_log, a, b, dt_bias, beta, threshold = args
    op = "fused_gdn_gating"
    c = _Checker(op, a.device if isinstance(a, torch.Tensor) else torch.device("cpu"))
    a = c.tensor("a", a, ndim=2)
    N, HV = a.shape
    b = c.tensor("b", b, ndim=2)
    c.shape("b", b, (N, HV))
    c.head_vector("A_log", A_log, HV)
    if dt_bias is not None:
        c.head_vector("dt_bias", dt_bias, HV)
    for name, val in (("beta", beta), ("threshold", threshold)):
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            c.fail(name, "a number", type(val).__name__)
    if beta == 0:
        c.fail("beta", "a non-zero softplus beta", "0")
    return CallMeta(op=op, probe=probe, dtype=b.dtype, HV=HV, tokens=N)


# -- op 6 ----------------------------------------------------------------------------------
def validate_fused_qkvzba_split_reshape_cat(args: Sequence[Any], probe: DeviceProbe) -> CallMeta:
    mixed_qkvz, mixed_ba, Hqk, Hv, Dk, Dv, layout = args
    op = "fused_qkvzba_split_reshape_cat"
    c = _Checker(op, mixed_qkvz.device if isinstance(mixed_qkvz, torch.Tensor)
                 else torch.device("cpu"))
    for name, val in (("num_heads_qk", Hqk), ("num_heads_v", Hv), ("head_qk", Dk),
                      ("head_v", Dv)):
        if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
            c.fail(name, "a positive int", repr(val))
    if Hv % Hqk != 0:
        c.fail("num_heads_v", f"a multiple of num_heads_qk = {Hqk}", str(Hv))
    if layout not in ("interleaved", "contiguous"):
        c.fail("layout", "'interleaved' or 'contiguous'", repr(layout))
    x = c.tensor("mixed_qkvz", mixed_qkvz, ndim=2)
    N = x.shape[0]
    c.shape("mixed_qkvz", x, (N, 2 * Hqk * Dk + 2 * Hv * Dv))
    ba = c.tensor("mixed_ba", mixed_ba, ndim=2)
    c.shape("mixed_ba", ba, (N, 2 * Hv))
    return CallMeta(op=op, probe=probe, dtype=x.dtype, K=Dk, V=Dv, H=Hqk, HV=Hv, tokens=N,
                    flags=frozenset({layout}))


# -- op 7 ----------------------------------------------------------------------------------
def validate_l2norm(args: Sequence[Any], probe: DeviceProbe) -> CallMeta:
    x, eps = args
    op = "l2norm"
    c = _Checker(op, x.device if isinstance(x, torch.Tensor) else torch.device("cpu"))
    x = c.tensor("x", x, ndim=None, last_contiguous=False)
    if x.dim() == 0:
        c.fail("x", "a tensor with at least one dimension", "a 0-D tensor")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        c.fail("eps", "a non-negative float", repr(eps))
    return CallMeta(op=op, probe=probe, dtype=x.dtype, K=x.shape[-1],
                    tokens=x.numel() // max(x.shape[-1], 1))


# -- value checks --------------------------------------------------------------------------
def _check_cu_seqlens(op: str, cu: torch.Tensor | None, T: int) -> None:
    if cu is None:
        return
    vals = cu.tolist()
    if vals[0] != 0 or vals[-1] != T or any(b < a for a, b in zip(vals, vals[1:])):
        shown = vals if len(vals) <= 8 else vals[:4] + ["..."] + vals[-3:]
        raise GDNInputError("cu_seqlens", f"non-decreasing offsets from 0 to T = {T}",
                            f"{shown}", op=op)


def _check_indices(op: str, name: str, idx: torch.Tensor, slots: int) -> None:
    if idx.numel() == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < -1 or hi >= slots:
        raise GDNInputError(name, f"pool slots in [0, {slots}) or -1 (padding)",
                            f"values in [{lo}, {hi}]", op=op)
