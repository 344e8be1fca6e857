"""The reference backend against the float64 oracle of tests/oracle.py, op by op.

Every call here is forced onto the reference backend, so these tests check the executable
contract itself whatever other backends are registered.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F
from oracle import TOL, gating64, make_inputs, poison_, recurrence64, recurrence64_states, rel_err

import gdn_dispatch as gdn
from gdn_dispatch import registry

pytestmark = pytest.mark.usefixtures("on_reference")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
CHUNK = gdn.chunk_gated_delta_rule
RECUR = gdn.fused_recurrent_gated_delta_rule


def _ops():
    return pytest.mark.parametrize("op", [CHUNK, RECUR], ids=["chunk", "recurrent"])


def _check(out, ref, dtype, what=""):
    err = rel_err(out, ref)
    assert err <= TOL[dtype], f"{what} rel err {err:.3g} > {TOL[dtype]:g}"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _state(N, HV, K, V, dtype=torch.float32, seed=7, v_first=False):
    shape = (N, HV, V, K) if v_first else (N, HV, K, V)
    return (0.5 * torch.randn(*shape, generator=_gen(seed))).to(dtype)


# -- ops 1 and 2 against the oracle ---------------------------------------------------------
@_ops()
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_against_oracle_by_dtype(op, dtype):
    B, T, H, HV, K, V = 2, 75, 2, 4, 16, 32
    q, k, v, g, beta = make_inputs(B, T, H, HV, K, V, dtype=dtype, seed=1)
    h0 = _state(B, HV, K, V, torch.float64 if dtype == torch.float64 else torch.float32)
    o, ht = op(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    ro, rh = recurrence64(q, k, v, g, beta, h0=h0)
    assert o.dtype == dtype and o.shape == (B, T, HV, V)
    assert ht.dtype == h0.dtype and ht.shape == (B, HV, K, V)
    _check(o, ro, dtype, "o")
    _check(ht, rh, dtype, "final state")


@_ops()
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_state_dtype_is_kept(op, state_dtype):
    q, k, v, g, beta = make_inputs(1, 40, 1, 2, 16, 16, dtype=torch.bfloat16, seed=2)
    h0 = _state(1, 2, 16, 16, state_dtype)
    o, ht = op(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    ro, rh = recurrence64(q, k, v, g, beta, h0=h0)
    assert ht.dtype == state_dtype and o.dtype == torch.bfloat16
    _check(o, ro, torch.bfloat16)
    _check(ht, rh, torch.bfloat16)


@_ops()
def test_new_state_is_float32_or_float64(op):
    for dtype, expect in ((torch.float16, torch.float32), (torch.float64, torch.float64)):
        q, k, v, g, beta = make_inputs(1, 5, 1, 1, 8, 8, dtype=dtype)
        _, ht = op(q, k, v, g, beta, output_final_state=True)
        assert ht.dtype == expect
    _, ht = op(q, k, v, g, beta)
    assert ht is None


def test_chunk_equals_recurrent_long():
    q, k, v, g, beta = make_inputs(1, 300, 2, 4, 32, 32, seed=3)
    h0 = _state(1, 4, 32, 32)
    oc, hc = CHUNK(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    orr, hr = RECUR(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert rel_err(oc, orr) < 1e-5 and rel_err(hc, hr) < 1e-5


def test_chunk_large_decay_is_stable():
    """Strong decays (g down to about -60 per token) must not overflow exp inside a chunk."""
    q, k, v, _, beta = make_inputs(1, 130, 1, 2, 16, 16, seed=4)
    g = -torch.rand(1, 130, 2, generator=_gen(4)) * 60.0
    o, ht = CHUNK(q, k, v, g, beta, output_final_state=True)
    ro, rh = recurrence64(q, k, v, g, beta)
    _check(o, ro, torch.float32)
    _check(ht, rh, torch.float32)


@_ops()
def test_varlen_matches_oracle(op):
    """Lengths not multiple of 64, empty sequences at the start, middle and end."""
    cu = torch.tensor([0, 0, 70, 71, 71, 200, 265, 265], dtype=torch.int32)
    N, T = cu.numel() - 1, int(cu[-1])
    q, k, v, g, beta = make_inputs(1, T, 2, 4, 16, 16, seed=5)
    h0 = _state(N, 4, 16, 16)
    o, ht = op(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    ro, rh = recurrence64(q, k, v, g, beta, h0=h0, cu_seqlens=cu)
    _check(o, ro, torch.float32, "o")
    _check(ht, rh, torch.float32, "final state")
    assert torch.equal(ht[0], h0[0]) and torch.equal(ht[-1], h0[-1])  # empty = identity


@_ops()
def test_varlen_equals_separate_calls(op):
    cu = torch.tensor([0, 33, 97, 100], dtype=torch.int64)
    q, k, v, g, beta = make_inputs(1, 100, 1, 2, 16, 16, seed=6)
    h0 = _state(3, 2, 16, 16)
    o, ht = op(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    for n in range(3):
        s, e = int(cu[n]), int(cu[n + 1])
        sl = slice(s, e)
        on, hn = op(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl],
                    initial_state=h0[n:n + 1], output_final_state=True)
        assert rel_err(o[:, sl], on) < 1e-5 and rel_err(ht[n:n + 1], hn) < 1e-5


@_ops()
def test_split_in_two_with_state_carried(op):
    q, k, v, g, beta = make_inputs(2, 150, 2, 2, 16, 16, seed=8)
    h0 = _state(2, 2, 16, 16)
    o, ht = op(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    cut = 67
    a = slice(0, cut)
    b = slice(cut, None)
    o1, h1 = op(q[:, a], k[:, a], v[:, a], g[:, a], beta[:, a], initial_state=h0,
                output_final_state=True)
    o2, h2 = op(q[:, b], k[:, b], v[:, b], g[:, b], beta[:, b], initial_state=h1,
                output_final_state=True)
    assert rel_err(torch.cat([o1, o2], 1), o) < 1e-5
    assert rel_err(h2, ht) < 1e-5


@_ops()
def test_gva_equals_repeated_key_heads(op):
    H, HV = 2, 6
    q, k, v, g, beta = make_inputs(1, 70, H, HV, 16, 16, seed=9)
    o, ht = op(q, k, v, g, beta, output_final_state=True)
    rep = torch.arange(HV) // (HV // H)
    o2, h2 = op(q[:, :, rep], k[:, :, rep], v, g, beta, output_final_state=True)
    assert rel_err(o, o2) < 1e-6 and rel_err(ht, h2) < 1e-6


@_ops()
def test_state_v_first_is_transposed_state(op):
    K, V = 16, 24
    q, k, v, g, beta = make_inputs(2, 40, 1, 2, K, V, seed=10)
    h0 = _state(2, 2, K, V)
    o, ht = op(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    o_t, ht_t = op(q, k, v, g, beta, initial_state=h0.transpose(-1, -2).contiguous(),
                   output_final_state=True, state_v_first=True)
    assert ht_t.shape == (2, 2, V, K)
    assert rel_err(o_t, o) < 1e-6 and rel_err(ht_t.transpose(-1, -2), ht) < 1e-6


@_ops()
@pytest.mark.parametrize("with_bias", [True, False])
def test_gate_in_kernel_equals_precomputed(op, with_bias):
    HV = 4
    q, k, v, _, beta = make_inputs(1, 50, 2, HV, 16, 16, seed=11)
    a = torch.randn(1, 50, HV, generator=_gen(11)) * 3
    A_log = torch.randn(HV, generator=_gen(12))
    dt_bias = torch.randn(HV, generator=_gen(13)) if with_bias else None
    o, ht = op(q, k, v, a, beta, output_final_state=True, use_gate_in_kernel=True, A_log=A_log,
               dt_bias=dt_bias)
    g = gating64(A_log, a, dt_bias).float()
    o2, h2 = op(q, k, v, g, beta, output_final_state=True)
    assert rel_err(o, o2) < 1e-5 and rel_err(ht, h2) < 1e-5
    ro, rh = recurrence64(q, k, v, gating64(A_log, a, dt_bias), beta)
    _check(o, ro, torch.float32)


@_ops()
@pytest.mark.parametrize("neg", [False, True])
def test_beta_sigmoid_and_neg_eigval(op, neg):
    q, k, v, g, _ = make_inputs(1, 45, 1, 2, 16, 16, seed=14)
    b = torch.randn(1, 45, 2, generator=_gen(14)) * 2
    o, ht = op(q, k, v, g, b, output_final_state=True, use_beta_sigmoid_in_kernel=True,
               allow_neg_eigval=neg)
    beta = torch.sigmoid(b.double()) * (2 if neg else 1)
    ro, rh = recurrence64(q, k, v, g, beta)
    _check(o, ro, torch.float32)
    _check(ht, rh, torch.float32)


@_ops()
def test_neg_eigval_has_no_effect_on_precomputed_beta(op):
    q, k, v, g, beta = make_inputs(1, 20, 1, 1, 8, 8, seed=15)
    o1, _ = op(q, k, v, g, beta)
    o2, _ = op(q, k, v, g, beta, allow_neg_eigval=True)
    assert torch.equal(o1, o2)


def test_g_and_beta_none():
    q, k, v, _, _ = make_inputs(1, 30, 1, 2, 8, 8, seed=16)
    o, ht = RECUR(q, k, v, output_final_state=True)
    ro, rh = recurrence64(q, k, v)
    _check(o, ro, torch.float32)
    _check(ht, rh, torch.float32)
    o, ht = CHUNK(q, k, v, None, None, output_final_state=True)
    _check(o, ro, torch.float32)


@_ops()
def test_l2norm_and_scale(op):
    q, k, v, g, beta = make_inputs(1, 33, 2, 2, 16, 16, seed=17, normalize_k=False)
    o, ht = op(q, k, v, g, beta, scale=0.3, output_final_state=True,
               use_qk_l2norm_in_kernel=True)
    ro, rh = recurrence64(q, k, v, g, beta, scale=0.3, l2norm=True)
    _check(o, ro, torch.float32)
    _check(ht, rh, torch.float32)


def test_chunk_prefill_4096_under_10s():
    """Issue 2's budget: 1 x 4096 tokens, H=16, HV=32, K=V=128, fp32 in under 10 s."""
    q, k, v, g, beta = make_inputs(1, 4096, 16, 32, 128, 128, seed=18)
    CHUNK(q[:, :64], k[:, :64], v[:, :64], g[:, :64], beta[:, :64])  # lazy init out of the way
    # one thread: a stricter budget than two cores, and immune to OpenMP spinning when other
    # jobs share the machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        o, ht = CHUNK(q, k, v, g, beta, output_final_state=True)
        elapsed = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert torch.isfinite(o).all() and torch.isfinite(ht).all()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    if elapsed >= 10.0 and load > 2 * cores:
        pytest.skip(f"took {elapsed:.1f} s on an oversubscribed machine (load {load:.1f}, "
                    f"{cores} cores): timing not meaningful")
    assert elapsed < 10.0, f"reference chunked prefill took {elapsed:.2f} s (load {load:.1f})"


