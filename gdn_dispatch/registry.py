"""The backend registry: capability declarations, one generic checker, selection and caching.

A backend declares, once, an ``OpSupport`` per op it serves (devices, archs, dtypes, head
dims, flags it cannot take).  ``OpSupport.reasons(meta)`` turns that data plus a call's
``CallMeta`` into a list of reasons the backend cannot serve the call (empty = can serve).
Selection: a forced backend (``use_backend`` in this thread, then ``GDN_BACKEND_<OP>``, then
``GDN_BACKEND``) or else the best backend that serves the call.  A forced backend that cannot
serve a call raises ``GDNBackendError`` with the reasons; it never falls back silently.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import GDNBackendError
from .probe import DeviceProbe

__all__ = [
    "OPS", "CallMeta", "OpSupport", "Backend", "register_backend", "get_backend",
    "registered_backends", "use_backend", "forced_backend_name", "select", "reasons_for_all",
    "clear_caches",
]

OPS: tuple[str, ...] = (
    "chunk_gated_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "fused_sigmoid_gating_delta_rule_update",
    "fused_recurrent_gated_delta_rule_packed_decode",
    "fused_gdn_gating",
    "fused_qkvzba_split_reshape_cat",
    "l2norm",
)

_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
                torch.float64: "fp64"}


def dtype_name(dtype: torch.dtype | None) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


@dataclass(frozen=True)
class CallMeta:
    """What selection needs to know of one validated call (no tensor data).

    ``flags`` holds the names of the optional features the call uses, e.g. "cu_seqlens",
    "initial_state", "output_final_state", "l2norm", "gate_in_kernel", "beta_sigmoid",
    "neg_eigval", "state_v_first", "pool", "spec_indices", "num_accepted_tokens",
    "inplace_final_state".
    """

    op: str
    probe: DeviceProbe
    dtype: torch.dtype
    state_dtype: torch.dtype | None = None
    K: int | None = None
    V: int | None = None
    H: int | None = None
    HV: int | None = None
    flags: frozenset[str] = frozenset()
    tokens: int | None = None  # total tokens (B*T), where meaningful
    # Per-decision scratch space for the backend: the dispatcher creates one CallMeta per
    # distinct call metadata (shapes, strides, dtypes, devices, flags) and reuses it for every
    # repeated call, so a backend may keep here what it derives from metadata alone (launch
    # grids, configs, strides).  Never tensor data or pointers.
    scratch: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class OpSupport:
    """What one backend serves for one op, as data.  ``None`` means "any"."""

    vendors: frozenset[str] = frozenset({"cpu", "nvidia", "amd"})
    interpreter_cpu: bool = False  # serves CPU tensors when Triton runs in its interpreter
    dtypes: frozenset[torch.dtype] | None = None
    state_dtypes: frozenset[torch.dtype] | None = None
    head_dims: frozenset[int] | None = None  # allowed K and V
    max_head_dim: int | None = None
    unsupported_flags: frozenset[str] = frozenset()
    archs: frozenset[str] | None = None
    min_capability: tuple[int, int] | None = None
    min_shared_mem: int | None = None
    bf16_needs_hardware: bool = True
    extra: Callable[[CallMeta], list[str]] | None = None  # special cases append here

    def reasons(self, meta: CallMeta) -> list[str]:
        """Every reason this support table cannot serve ``meta`` (empty list: it can)."""
        p = meta.probe
        out: list[str] = []
        on_interpreter = p.vendor == "cpu" and self.interpreter_cpu and p.interpreter
        if p.vendor not in self.vendors and not on_interpreter:
            if p.vendor == "cpu" and self.interpreter_cpu:
                out.append("no GPU (CPU tensors run only under TRITON_INTERPRET=1)")
            elif p.vendor == "cpu":
                out.append("no GPU: serves " + "/".join(sorted(self.vendors)) + " devices only")
            else:
                out.append(f"does not serve {p.vendor} devices (serves "
                           + "/".join(sorted(self.vendors)) + ")")
        if not on_interpreter and p.vendor != "cpu":
            if self.archs is not None and p.arch not in self.archs:
                out.append(f"arch {p.arch} is not served (serves {', '.join(sorted(self.archs))})")
            if self.min_capability is not None and p.vendor == "nvidia" and (
                    p.capability is None or p.capability < self.min_capability):
                cap = "unknown" if p.capability is None else f"{p.capability[0]}.{p.capability[1]}"
                need = f"{self.min_capability[0]}.{self.min_capability[1]}"
                out.append(f"requires compute capability >= {need}, device has {cap}")
            if self.min_shared_mem is not None and p.shared_mem_per_block < self.min_shared_mem:
                out.append(f"requires {self.min_shared_mem} bytes of shared memory per block, "
                           f"device has {p.shared_mem_per_block}")
        if self.dtypes is not None and meta.dtype not in self.dtypes:
            out.append(f"dtype {dtype_name(meta.dtype)} not served (serves "
                       + ", ".join(sorted(dtype_name(d) for d in self.dtypes)) + ")")
        if (self.bf16_needs_hardware and meta.dtype == torch.bfloat16 and not p.bf16
                and not on_interpreter):
            out.append(f"bf16 inputs need bf16 hardware; {p.arch} has none")
        if (self.state_dtypes is not None and meta.state_dtype is not None
                and meta.state_dtype not in self.state_dtypes):
            out.append(f"state dtype {dtype_name(meta.state_dtype)} not served (serves "
                       + ", ".join(sorted(dtype_name(d) for d in self.state_dtypes)) + ")")
        for dim_name, dim in (("K", meta.K), ("V", meta.V)):
            if dim is None:
                continue
            if self.head_dims is not None and dim not in self.head_dims:
                out.append(f"head dim {dim_name}={dim} not served (serves "
                           + ", ".join(str(d) for d in sorted(self.head_dims)) + ")")
            elif self.max_head_dim is not None and dim > self.max_head_dim:
                out.append(f"head dim {dim_name}={dim} exceeds the maximum {self.max_head_dim}")
        bad = sorted(meta.flags & self.unsupported_flags)
        if bad:
            out.append("flags not served: " + ", ".join(bad))
        if self.extra is not None:
            out.extend(self.extra(meta))
        return out


class Backend:
    """Base class of a backend.

    Subclasses set ``name``, ``priority`` (higher wins among preferred backends),
    ``preferred_vendors`` (devices on which automatic selection picks this backend first),
    ``requires_triton`` and ``support`` (op name -> OpSupport), and implement ``_load(op)``
    returning the callable that runs the op.  The callable takes the op's public arguments
    by keyword (validated, ``scale`` resolved to a float) plus ``meta`` (the CallMeta).
    """

    name: str = "?"
    priority: int = 0
    preferred_vendors: frozenset[str] = frozenset()
    requires_triton: bool = False
    vendors: frozenset[str] = frozenset({"cpu", "nvidia", "amd"})  # devices served at all
    interpreter_cpu: bool = False  # serves CPU tensors under TRITON_INTERPRET=1
    description: str = ""
    support: dict[str, OpSupport] = {}

    def __init__(self) -> None:
        self._impls: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    # -- capability ----------------------------------------------------------------------
    def backend_reasons(self, probe: DeviceProbe) -> list[str]:
        """Reasons this backend is unusable on the device at all (missing packages...)."""
        if self.requires_triton and not probe.triton_available:
            return ["Triton is not importable"]
        return []

    def reasons(self, meta: CallMeta) -> list[str]:
        """Every reason this backend cannot serve the call described by ``meta``."""
        out = list(self.backend_reasons(meta.probe))
        sup = self.support.get(meta.op)
        if sup is None:
            out.append(f"op {meta.op} is not implemented by this backend")
            return out
        out.extend(sup.reasons(meta))
        return out

    def usable_reasons(self, probe: DeviceProbe) -> list[str]:
        """Reasons this backend serves no op at all on ``probe`` (for ``gdn.backends()``)."""
        out = list(self.backend_reasons(probe))
        on_interpreter = probe.vendor == "cpu" and self.interpreter_cpu and probe.interpreter
        if probe.vendor not in self.vendors and not on_interpreter:
            if probe.vendor == "cpu" and self.interpreter_cpu:
                out.append("no GPU (CPU tensors run only under TRITON_INTERPRET=1)")
            elif probe.vendor == "cpu":
                out.append("no GPU")
            else:
                out.append(f"does not serve {probe.vendor} devices")
        if not self.support:
            out.append("no ops implemented yet")
        return out

    # -- implementation ------------------------------------------------------------------
    def impl(self, op: str) -> Callable[..., Any]:
        fn = self._impls.get(op)
        if fn is None:
            with self._lock:
                fn = self._impls.get(op)
                if fn is None:
                    fn = self._load(op)
                    self._impls[op] = fn
        return fn

    def _load(self, op: str) -> Callable[..., Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<gdn backend {self.name}>"


# -- registry ------------------------------------------------------------------------------
_BACKENDS: dict[str, Backend] = {}
_ORDER_CACHE: dict[str, list[Backend]] = {}


def register_backend(backend: Backend) -> Backend:
    """Add a backend (replacing one of the same name) and drop cached decisions."""
    _BACKENDS[backend.name] = backend
    clear_caches()
    return backend


def get_backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise GDNBackendError("use_backend", f"unknown backend {name!r}; registered: "
                              + ", ".join(_BACKENDS), {}) from None


def registered_backends() -> list[Backend]:
    return list(_BACKENDS.values())


def _ordered_for(vendor: str) -> list[Backend]:
    """Backends in automatic-selection order for a vendor: preferred ones first, by priority."""
    order = _ORDER_CACHE.get(vendor)
    if order is None:
        order = sorted(_BACKENDS.values(),
                       key=lambda b: (vendor not in b.preferred_vendors, -b.priority, b.name))
        _ORDER_CACHE[vendor] = order
    return order


# -- forcing -------------------------------------------------------------------------------
_LOCAL = threading.local()
_USE_LOCK = threading.Lock()
_USE_ACTIVE = [0]  # use_backend blocks open in any thread (0: no thread-local lookup needed)


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force ``name`` for every op called in this thread inside the block (None: un-force)."""
    if name is not None:
        get_backend(name)  # unknown names fail here, not at the first call
    stack = getattr(_LOCAL, "stack", None)
    if stack is None:
        stack = _LOCAL.stack = []
    stack.append(name)
    with _USE_LOCK:
        _USE_ACTIVE[0] += 1
    try:
        yield
    finally:
        stack.pop()
        with _USE_LOCK:
            _USE_ACTIVE[0] -= 1


