"""Guards that find a repeated call's cached decision without building its metadata key.

The dispatcher's cache key (shape, strides, dtype and device of every tensor plus the other
arguments) costs a few microseconds of Python per call.  Engines repeat the same call
metadata layer after layer, so each op keeps its few most recent decisions together with a
guard: a function generated for the call's pattern (which tensor arguments are None, the
type of every other argument) that compares the non-tensor arguments and the forced backend
and then checks all tensors' metadata in one C++ call (PyTorch's ``TensorGuards``, the
check behind ``torch.compile``'s tensor guards: dispatch keys, dtype, device, sizes,
strides, ``requires_grad``).  A guard that does not match sends the call down the key path,
which is the source of truth; a guard may only ever be stricter than the key.

Where ``TensorGuards`` is missing (another PyTorch build), nothing is remembered and every
call takes the key path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .probe import _SIM, SIM_ACTIVE

__all__ = ["Entry", "match", "remember", "clear", "available", "VALUES_NEVER", "VALUES_OPT_IN",
           "VALUES_ALWAYS", "MAX_ENTRIES"]

try:  # private, but stable since PyTorch 2.1 (Dynamo's own tensor guards)
    from torch._C._dynamo.guards import TensorGuards as _TensorGuards
except Exception:  # noqa: BLE001  (any failure: no fast path)
    _TensorGuards = None

# value checks of an entry: none / only with GDN_CHECK_VALUES=1 (CUDA) / always (CPU)
VALUES_NEVER, VALUES_OPT_IN, VALUES_ALWAYS = 0, 1, 2
MAX_ENTRIES = 4
_CONSTANT_TYPES = (bool, int, float, str)


class Entry(NamedTuple):
    """A cached decision: the backend implementation, its ``CallMeta``, whether value checks
    run (``VALUES_*``), and the default ``scale`` to substitute (None: the call passes its
    own).  A tuple, so the dispatcher unpacks it in one step."""

    impl: Callable[..., Any]
    meta: Any
    check_values: int
    scale: float | None


_Guard = Callable[[tuple, Any], bool]
_MEMO: dict[str, tuple[tuple[_Guard, Entry], ...]] = {}
_TEMPLATES: dict[tuple, Callable[..., _Guard]] = {}


def available() -> bool:
    """Whether guards can be built with this PyTorch."""
    return _TensorGuards is not None


def clear() -> None:
    """Forget every remembered decision."""
    _MEMO.clear()


def match(op: str, args: tuple, forced: str | None) -> Entry | None:
    """The remembered entry whose guard accepts this call, or None."""
    guards = _MEMO.get(op)
    if not guards or (SIM_ACTIVE[0] and getattr(_SIM, "probe", None) is not None):
        return None
    for n, (guard, entry) in enumerate(guards):
        if guard(args, forced):
            if n:  # keep the hottest first
                _MEMO[op] = ((guard, entry),) + guards[:n] + guards[n + 1:]
            return entry
    return None


def remember(op: str, args: tuple, forced: str | None, entry: Entry,
             tensor_params: frozenset[int]) -> bool:
    """Make ``entry`` the newest remembered decision of ``op`` for calls with this metadata.

    ``tensor_params``: positions of the op's tensor parameters.  Returns False (nothing
    remembered) for argument types a guard does not cover."""
    if _TensorGuards is None:
        return False
    pattern: list[Any] = []
    tensors: list[torch.Tensor] = []
    constants: list[Any] = []
    for i, a in enumerate(args):
        if a is None:
            pattern.append(None)
        elif i in tensor_params:
            if type(a) is not torch.Tensor:  # subclasses and non-tensors: key path only
                return False
            pattern.append("T")
            tensors.append(a)
        elif type(a) in _CONSTANT_TYPES:
            pattern.append(type(a))
            constants.append(a)
        else:
            return False
    try:
        tensor_guard = _TensorGuards(
            *tensors, dynamic_dims_sizes=[list(t.shape) for t in tensors],
            dynamic_dims_strides=[list(t.stride()) for t in tensors])
    except Exception:  # noqa: BLE001  (a tensor the guard cannot describe)
        return False
    key = (len(args), forced is None, tuple(pattern))
    make = _TEMPLATES.get(key)
    if make is None:
        make = _TEMPLATES[key] = _template(len(args), forced is None, pattern)
    guard = make(forced, tensor_guard.check, *constants)
    _MEMO[op] = ((guard, entry),) + _MEMO.get(op, ())[:MAX_ENTRIES - 1]
    return True


def _template(n_args: int, unforced: bool, pattern: list[Any]) -> Callable[..., _Guard]:
    """Source-generated guard factory for one argument pattern:
    ``make(forced, tensors_check, *constants) -> guard(args, forced) -> bool``."""
    names = [f"x{i}" for i in range(n_args)]
    consts: list[str] = []
    tests = ["forced is None" if unforced else "forced == F"]
    tensor_names: list[str] = []
    for i, kind in enumerate(pattern):
        x = names[i]
        if kind is None:
            tests.append(f"{x} is None")
        elif kind == "T":
            tensor_names.append(x)
        else:
            c = f"c{i}"
            consts.append(c)
            if kind is bool:
                tests.append(f"{x} is {c}")
            else:
                tests.append(f"type({x}) is {kind.__name__} and {x} == {c}")
    tests.append(f"tensors_check({', '.join(tensor_names)})")
    src = (f"def make(F, tensors_check, {', '.join(consts)}):\n"
           f"    def guard(a, forced):\n"
           f"        {', '.join(names)}, = a\n"
           f"        return {' and '.join(tests)}\n"
           f"    return guard\n")
    scope: dict[str, Any] = {}
    exec(compile(src, "<gdn guard>", "exec"), scope)  # noqa: S102
    return scope["make"]
