"""Declaration of the Triton-ROCm backend: what it serves, in one table per op.

Automatic selection prefers it on AMD GPUs (gfx942 MI300X/MI325X, gfx950 MI355X).  It also
runs on NVIDIA GPUs when forced (``GDN_BACKEND=triton_rocm``), with HIP-only options dropped,
which is how its kernels are checked without AMD hardware.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from gdn_dispatch.probe import DeviceProbe
from gdn_dispatch.registry import Backend, CallMeta, OpSupport, forced_backend_name

SERVED_AMD_ARCHS = frozenset({"gfx942", "gfx950"})

_FLOAT = frozenset({torch.float16, torch.bfloat16, torch.float32})
_GPU = frozenset({"amd", "nvidia"})


def _nvidia_only_when_forced(meta: CallMeta) -> list[str]:
    """On NVIDIA this backend is a test vehicle for its AMD kernels: it runs only when forced."""
    if meta.probe.vendor == "nvidia" and forced_backend_name(meta.op)[0] != "triton_rocm":
        return ["on NVIDIA GPUs it runs only when forced (GDN_BACKEND=triton_rocm); "
                "its configs are tuned for AMD"]
    return []


# op name -> what this backend serves for it
SUPPORT: dict[str, OpSupport] = {
    # head-major prefill (variant opt, or opt_vk with state_v_first); K, V <= 128 are loaded
    # whole (padded to a power of two >= 16) so L2 norms and dot operands fit the 64 KiB LDS
    # of gfx942
    "chunk_gated_delta_rule": OpSupport(
        vendors=_GPU, interpreter_cpu=True, dtypes=_FLOAT, state_dtypes=_FLOAT,
        max_head_dim=128, extra=_nvidia_only_when_forced),
}

# decode side: the shared triton_common kernels with this backend's wave64 configs
_DECODE = OpSupport(vendors=_GPU, interpreter_cpu=True, dtypes=_FLOAT, state_dtypes=_FLOAT,
                    max_head_dim=256, extra=_nvidia_only_when_forced)
for _op in ("fused_recurrent_gated_delta_rule", "fused_sigmoid_gating_delta_rule_update",
            "fused_recurrent_gated_delta_rule_packed_decode"):
    SUPPORT[_op] = _DECODE
SUPPORT["fused_gdn_gating"] = OpSupport(vendors=_GPU, interpreter_cpu=True, dtypes=_FLOAT,
                                        extra=_nvidia_only_when_forced)
SUPPORT["fused_qkvzba_split_reshape_cat"] = OpSupport(
    vendors=_GPU, interpreter_cpu=True, dtypes=_FLOAT, max_head_dim=1024,
    extra=_nvidia_only_when_forced)
SUPPORT["l2norm"] = OpSupport(vendors=_GPU, interpreter_cpu=True, dtypes=_FLOAT,
                              max_head_dim=8192, extra=_nvidia_only_when_forced)

# op name -> module (under gdn_dispatch.backends.triton_rocm) holding the launcher glue
MODULES: dict[str, str] = {
    "chunk_gated_delta_rule": "chunk",
    "fused_recurrent_gated_delta_rule": "decode",
    "fused_sigmoid_gating_delta_rule_update": "decode",
    "fused_recurrent_gated_delta_rule_packed_decode": "decode",
    "fused_gdn_gating": "decode",
    "fused_qkvzba_split_reshape_cat": "decode",
    "l2norm": "decode",
}


class TritonRocmBackend(Backend):
    name = "triton_rocm"
    priority = 100
    preferred_vendors = frozenset({"amd"})
    requires_triton = True
    vendors = frozenset({"amd", "nvidia"})
    interpreter_cpu = True
    description = ("Triton kernels tuned for AMD Instinct (gfx942, gfx950): head-major prefill "
                   "(opt / opt_vk), wave64 decode configs")
    support = SUPPORT

    def backend_reasons(self, probe: DeviceProbe) -> list[str]:
        out = super().backend_reasons(probe)
        if probe.vendor == "amd" and probe.arch not in SERVED_AMD_ARCHS:
            if probe.arch.startswith(("gfx10", "gfx11", "gfx12")):
                kind = "RDNA"
            elif probe.arch.startswith("gfx90"):
                kind = "CDNA1/2"
            else:
                kind = "untuned"
            out.append(f"arch {probe.arch} ({kind}) is not served: tuned for "
                       + ", ".join(sorted(SERVED_AMD_ARCHS)))
        return out

    def _load(self, op: str) -> Callable[..., Any]:
        mod = importlib.import_module("gdn_dispatch.backends.triton_rocm." + MODULES[op])
        return getattr(mod, op)
