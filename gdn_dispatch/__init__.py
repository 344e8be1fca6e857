"""gdn_dispatch: one functional API for Gated DeltaNet ops on any GPU.

    import gdn_dispatch as gdn
    o, state = gdn.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)

Every op picks a backend per call (triton_cuda on NVIDIA, triton_rocm on AMD, the pure-torch
reference elsewhere).  ``gdn.explain(op, *args)`` says which and why; ``gdn.use_backend(name)``
or ``GDN_BACKEND=<name>`` / ``GDN_BACKEND_<OP>=<name>`` force one.
"""

from __future__ import annotations

from .api import (
    PAD_SLOT_ID,
    chunk_gated_delta_rule,
    fused_gdn_gating,
    fused_qkvzba_split_reshape_cat,
    fused_recurrent_gated_delta_rule,
    fused_recurrent_gated_delta_rule_packed_decode,
    fused_sigmoid_gating_delta_rule_update,
    l2norm,
)
from .dtype_policy import DtypePolicy, policy_for
from .errors import GDNBackendError, GDNInputError
from .probe import DeviceProbe, probe_device, simulate_device
from .registry import OPS, CallMeta, Explanation, register_backend, use_backend

__version__ = "0.1.0"


def _register_builtin_backends() -> None:
    from .backends.triton_cuda.backend import TritonCudaBackend
    from .backends.triton_rocm.backend import TritonRocmBackend
    from .reference.backend import ReferenceBackend

    for cls in (ReferenceBackend, TritonCudaBackend, TritonRocmBackend):
        register_backend(cls())


_register_builtin_backends()

# Importing the backend declarations bound the subpackage ``gdn_dispatch.backends`` as an
# attribute of this package; the public name ``gdn.backends`` is the function (the subpackage
# stays importable as ``gdn_dispatch.backends.<name>``).
from .introspect import backends, explain  # noqa: E402

__all__ = [
    "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule",
    "fused_sigmoid_gating_delta_rule_update", "fused_recurrent_gated_delta_rule_packed_decode",
    "fused_gdn_gating", "fused_qkvzba_split_reshape_cat", "l2norm", "PAD_SLOT_ID",
    "backends", "explain", "use_backend", "register_backend", "GDNInputError",
    "GDNBackendError", "DeviceProbe", "probe_device", "simulate_device", "DtypePolicy", "policy_for", "OPS",
    "CallMeta", "Explanation", "__version__",
]
