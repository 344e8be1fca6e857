"""Declaration of the Triton-ROCm backend: what it serves, in one table per op.

Automatic selection prefers it on AMD GPUs (gfx942 MI300X/MI325X, gfx950 MI355X).  It also
runs on NVIDIA GPUs when forced (``GDN_BACKEND=triton_rocm``), with HIP-only options dropped,
which is how its kernels are checked without AMD hardware.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from gdn_dispatch.probe import DeviceProbe
from gdn_dispatch.registry import Backend, OpSupport

SERVED_AMD_ARCHS = frozenset({"gfx942", "gfx950"})

# op name -> what this backend serves for it
SUPPORT: dict[str, OpSupport] = {}

# op name -> module (under gdn_dispatch.backends.triton_rocm) holding the launcher glue
MODULES: dict[str, str] = {}


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
            kind = "RDNA" if probe.arch.startswith(("gfx10", "gfx11", "gfx12")) else "this"
            out.append(f"arch {probe.arch} ({kind}) is not served: tuned for "
                       + ", ".join(sorted(SERVED_AMD_ARCHS)))
        return out

    def _load(self, op: str) -> Callable[..., Any]:
        mod = importlib.import_module("gdn_dispatch.backends.triton_rocm." + MODULES[op])
        return getattr(mod, op)
