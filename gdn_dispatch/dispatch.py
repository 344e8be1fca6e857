"""The per-call path: metadata key -> cached (validated meta, backend impl) -> run.

Validation reads metadata only, so its result and the selection are cached by a key made of
each tensor's shape, strides, dtype and device plus the call's non-tensor arguments and
the forced backend name.  Before building that key, a repeated call is matched against the
op's most recent decisions by a guard (``fast_path.py``: one C-level tensor-metadata check
plus the non-tensor arguments), so the common case costs no key build at all.  Value
checks (which read tensor contents) run only for CPU tensors or with GDN_CHECK_VALUES=1, and
never during CUDA-graph capture.  Nothing here synchronizes the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import fast_path, registry
from .probe import SIM_ACTIVE, DeviceProbe, probe_device, simulated_probe
from .registry import CallMeta, Explanation

__all__ = ["OpSpec", "run", "explain_call", "clear_decision_cache", "OP_SPECS"]

_MAX_CACHE = 4096


@dataclass(frozen=True)
class OpSpec:
    """How the dispatcher handles one op: parameter order, validation, value checks."""

    name: str
    params: tuple[str, ...]          # every parameter, in API order (keyword-only ones too)
    validate: Callable[[Sequence[Any], DeviceProbe], CallMeta]
    values: Callable[[Sequence[Any]], None] | None
    device_arg: int                  # index of the tensor whose device is the call's device
    scale_arg: int | None = None     # index of ``scale`` (None -> K ** -0.5), if any
    value_args: tuple[int, ...] = ()  # indices of args the value checks read (None = skip)


OP_SPECS: dict[str, OpSpec] = {}

_DECISIONS: dict[tuple, tuple[Callable[..., Any], CallMeta]] = {}


def clear_decision_cache() -> None:
    """Forget every cached decision (and the guards that find them)."""
    _DECISIONS.clear()
    fast_path.clear()


def _key(args: Sequence[Any]) -> tuple:
    """Generic metadata key (used when an op has no generated key function)."""
    parts: list[Any] = []
    app = parts.append
    for a in args:
        if isinstance(a, torch.Tensor):
            app(a.shape)
            app(a.stride())
            app(a.dtype)
            app(a.device)  # not get_device(): CPU and meta both report -1
        else:
            app(a)
    return tuple(parts)


_KEY_FNS: dict[str, Callable[[Sequence[Any]], tuple]] = {}


def _tensor_params(op: str) -> set[str]:
    """Names of the op's tensor parameters, read from the public function's annotations."""
    import inspect

    from . import api

    sig = inspect.signature(api.PUBLIC_OPS[op])
    return {name for name, p in sig.parameters.items() if "Tensor" in str(p.annotation)}


def _key_fn(spec: OpSpec) -> Callable[[Sequence[Any], str | None], tuple]:
    """A key function unrolled for the op's parameters (no per-argument type tests).

    ``key(args, forced)`` is ``(op name, forced backend, one entry per argument)``: tensor
    parameters contribute (shape, strides, dtype, device) or None, the others their value.
    A non-tensor passed where a tensor belongs raises AttributeError, which ``run`` answers
    by validating without the cache (validation then names the argument)."""
    fn = _KEY_FNS.get(spec.name)
    if fn is None:
        tensors = _tensor_params(spec.name)
        names = [f"x{i}" for i in range(len(spec.params))]
        parts = [repr(spec.name), "forced"]
        for name, param in zip(names, spec.params):
            if param in tensors:
                parts.append(f"None if {name} is None else "
                             f"({name}.shape, {name}.stride(), {name}.dtype, {name}.device)")
            else:
                parts.append(name)
        src = (f"def key(a, forced):\n    {', '.join(names)}, = a\n"
               f"    return ({', '.join(parts)},)\n")
        scope: dict[str, Any] = {}
        exec(compile(src, f"<gdn key {spec.name}>", "exec"), scope)  # noqa: S102
        fn = _KEY_FNS[spec.name] = scope["key"]
    return fn


def _probe_of(spec: OpSpec, args: Sequence[Any]) -> DeviceProbe:
    sim = simulated_probe()
    if sim is not None:
        return sim
    dev = args[spec.device_arg]
    return probe_device(dev.device if isinstance(dev, torch.Tensor) else None)


def _decide(spec: OpSpec, args: Sequence[Any], forced: str | None,
            source: str | None) -> tuple[Callable[..., Any], CallMeta]:
    probe = _probe_of(spec, args)
    meta = spec.validate(args, probe)
    backend = registry.select(meta, forced, source)
    return backend.impl(spec.name), meta


def run(spec: OpSpec, args: tuple) -> Any:
    """Validate (cached), select (cached), value-check (CPU or opt-in) and run one call."""
    name = spec.name
    if _USE_ACTIVE[0]:  # some thread is inside use_backend: the full lookup
        forced, source = registry.forced_backend_name(name)
    else:  # inline of registry.forced_backend_name (same order; source only when needed)
        forced = _env_get(_ENV_KEYS[name]) or _env_get("GDN_BACKEND") or None
        source = None
    guards = _GUARDS.get(name)
    if guards and not _SIM_ACTIVE[0] and guards[0][0](args, forced):
        entry = guards[0][1]  # the op's most recent decision (the common case)
    else:
        entry = fast_path.match(name, args, forced)
        if entry is None:
            if forced is not None and source is None:
                forced, source = registry.forced_backend_name(name)
            entry = _slow_decision(spec, args, forced, source)
    impl, meta, check_values, scale = entry
    if check_values and (check_values == _VALUES_ALWAYS or (
            _env_get("GDN_CHECK_VALUES") in _TRUE
            and not torch.cuda.is_current_stream_capturing())):
        spec.values(args)  # CPU tensors always; CUDA ones (VALUES_OPT_IN) on request
    if scale is not None:
        i = spec.scale_arg
        args = (*args[:i], scale, *args[i + 1:])
    return impl(*args, meta=meta)


_env_get = registry.env_get
_ENV_KEYS = registry._ENV_KEYS
_USE_ACTIVE = registry._USE_ACTIVE
_VALUES_ALWAYS = fast_path.VALUES_ALWAYS
_TRUE = frozenset(("1", "true", "True", "yes"))
_GUARDS = fast_path._MEMO
_SIM_ACTIVE = SIM_ACTIVE


def _slow_decision(spec: OpSpec, args: tuple, forced: str | None,
                   source: str | None) -> fast_path.Entry:
    """The decision of a call the guards did not match: key lookup, else validate + select;
    the result becomes the op's newest guarded entry (never under a simulated device)."""
    key_fn = _KEY_FNS.get(spec.name) or _key_fn(spec)
    simulated = simulated_probe() is not None
    try:
        key = None if simulated else key_fn(args, forced)
        hit = _DECISIONS.get(key) if key is not None else None
    except (TypeError, AttributeError):  # unhashable or misplaced argument: no caching
        key = hit = None
    if hit is None:
        hit = _decide(spec, args, forced, source)
        if key is not None:
            if len(_DECISIONS) >= _MAX_CACHE:
                clear_decision_cache()
            _DECISIONS[key] = hit
    impl, meta = hit
    values = spec.values
    check_values = fast_path.VALUES_NEVER
    if values is not None and any(args[i] is not None for i in spec.value_args):
        dev = args[spec.device_arg]
        check_values = (fast_path.VALUES_OPT_IN if getattr(dev, "is_cuda", False)
                        else fast_path.VALUES_ALWAYS)
    scale = None
    if spec.scale_arg is not None and args[spec.scale_arg] is None:
        scale = meta.K ** -0.5
    entry = fast_path.Entry(impl, meta, check_values, scale)
    if key is not None:
        fast_path.remember(spec.name, args, forced, entry, _tensor_indices(spec))
    return entry


