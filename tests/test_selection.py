"""Backend selection on simulated devices: the generic capability checker and the registry.

The Triton backends' own tables change as their kernels land, so the precise selection tests
use small fake backends (registry restored afterwards); the rest assert what holds whatever
the Triton backends declare.
"""

from __future__ import annotations

import pytest
import torch

import gdn_dispatch as gdn
from gdn_dispatch.probe import DeviceProbe
from gdn_dispatch.registry import CallMeta, OpSupport

pytestmark = pytest.mark.usefixtures("clean_dispatch")

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
CHUNK = "chunk_gated_delta_rule"
DEVICES = ["a100", "h100", "mi300x", "mi355x", "gfx90a", "rx7900xtx", "cpu"]


def _meta(device: str | DeviceProbe, dtype=F16, K=128, V=128, flags=(), state_dtype=None,
          op=CHUNK) -> CallMeta:
    probe = DeviceProbe.simulated(device) if isinstance(device, str) else device
    return CallMeta(op=op, probe=probe, dtype=dtype, state_dtype=state_dtype, K=K, V=V, H=2,
                    HV=4, flags=frozenset(flags), tokens=64)


def _chunk_args(dtype=F16, K=16, V=16, T=8, **extra):
    q = torch.randn(1, T, 2, K).to(dtype)
    k = torch.randn(1, T, 2, K).to(dtype)
    v = torch.randn(1, T, 4, V).to(dtype)
    g = -torch.rand(1, T, 4)
    beta = torch.rand(1, T, 4).to(dtype)
    return (q, k, v, g, beta), extra


def _explain(device, dtype=F16, **kw):
    args, extra = _chunk_args(dtype, **kw)
    with gdn.simulate_device(device):
        return gdn.explain(CHUNK, *args, **extra)


# -- the generic checker ---------------------------------------------------------------------
def test_checker_vendors():
    sup = OpSupport(vendors=frozenset({"nvidia"}))
    assert sup.reasons(_meta("h100")) == []
    assert any("amd" in r for r in sup.reasons(_meta("mi300x")))
    assert any("no GPU" in r for r in sup.reasons(_meta("cpu")))


def test_checker_interpreter_serves_cpu_only_under_interpreter():
    sup = OpSupport(vendors=frozenset({"nvidia"}), interpreter_cpu=True)
    cpu = DeviceProbe.simulated("cpu")
    assert any("TRITON_INTERPRET" in r for r in sup.reasons(_meta(cpu)))
    interp = DeviceProbe.simulated("cpu", interpreter=True, triton_available=True)
    assert sup.reasons(_meta(interp)) == []


def test_checker_archs_and_capability():
    sup = OpSupport(vendors=frozenset({"nvidia", "amd"}), archs=frozenset({"sm_90", "gfx942"}),
                    min_capability=(9, 0))
    assert sup.reasons(_meta("h100")) == []
    assert sup.reasons(_meta("mi300x")) == []
    why = sup.reasons(_meta("a100"))
    assert any("arch sm_80" in r for r in why)
    assert any("compute capability >= 9.0" in r and "8.0" in r for r in why)
    assert any("arch gfx950" in r for r in sup.reasons(_meta("mi355x")))


def test_checker_dtypes_and_bf16_hardware():
    sup = OpSupport(dtypes=frozenset({F16, BF16}))
    assert sup.reasons(_meta("h100", F16)) == []
    assert any("dtype fp32 not served" in r for r in sup.reasons(_meta("h100", F32)))
    assert any("bf16 inputs need bf16 hardware" in r for r in sup.reasons(_meta("t4", BF16)))
    assert sup.reasons(_meta("t4", F16)) == []
    relaxed = OpSupport(dtypes=frozenset({BF16}), bf16_needs_hardware=False)
    assert relaxed.reasons(_meta("t4", BF16)) == []


def test_checker_state_dtypes():
    sup = OpSupport(state_dtypes=frozenset({F32}))
    assert sup.reasons(_meta("h100", state_dtype=F32)) == []
    assert sup.reasons(_meta("h100", state_dtype=None)) == []
    assert any("state dtype bf16" in r for r in sup.reasons(_meta("h100", state_dtype=BF16)))