def test_chunk_matches_oracle_at_head_dim_128():
    q, k, v, g, beta = make_inputs(1, 130, 1, 2, 128, 128, seed=19)
    o, ht = CHUNK(q, k, v, g, beta, output_final_state=True)
    ro, rh = recurrence64(q, k, v, g, beta)
    _check(o, ro, torch.float32)
    _check(ht, rh, torch.float32)


# -- op 2 state pools -----------------------------------------------------------------------
def _pool(slots, HV, K, V, dtype=torch.float32, v_first=False):
    pool = _state(slots, HV, K, V, dtype, seed=20, v_first=v_first)
    return pool


def _oracle_h0(pool, idx, v_first):
    """Start states per sequence for the oracle (zeros where idx is padding)."""
    rows = [pool[i] if 0 <= i < pool.shape[0] else torch.zeros_like(pool[0]) for i in idx]
    return torch.stack(rows)


def test_inplace_without_indices():
    q, k, v, g, beta = make_inputs(2, 3, 1, 2, 16, 16, seed=21)
    h0 = _state(2, 2, 16, 16)
    before = h0.clone()
    o, ht = RECUR(q, k, v, g, beta, initial_state=h0, inplace_final_state=True)
    ro, rh = recurrence64(q, k, v, g, beta, h0=before)
    assert ht is h0
    _check(o, ro, torch.float32)
    _check(h0, rh, torch.float32)


