"""Every bad input raises GDNInputError (a ValueError) naming the argument, and writes nothing.

Each case starts from a valid call of one op (built fresh), breaks one thing, calls the op,
and checks the error and that every tensor of the call (pools, ``out``, states) is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import gdn_dispatch as gdn

pytestmark = pytest.mark.usefixtures("clean_dispatch")

B, T, H, HV, K, V = 1, 6, 2, 4, 8, 16
SLOTS = 5


def _r(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def _qkv(b=B, t=T):
    return dict(q=_r(b, t, H, K), k=_r(b, t, H, K), v=_r(b, t, HV, V))


def base_chunk() -> dict[str, Any]:
    return dict(**_qkv(), g=-torch.rand(B, T, HV), beta=torch.rand(B, T, HV),
                initial_state=_r(B, HV, K, V), output_final_state=True)


def base_recurrent() -> dict[str, Any]:
    return dict(**_qkv(b=3, t=1), g=-torch.rand(3, 1, HV), beta=torch.rand(3, 1, HV),
                initial_state=_r(SLOTS, HV, K, V), ssm_state_indices=torch.tensor([0, -1, 4]),
                inplace_final_state=True)


def base_spec() -> dict[str, Any]:
    return dict(**_qkv(b=2, t=3), g=-torch.rand(2, 3, HV), beta=torch.rand(2, 3, HV),
                initial_state=_r(SLOTS, HV, K, V),
                ssm_state_indices=torch.tensor([[0, 1, 2], [3, 4, -1]]),
                num_accepted_tokens=torch.tensor([1, 2]), inplace_final_state=True)


def base_sigmoid() -> dict[str, Any]:
    return dict(A_log=_r(HV), a=_r(2, 1, HV), dt_bias=_r(HV), softplus_beta=1.0,
                softplus_threshold=20.0, **_qkv(b=2, t=1), b=_r(2, 1, HV),
                initial_state_source=_r(SLOTS, HV, V, K),
                initial_state_indices=torch.tensor([1, -1]))


def base_packed() -> dict[str, Any]:
    N = 3
    return dict(mixed_qkv=_r(N, 2 * H * K + HV * V), a=_r(N, HV), b=_r(N, HV), A_log=_r(HV),
                dt_bias=_r(HV), scale=None, initial_state=_r(SLOTS, HV, V, K),
                out=torch.full((N, 1, HV, V), float("nan")),
                ssm_state_indices=torch.tensor([0, 2, -1]))


def base_gating() -> dict[str, Any]:
    return dict(A_log=_r(HV), a=_r(7, HV), b=_r(7, HV), dt_bias=_r(HV))


def base_split() -> dict[str, Any]:
    return dict(mixed_qkvz=_r(3, 2 * 2 * 8 + 2 * 4 * 4), mixed_ba=_r(3, 2 * 4), num_heads_qk=2,
                num_heads_v=4, head_qk=8, head_v=4)


def base_l2norm() -> dict[str, Any]:
    return dict(x=_r(3, 8))


BASES: dict[str, tuple[Callable[..., Any], Callable[[], dict[str, Any]]]] = {
    "chunk": (gdn.chunk_gated_delta_rule, base_chunk),
    "recurrent": (gdn.fused_recurrent_gated_delta_rule, base_recurrent),
    "spec": (gdn.fused_recurrent_gated_delta_rule, base_spec),
    "sigmoid": (gdn.fused_sigmoid_gating_delta_rule_update, base_sigmoid),
    "packed": (gdn.fused_recurrent_gated_delta_rule_packed_decode, base_packed),
    "gating": (gdn.fused_gdn_gating, base_gating),
    "split": (gdn.fused_qkvzba_split_reshape_cat, base_split),
    "l2norm": (gdn.l2norm, base_l2norm),
}


def _strided_last(t: torch.Tensor) -> torch.Tensor:
    """Same shape and values, last dimension with stride 2."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


def _set(**changes):
    return lambda kw: kw.update({k: (v(kw) if callable(v) else v) for k, v in changes.items()})


