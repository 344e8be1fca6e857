"""Declaration of the reference backend: every op, every device, every flag."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from gdn_dispatch.registry import OPS, Backend, OpSupport

_ANY_FLOAT = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})

# One table: the reference serves every op on any device, any float dtype, any head dim.
_ALL = OpSupport(vendors=frozenset({"cpu", "nvidia", "amd"}), dtypes=_ANY_FLOAT,
                 state_dtypes=_ANY_FLOAT, bf16_needs_hardware=False)

# op name -> module (under gdn_dispatch.reference) holding the implementation
_MODULES = {
    "chunk_gated_delta_rule": "chunk",
    "fused_recurrent_gated_delta_rule": "recurrent",
    "fused_sigmoid_gating_delta_rule_update": "recurrent",
    "fused_recurrent_gated_delta_rule_packed_decode": "recurrent",
    "fused_gdn_gating": "gating",
    "fused_qkvzba_split_reshape_cat": "split",
    "l2norm": "gating",
}


class ReferenceBackend(Backend):
    name = "reference"
    priority = 0
    preferred_vendors = frozenset({"cpu"})
    requires_triton = False
    description = "pure torch, float32 math, every op on every device (the executable contract)"
    support = {op: _ALL for op in OPS}

    def _load(self, op: str) -> Callable[..., Any]:
        mod = importlib.import_module("gdn_dispatch.reference." + _MODULES[op])
        return getattr(mod, op)
