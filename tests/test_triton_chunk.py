"""``chunk_gated_delta_rule`` on the Triton-CUDA backend (GPU) against the float64 recurrence
and the reference backend.

The case table and the runner are shared with ``test_triton_chunk_interpreter.py`` (same
cases at tiny sizes on the CPU under ``TRITON_INTERPRET=1``).  Nothing here imports a Triton
kernel at module import, so collecting this file never defines kernels.
"""

from __future__ import annotations

import pytest
import torch
from oracle import TOL, chunk_case_inputs, make_inputs, poison_, recurrence64, rel_err

import gdn_dispatch as gdn

BACKEND = "triton_cuda"

# name -> (B, T, H, HV, K, V, options); GPU runs multiply T (and cu_seqlens) by ``scale_T``
CASES: dict[str, tuple] = {
    "plain": (1, 130, 1, 1, 32, 32, {}),
    "batched_gva_h0": (2, 70, 1, 2, 32, 16, {"h0": True}),
    "no_gate_no_beta": (1, 65, 1, 1, 16, 16, {"g": None, "beta": None, "h0": True}),
    "all_gating_flags": (1, 90, 1, 2, 32, 32, {"l2norm": True, "gate_in_kernel": True,
                                                "beta_sigmoid": True, "neg_eigval": True,
                                                "h0": True}),
    "gate_no_dt_bias": (1, 64, 1, 1, 16, 32, {"gate_in_kernel": True, "no_dt_bias": True,
                                              "beta_sigmoid": True}),
    "varlen": (1, 150, 1, 2, 32, 32, {"cu": [0, 5, 5, 70, 150], "h0": True}),
    "varlen_l2norm": (1, 100, 2, 4, 16, 32, {"cu": [0, 64, 65, 100], "l2norm": True}),
    "bf16_state": (1, 80, 1, 2, 32, 16, {"h0": True, "state_dtype": torch.bfloat16}),
}


def case_inputs(case: str, dtype: torch.dtype, device: str, v_first: bool, seed: int = 0,
                scale_T: int = 1, dims: tuple[int, int] | None = None):
    """Inputs of one case (args, kwargs) and the float64 oracle (o, final state)."""
    return chunk_case_inputs(CASES[case], dtype, device, v_first, seed, scale_T, dims)


def run_case(case: str, dtype: torch.dtype, device: str, v_first: bool, scale_T: int = 1,
             dims: tuple[int, int] | None = None) -> tuple[float, float]:
    """Run one case on the backend under test; (output error, final-state error) vs float64."""
    args, kw, ref_o, ref_h = case_inputs(case, dtype, device, v_first, scale_T=scale_T,
                                         dims=dims)
    with gdn.use_backend(BACKEND):
        o, ht = gdn.chunk_gated_delta_rule(*args, **kw)
    assert o.dtype == dtype and o.shape == ref_o.shape
    h0 = kw.get("initial_state")
    assert ht.dtype == (h0.dtype if h0 is not None else torch.float32)
    assert ht.shape == ref_h.shape
    return rel_err(o, ref_o), rel_err(ht, ref_h)


def state_tol(dtype: torch.dtype, case: str) -> float:
    """bf16 states are rounded once on the way out."""
    tol = TOL[dtype]
    if CASES[case][6].get("state_dtype") == torch.bfloat16:
        tol = max(tol, TOL[torch.bfloat16])
    return tol


def check_carry(dtype: torch.dtype, device: str, v_first: bool, T: int, split: int,
                dims: tuple[int, int] = (32, 32)) -> None:
    """The state carried across two calls equals one call over the whole sequence."""
    K, V = dims
    q, k, v, g, beta = make_inputs(1, T, 2, 4, K, V, dtype=dtype, device=device, seed=3)
    with gdn.use_backend(BACKEND):
        o, h = gdn.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True,
                                          state_v_first=v_first)
        o1, h1 = gdn.chunk_gated_delta_rule(q[:, :split], k[:, :split], v[:, :split],
                                            g[:, :split], beta[:, :split],
                                            output_final_state=True, state_v_first=v_first)
        o2, h2 = gdn.chunk_gated_delta_rule(q[:, split:], k[:, split:], v[:, split:],
                                            g[:, split:], beta[:, split:], initial_state=h1,
                                            output_final_state=True, state_v_first=v_first)
    assert rel_err(torch.cat([o1, o2], 1), o) < TOL[dtype]
    assert rel_err(h2, h) < TOL[dtype]