CASES = [
    # op 1
    ("chunk", "q_3d", _set(q=lambda kw: kw["q"][0]), ("q",)),
    ("chunk", "k_shape", _set(k=_r(B, T, H, K + 1)), ("k",)),
    ("chunk", "v_time", _set(v=_r(B, T + 1, HV, V)), ("v",)),
    ("chunk", "v_dtype", _set(v=lambda kw: kw["v"].half()), ("v",)),
    ("chunk", "q_int", _set(q=lambda kw: kw["q"].int(), k=lambda kw: kw["k"].int(),
                            v=lambda kw: kw["v"].int()), ("q",)),
    ("chunk", "q_strided_last_dim", _set(q=lambda kw: _strided_last(kw["q"])), ("q",)),
    ("chunk", "v_strided_last_dim", _set(v=lambda kw: _strided_last(kw["v"])), ("v",)),
    ("chunk", "hv_not_multiple_of_h", _set(v=_r(B, T, 3, V), g=-torch.rand(B, T, 3),
                                           beta=torch.rand(B, T, 3)), ("v",)),
    ("chunk", "g_shape", _set(g=-torch.rand(B, T, HV + 1)), ("g",)),
    ("chunk", "beta_shape", _set(beta=torch.rand(B, T)), ("beta",)),
    ("chunk", "state_wrong_layout", _set(initial_state=_r(B, HV, V, K)), ("initial_state",)),
    ("chunk", "state_wrong_rows", _set(initial_state=_r(B + 1, HV, K, V)), ("initial_state",)),
    ("chunk", "state_inner_not_dense",
     _set(initial_state=lambda kw: _r(B, HV, V, K).transpose(-1, -2)), ("initial_state",)),
    ("chunk", "state_on_meta_device",
     _set(initial_state=torch.empty(B, HV, K, V, device="meta")), ("initial_state",)),
    ("chunk", "state_int", _set(initial_state=torch.zeros(B, HV, K, V, dtype=torch.int32)),
     ("initial_state",)),
    ("chunk", "cu_seqlens_with_b2",
     _set(**_qkv(b=2), g=-torch.rand(2, T, HV), beta=torch.rand(2, T, HV),
          initial_state=None, cu_seqlens=torch.tensor([0, 3, 6])), ("q", "cu_seqlens")),
    ("chunk", "cu_seqlens_float", _set(cu_seqlens=torch.tensor([0.0, 6.0])), ("cu_seqlens",)),
    ("chunk", "cu_seqlens_2d", _set(cu_seqlens=torch.tensor([[0, 6]])), ("cu_seqlens",)),
    ("chunk", "cu_seqlens_too_short", _set(cu_seqlens=torch.tensor([0])), ("cu_seqlens",)),
    ("chunk", "cu_seqlens_bad_end", _set(cu_seqlens=torch.tensor([0, 5])), ("cu_seqlens",)),
    ("chunk", "cu_seqlens_bad_start", _set(cu_seqlens=torch.tensor([1, 6])), ("cu_seqlens",)),
    ("chunk", "cu_seqlens_decreasing",
     _set(initial_state=_r(3, HV, K, V), cu_seqlens=torch.tensor([0, 4, 2, 6])),
     ("cu_seqlens",)),
    ("chunk", "gate_in_kernel_without_A_log", _set(use_gate_in_kernel=True), ("A_log",)),
    ("chunk", "A_log_shape", _set(use_gate_in_kernel=True, A_log=_r(HV + 1)), ("A_log",)),
    ("chunk", "dt_bias_shape", _set(use_gate_in_kernel=True, A_log=_r(HV), dt_bias=_r(2, HV)),
     ("dt_bias",)),
    ("chunk", "gate_in_kernel_g_none", _set(use_gate_in_kernel=True, A_log=_r(HV), g=None),
     ("g",)),
    ("chunk", "beta_sigmoid_beta_none", _set(use_beta_sigmoid_in_kernel=True, beta=None),
     ("beta",)),
    ("chunk", "scale_string", _set(scale="0.5"), ("scale",)),
    ("chunk", "q_not_tensor", _set(q=lambda kw: kw["q"].tolist()), ("q",)),
    # op 2
    ("recurrent", "indices_3d", _set(ssm_state_indices=torch.zeros(3, 1, 1, dtype=torch.long)),
     ("ssm_state_indices",)),
    ("recurrent", "indices_float", _set(ssm_state_indices=torch.tensor([0.0, 1.0, 2.0])),
     ("ssm_state_indices",)),
    ("recurrent", "indices_wrong_n", _set(ssm_state_indices=torch.tensor([0, 1])),
     ("ssm_state_indices",)),
    ("recurrent", "index_out_of_range", _set(ssm_state_indices=torch.tensor([0, SLOTS, 1])),
     ("ssm_state_indices",)),
    ("recurrent", "index_below_minus_one", _set(ssm_state_indices=torch.tensor([0, -2, 1])),
     ("ssm_state_indices",)),
    ("recurrent", "pool_wrong_layout", _set(state_v_first=True), ("initial_state",)),
    ("recurrent", "pool_head_count", _set(initial_state=_r(SLOTS, HV + 1, K, V)),
     ("initial_state",)),
    ("recurrent", "indices_without_pool", _set(initial_state=None), ("initial_state",)),
    ("recurrent", "nat_with_1d_indices", _set(num_accepted_tokens=torch.tensor([1, 1, 1])),
     ("num_accepted_tokens",)),
    ("recurrent", "nat_without_indices",
     _set(ssm_state_indices=None, initial_state=_r(3, HV, K, V),
          num_accepted_tokens=torch.tensor([1, 1, 1])), ("num_accepted_tokens",)),
    ("recurrent", "inplace_without_state",
     _set(ssm_state_indices=None, initial_state=None), ("initial_state",)),
    ("recurrent", "state_rows_without_indices",
     _set(ssm_state_indices=None), ("initial_state",)),
    ("recurrent", "cu_seqlens_with_b3", _set(cu_seqlens=torch.tensor([0, 1, 2, 3])),
     ("q", "cu_seqlens")),
    ("spec", "nat_zero", _set(num_accepted_tokens=torch.tensor([0, 1])),
     ("num_accepted_tokens",)),
    ("spec", "nat_too_large", _set(num_accepted_tokens=torch.tensor([1, 4])),
     ("num_accepted_tokens",)),
    ("spec", "nat_wrong_n", _set(num_accepted_tokens=torch.tensor([1, 1, 1])),
     ("num_accepted_tokens",)),
    ("spec", "nat_float", _set(num_accepted_tokens=torch.tensor([1.0, 1.0])),
     ("num_accepted_tokens",)),
    ("spec", "tmax_below_t", _set(ssm_state_indices=torch.tensor([[0, 1], [3, 4]])),
     ("ssm_state_indices",)),
    ("spec", "spec_index_out_of_range", _set(ssm_state_indices=torch.tensor([[0, 1, 2],
                                                                             [3, 4, 9]])),
     ("ssm_state_indices",)),
    # op 3
    ("sigmoid", "a_shape", _set(a=_r(2, 2, HV)), ("a",)),
    ("sigmoid", "b_shape", _set(b=_r(2, HV + 1)), ("b",)),
    ("sigmoid", "A_log_none", _set(A_log=None), ("A_log",)),
    ("sigmoid", "softplus_beta_zero", _set(softplus_beta=0.0), ("softplus_beta",)),
    ("sigmoid", "threshold_string", _set(softplus_threshold="20"), ("softplus_threshold",)),
    ("sigmoid", "pool_wrong_layout", _set(state_v_first=False), ("initial_state_source",)),
    ("sigmoid", "index_out_of_range", _set(initial_state_indices=torch.tensor([1, 99])),
     ("initial_state_indices",)),
    ("sigmoid", "indices_2d", _set(initial_state_indices=torch.tensor([[1], [2]])),
     ("initial_state_indices",)),
    ("sigmoid", "v_strided_last_dim", _set(v=lambda kw: _strided_last(kw["v"])), ("v",)),
    # op 4
    ("packed", "width", _set(mixed_qkv=_r(3, 2 * H * K + HV * V + 1)), ("mixed_qkv",)),
    ("packed", "mixed_strided_last_dim", _set(mixed_qkv=lambda kw: _strided_last(kw["mixed_qkv"])),
     ("mixed_qkv",)),
    ("packed", "out_shape", _set(out=torch.full((3, HV, V), float("nan"))), ("out",)),
    ("packed", "out_dtype", _set(out=torch.zeros(3, 1, HV, V, dtype=torch.float16)), ("out",)),
    ("packed", "a_shape", _set(a=_r(3, HV, 1)), ("a",)),
    ("packed", "b_rows", _set(b=_r(2, HV)), ("b",)),
    ("packed", "pool_wrong_layout", _set(state_v_first=False), ("out", "mixed_qkv",
                                                                "initial_state")),
    ("packed", "index_out_of_range", _set(ssm_state_indices=torch.tensor([0, 2, SLOTS])),
     ("ssm_state_indices",)),
    ("packed", "indices_wrong_n", _set(ssm_state_indices=torch.tensor([0, 2])),
     ("ssm_state_indices",)),
    ("packed", "dt_bias_shape", _set(dt_bias=_r(HV - 1)), ("dt_bias",)),
    # op 5
    ("gating", "a_3d", _set(a=_r(1, 7, HV)), ("a",)),
    ("gating", "b_shape", _set(b=_r(7, HV + 1)), ("b",)),
    ("gating", "A_log_shape", _set(A_log=_r(HV, 1)), ("A_log",)),
    ("gating", "softplus_beta_zero", _set(beta=0.0), ("beta",)),
    ("gating", "threshold_none", _set(threshold=None), ("threshold",)),
    # op 6
    ("split", "bad_layout", _set(layout="qwen"), ("layout",)),
    ("split", "hv_not_multiple", _set(num_heads_v=3), ("num_heads_v",)),
    ("split", "qkvz_width", _set(mixed_qkvz=_r(3, 10)), ("mixed_qkvz",)),
    ("split", "ba_width", _set(mixed_ba=_r(3, 7)), ("mixed_ba",)),
    ("split", "ba_rows", _set(mixed_ba=_r(4, 8)), ("mixed_ba",)),
    ("split", "head_dim_float", _set(head_qk=8.0), ("head_qk",)),
    ("split", "heads_zero", _set(num_heads_qk=0), ("num_heads_qk",)),
    # op 7
    ("l2norm", "scalar", _set(x=torch.tensor(1.0)), ("x",)),
    ("l2norm", "int", _set(x=torch.ones(3, 4, dtype=torch.int64)), ("x",)),
    ("l2norm", "negative_eps", _set(eps=-1.0), ("eps",)),
]