@pytest.mark.parametrize("v_first", [False, True])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_pool_inplace_with_padding(v_first, state_dtype):
    N, slots, HV, K, V = 4, 7, 2, 16, 8
    q, k, v, g, beta = make_inputs(N, 1, 1, HV, K, V, seed=22)
    pool = _pool(slots, HV, K, V, state_dtype, v_first)
    pool[0] = float("nan")  # never indexed: must never be read or written
    pool[6] = float("nan")
    idx = torch.tensor([3, -1, 5, 1], dtype=torch.int32)
    before = pool.clone()
    o = poison_(torch.empty(N, 1, HV, V))
    o, ret = RECUR(q, k, v, g, beta, initial_state=pool, ssm_state_indices=idx,
                   inplace_final_state=True, state_v_first=v_first)
    assert ret is pool
    ro, rh = recurrence64(q, k, v, g, beta, h0=_oracle_h0(before, idx.tolist(), v_first),
                          state_v_first=v_first)
    live = idx >= 0
    assert torch.equal(o[~live], torch.zeros_like(o[~live]))
    _check(o[live], ro[live], state_dtype)
    for n, i in enumerate(idx.tolist()):
        if i >= 0:
            _check(pool[i], rh[n], state_dtype)
    untouched = [s for s in range(slots) if s not in idx.tolist()]
    torch.testing.assert_close(pool[untouched], before[untouched], rtol=0, atol=0,
                               equal_nan=True)