def check_chunk_equals_recurrent(dtype: torch.dtype, device: str, T: int,
                                 dims: tuple[int, int] = (32, 32)) -> None:
    """chunk == fused_recurrent on the same inputs (whichever backend serves the latter)."""
    K, V = dims
    q, k, v, g, beta = make_inputs(2, T, 1, 2, K, V, dtype=dtype, device=device, seed=5,
                                   normalize_k=False)
    h0 = torch.randn(2, 2, V, K, device=device) * 0.1
    kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True,
              state_v_first=True)
    with gdn.use_backend(BACKEND):
        o, h = gdn.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    ro, rh = gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    assert rel_err(o, ro) < TOL[dtype] and rel_err(h, rh) < TOL[dtype]


def check_varlen_cache_follows_in_place_change(device: str, dtype: torch.dtype) -> None:
    """The memoised chunk table is rebuilt when cu_seqlens changes in place."""
    T = 140
    q, k, v, g, beta = make_inputs(1, T, 1, 2, 16, 16, dtype=dtype, device=device, seed=9)
    cu = torch.tensor([0, 30, 100, T], dtype=torch.int32, device=device)
    for new_second in (30, 77):
        cu[1] = new_second
        with gdn.use_backend(BACKEND):
            o, h = gdn.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu,
                                              output_final_state=True)
        ro, rh = recurrence64(q, k, v, g, beta, cu_seqlens=cu)
        assert rel_err(o, ro) < TOL[dtype] and rel_err(h, rh) < TOL[dtype]


def check_transposed_state_kernel(device: str, dtype: torch.dtype, dims=(32, 32)) -> None:
    """The alternative state kernel (state held as [BV, K]) against float64."""
    import dataclasses

    from gdn_dispatch.backends.triton_common.chunk_pipeline import config_for, run_chunk_pipeline
    args, kw, ref_o, ref_h = case_inputs("varlen", dtype, device, True, dims=dims)
    q, k, v, g, beta = args
    cfg = dataclasses.replace(config_for("sm_90", *dims), state_transposed=True, state_bv=16)
    o, h = run_chunk_pipeline(q, k, v, g, beta, dims[0] ** -0.5, kw["initial_state"], True, False,
                              False, False, True, kw["cu_seqlens"], False, None, None,
                              inter_dtype=dtype, config=cfg)
    assert rel_err(o, ref_o) < TOL[dtype] and rel_err(h, ref_h) < TOL[dtype]


# -- GPU ---------------------------------------------------------------------------------
_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not _GPU, reason="needs a CUDA GPU")
DTYPES = [torch.bfloat16, torch.float16]  # fp32 goes to the reference on GPUs
DTYPE_IDS = ["bf16", "fp16"]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_vs_float64(case, dtype, v_first):
    e_o, e_h = run_case(case, dtype, "cuda", v_first, scale_T=3)
    assert e_o < TOL[dtype], e_o
    assert e_h < state_tol(dtype, case), e_h


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dims", [(64, 64), (128, 128), (256, 256), (128, 64), (64, 256)],
                         ids=lambda d: f"K{d[0]}V{d[1]}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_head_dims(dims, dtype):
    e_o, e_h = run_case("varlen", dtype, "cuda", False, scale_T=2, dims=dims)
    assert e_o < TOL[dtype] and e_h < TOL[dtype], (e_o, e_h)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gpu_vs_reference_qwen_shape(dtype):
    """Qwen3-Next heads (H=16, HV=32, K=V=128), all flags, varlen with odd lengths."""
    T, H, HV, K, V = 1500, 16, 32, 128, 128
    q, k, v, _, _ = make_inputs(1, T, H, HV, K, V, dtype=dtype, device="cuda", seed=7,
                                normalize_k=False)
    a = torch.randn(1, T, HV, device="cuda").to(dtype)
    b = torch.randn(1, T, HV, device="cuda").to(dtype)
    A_log = torch.rand(HV, device="cuda") - 1.0
    dt_bias = torch.randn(HV, device="cuda") * 0.5
    cu = torch.tensor([0, 1, 64, 700, 701, 1500], dtype=torch.int32, device="cuda")
    h0 = torch.randn(5, HV, V, K, device="cuda") * 0.1
    kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True,
              use_beta_sigmoid_in_kernel=True, state_v_first=True, cu_seqlens=cu,
              use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias)
    with gdn.use_backend(BACKEND):
        o, ht = gdn.chunk_gated_delta_rule(q, k, v, a, b, **kw)
    with gdn.use_backend("reference"):
        ro, rh = gdn.chunk_gated_delta_rule(q, k, v, a, b, **kw)
    assert rel_err(o, ro) < TOL[dtype] and rel_err(ht, rh) < TOL[dtype]