def test_checker_head_dims():
    sup = OpSupport(head_dims=frozenset({64, 128}))
    assert sup.reasons(_meta("h100", K=64, V=128)) == []
    assert any("K=96" in r for r in sup.reasons(_meta("h100", K=96)))
    assert any("V=256" in r for r in sup.reasons(_meta("h100", V=256)))
    capped = OpSupport(max_head_dim=128)
    assert any("exceeds the maximum 128" in r for r in capped.reasons(_meta("h100", V=256)))


def test_checker_flags_shared_mem_and_extra():
    sup = OpSupport(unsupported_flags=frozenset({"cu_seqlens", "spec_indices"}),
                    min_shared_mem=100_000,
                    extra=lambda m: ["K must equal V"] if m.K != m.V else [])
    assert sup.reasons(_meta("h100")) == []
    why = sup.reasons(_meta("rx7900xtx", K=64, V=128, flags=("cu_seqlens", "l2norm")))
    assert any("flags not served: cu_seqlens" in r for r in why)
    assert any("shared memory" in r for r in why)
    assert "K must equal V" in why


def test_checker_lists_every_reason():
    sup = OpSupport(vendors=frozenset({"nvidia"}), dtypes=frozenset({F16}),
                    head_dims=frozenset({128}), unsupported_flags=frozenset({"l2norm"}))
    why = sup.reasons(_meta("mi300x", F32, K=64, flags=("l2norm",)))
    assert len(why) == 4


def test_backend_requires_triton(fake_backend):
    fb = fake_backend("needs_triton", {CHUNK: OpSupport()}, requires_triton=True)
    no_triton = DeviceProbe.simulated("h100", triton_available=False)
    assert "Triton is not importable" in fb.reasons(_meta(no_triton))
    assert any("not implemented" in r for r in fb.reasons(_meta("h100", op="l2norm")))


# -- selection with a fake GPU backend -------------------------------------------------------
GPU_TABLE = OpSupport(vendors=frozenset({"nvidia", "amd"}),
                      archs=frozenset({"sm_80", "sm_90", "gfx942", "gfx950"}),
                      min_capability=(8, 0), dtypes=frozenset({F16, BF16, F32}),
                      head_dims=frozenset({16, 64, 128}), unsupported_flags=frozenset({"cu_seqlens"}))


@pytest.fixture
def fake_gpu(fake_backend):
    return fake_backend("fake_gpu", {CHUNK: GPU_TABLE}, only=True, priority=100,
                        preferred=("nvidia", "amd"), vendors=("nvidia", "amd"))


@pytest.mark.parametrize("device,expected", [
    ("a100", "fake_gpu"), ("h100", "fake_gpu"), ("mi300x", "fake_gpu"), ("mi355x", "fake_gpu"),
    ("gfx90a", "reference"), ("rx7900xtx", "reference"), ("cpu", "reference"),
])
def test_simulated_device_selection(fake_gpu, device, expected):
    exp = _explain(device)
    assert exp.chosen == expected, str(exp)
    assert exp.meta.probe.is_simulated
    if expected == "reference":
        assert exp.reasons["fake_gpu"], "a passed-over backend must say why"
    else:
        assert exp.reasons["fake_gpu"] == []


def test_explanations_name_the_reason(fake_gpu):
    assert any("gfx90a" in r for r in _explain("gfx90a").reasons["fake_gpu"])
    assert any("no GPU" in r for r in _explain("cpu").reasons["fake_gpu"])
    assert any("fp64" in r for r in _explain("h100", F64).reasons["fake_gpu"])
    assert any("K=24" in r for r in _explain("h100", K=24).reasons["fake_gpu"])
    cu = torch.tensor([0, 3, 8])
    assert any("cu_seqlens" in r for r in _explain("h100", cu_seqlens=cu).reasons["fake_gpu"])
    t4 = _explain("t4", BF16)
    assert t4.chosen == "reference"
    text = "; ".join(t4.reasons["fake_gpu"])
    assert "bf16 hardware" in text and "capability" in text and "sm_75" in text
    assert "fake_gpu" in str(t4) and "runs on reference" in str(t4)


def test_simulated_call_runs_the_chosen_impl_with_meta(fake_gpu):
    args, _ = _chunk_args()
    with gdn.simulate_device("h100"):
        out = gdn.chunk_gated_delta_rule(*args)
    assert out == (CHUNK, "fake_gpu")
    op, called, meta = fake_gpu.calls[-1]
    assert op == CHUNK and len(called) == 16 and called[0] is args[0]
    assert called[5] == pytest.approx(16 ** -0.5)  # scale resolved
    assert meta.probe.arch == "sm_90" and meta.dtype == F16 and meta.K == 16 and meta.HV == 4


