"""The dispatcher's guarded fast path (gdn_dispatch/fast_path.py).

A repeated call must skip the key build, and anything the key would notice (shapes,
strides, dtypes, devices, which optional tensors are given, the other arguments, the forced
backend, a simulated device) must make the guard miss, so that the key path and validation
decide again.  In-place metadata changes of the *same* tensor objects are the dangerous
case: identity says nothing about metadata.
"""

from __future__ import annotations

import pytest
import torch
from oracle import make_inputs

import gdn_dispatch as gdn
from gdn_dispatch import dispatch, fast_path
from gdn_dispatch.errors import GDNInputError

pytestmark = pytest.mark.skipif(not fast_path.available(),
                                reason="this PyTorch has no TensorGuards: key path only")

OP = "fused_recurrent_gated_delta_rule"


@pytest.fixture
def key_calls(clean_dispatch, monkeypatch):
    """Counts key builds of op 2 (a key build = a call the guards did not take)."""
    spec = dispatch.OP_SPECS[OP]
    real = dispatch._key_fn(spec)
    calls = []

    def counting(args, forced):
        calls.append(forced)
        return real(args, forced)

    monkeypatch.setitem(dispatch._KEY_FNS, OP, counting)
    return calls


def _inputs():
    q, k, v, g, beta = make_inputs(2, 3, 2, 4, 8, 8)
    h0 = torch.randn(2, 4, 8, 8)
    return q, k, v, g, beta, h0


def test_repeat_skips_key_and_matches_result(key_calls):
    q, k, v, g, beta, h0 = _inputs()
    o1, s1 = gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0,
                                                  output_final_state=True)
    o2, s2 = gdn.fused_recurrent_gated_delta_rule(q.clone(), k.clone(), v.clone(), g.clone(),
                                                  beta.clone(), initial_state=h0.clone(),
                                                  output_final_state=True)
    assert len(key_calls) == 1
    torch.testing.assert_close(o1, o2, rtol=0, atol=0)
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)


@pytest.mark.parametrize("change", ["strides", "shape", "dtype", "none", "flag", "requires_grad",
                                    "bool_as_int", "scale"])
def test_changed_metadata_misses(key_calls, change):
    q, k, v, g, beta, h0 = _inputs()
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0)
    kw: dict = dict(initial_state=h0)
    if change == "strides":
        q = q.transpose(0, 1).contiguous().transpose(0, 1)
    elif change == "shape":
        q, k, v, g, beta = make_inputs(2, 4, 2, 4, 8, 8)
    elif change == "dtype":
        v = v.double()
    elif change == "none":
        g = None
    elif change == "flag":
        kw["use_qk_l2norm_in_kernel"] = True
    elif change == "requires_grad":
        q = q.clone().requires_grad_()
    elif change == "bool_as_int":
        kw["use_qk_l2norm_in_kernel"] = 0  # equal to False, but another type: key path decides
    elif change == "scale":
        kw["scale"] = 0.5
    try:
        gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    except GDNInputError:
        pass  # a rejected call is fine; the point is that it was looked at again
    assert len(key_calls) == 2


@pytest.mark.parametrize("mutation", ["resize_", "transpose_", "as_strided_", "set_"])
def test_in_place_metadata_change_is_validated_again(key_calls, mutation):
    """Same tensor objects, new metadata: the guard must miss and validation must reject."""
    q, k, v, g, beta, h0 = _inputs()
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0,
                                         inplace_final_state=True)
    before = h0.clone()
    if mutation == "resize_":
        q.resize_(2, 3, 2, 4)  # K 8 -> 4: no longer matches k
    elif mutation == "transpose_":
        q.transpose_(2, 3)  # [2, 3, 8, 2]: H and K swapped
    elif mutation == "as_strided_":
        q.as_strided_((2, 3, 1, 8), q.stride())
    else:
        q.set_(torch.randn(2, 3, 2, 16))
    with pytest.raises(GDNInputError, match=r"argument '[qk]'"):
        gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0,
                                             inplace_final_state=True)
    assert len(key_calls) == 2
    torch.testing.assert_close(h0, before, rtol=0, atol=0)  # nothing written


