"""Triton-ROCm backend on a GPU (forced with ``use_backend('triton_rocm')``; on NVIDIA the
HIP-only options are dropped) against the float64 recurrence and the reference backend, plus
the ahead-of-time compile check of its kernels for gfx942 / gfx950 (no GPU needed).

The prefill cases (``CHUNK_CASES`` / ``run_chunk_case``) are shared with the interpreter tests
in ``test_triton_rocm_interpreter.py``.
"""

from __future__ import annotations

import pytest
import torch
from oracle import TOL, chunk_case_inputs, make_inputs, poison_, rel_err

import gdn_dispatch as gdn

# name -> (B, T, H, HV, K, V, options)
CHUNK_CASES: dict[str, tuple] = {
    "plain": (2, 80, 1, 2, 32, 32, {}),
    "state_h0": (1, 130, 2, 4, 32, 16, {"h0": True}),
    "no_gate_no_beta": (1, 70, 1, 1, 16, 16, {"g": None, "beta": None, "h0": True}),
    "odd_dims": (1, 67, 1, 2, 24, 20, {"h0": True, "scale": 0.3}),
    "all_gating_flags": (1, 90, 1, 2, 32, 32, {"l2norm": True, "gate_in_kernel": True,
                                                "beta_sigmoid": True, "neg_eigval": True,
                                                "h0": True}),
    "varlen": (1, 150, 1, 2, 32, 32, {"cu": [0, 5, 5, 70, 150], "h0": True}),
    "varlen_l2norm": (1, 100, 2, 2, 16, 32, {"cu": [0, 64, 65, 100], "l2norm": True}),
    "strided_qkv": (1, 72, 2, 2, 32, 32, {"strided": True, "h0": True}),
    "fp16_state": (2, 65, 1, 2, 32, 32, {"h0": True, "state_dtype": torch.float16}),
}


def chunk_inputs(case: str, dtype: torch.dtype, device: str, v_first: bool, seed: int = 0,
                 scale_T: int = 1):
    """Inputs of one case and its float64 oracle result."""
    return chunk_case_inputs(CHUNK_CASES[case], dtype, device, v_first, seed, scale_T)


def forced_fusion(device: str, fuse: str, scan_bv: int | None = None):
    """Context: the prefill config of ``device`` with ``fuse_output`` set to ``fuse`` (and,
    with ``scan_bv``, both scans at that V block)."""
    import dataclasses

    from gdn_dispatch.backends.triton_rocm.chunk import override_config
    from gdn_dispatch.backends.triton_rocm.configs import prefill_config

    probe = gdn.probe_device(torch.device(device))
    cfg = dataclasses.replace(prefill_config(probe), fuse_output=fuse)
    if scan_bv is not None:
        cfg = dataclasses.replace(cfg, state_bv=scan_bv, fused_bv=scan_bv)
    return override_config(cfg)


def run_chunk_case(case: str, dtype: torch.dtype, device: str, v_first: bool,
                   scale_T: int = 1, fuse: str = "auto",
                   scan_bv: int | None = None) -> tuple[float, float]:
    """Run one case on triton_rocm (``fuse``: "auto", "always" or "never" fuse the output
    into the state scan; ``scan_bv``: V block of the scans, default the config's); returns
    (output error, final-state error) vs float64."""
    args, kw, ref_o, ref_h = chunk_inputs(case, dtype, device, v_first, scale_T=scale_T)
    with gdn.use_backend("triton_rocm"), forced_fusion(device, fuse, scan_bv):
        o, ht = gdn.chunk_gated_delta_rule(*args, **kw)
    assert o.dtype == dtype and o.shape == ref_o.shape and o.device.type == device.split(":")[0]
    assert ht.dtype == (kw["initial_state"].dtype if "initial_state" in kw else torch.float32)
    return rel_err(o, ref_o), rel_err(ht, ref_h)


def check_intermediates_keep_dtype(device: str, dtype: torch.dtype) -> dict:
    """fp16 (or any) inputs: every stored intermediate takes the policy's dtype, gates fp32,
    and the captured inverse blocks really invert ``I + A``."""
    from gdn_dispatch.backends.triton_rocm.chunk import capture_intermediates

    args, kw, ref_o, _ = chunk_inputs("plain", dtype, device, False)
    with gdn.use_backend("triton_rocm"), capture_intermediates() as box:
        o, _ = gdn.chunk_gated_delta_rule(*args, **kw)
    probe = gdn.probe_device(o.device)
    inter = gdn.policy_for(dtype, probe).intermediate
    for name in ("A", "Ai", "w", "u", "v_new", "h"):
        assert box[name].dtype == inter, (name, box[name].dtype, inter)
    assert box["gc"].dtype == torch.float32 and box["beta"].dtype == torch.float32
    assert box["variant"] == "opt"
    A = box["A"].double()[0, 0, :64]
    Ai = box["Ai"].double()[0, 0, :64]
    eye = torch.eye(64, dtype=torch.float64, device=A.device)
    resid = (Ai @ (eye + A) - eye).abs().max().item()
    assert resid < (5e-2 if inter != torch.float32 else 1e-4), resid
    assert rel_err(o, ref_o) < TOL[dtype]
    return box