def test_forced_backend_that_cannot_serve_raises(fake_gpu):
    args, _ = _chunk_args()
    with gdn.simulate_device("gfx90a"), gdn.use_backend("fake_gpu"):
        exp = gdn.explain(CHUNK, *args)
        assert exp.chosen is None and "cannot serve" in exp.error
        with pytest.raises(gdn.GDNBackendError) as info:
            gdn.chunk_gated_delta_rule(*args)
    assert "gfx90a" in str(info.value) and info.value.reasons["fake_gpu"]
    assert not fake_gpu.calls


def test_priority_and_preference_order(fake_backend):
    sup = {CHUNK: OpSupport()}
    low = fake_backend("pref_low", sup, only=True, priority=10, preferred=("nvidia",))
    high = fake_backend("pref_high", sup, priority=20, preferred=("nvidia",))
    fake_backend("unpreferred_top", sup, priority=1000)
    assert _explain("h100").chosen == "pref_high"
    assert list(_explain("h100").reasons)[:2] == ["pref_high", "pref_low"]
    high.support = {}
    gdn.register_backend(high)  # re-registering drops cached orders and decisions
    assert _explain("h100").chosen == "pref_low"
    assert low.support
    # on the CPU the reference is preferred; among non-preferred ones priority decides
    assert _explain("cpu").chosen == "reference"


def test_unknown_forced_backend(monkeypatch):
    with pytest.raises(gdn.GDNBackendError, match="unknown backend"):
        with gdn.use_backend("no_such_backend"):
            pass
    monkeypatch.setenv("GDN_BACKEND", "no_such_backend")
    with pytest.raises(gdn.GDNBackendError, match="not registered"):
        gdn.l2norm(torch.randn(2, 4))


def test_simulated_decisions_are_not_cached(fake_gpu):
    args, _ = _chunk_args()
    with gdn.simulate_device("h100"):
        gdn.chunk_gated_delta_rule(*args)
    with gdn.use_backend("reference"):
        o, _ = gdn.chunk_gated_delta_rule(*args)  # real CPU call, same metadata
    assert isinstance(o, torch.Tensor)
    with gdn.simulate_device("gfx90a"):
        assert gdn.explain(CHUNK, *args).chosen == "reference"
    assert len(fake_gpu.calls) == 1


# -- what holds whatever the Triton backends declare -----------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_chosen_backend_is_first_that_can_serve(device):
    exp = _explain(device)
    assert exp.error is None and exp.chosen is not None, str(exp)
    order = list(exp.reasons)
    assert exp.reasons[exp.chosen] == []
    for name in order[: order.index(exp.chosen)]:
        assert exp.reasons[name], f"{name} precedes {exp.chosen} and could serve"


def test_simulated_cpu_picks_reference():
    exp = _explain("cpu")
    assert exp.chosen == "reference"
    for name in ("triton_cuda", "triton_rocm"):
        assert exp.reasons[name], name


@pytest.mark.parametrize("device", ["gfx90a", "rx7900xtx"])
def test_unserved_amd_archs_never_pick_triton_rocm(device):
    exp = _explain(device)
    assert exp.chosen != "triton_rocm"
    assert any(device in r or DeviceProbe.simulated(device).arch in r
               for r in exp.reasons["triton_rocm"])


@pytest.mark.parametrize("device", ["mi300x", "mi355x"])
def test_triton_cuda_never_serves_amd(device):
    assert _explain(device).reasons["triton_cuda"]


def test_fp64_is_always_served():
    for device in DEVICES:
        assert _explain(device, F64).chosen is not None


def test_simulate_device_is_thread_local_and_restored():
    import threading

    seen = {}
    with gdn.simulate_device("mi300x") as probe:
        assert probe.arch == "gfx942"
        t = threading.Thread(target=lambda: seen.update(p=gdn.probe.simulated_probe()))
        t.start()
        t.join()
        with gdn.simulate_device("a100"):
            assert gdn.probe.simulated_probe().arch == "sm_80"
        assert gdn.probe.simulated_probe().arch == "gfx942"
    assert seen["p"] is None and gdn.probe.simulated_probe() is None
    with pytest.raises(ValueError):
        DeviceProbe.simulated("no_such_gpu")
