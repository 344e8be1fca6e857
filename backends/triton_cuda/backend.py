"""Declaration of the Triton-CUDA backend: what it serves, in one table per op.

The registry reads ``TritonCudaBackend.support``; op code never decides dispatch.  Ops are
added to ``SUPPORT`` as their kernels land (an op missing here is reported as "not
implemented by this backend" and served by the next backend).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from gdn_dispatch.registry import Backend, OpSupport

_HALF = frozenset({torch.float16, torch.bfloat16})
_FLOAT = frozenset({torch.float16, torch.bfloat16, torch.float32})
_NVIDIA = frozenset({"nvidia"})

# op name -> what this backend serves for it
SUPPORT: dict[str, OpSupport] = {}

# op name -> module (under gdn_dispatch.backends.triton_cuda) holding the launcher glue
MODULES: dict[str, str] = {}


class TritonCudaBackend(Backend):
    name = "triton_cuda"
    priority = 100
    preferred_vendors = _NVIDIA
    requires_triton = True
    vendors = _NVIDIA
    interpreter_cpu = True
    description = "Triton kernels tuned for NVIDIA GPUs (sm_80+)"
    support = SUPPORT

    def _load(self, op: str) -> Callable[..., Any]:
        mod = importlib.import_module("gdn_dispatch.backends.triton_cuda." + MODULES[op])
        return getattr(mod, op)
