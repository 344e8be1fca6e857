"""Triton-ROCm kernels in the Triton interpreter (CPU tensors, fp16 / fp32, tiny shapes).

Run with ``TRITON_INTERPRET=1 pytest -m interpreter``: Triton reads the variable when a
kernel is defined, so without it these tests skip.  Calls go through the public API with
``gdn.use_backend('triton_rocm')`` and are compared with the float64 recurrence.
"""

from __future__ import annotations

import os

import pytest
import torch
from oracle import TOL
from test_triton_rocm import CHUNK_CASES, check_intermediates_keep_dtype, run_chunk_case

import gdn_dispatch as gdn

pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                       reason="set TRITON_INTERPRET=1 (read when Triton kernels are defined)"),
]

_DTYPES = [torch.float32, torch.float16]
_IDS = ["fp32", "fp16"]


@pytest.mark.parametrize("fuse", ["never", "always"], ids=["split", "fused"])
@pytest.mark.parametrize("v_first", [False, True], ids=["opt", "opt_vk"])
@pytest.mark.parametrize("dtype", _DTYPES, ids=_IDS)
@pytest.mark.parametrize("case", list(CHUNK_CASES))
def test_chunk_interpreter_vs_float64(case, dtype, v_first, fuse):
    e_o, e_h = run_chunk_case(case, dtype, "cpu", v_first, fuse=fuse)
    assert e_o < TOL[dtype], e_o
    assert e_h < TOL[dtype], e_h


@pytest.mark.parametrize("fuse", ["never", "always"], ids=["split", "fused"])
@pytest.mark.parametrize("v_first", [False, True], ids=["opt", "opt_vk"])
@pytest.mark.parametrize("case", ["varlen", "odd_dims", "all_gating_flags"])
def test_chunk_interpreter_several_v_blocks(case, v_first, fuse):
    """The scans split over several V blocks (V = 32 in blocks of 16; V = 20 in two)."""
    e_o, e_h = run_chunk_case(case, torch.float32, "cpu", v_first, fuse=fuse, scan_bv=16)
    assert e_o < TOL[torch.float32], e_o
    assert e_h < TOL[torch.float32], e_h


def test_fp16_inputs_keep_fp16_intermediates():
    box = check_intermediates_keep_dtype("cpu", torch.float16)
    assert box["A"].dtype == torch.float16 and box["Ai"].dtype == torch.float16


def test_fp32_inputs_keep_fp32_intermediates():
    check_intermediates_keep_dtype("cpu", torch.float32)


def test_opt_vk_variant_keeps_h_v_first():
    from gdn_dispatch.backends.triton_rocm.chunk import capture_intermediates
    from test_triton_rocm import chunk_inputs

    args, kw, _, _ = chunk_inputs("odd_dims", torch.float32, "cpu", True)
    with gdn.use_backend("triton_rocm"), capture_intermediates() as box:
        gdn.chunk_gated_delta_rule(*args, **kw)
    K, V = args[0].shape[-1], args[2].shape[-1]
    assert box["variant"] == "opt_vk" and tuple(box["h"].shape[-2:]) == (V, K)


def test_selected_on_cpu_only_when_forced(clean_dispatch):
    from test_triton_rocm import chunk_inputs

    args, kw, _, _ = chunk_inputs("plain", torch.float32, "cpu", False)
    assert gdn.explain("chunk_gated_delta_rule", *args, **kw).chosen == "reference"
    with gdn.use_backend("triton_rocm"):
        assert gdn.explain("chunk_gated_delta_rule", *args, **kw).chosen == "triton_rocm"


# -- decode side: test_triton_decode's checks on triton_rocm (tiny shapes) -----------------
SMALL = dict(H=1, HV=2, K=16, V=32)
F32, F16 = torch.float32, torch.float16


@pytest.fixture
def decode_checks(monkeypatch):
    import test_triton_decode as checks

    monkeypatch.setattr(checks, "BACKEND", "triton_rocm")
    return checks


@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_decode_recurrent_interpreter(decode_checks, v_first):
    c = decode_checks
    c.check_recurrent_plain("cpu", F16, F32, B=2, T=3, v_first=v_first, gate="raw",
                            beta_mode="sigmoid", l2norm=True, **SMALL)
    c.check_recurrent_plain("cpu", F32, F32, B=1, T=5, v_first=v_first, varlen=[2, 0, 3],
                            final="inplace", **SMALL)
    c.check_recurrent_pool("cpu", F32, F32, N=4, T=1, v_first=v_first, inplace=True, **SMALL)
    c.check_recurrent_spec("cpu", F32, F32, N=3, T=2, v_first=v_first, inplace=False, **SMALL)
    c.check_sigmoid_update("cpu", F32, F32, B=3, T=1, v_first=v_first, flat_ab=True,
                           varlen=False, **SMALL)
    c.check_packed_decode("cpu", F16, F16, N=3, H=1, HV=2, K=16, V=32, v_first=v_first)


@pytest.mark.parametrize("dtype", [F32, F16], ids=_IDS)
def test_decode_elementwise_interpreter(decode_checks, dtype):
    c = decode_checks
    c.check_gating("cpu", dtype, N=5, HV=6)
    c.check_split("cpu", dtype, N=3, Hqk=2, Hv=4, Dk=8, Dv=12, layout="interleaved")
    c.check_split("cpu", dtype, N=2, Hqk=1, Hv=3, Dk=4, Dv=4, layout="contiguous")
    c.check_l2norm("cpu", dtype, shape=(3, 2, 20), strided=True)


@pytest.mark.parametrize("v_first", [False, True], ids=["opt", "opt_vk"])
def test_plan_kept_and_reused_with_new_data(clean_dispatch, v_first):
    """The default config's launch plan lives in ``meta.scratch``; a repeated call with new
    data (same metadata) runs through it and still matches the reference."""
    from oracle import rel_err
    from test_triton_rocm import chunk_inputs

    from gdn_dispatch import dispatch

    args, kw, ref_o, ref_h = chunk_inputs("varlen", torch.float32, "cpu", v_first)
    with gdn.use_backend("triton_rocm"):
        o, ht = gdn.chunk_gated_delta_rule(*args, **kw)
    assert rel_err(o, ref_o) < TOL[torch.float32] and rel_err(ht, ref_h) < TOL[torch.float32]
    (meta,) = [m for key, (_, m) in dispatch._DECISIONS.items() if key[1] == "triton_rocm"]
    plan = meta.scratch["triton_rocm.chunk_plan"]
    gen = torch.Generator().manual_seed(7)
    new = tuple(a + 0.3 * torch.randn(a.shape, generator=gen, dtype=a.dtype)
                if isinstance(a, torch.Tensor) and a.is_floating_point() and i in (0, 1, 2)
                else a for i, a in enumerate(args))
    with gdn.use_backend("triton_rocm"):
        o2, h2 = gdn.chunk_gated_delta_rule(*new, **kw)
    with gdn.use_backend("reference"):
        r2, rh2 = gdn.chunk_gated_delta_rule(*new, **kw)
    assert meta.scratch["triton_rocm.chunk_plan"] is plan
    assert rel_err(o2, r2) < TOL[torch.float32] and rel_err(h2, rh2) < TOL[torch.float32]
    assert rel_err(o2, o) > 1e-3  # really new data