# -- GPU ---------------------------------------------------------------------------------
_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not _GPU, reason="needs a CUDA or ROCm GPU")
_GPU_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


# every case with the split scan (state kernel + output kernel); a few with the fused scan
_FUSED_CASES = ("state_h0", "odd_dims", "all_gating_flags", "varlen")
_GPU_CASES = ([pytest.param(c, "never", id=f"{c}-split") for c in CHUNK_CASES]
              + [pytest.param(c, "always", id=f"{c}-fused") for c in _FUSED_CASES])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("v_first", [False, True], ids=["opt", "opt_vk"])
@pytest.mark.parametrize("dtype", _GPU_DTYPES, ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("case,fuse", _GPU_CASES)
def test_chunk_gpu_vs_float64(case, fuse, dtype, v_first):
    e_o, e_h = run_chunk_case(case, dtype, "cuda", v_first, scale_T=4, fuse=fuse)
    assert e_o < TOL[dtype], e_o
    assert e_h < TOL[dtype], e_h


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", _GPU_DTYPES, ids=["bf16", "fp16", "fp32"])
def test_chunk_gpu_vs_reference(dtype):
    args, kw, _, _ = chunk_inputs("all_gating_flags", dtype, "cuda", True, scale_T=8)
    with gdn.use_backend("triton_rocm"):
        o, ht = gdn.chunk_gated_delta_rule(*args, **kw)
    with gdn.use_backend("reference"):
        ro, rh = gdn.chunk_gated_delta_rule(*args, **kw)
    assert rel_err(o, ro) < TOL[dtype] and rel_err(ht, rh) < TOL[dtype]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_intermediates_follow_dtype_policy(dtype):
    check_intermediates_keep_dtype("cuda", dtype)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("v_first", [False, True], ids=["opt", "opt_vk"])
@pytest.mark.parametrize("fuse,scan_bv", [("never", None), ("always", None),
                                          ("never", 16), ("always", 16), ("always", 64)],
                         ids=["split", "fused", "split-bv16", "fused-bv16", "fused-bv64"])
def test_gpu_qwen3_next_shape_long(fuse, scan_bv, v_first):
    """Qwen3-Next head sizes (K = V = 128, H = 16, HV = 32) over two long sequences (one not a
    multiple of the chunk), both scans, V blocks from 16 to 64, l2norm in kernel."""
    T, H, HV, K, V = 2048, 16, 32, 128, 128
    q, k, v, g, beta = make_inputs(1, T, H, HV, K, V, dtype=torch.bfloat16, device="cuda")
    cu = torch.tensor([0, 700, T], dtype=torch.int32, device="cuda")
    shape = (2, HV, V, K) if v_first else (2, HV, K, V)
    h0 = torch.randn(*shape, device="cuda") * 0.1
    kw = dict(initial_state=h0, output_final_state=True, state_v_first=v_first,
              cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
    with gdn.use_backend("triton_rocm"), forced_fusion("cuda", fuse, scan_bv):
        o, ht = gdn.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
        torch.cuda.synchronize()
    with gdn.use_backend("reference"):
        ro, rh = gdn.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    assert rel_err(o, ro) < TOL[torch.bfloat16] and rel_err(ht, rh) < TOL[torch.bfloat16]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("v_first", [False, True], ids=["opt", "opt_vk"])
@pytest.mark.parametrize("fuse", ["never", "always"], ids=["split", "fused"])
def test_chunk_gpu_several_v_blocks(fuse, v_first):
    """Scans split over several V blocks (V = 32 in blocks of 16), odd and even dims."""
    for case in ("varlen", "odd_dims", "all_gating_flags"):
        e_o, e_h = run_chunk_case(case, torch.float16, "cuda", v_first, scale_T=2, fuse=fuse,
                                  scan_bv=16)
        assert e_o < TOL[torch.float16] and e_h < TOL[torch.float16], (case, e_o, e_h)


@pytest.mark.gpu
@gpu
def test_gpu_output_fully_written():
    """Poisoned buffers from a previous call never leak into a new output."""
    args, kw, ref_o, _ = chunk_inputs("varlen", torch.float16, "cuda", False)
    junk = poison_(torch.empty(1 << 22, device="cuda", dtype=torch.float16))
    del junk
    with gdn.use_backend("triton_rocm"):
        o, _ = gdn.chunk_gated_delta_rule(*args, **kw)
    assert torch.isfinite(o).all() and rel_err(o, ref_o) < TOL[torch.float16]


# -- decode side: the shared checks of test_triton_decode, run on triton_rocm --------------
@pytest.fixture
def decode_checks(monkeypatch):
    """``test_triton_decode``'s check functions, pointed at the triton_rocm backend."""
    import test_triton_decode as checks

    monkeypatch.setattr(checks, "BACKEND", "triton_rocm")
    return checks


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
@pytest.mark.parametrize("dtype,state_dtype", [(torch.bfloat16, torch.float32),
                                               (torch.float16, torch.float16),
                                               (torch.float32, torch.float32)],
                         ids=["bf16-f32", "f16-f16", "f32-f32"])
def test_decode_recurrent_gpu(decode_checks, dtype, state_dtype, v_first):
    c = decode_checks
    c.check_recurrent_plain("cuda", dtype, state_dtype, B=3, T=5, H=2, HV=4, K=128, V=128,
                            v_first=v_first, gate="raw", beta_mode="sigmoid", l2norm=True)
    c.check_recurrent_plain("cuda", dtype, state_dtype, B=1, T=14, H=2, HV=4, K=64, V=128,
                            v_first=v_first, varlen=[4, 0, 8, 2], final="inplace")
    c.check_recurrent_pool("cuda", dtype, state_dtype, N=9, T=2, H=2, HV=4, K=128, V=128,
                           v_first=v_first, inplace=True)
    c.check_recurrent_spec("cuda", dtype, state_dtype, N=5, T=3, H=2, HV=4, K=128, V=128,
                           v_first=v_first, inplace=False, varlen=True)
    c.check_sigmoid_update("cuda", dtype, state_dtype, B=6, T=1, H=2, HV=8, K=128, V=128,
                           v_first=v_first, flat_ab=True, varlen=False)
    c.check_packed_decode("cuda", dtype, state_dtype, N=33, H=4, HV=8, K=128, V=128,
                          v_first=v_first)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", _GPU_DTYPES, ids=["bf16", "fp16", "fp32"])
def test_decode_elementwise_gpu(decode_checks, dtype):
    c = decode_checks
    c.check_gating("cuda", dtype, N=1000, HV=32)
    c.check_split("cuda", dtype, N=37, Hqk=16, Hv=32, Dk=128, Dv=128, layout="interleaved")
    c.check_split("cuda", dtype, N=5, Hqk=2, Hv=6, Dk=96, Dv=80, layout="contiguous")
    c.check_l2norm("cuda", dtype, shape=(2, 5, 4, 100), strided=True)


# -- AOT compile for AMD targets (CPU only) ----------------------------------------------
@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gfx942", "gfx950"])
def test_aot_compile_for_amd(arch):
    """Every kernel this backend runs (its prefill kernels, the shared decode kernels with its
    configs) compiles for the arch, within the LDS limit and without register spills to
    memory (SGPR spills go to VGPR lanes and are only noted)."""
    pytest.importorskip("triton")
    from gdn_dispatch.backends.triton_rocm import kernel_modules

    from gdn_dispatch import aot

    n = 0
    for mod in kernel_modules():
        for spec in mod.aot_specs(arch):
            report = aot.compile_spec(spec, arch, "triton_rocm", mod.__name__)
            assert report.ok, (report.name, report.problems)
            assert report.shared <= aot.TARGETS[arch].shared_limit
            n += 1
    assert n > 0


def test_scan_v_block_follows_the_number_of_chains():
    """Generic config: few chains (one 4096-token sequence, 32 heads) get narrow V blocks so
    that the scan fills the SMs and the split scan; many chains keep the widest block and
    fuse the output into the scan."""
    from gdn_dispatch.backends.triton_rocm.configs import prefill_config

    cfg = prefill_config("generic")
    assert cfg.scan_bv(False, 128, 32, 132) == 16
    assert cfg.scan_bv(True, 128, 128, 132) == 64
    assert cfg.scan_bv(True, 128, 1024, 132) == 64
    assert cfg.scan_bv(False, 20, 1, 132) == 16         # never below 16
    # the fused scan once the chains fill the SMs at the widest V block
    assert not cfg.use_fused(32, 128, 132) and cfg.use_fused(128, 128, 132)
    assert cfg.use_fused(1024, 128, 132)
    gfx942 = prefill_config("gfx942")
    assert gfx942.scan_bv(False, 128, 1, 304) == 32     # fixed per arch
    assert gfx942.scan_bv(False, 16, 1, 304) == 16      # clipped to the padded V


def test_chunk_size_other_than_64_raises():
    from gdn_dispatch.backends.triton_rocm.configs import prefill_config

    with pytest.raises(ValueError, match="chunk_size=64 only"):
        prefill_config("gfx942").with_chunk_size(32)
