"""Which backend and config the registry picks on simulated AMD devices, and why.

``gdn.simulate_device`` presents an MI300X (gfx942), MI355X (gfx950), MI250X (gfx90a) or an
RX 7900 XTX (gfx1100, RDNA) on this CPU machine; ``gdn.explain`` runs nothing, so no AMD
hardware is needed.  ``configs.describe_config`` says which triton_rocm config (and prefill
variant) a call gets.
"""

from __future__ import annotations

import pytest
import torch
from gdn_dispatch.backends.triton_rocm.configs import (
    describe_config,
    prefill_config,
    recurrent_config,
)
from oracle import make_inputs

import gdn_dispatch as gdn

pytestmark = pytest.mark.usefixtures("clean_dispatch")  # no GDN_BACKEND* from the shell

CHUNK = "chunk_gated_delta_rule"
DECODE_OPS = ("fused_recurrent_gated_delta_rule", "fused_gdn_gating", "l2norm")


def _chunk_args(dtype=torch.bfloat16, K=128, V=128):
    q, k, v, g, beta = make_inputs(1, 8, 2, 4, K, V, dtype=dtype)
    return q, k, v, g, beta


def _explain_chunk(device: str, **kw):
    with gdn.simulate_device(device) as probe:
        ex = gdn.explain(CHUNK, *_chunk_args(kw.pop("dtype", torch.bfloat16)), **kw)
    return ex, probe


def _explain_decode(device: str, op: str):
    q, k, v, g, beta = make_inputs(4, 1, 2, 4, 128, 128, dtype=torch.bfloat16)
    with gdn.simulate_device(device):
        if op == "fused_recurrent_gated_delta_rule":
            return gdn.explain(op, q, k, v, g, beta)
        if op == "fused_gdn_gating":
            return gdn.explain(op, torch.zeros(4), torch.zeros(3, 4), torch.zeros(3, 4), None)
        return gdn.explain(op, q)


@pytest.mark.parametrize("device,arch", [("mi300x", "gfx942"), ("mi325x", "gfx942"),
                                         ("mi355x", "gfx950")])
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_instinct_gets_triton_rocm_with_its_arch_config(device, arch, v_first):
    ex, probe = _explain_chunk(device, state_v_first=v_first)
    assert ex.chosen == "triton_rocm", str(ex)
    assert ex.reasons["triton_rocm"] == []
    line = describe_config(CHUNK, probe, v_first)
    print(f"{device}: {ex}\n  config: {line}")
    assert f"config {arch}" in line and "HIP options on" in line
    assert ("variant opt_vk" if v_first else "variant opt ") in line
    # the reference could serve too, but AMD prefers triton_rocm
    assert ex.reasons["reference"] == []


@pytest.mark.parametrize("op", DECODE_OPS)
@pytest.mark.parametrize("device", ["mi300x", "mi355x"])
def test_instinct_decode_ops_get_triton_rocm(device, op):
    ex = _explain_decode(device, op)
    assert ex.chosen == "triton_rocm", str(ex)


def test_arch_configs_differ_where_the_hardware_does():
    gfx942, gfx950 = prefill_config("gfx942"), prefill_config("gfx950")
    assert gfx942.state_bv == 32 and gfx950.state_bv == 64      # 64 KiB vs 160 KiB LDS
    mi300 = gdn.DeviceProbe.simulated("mi300x")
    h100 = gdn.DeviceProbe.simulated("h100")
    rc = recurrent_config(mi300, True, torch.float32, 128, 128, 1 << 20)
    assert dict(rc.options).get("waves_per_eu") == 4           # HIP option on a HIP target
    rn = recurrent_config(h100, True, torch.float32, 128, 128, 1 << 20)
    assert rn.options == ()                                     # dropped on NVIDIA
    assert prefill_config(h100).name == "generic"
    assert "waves_per_eu" not in prefill_config(h100).state.launch_kwargs(h100)
    assert "waves_per_eu" in prefill_config(mi300).state.launch_kwargs(mi300)


@pytest.mark.parametrize("device,arch,kind", [("mi250x", "gfx90a", "CDNA1/2"),
                                              ("rx7900xtx", "gfx1100", "RDNA")])
def test_unserved_amd_archs_fall_back_with_a_reason(device, arch, kind):
    ex, _ = _explain_chunk(device)
    print(f"{device}: {ex}")
    assert ex.chosen == "reference", str(ex)
    why = "; ".join(ex.reasons["triton_rocm"])
    assert f"arch {arch} ({kind}) is not served" in why
    assert "gfx942" in why and "gfx950" in why
    assert f"triton_rocm: arch {arch}" in str(ex)


def test_forcing_triton_rocm_on_an_unserved_arch_raises_with_the_reason():
    with gdn.simulate_device("gfx1100"), gdn.use_backend("triton_rocm"):
        with pytest.raises(gdn.GDNBackendError, match="RDNA"):
            gdn.chunk_gated_delta_rule(*_chunk_args())


def test_nvidia_uses_triton_rocm_only_when_forced():
    ex, probe = _explain_chunk("h100")
    assert ex.chosen != "triton_rocm"
    assert any("only when forced" in r for r in ex.reasons["triton_rocm"])
    with gdn.use_backend("triton_rocm"):
        forced, _ = _explain_chunk("h100")
    assert forced.chosen == "triton_rocm", str(forced)
    line = describe_config(CHUNK, probe, False)
    assert "config generic" in line and "HIP-only options dropped" in line


def test_head_dims_over_128_go_elsewhere_for_prefill():
    with gdn.simulate_device("mi300x"):
        ex = gdn.explain(CHUNK, *_chunk_args(K=256, V=256))
    assert ex.chosen == "reference"
    assert any("exceeds the maximum 128" in r for r in ex.reasons["triton_rocm"])


def test_fp64_is_not_served():
    ex, _ = _explain_chunk("mi300x", dtype=torch.float64)
    assert ex.chosen == "reference"
    assert any("fp64 not served" in r for r in ex.reasons["triton_rocm"])


def test_cpu_without_interpreter_is_not_served(monkeypatch):
    cpu = gdn.DeviceProbe.simulated("cpu", triton_available=True, interpreter=False)
    with gdn.simulate_device(cpu):
        ex = gdn.explain(CHUNK, *_chunk_args())
    assert ex.chosen == "reference"
    assert any("TRITON_INTERPRET=1" in r for r in ex.reasons["triton_rocm"])