def _env_reader() -> Callable[[str], str | None]:
    """A fast ``os.environ.get``: one dict lookup on the raw environment where CPython keeps
    one (POSIX), else the plain call.  Reads the live environment on every call."""
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict) and os.name == "posix" and all(
            isinstance(k, bytes) for k in list(data)[:1]):
        encoded: dict[str, bytes] = {}

        def get(name: str) -> str | None:
            key = encoded.get(name)
            if key is None:
                key = encoded[name] = os.fsencode(name)
            raw = data.get(key)
            return None if raw is None else os.fsdecode(raw)

        return get
    return os.environ.get


env_get = _env_reader()
_ENV_KEYS = {op: "GDN_BACKEND_" + op.upper() for op in OPS}


def forced_backend_name(op: str) -> tuple[str | None, str | None]:
    """(name, source) of the backend forced for ``op`` in this thread, or (None, None)."""
    if _USE_ACTIVE[0]:
        stack = getattr(_LOCAL, "stack", None)
        if stack:
            top = stack[-1]
            if top is not None:
                return top, "use_backend()"
            return None, None
    key = _ENV_KEYS.get(op) or ("GDN_BACKEND_" + op.upper())
    name = env_get(key)
    if name:
        return name, key
    name = env_get("GDN_BACKEND")
    if name:
        return name, "GDN_BACKEND"
    return None, None


