"""Dtype policy: the one place that decides compute, intermediate, output and state dtypes.

Rules (never a blind cast to bf16):
- math accumulates in float32 (float64 inputs compute in float64);
- fp16 inputs keep fp16 intermediates;
- bf16 inputs keep bf16 intermediates only where the device supports bf16, else float32;
- fp32 inputs keep fp32 intermediates;
- outputs take the dtype of ``v`` (the op's value input);
- states keep the caller's dtype; a state the op creates is float32 (float64 for float64 math).
Backends ask ``policy_for``; none hard-codes a cast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .probe import DeviceProbe

__all__ = ["DtypePolicy", "policy_for", "intermediate_dtype"]


@dataclass(frozen=True)
class DtypePolicy:
    input: torch.dtype
    compute: torch.dtype
    intermediate: torch.dtype
    output: torch.dtype
    state: torch.dtype


@functools.lru_cache(maxsize=256)
def _policy(input_dtype: torch.dtype, bf16: bool, fp16: bool,
            state_dtype: torch.dtype | None) -> DtypePolicy:
    if input_dtype == torch.float64:
        compute = inter = torch.float64
    elif input_dtype == torch.float16:
        compute = torch.float32
        inter = torch.float16 if fp16 else torch.float32
    elif input_dtype == torch.bfloat16:
        compute = torch.float32
        inter = torch.bfloat16 if bf16 else torch.float32
    else:
        compute = inter = torch.float32
    state = state_dtype if state_dtype is not None else (
        torch.float64 if compute == torch.float64 else torch.float32)
    return DtypePolicy(input=input_dtype, compute=compute, intermediate=inter,
                       output=input_dtype, state=state)


def policy_for(input_dtype: torch.dtype, probe: DeviceProbe,
               state_dtype: torch.dtype | None = None) -> DtypePolicy:
    """The dtypes of a call whose value input has ``input_dtype`` on the probed device."""
    return _policy(input_dtype, probe.bf16, probe.fp16, state_dtype)


def intermediate_dtype(input_dtype: torch.dtype, probe: DeviceProbe) -> torch.dtype:
    """Dtype of intermediates stored between kernels (per-chunk tensors, inverse blocks)."""
    return _policy(input_dtype, probe.bf16, probe.fp16, None).intermediate
