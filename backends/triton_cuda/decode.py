"""Triton-CUDA implementations of the decode-side ops (ops 2-7 of API.md).

The op glue lives in ``triton_common.decode_ops``; this module binds it to this backend's
configs (``configs.py``) and exposes one function per op name for the registry.
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


def _gating(probe: DeviceProbe) -> RowConfig:
    return gating_config(probe.arch)


def _l2norm(probe: DeviceProbe, D: int) -> RowConfig:
    return l2norm_config(probe.arch, D)


def _split(probe: DeviceProbe) -> SplitConfig:
    return split_config(probe.arch)


OPS = DecodeOps(DecodeConfigs(recurrent=recurrent_config, gating=_gating, l2norm=_l2norm,
                              split=_split), plan_prefix="triton_cuda")

fused_recurrent_gated_delta_rule = OPS.fused_recurrent_gated_delta_rule
fused_sigmoid_gating_delta_rule_update = OPS.fused_sigmoid_gating_delta_rule_update
fused_recurrent_gated_delta_rule_packed_decode = OPS.fused_recurrent_gated_delta_rule_packed_decode
fused_gdn_gating = OPS.fused_gdn_gating
fused_qkvzba_split_reshape_cat = OPS.fused_qkvzba_split_reshape_cat
l2norm = OPS.l2norm
