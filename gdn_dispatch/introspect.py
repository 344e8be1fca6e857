"""``gdn.backends()`` and ``gdn.explain()``: the registry's answers as data."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from . import registry
from .dispatch import OP_SPECS, explain_call
from .errors import GDNInputError
from .probe import DeviceProbe, probe_device
from .registry import Explanation


def backends(device: torch.device | str | None = None,
             probe: DeviceProbe | None = None) -> list[dict[str, Any]]:
    """Every registered backend: its name, priority, ops, whether it is usable on ``device``
    (default: the current GPU, else the CPU) and, if not, why not."""
    p = probe if probe is not None else probe_device(device)
    out = []
    for b in registry.registered_backends():
        why = b.usable_reasons(p)
        out.append(dict(name=b.name, priority=b.priority, available=not why, reasons=why,
                        ops=sorted(b.support), preferred_on=sorted(b.preferred_vendors),
                        description=b.description))
    return out


def bind_call(op_name: str, args: tuple, kwargs: dict[str, Any]) -> tuple:
    """The full positional argument tuple of a call of ``op_name`` (defaults applied)."""
    from . import api

    if op_name not in OP_SPECS:
        raise GDNInputError("op_name", "one of " + ", ".join(OP_SPECS), repr(op_name))
    fn = api.PUBLIC_OPS[op_name]
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise GDNInputError("arguments", f"a valid call of {op_name}", str(exc),
                            op=op_name) from None
    bound.apply_defaults()
    return tuple(bound.arguments[p] for p in OP_SPECS[op_name].params)


def explain(op_name: str, *args: Any, **kwargs: Any) -> Explanation:
    """Which backend would run ``op_name(*args, **kwargs)`` and why each other was passed
    over.  Runs nothing and writes nothing.  ``str()`` of the result reads well."""
    full = bind_call(op_name, args, kwargs)
    return explain_call(OP_SPECS[op_name], full)