def test_forced_backend_changes_are_seen(key_calls, monkeypatch):
    q, k, v, g, beta, h0 = _inputs()
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    with gdn.use_backend("reference"):
        gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    monkeypatch.setenv("GDN_BACKEND", "no_such_backend")
    with pytest.raises(gdn.GDNBackendError, match="no_such_backend"):
        gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    monkeypatch.delenv("GDN_BACKEND")
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    assert key_calls == [None, "reference", "no_such_backend"]


def test_simulated_device_bypasses_guards(key_calls, monkeypatch):
    q, k, v, g, beta, h0 = _inputs()
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    decided = []
    real = dispatch._decide
    monkeypatch.setattr(dispatch, "_decide", lambda *a: decided.append(1) or real(*a))
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    assert decided == []  # guarded
    with gdn.simulate_device("cpu"):
        gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    assert decided == [1]  # decided again (and not cached) under the simulated device
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    assert decided == [1]


def test_entries_are_capped_and_hottest_first(key_calls):
    shapes = [make_inputs(1, t, 2, 2, 8, 8) for t in range(1, fast_path.MAX_ENTRIES + 3)]
    for q, k, v, g, beta in shapes:
        gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    assert len(fast_path._MEMO[OP]) == fast_path.MAX_ENTRIES
    n = len(key_calls)
    q, k, v, g, beta = shapes[-3]  # still remembered, not the first guard
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    assert len(key_calls) == n
    guard, entry = fast_path._MEMO[OP][0]
    assert guard((q, k, v, g, beta, None, None, False, False, False, None, None, False, False,
                  False, None, None, None, False), None)


def test_value_checks_still_run_on_cpu(key_calls):
    """CPU calls keep their value checks on the fast path (index range of a pool)."""
    q, k, v, g, beta = make_inputs(2, 1, 2, 4, 8, 8)
    pool = torch.randn(4, 4, 8, 8)
    idx = torch.tensor([1, 2], dtype=torch.int32)
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=pool,
                                         ssm_state_indices=idx, inplace_final_state=True)
    cu = torch.tensor([0, 1, 2], dtype=torch.int32)
    gdn.fused_recurrent_gated_delta_rule(q.reshape(1, 2, 2, 8), k.reshape(1, 2, 2, 8),
                                         v.reshape(1, 2, 4, 8), g.reshape(1, 2, 4),
                                         beta.reshape(1, 2, 4), initial_state=pool,
                                         ssm_state_indices=idx, inplace_final_state=True,
                                         cu_seqlens=cu)
    bad = torch.tensor([0, 3, 2], dtype=torch.int32)  # not non-decreasing ... (1 token, 2 seqs)
    bad[1] = 5
    before = pool.clone()
    with pytest.raises(GDNInputError, match="cu_seqlens"):
        gdn.fused_recurrent_gated_delta_rule(q.reshape(1, 2, 2, 8), k.reshape(1, 2, 2, 8),
                                             v.reshape(1, 2, 4, 8), g.reshape(1, 2, 4),
                                             beta.reshape(1, 2, 4), initial_state=pool,
                                             ssm_state_indices=idx, inplace_final_state=True,
                                             cu_seqlens=bad)
    torch.testing.assert_close(pool, before, rtol=0, atol=0)


def test_subclass_and_odd_arguments_take_the_key_path(key_calls):
    q, k, v, g, beta, h0 = _inputs()
    p = torch.nn.Parameter(h0.clone(), requires_grad=False)
    with torch.no_grad():
        gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=p)
        gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=p)
    assert len(key_calls) == 2  # a Parameter is not guarded: key path both times