def test_pool_not_inplace_returns_new_states():
    N, slots, HV, K, V = 3, 5, 2, 8, 8
    q, k, v, g, beta = make_inputs(N, 2, 1, HV, K, V, seed=23)
    pool = _pool(slots, HV, K, V)
    idx = torch.tensor([4, -1, 0])
    before = pool.clone()
    o, ht = RECUR(q, k, v, g, beta, initial_state=pool, ssm_state_indices=idx,
                  output_final_state=True)
    assert torch.equal(pool, before)
    ro, rh = recurrence64(q, k, v, g, beta, h0=_oracle_h0(before, idx.tolist(), False))
    assert ht.shape == (N, HV, K, V) and torch.equal(ht[1], torch.zeros_like(ht[1]))
    _check(ht[[0, 2]], rh[[0, 2]], torch.float32)
    _check(o[[0, 2]], ro[[0, 2]], torch.float32)
    _, none = RECUR(q, k, v, g, beta, initial_state=pool, ssm_state_indices=idx)
    assert none is None and torch.equal(pool, before)


def test_out_of_range_index_is_padding_in_the_reference():
    """Value checks reject it on CPU; the impl itself must still treat it as padding."""
    N, slots, HV, K, V = 2, 3, 1, 8, 8
    q, k, v, g, beta = make_inputs(N, 1, 1, HV, K, V, seed=24)
    pool = _pool(slots, HV, K, V)
    before = pool.clone()
    idx = torch.tensor([7, 1])
    meta = gdn.explain("fused_recurrent_gated_delta_rule", q, k, v, g, beta,
                       initial_state=pool, ssm_state_indices=idx,
                       inplace_final_state=True).meta
    impl = registry.get_backend("reference").impl("fused_recurrent_gated_delta_rule")
    o, _ = impl(
        q, k, v, g, beta, K ** -0.5, pool, False, False, False, None, None, False, False, False,
        None, idx, None, True, meta=meta)
    assert torch.equal(o[0], torch.zeros_like(o[0]))
    assert torch.equal(pool[[0, 2]], before[[0, 2]]) and not torch.equal(pool[1], before[1])


@pytest.mark.parametrize("v_first", [False, True])
def test_spec_decode_inplace_with_num_accepted(v_first):
    N, T, slots, HV, K, V = 3, 3, 12, 2, 8, 16
    q, k, v, g, beta = make_inputs(N, T, 1, HV, K, V, seed=25)
    pool = _pool(slots, HV, K, V, v_first=v_first)
    idx = torch.tensor([[0, 1, 2], [3, 4, -1], [-1, 6, 7]], dtype=torch.int32)
    nat = torch.tensor([2, 1, 1], dtype=torch.int32)  # seq 2 starts at -1: padded
    before = pool.clone()
    o, ret = RECUR(q, k, v, g, beta, initial_state=pool, ssm_state_indices=idx,
                   num_accepted_tokens=nat, inplace_final_state=True, state_v_first=v_first)
    assert ret is pool
    starts = [1, 3, -1]
    _, _, states = recurrence64_states(q, k, v, g, beta,
                                       h0=_oracle_h0(before, starts, v_first),
                                       state_v_first=v_first)
    ro, _ = recurrence64(q, k, v, g, beta, h0=_oracle_h0(before, starts, v_first),
                         state_v_first=v_first)
    _check(o[:2], ro[:2], torch.float32)
    assert torch.equal(o[2], torch.zeros_like(o[2]))
    written = {}
    for n in range(2):
        for t in range(T):
            if idx[n, t] >= 0:
                written[int(idx[n, t])] = states[n * T + t]
    for slot, st in written.items():
        _check(pool[slot], st, torch.float32)
    for slot in range(slots):
        if slot not in written:
            assert torch.equal(pool[slot], before[slot]), slot


def test_spec_decode_not_inplace_returns_every_token_state():
    N, T, slots, HV, K, V = 2, 4, 9, 1, 8, 8
    q, k, v, g, beta = make_inputs(N, T, 1, HV, K, V, seed=26)
    pool = _pool(slots, HV, K, V)
    idx = torch.tensor([[2, 3, 4, 5], [-1, 7, 8, 0]])
    before = pool.clone()
    o, states = RECUR(q, k, v, g, beta, initial_state=pool, ssm_state_indices=idx)
    assert torch.equal(pool, before)
    assert states.shape == (N * T, HV, K, V)
    _, _, ref_states = recurrence64_states(q, k, v, g, beta,
                                           h0=_oracle_h0(before, [2, -1], False))
    _check(states[:T], ref_states[:T], torch.float32)
    assert torch.equal(states[T:], torch.zeros_like(states[T:]))
    assert torch.equal(o[1], torch.zeros_like(o[1]))