# -- selection -----------------------------------------------------------------------------
def reasons_for_all(meta: CallMeta) -> dict[str, list[str]]:
    """Every registered backend's reasons for ``meta``, in automatic-selection order."""
    return {b.name: b.reasons(meta) for b in _ordered_for(meta.probe.vendor)}


def select(meta: CallMeta, forced: str | None = None, source: str | None = None) -> Backend:
    """The backend that runs ``meta``; raises GDNBackendError when none (or the forced) can."""
    if forced is not None:
        backend = _BACKENDS.get(forced)
        if backend is None:
            raise GDNBackendError(meta.op, f"backend {forced!r} forced by {source} is not "
                                  "registered; registered: " + ", ".join(_BACKENDS), {})
        why = backend.reasons(meta)
        if why:
            raise GDNBackendError(meta.op, f"backend {forced!r} forced by {source} cannot serve "
                                  "this call (no fallback when forced)", {forced: why})
        return backend
    for backend in _ordered_for(meta.probe.vendor):
        if not backend.reasons(meta):
            return backend
    raise GDNBackendError(meta.op, "no registered backend can serve this call",
                          reasons_for_all(meta))


def clear_caches() -> None:
    """Drop cached orders and decisions (after registering a backend, in tests)."""
    _ORDER_CACHE.clear()
    from . import dispatch  # local import: dispatch imports this module

    dispatch.clear_decision_cache()


@dataclass
class Explanation:
    """What ``gdn.explain`` returns: the chosen backend and why each other was passed over."""

    op: str
    chosen: str | None
    forced_by: str | None
    reasons: dict[str, list[str]] = field(default_factory=dict)
    meta: CallMeta | None = None
    error: str | None = None

    def __str__(self) -> str:
        lines = [f"{self.op}: " + (f"runs on {self.chosen}" if self.chosen else "no backend")
                 + (f" (forced by {self.forced_by})" if self.forced_by else "")]
        if self.error:
            lines.append(f"  error: {self.error}")
        for name, why in self.reasons.items():
            if name == self.chosen:
                continue
            lines.append(f"  {name}: " + ("; ".join(why) if why else
                                          "could serve, lower preference"))
        return "\n".join(lines)

    __repr__ = __str__
