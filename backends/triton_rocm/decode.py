"""Decode-side ops (2-7) of the Triton-ROCm backend: the shared op glue of
``triton_common.decode_ops`` bound to this backend's wave64-aware configs (``configs.py``;
HIP-only options only when the probe's Triton target is HIP), one function per op name for the
registry.
"""

from __future__ import annotations

from gdn_dispatch.backends.triton_common.decode_ops import DecodeConfigs, DecodeOps
from gdn_dispatch.backends.triton_common.gating import RowConfig
from gdn_dispatch.backends.triton_common.split import SplitConfig

from gdn_dispatch.probe import DeviceProbe

from .configs import gating_config, l2norm_config, recurrent_config, split_config

__all__ = ["OPS", "fused_recurrent_gated_delta_rule", "fused_sigmoid_gating_delta_rule_update",
           "fused_recurrent_gated_delta_rule_packed_decode", "fused_gdn_gating",
           "fused_qkvzba_split_reshape_cat", "l2norm"]


def _hip(probe: DeviceProbe) -> bool:
    return probe.triton_target == "hip"


def _gating(probe: DeviceProbe) -> RowConfig:
    return gating_config(probe.arch, _hip(probe))


def _l2norm(probe: DeviceProbe, D: int) -> RowConfig:
    return l2norm_config(probe.arch, D, _hip(probe))


def _split(probe: DeviceProbe) -> SplitConfig:
    return split_config(probe.arch, _hip(probe))


# recurrent_config already takes the probe (and keeps HIP options only on HIP)
OPS = DecodeOps(DecodeConfigs(recurrent=recurrent_config, gating=_gating, l2norm=_l2norm,
                              split=_split), plan_prefix="triton_rocm")

fused_recurrent_gated_delta_rule = OPS.fused_recurrent_gated_delta_rule
fused_sigmoid_gating_delta_rule_update = OPS.fused_sigmoid_gating_delta_rule_update
fused_recurrent_gated_delta_rule_packed_decode = OPS.fused_recurrent_gated_delta_rule_packed_decode
fused_gdn_gating = OPS.fused_gdn_gating
fused_qkvzba_split_reshape_cat = OPS.fused_qkvzba_split_reshape_cat
l2norm = OPS.l2norm