def test_varlen_decode_with_pool():
    cu = torch.tensor([0, 1, 3, 3, 6], dtype=torch.int32)
    T, slots, HV, K, V = 6, 6, 2, 8, 8
    q, k, v, g, beta = make_inputs(1, T, 1, HV, K, V, seed=27)
    pool = _pool(slots, HV, K, V)
    idx = torch.tensor([5, 0, 2, -1])
    before = pool.clone()
    o, _ = RECUR(q, k, v, g, beta, initial_state=pool, ssm_state_indices=idx,
                 inplace_final_state=True, cu_seqlens=cu)
    ro, rh = recurrence64(q, k, v, g, beta, h0=_oracle_h0(before, idx.tolist(), False),
                          cu_seqlens=cu)
    _check(o[:, :3], ro[:, :3], torch.float32)
    assert torch.equal(o[:, 3:], torch.zeros_like(o[:, 3:]))  # seq 3 is padding
    _check(pool[[5, 0]], rh[[0, 1]], torch.float32)
    assert torch.equal(pool[2], before[2])  # empty sequence: state unchanged
    assert torch.equal(pool[[1, 3, 4]], before[[1, 3, 4]])


def test_spec_decode_varlen():
    """cu_seqlens with [N, T_max] indices: flat token rows b*T + t = cu[n] + t."""
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    T, slots, HV, K, V = 5, 8, 1, 8, 8
    q, k, v, g, beta = make_inputs(1, T, 1, HV, K, V, seed=28)
    pool = _pool(slots, HV, K, V)
    idx = torch.tensor([[0, 1, -1], [2, 3, 4]])
    before = pool.clone()
    o, states = RECUR(q, k, v, g, beta, initial_state=pool, ssm_state_indices=idx,
                      cu_seqlens=cu)
    _, _, ref_states = recurrence64_states(q, k, v, g, beta,
                                           h0=_oracle_h0(before, [0, 2], False), cu_seqlens=cu)
    _check(states, ref_states, torch.float32)
    pool2 = before.clone()
    RECUR(q, k, v, g, beta, initial_state=pool2, ssm_state_indices=idx, cu_seqlens=cu,
          inplace_final_state=True)
    for n, (s, e) in enumerate([(0, 2), (2, 5)]):
        for t in range(e - s):
            _check(pool2[int(idx[n, t])], ref_states[s + t], torch.float32)
    assert torch.equal(pool2[5:], before[5:])


# -- op 3 -----------------------------------------------------------------------------------
def _packed_projection(N, T, H, HV, K, V, dtype=torch.float32, seed=30):
    """q, k, v as strided views of one [N, T, 2HK + HV V + 7] projection."""
    width = 2 * H * K + HV * V + 7
    x = torch.randn(N, T, width, generator=_gen(seed)).to(dtype)
    q = x[..., : H * K].unflatten(-1, (H, K))
    k = x[..., H * K: 2 * H * K].unflatten(-1, (H, K))
    k = k / k.float().norm(dim=-1, keepdim=True).to(dtype)
    v = x[..., 2 * H * K: 2 * H * K + HV * V].unflatten(-1, (HV, V))
    return x, q, k, v


