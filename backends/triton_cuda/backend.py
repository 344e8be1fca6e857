"""Declaration of the Triton-CUDA backend: what it serves, in one table per op.

The registry reads ``TritonCudaBackend.support``; op code never decides dispatch.  Ops are
added to ``SUPPORT`` as their kernels land (an op missing here is reported as "not
implemented by this backend" and served by the next backend).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from gdn_dispatch.registry import Backend, CallMeta, OpSupport

_HALF = frozenset({torch.float16, torch.bfloat16})
_FLOAT = frozenset({torch.float16, torch.bfloat16, torch.float32})
_NVIDIA = frozenset({"nvidia"})

# op name -> what this backend serves for it
SUPPORT: dict[str, OpSupport] = {}

# op name -> module (under gdn_dispatch.backends.triton_cuda) holding the launcher glue
MODULES: dict[str, str] = {}

# -- decode side (ops 2-7): kernels in triton_common, glue in decode.py ------------------------
_DECODE = OpSupport(vendors=_NVIDIA, interpreter_cpu=True, dtypes=_FLOAT, state_dtypes=_FLOAT,
                    max_head_dim=256)
for _op in ("fused_recurrent_gated_delta_rule", "fused_sigmoid_gating_delta_rule_update",
            "fused_recurrent_gated_delta_rule_packed_decode"):
    SUPPORT[_op] = _DECODE
    MODULES[_op] = "decode"
SUPPORT["fused_gdn_gating"] = OpSupport(vendors=_NVIDIA, interpreter_cpu=True, dtypes=_FLOAT)
SUPPORT["fused_qkvzba_split_reshape_cat"] = OpSupport(vendors=_NVIDIA, interpreter_cpu=True,
                                                      dtypes=_FLOAT, max_head_dim=1024)
SUPPORT["l2norm"] = OpSupport(vendors=_NVIDIA, interpreter_cpu=True, dtypes=_FLOAT,
                              max_head_dim=8192)
for _op in ("fused_gdn_gating", "fused_qkvzba_split_reshape_cat", "l2norm"):
    MODULES[_op] = "decode"

# -- prefill (op 1): kernels in triton_common/chunk_*.py, glue in prefill.py ------------------
def _chunk_fp32_on_gpu(meta: CallMeta) -> list[str]:
    """fp32 inputs: exact fp32 products spill registers at these tiles, so on a GPU the
    reference serves them; the interpreter (CPU) runs the kernels in fp32."""
    if meta.dtype == torch.float32 and meta.probe.vendor != "cpu":
        return ["fp32 inputs are served by the reference on GPUs (fp16/bf16 here)"]
    return []


SUPPORT["chunk_gated_delta_rule"] = OpSupport(vendors=_NVIDIA, interpreter_cpu=True,
                                              dtypes=_FLOAT, state_dtypes=_FLOAT,
                                              head_dims=frozenset({16, 32, 64, 128, 256}),
                                              min_capability=(8, 0), extra=_chunk_fp32_on_gpu)
MODULES["chunk_gated_delta_rule"] = "prefill"


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