@pytest.mark.gpu
@gpu
def test_gpu_fp32_served_by_reference():
    """fp32 inputs on a GPU are declared unsupported here, so the registry picks another
    backend (and forcing triton_cuda names the reason)."""
    q, k, v, g, beta = make_inputs(1, 64, 1, 1, 64, 64, dtype=torch.float32, device="cuda")
    ex = gdn.explain("chunk_gated_delta_rule", q, k, v, g, beta)
    assert ex.chosen != BACKEND
    assert any("fp32" in r for r in ex.reasons[BACKEND])
    o, _ = gdn.chunk_gated_delta_rule(q, k, v, g, beta)
    ro, _ = recurrence64(q, k, v, g, beta)
    assert rel_err(o, ro) < TOL[torch.float32]


@pytest.mark.gpu
@gpu
def test_gpu_long_single_sequence_vs_reference():
    """N = 1, T = 4096, HV = 32: the V-split state stage against the reference."""
    T, H, HV, K, V = 4096, 16, 32, 128, 128
    q, k, v, g, beta = make_inputs(1, T, H, HV, K, V, dtype=torch.bfloat16, device="cuda",
                                   seed=11, normalize_k=False)
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True)
    with gdn.use_backend(BACKEND):
        o, ht = gdn.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    with gdn.use_backend("reference"):
        ro, rh = gdn.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    assert rel_err(o, ro) < TOL[torch.bfloat16] and rel_err(ht, rh) < TOL[torch.bfloat16]


@pytest.mark.gpu
@gpu
def test_gpu_thousands_of_tiny_sequences():
    """2000 sequences of 0..40 tokens (none a multiple of 64), cu_seqlens on the GPU; with
    34 value heads there are more (sequence, head) chains than a grid axis of 65535."""
    gen = torch.Generator().manual_seed(13)
    lens = torch.randint(0, 41, (2000,), generator=gen)
    cu = torch.zeros(2001, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    T = int(cu[-1])
    q, k, v, g, beta = make_inputs(1, T, 2, 34, 64, 64, dtype=torch.bfloat16, device="cuda",
                                   seed=13)
    h0 = torch.randn(2000, 34, 64, 64, device="cuda") * 0.1
    kw = dict(initial_state=h0, output_final_state=True, cu_seqlens=cu.cuda())
    with gdn.use_backend(BACKEND):
        o, ht = gdn.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    with gdn.use_backend("reference"):
        ro, rh = gdn.chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    assert rel_err(o, ro) < TOL[torch.bfloat16] and rel_err(ht, rh) < TOL[torch.bfloat16]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gpu_state_carried_across_calls(dtype, v_first):
    check_carry(dtype, "cuda", v_first, T=300, split=130, dims=(64, 64))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gpu_chunk_equals_fused_recurrent(dtype):
    check_chunk_equals_recurrent(dtype, "cuda", T=200, dims=(64, 64))


@pytest.mark.gpu
@gpu
def test_gpu_varlen_cache_follows_in_place_change():
    check_varlen_cache_follows_in_place_change("cuda", torch.bfloat16)


@pytest.mark.gpu
@gpu
def test_gpu_transposed_state_kernel():
    check_transposed_state_kernel("cuda", torch.bfloat16, dims=(128, 128))


@pytest.mark.gpu
@gpu
def test_gpu_output_fully_written():
    """Poisoned memory from an earlier allocation never leaks into the output."""
    junk = poison_(torch.empty(1 << 24, device="cuda", dtype=torch.bfloat16))
    del junk
    e_o, e_h = run_case("varlen", torch.bfloat16, "cuda", False, scale_T=5)
    assert e_o < TOL[torch.bfloat16] and e_h < TOL[torch.bfloat16]


@pytest.mark.gpu
@gpu
def test_gpu_no_host_sync_with_device_cu_seqlens():
    """Varlen calls with cu_seqlens on the GPU do not synchronise with the host."""
    args, kw, _, _ = case_inputs("varlen", torch.bfloat16, "cuda", False, scale_T=3)
    with gdn.use_backend(BACKEND):
        gdn.chunk_gated_delta_rule(*args, **kw)  # compile + cache the decision
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            gdn.chunk_gated_delta_rule(*args, **kw)
        finally:
            torch.cuda.set_sync_debug_mode("default")
