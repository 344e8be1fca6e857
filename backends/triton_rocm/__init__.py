"""Triton backend for AMD Instinct GPUs (installed as ``gdn_dispatch.backends.triton_rocm``).

Verification level: its kernels run on NVIDIA (forced backend, HIP options dropped) and in the
Triton interpreter, and AOT-compile for gfx942 / gfx950; they have not run on AMD hardware.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# import paths of the modules holding this backend's kernels; each exposes
# ``aot_specs(arch) -> list[dict]`` (read by ``python -m gdn_dispatch compile``).  The decode
# kernels are the shared triton_common ones; their specs use this backend's configs.
KERNEL_MODULES: tuple[str, ...] = (
    "gdn_dispatch.backends.triton_rocm.chunk_head_major",
    "gdn_dispatch.backends.triton_common.recurrent",
    "gdn_dispatch.backends.triton_common.gating",
    "gdn_dispatch.backends.triton_common.split",
)


def kernel_modules() -> list[ModuleType]:
    """The kernel modules of this backend (imported on demand: importing them defines
    Triton kernels, which reads TRITON_INTERPRET)."""
    return [importlib.import_module(name) for name in KERNEL_MODULES]