@pytest.mark.parametrize("flat_gates", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sigmoid_gating_update(flat_gates, dtype):
    N, T, H, HV, K, V, slots = 3, 2, 1, 2, 8, 16, 5
    width = 2 * H * K + HV * V + 7
    x = torch.randn(N, T, width, generator=_gen(31)).to(dtype)
    q = x[..., : H * K].unflatten(-1, (H, K))
    k = x[..., H * K: 2 * H * K].unflatten(-1, (H, K))
    v = x[..., 2 * H * K: 2 * H * K + HV * V].unflatten(-1, (HV, V))
    assert not q.is_contiguous()
    a = torch.randn(N, T, HV, generator=_gen(32)).to(dtype)
    b = torch.randn(N, T, HV, generator=_gen(33)).to(dtype)
    A_log = torch.randn(HV, generator=_gen(34))
    dt_bias = torch.randn(HV, generator=_gen(35))
    pool = _pool(slots, HV, K, V, v_first=True)  # default layout of op 3: [slots, HV, V, K]
    idx = torch.tensor([4, -1, 1])
    before = pool.clone()
    aa, bb = (a.reshape(N * T, HV), b.reshape(N * T, HV)) if flat_gates else (a, b)
    o = gdn.fused_sigmoid_gating_delta_rule_update(A_log, aa, dt_bias, 1.0, 20.0, q, k, v, bb,
                                                   pool, idx, use_qk_l2norm_in_kernel=True)
    g = gating64(A_log, a, dt_bias)
    beta = torch.sigmoid(b.double())
    ro, rh = recurrence64(q, k, v, g, beta, h0=_oracle_h0(before, idx.tolist(), True),
                          l2norm=True, state_v_first=True)
    assert o.shape == (N, T, HV, V) and o.dtype == dtype
    _check(o[[0, 2]], ro[[0, 2]], dtype)
    assert torch.equal(o[1], torch.zeros_like(o[1]))
    _check(pool[[4, 1]], rh[[0, 2]], dtype)
    assert torch.equal(pool[[0, 2, 3]], before[[0, 2, 3]])


def test_sigmoid_gating_update_softplus_params_and_kv_layout():
    N, H, HV, K, V = 2, 1, 1, 8, 4
    q, k, v, _, _ = make_inputs(N, 1, H, HV, K, V, seed=36)
    a = torch.randn(N, 1, HV, generator=_gen(36)) * 10
    b = torch.randn(N, 1, HV, generator=_gen(37))
    A_log = torch.randn(HV, generator=_gen(38))
    pool = _pool(3, HV, K, V)
    before = pool.clone()
    idx = torch.tensor([2, 0])
    o = gdn.fused_sigmoid_gating_delta_rule_update(A_log, a, None, 2.0, 5.0, q, k, v, b, pool,
                                                   idx, state_v_first=False)
    g = gating64(A_log, a, None, softplus_beta=2.0, threshold=5.0)
    ro, rh = recurrence64(q, k, v, g, torch.sigmoid(b.double()),
                          h0=_oracle_h0(before, [2, 0], False))
    _check(o, ro, torch.float32)
    _check(pool[[2, 0]], rh, torch.float32)


# -- op 4 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("v_first", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_packed_decode(v_first, dtype):
    N, H, HV, K, V, slots = 4, 2, 4, 16, 8, 6
    width = 2 * H * K + HV * V
    big = torch.randn(N, width + 5, generator=_gen(40)).to(dtype)
    mixed = big[:, :width]  # strided view
    a = torch.randn(N, HV, generator=_gen(41)).to(dtype)
    b = torch.randn(N, HV, generator=_gen(42)).to(dtype)
    A_log = torch.randn(HV, generator=_gen(43))
    dt_bias = torch.randn(HV, generator=_gen(44))
    pool = _pool(slots, HV, K, V, v_first=v_first)
    pool[5] = float("nan")
    before = pool.clone()
    out = poison_(torch.empty(N, 1, HV, V, dtype=dtype))
    idx = torch.tensor([2, -1, 0, 3], dtype=torch.int32)
    ret_out, ret_pool = gdn.fused_recurrent_gated_delta_rule_packed_decode(
        mixed, a, b, A_log, dt_bias, None, pool, out, idx, use_qk_l2norm_in_kernel=True,
        state_v_first=v_first)
    assert ret_out is out and ret_pool is pool
    q = mixed[:, : H * K].reshape(N, 1, H, K)
    k = mixed[:, H * K: 2 * H * K].reshape(N, 1, H, K)
    v = mixed[:, 2 * H * K:].reshape(N, 1, HV, V)
    g = gating64(A_log, a[:, None], dt_bias)
    beta = torch.sigmoid(b.double())[:, None]
    ro, rh = recurrence64(q, k, v, g, beta, h0=_oracle_h0(before, idx.tolist(), v_first),
                          l2norm=True, state_v_first=v_first)
    live = [0, 2, 3]
    _check(out[live], ro[live], dtype)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    _check(pool[[2, 0, 3]], rh[live], dtype)
    torch.testing.assert_close(pool[[1, 4, 5]], before[[1, 4, 5]], rtol=0, atol=0,
                               equal_nan=True)


def test_packed_decode_equals_recurrent():
    N, H, HV, K, V, slots = 3, 1, 2, 8, 8, 4
    mixed = torch.randn(N, 2 * H * K + HV * V, generator=_gen(45))
    a = torch.randn(N, HV, generator=_gen(46))
    b = torch.randn(N, HV, generator=_gen(47))
    A_log = torch.randn(HV, generator=_gen(48))
    pool1 = _pool(slots, HV, K, V, v_first=True)
    pool2 = pool1.clone()
    idx = torch.tensor([1, 3, 0])
    out = torch.empty(N, 1, HV, V)
    gdn.fused_recurrent_gated_delta_rule_packed_decode(mixed, a, b, A_log, None, 0.5, pool1,
                                                       out, idx)
    q = mixed[:, : H * K].reshape(N, 1, H, K)
    k = mixed[:, H * K: 2 * H * K].reshape(N, 1, H, K)
    v = mixed[:, 2 * H * K:].reshape(N, 1, HV, V)
    o2, _ = RECUR(q, k, v, a[:, None], b[:, None], 0.5, pool2, use_gate_in_kernel=True,
                  A_log=A_log, use_beta_sigmoid_in_kernel=True, state_v_first=True,
                  ssm_state_indices=idx, inplace_final_state=True)
    assert rel_err(out, o2) < 1e-6 and rel_err(pool1, pool2) < 1e-6


# -- ops 5, 6, 7 ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_fused_gdn_gating(dtype):
    N, HV = 9, 6
    A_log = torch.randn(HV, generator=_gen(50))
    a = (torch.randn(N, HV, generator=_gen(51)) * 15).to(dtype)
    b = torch.randn(N, HV, generator=_gen(52)).to(dtype)
    dt_bias = torch.randn(HV, generator=_gen(53))
    for beta, thr in ((1.0, 20.0), (2.0, 3.0)):
        g, bo = gdn.fused_gdn_gating(A_log, a, b, dt_bias, beta, thr)
        assert g.dtype == torch.float32 and g.shape == (1, N, HV)
        assert bo.dtype == dtype and bo.shape == (1, N, HV)
        _check(g[0], gating64(A_log, a, dt_bias, beta, thr), torch.float32)
        _check(bo[0], torch.sigmoid(b.double()), dtype)
    g, _ = gdn.fused_gdn_gating(A_log, a, b, None)
    _check(g[0], gating64(A_log, a, None), torch.float32)


def _pack_interleaved(q, k, v, z, b, a):
    """The Qwen3-Next checkpoint order, built head by head with Python loops."""
    N, Hqk = q.shape[0], q.shape[1]
    G = v.shape[1] // Hqk
    rows_qkvz, rows_ba = [], []
    for h in range(Hqk):
        hs = slice(h * G, (h + 1) * G)
        rows_qkvz += [q[:, h], k[:, h], v[:, hs].reshape(N, -1), z[:, hs].reshape(N, -1)]
        rows_ba += [b[:, hs], a[:, hs]]
    return torch.cat(rows_qkvz, -1), torch.cat(rows_ba, -1)


@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_split_reshape_cat(layout, dtype):
    N, Hqk, Hv, Dk, Dv = 5, 2, 6, 8, 4
    q = torch.randn(N, Hqk, Dk).to(dtype)
    k = torch.randn(N, Hqk, Dk).to(dtype)
    v = torch.randn(N, Hv, Dv).to(dtype)
    z = torch.randn(N, Hv, Dv).to(dtype)
    b = torch.randn(N, Hv).to(dtype)
    a = torch.randn(N, Hv).to(dtype)
    if layout == "interleaved":
        qkvz, ba = _pack_interleaved(q, k, v, z, b, a)
    else:
        qkvz = torch.cat([q.reshape(N, -1), k.reshape(N, -1), v.reshape(N, -1),
                          z.reshape(N, -1)], -1)
        ba = torch.cat([b, a], -1)
    mixed_qkv, z2, b2, a2 = gdn.fused_qkvzba_split_reshape_cat(qkvz, ba, Hqk, Hv, Dk, Dv,
                                                               layout=layout)
    expect = torch.cat([q.reshape(N, -1), k.reshape(N, -1), v.reshape(N, -1)], -1)
    assert torch.equal(mixed_qkv, expect)
    assert torch.equal(z2, z) and torch.equal(b2, b) and torch.equal(a2, a)
    for t in (mixed_qkv, z2, b2, a2):
        assert t.is_contiguous() and t.dtype == dtype
        assert t.untyped_storage().data_ptr() not in (qkvz.untyped_storage().data_ptr(),
                                                      ba.untyped_storage().data_ptr())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_l2norm(dtype):
    x = torch.randn(3, 5, 64).to(dtype)
    y = gdn.l2norm(x)
    ref = x.double() / torch.sqrt((x.double() ** 2).sum(-1, keepdim=True) + 1e-6)
    assert y.dtype == dtype and y.shape == x.shape
    _check(y, ref, dtype)
    y2 = gdn.l2norm(x, eps=1.0)
    ref2 = x.double() / torch.sqrt((x.double() ** 2).sum(-1, keepdim=True) + 1.0)
    _check(y2, ref2, dtype)
    xs = torch.randn(4, 10)[:, ::2]  # strided last dim is fine for l2norm
    _check(gdn.l2norm(xs), F.normalize(xs.double(), dim=-1), torch.float32)


def test_pool_as_strided_view_of_a_larger_cache():
    """Engines keep pools as views (any stride between slots); only indexed slots change."""
    N, slots, HV, K, V = 3, 4, 2, 8, 8
    q, k, v, g, beta = make_inputs(N, 2, 1, HV, K, V, seed=60)
    cache = torch.randn(slots, 3, HV, V, K, generator=_gen(60))  # [slots, layers, ...]
    pool = cache[:, 1]
    assert not pool.is_contiguous()
    before = cache.clone()
    idx = torch.tensor([2, -1, 0])
    o, _ = RECUR(q, k, v, g, beta, initial_state=pool, ssm_state_indices=idx,
                 inplace_final_state=True, state_v_first=True)
    ro, rh = recurrence64(q, k, v, g, beta, h0=_oracle_h0(before[:, 1], idx.tolist(), True),
                          state_v_first=True)
    _check(o[[0, 2]], ro[[0, 2]], torch.float32)
    _check(cache[[2, 0], 1], rh[[0, 2]], torch.float32)
    changed = torch.zeros_like(cache, dtype=torch.bool)
    changed[[2, 0], 1] = True
    assert torch.equal(cache[~changed], before[~changed])


def test_sigmoid_gating_update_varlen():
    cu = torch.tensor([0, 2, 2, 5], dtype=torch.int32)
    T, H, HV, K, V, slots = 5, 1, 2, 8, 8, 4
    q, k, v, _, _ = make_inputs(1, T, H, HV, K, V, seed=61)
    a = torch.randn(T, HV, generator=_gen(61))
    b = torch.randn(T, HV, generator=_gen(62))
    A_log = torch.randn(HV, generator=_gen(63))
    pool = _pool(slots, HV, K, V, v_first=True)
    before = pool.clone()
    idx = torch.tensor([3, 1, 0])
    o = gdn.fused_sigmoid_gating_delta_rule_update(A_log, a, None, 1.0, 20.0, q, k, v, b, pool,
                                                   idx, cu_seqlens=cu)
    ro, rh = recurrence64(q, k, v, gating64(A_log, a[None], None), torch.sigmoid(b.double())[None],
                          h0=_oracle_h0(before, idx.tolist(), True), cu_seqlens=cu,
                          state_v_first=True)
    _check(o, ro, torch.float32)
    _check(pool[[3, 0]], rh[[0, 2]], torch.float32)
    assert torch.equal(pool[[1, 2]], before[[1, 2]])  # empty sequence: slot 1 unchanged


def test_spec_indices_wider_than_t():
    N, T, slots, HV, K, V = 2, 2, 10, 1, 8, 8
    q, k, v, g, beta = make_inputs(N, T, 1, HV, K, V, seed=64)
    pool = _pool(slots, HV, K, V)
    before = pool.clone()
    idx = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    nat = torch.tensor([3, 1])
    RECUR(q, k, v, g, beta, initial_state=pool, ssm_state_indices=idx, num_accepted_tokens=nat,
          inplace_final_state=True)
    _, _, states = recurrence64_states(q, k, v, g, beta, h0=_oracle_h0(before, [2, 4], False))
    _check(pool[[0, 1, 4, 5]], states[[0, 1, 2, 3]], torch.float32)
    assert torch.equal(pool[[2, 3, 6, 7, 8, 9]], before[[2, 3, 6, 7, 8, 9]])


def test_reference_under_a_simulated_device_without_bf16():
    """The dtype policy is asked with the probe: a no-bf16 device computes the same."""
    q, k, v, g, beta = make_inputs(1, 70, 1, 2, 16, 16, dtype=torch.bfloat16, seed=70)
    o_cpu, h_cpu = CHUNK(q, k, v, g, beta, output_final_state=True)
    with gdn.simulate_device("t4"):
        exp = gdn.explain("chunk_gated_delta_rule", q, k, v, g, beta)
        assert exp.chosen == "reference" and not exp.meta.probe.bf16
        o_t4, h_t4 = CHUNK(q, k, v, g, beta, output_final_state=True)
    assert o_t4.dtype == torch.bfloat16 and h_t4.dtype == torch.float32
    assert rel_err(o_t4, o_cpu) < 1e-2 and rel_err(h_t4, h_cpu) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_reference_on_gpu(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA or ROCm GPU")
    dev = "cuda"
    cu = torch.tensor([0, 50, 50, 190], dtype=torch.int32, device=dev)
    q, k, v, g, beta = make_inputs(1, 190, 2, 4, 64, 64, dtype=dtype, device=dev, seed=71)
    h0 = _state(3, 4, 64, 64).to(dev)
    ro, rh = recurrence64(q, k, v, g, beta, h0=h0, cu_seqlens=cu)
    for op in (CHUNK, RECUR):
        o, ht = op(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
        assert o.device.type == "cuda" and ht.device.type == "cuda"
        _check(o, ro, dtype)
        _check(ht, rh, dtype)
    pool = _pool(6, 4, 64, 64, v_first=True).to(dev)
    before = pool.clone()
    idx = torch.tensor([5, -1, 2], device=dev)
    qd, kd, vd, gd, bd = make_inputs(3, 1, 2, 4, 64, 64, dtype=dtype, device=dev, seed=72)
    o, _ = RECUR(qd, kd, vd, gd, bd, initial_state=pool, ssm_state_indices=idx,
                 inplace_final_state=True, state_v_first=True)
    ro, rh = recurrence64(qd, kd, vd, gd, bd, h0=_oracle_h0(before.cpu(), [5, -1, 2], True),
                          state_v_first=True)
    _check(o[[0, 2]], ro[[0, 2]], dtype)
    assert torch.count_nonzero(o[1]) == 0
    _check(pool[[5, 2]], rh[[0, 2]], dtype)
    assert torch.equal(pool[[0, 1, 3, 4]], before[[0, 1, 3, 4]])