def _tensors(kw: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in kw.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"}


@pytest.mark.parametrize("base,case,mutate,names", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input_raises_and_writes_nothing(base, case, mutate, names):
    fn, make = BASES[base]
    kw = make()
    mutate(kw)
    snapshot = {k: v.clone() for k, v in _tensors(kw).items()}
    with pytest.raises(gdn.GDNInputError) as info:
        fn(**kw)
    exc = info.value
    assert isinstance(exc, ValueError)
    assert exc.argument in names, f"named {exc.argument!r}: {exc}"
    assert f"'{exc.argument}'" in str(exc) and "expected" in str(exc) and "received" in str(exc)
    for k, before in snapshot.items():
        torch.testing.assert_close(kw[k], before, rtol=0, atol=0, equal_nan=True,
                                   msg=f"{k} was written by a rejected call")


@pytest.mark.parametrize("base", sorted(BASES))
def test_valid_base_calls_run(base):
    """The starting points of the cases above are valid, so each case tests one defect."""
    fn, make = BASES[base]
    with gdn.use_backend("reference"):
        fn(**make())


def test_wrong_layout_message_gives_a_hint():
    kw = base_chunk()
    kw["initial_state"] = _r(B, HV, V, K)
    with pytest.raises(gdn.GDNInputError, match="state_v_first=True"):
        gdn.chunk_gated_delta_rule(**kw)


def test_explain_reports_bad_input_without_raising():
    kw = base_chunk()
    kw["g"] = -torch.rand(B, T, HV + 1)
    exp = gdn.explain("chunk_gated_delta_rule", **kw)
    assert exp.chosen is None and "'g'" in exp.error


def test_value_checks_run_on_every_call_even_when_cached():
    """The metadata decision is cached, the contents of index tensors are checked each call."""
    kw = base_recurrent()
    kw["ssm_state_indices"] = torch.tensor([0, SLOTS, 1])
    for _ in range(2):
        with pytest.raises(gdn.GDNInputError):
            gdn.fused_recurrent_gated_delta_rule(**kw)