_TENSOR_INDICES: dict[str, frozenset[int]] = {}


def _tensor_indices(spec: OpSpec) -> frozenset[int]:
    """Positions of the op's tensor parameters."""
    found = _TENSOR_INDICES.get(spec.name)
    if found is None:
        names = _tensor_params(spec.name)
        found = _TENSOR_INDICES[spec.name] = frozenset(
            i for i, p in enumerate(spec.params) if p in names)
    return found


def explain_call(spec: OpSpec, args: tuple) -> Explanation:
    """Which backend would run this call and why the others were passed over; runs nothing."""
    from .errors import GDNInputError

    forced, source = registry.forced_backend_name(spec.name)
    probe = _probe_of(spec, args)
    try:
        meta = spec.validate(args, probe)
    except GDNInputError as exc:
        return Explanation(op=spec.name, chosen=None, forced_by=source, error=str(exc))
    reasons = registry.reasons_for_all(meta)
    chosen = None
    error = None
    if forced is not None:
        if forced not in reasons:
            error = f"forced backend {forced!r} is not registered"
        elif reasons[forced]:
            error = f"forced backend {forced!r} cannot serve this call"
        else:
            chosen = forced
    else:
        chosen = next((name for name, why in reasons.items() if not why), None)
        if chosen is None:
            error = "no registered backend can serve this call"
    return Explanation(op=spec.name, chosen=chosen, forced_by=source if forced else None,
                       reasons=reasons, meta=meta, error=error)
