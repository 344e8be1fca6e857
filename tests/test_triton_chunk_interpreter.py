"""``chunk_gated_delta_rule`` of the Triton-CUDA backend in Triton's CPU interpreter.

Run with ``TRITON_INTERPRET=1 python -m pytest tests/test_triton_chunk_interpreter.py -m
interpreter -q`` (Triton reads the variable when kernels are defined, so it must be set
before the process starts).  fp16/fp32 only: the interpreter's ``tl.dot`` on bf16 operands is
unreliable.  Tiny shapes (T <= 130, K, V in {16, 32}).
"""

from __future__ import annotations

import os

import pytest
import torch
from oracle import TOL
from test_triton_chunk import (
    CASES,
    check_carry,
    check_chunk_equals_recurrent,
    check_transposed_state_kernel,
    check_varlen_cache_follows_in_place_change,
    run_case,
    state_tol,
)

pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                       reason="set TRITON_INTERPRET=1 before starting pytest to run "
                              "Triton kernels on the CPU"),
]

DTYPES = [torch.float16, torch.float32]
DTYPE_IDS = ["fp16", "fp32"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(CASES))
def test_interpreter_vs_float64(case, dtype):
    v_first = case in ("varlen", "all_gating_flags", "bf16_state")
    e_o, e_h = run_case(case, dtype, "cpu", v_first)
    assert e_o < TOL[dtype], e_o
    assert e_h < state_tol(dtype, case), e_h


@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_interpreter_state_carried_across_calls(v_first):
    check_carry(torch.float32, "cpu", v_first, T=100, split=37, dims=(16, 16))


def test_interpreter_chunk_equals_fused_recurrent():
    check_chunk_equals_recurrent(torch.float32, "cpu", T=70, dims=(16, 32))


def test_interpreter_varlen_cache_follows_in_place_change():
    check_varlen_cache_follows_in_place_change("cpu", torch.float32)


def test_interpreter_transposed_state_kernel():
    check_transposed_state_kernel("cpu", torch.float32)


def test_interpreter_head_dim_256():
    e_o, e_h = run_case("batched_gva_h0", torch.float32, "cpu", True, dims=(256, 32))
    assert e_o < TOL[torch.float32] and e_h < TOL[torch.float32]
