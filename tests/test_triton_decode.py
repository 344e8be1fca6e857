"""GPU tests of the Triton-CUDA decode ops (ops 2-7) against the float64 oracle and the
reference backend: every flag, both state layouts, fp32/bf16/fp16 states, pools with padding,
speculative decoding, strided packed inputs, poisoned outputs, CUDA-graph capture/replay.

The ``check_*`` functions take a device and sizes; ``test_triton_decode_interpreter.py``
runs the same checks on tiny CPU shapes under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from oracle import TOL, gating64, make_inputs, poison_, recurrence64, rel_err

import gdn_dispatch as gdn

BACKEND = "triton_cuda"


# -- helpers ----------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _close(out, ref, dtype, what, scale=1.0):
    err = rel_err(out, ref)
    tol = TOL[dtype] * scale
    assert err <= tol, f"{what}: rel err {err:.3g} > {tol:g}"


def _tol_dtype(dtype, state_dtype):
    """The looser of the input and state dtype tolerances."""
    return max((dtype, state_dtype), key=lambda d: TOL[d])


def _state(rows, HV, K, V, dtype, device, v_first, seed=7):
    shape = (rows, HV, V, K) if v_first else (rows, HV, K, V)
    return (0.5 * torch.randn(*shape, generator=_gen(seed))).to(device=device, dtype=dtype)


def _poison_allocator(device) -> None:
    """Best effort: leave NaN in freed CUDA blocks so unwritten op outputs show up."""
    if torch.device(device).type == "cuda":
        junk = torch.full((64 << 20,), float("nan"), device=device)
        del junk


def _raw_gates(B, T, HV, dtype, device, seed=3):
    gen = _gen(seed)
    a = torch.randn(B, T, HV, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(B, T, HV, generator=gen).to(device=device, dtype=dtype)
    A_log = torch.log(torch.rand(HV, generator=gen) * 4 + 0.5).to(device)
    dt_bias = (0.5 * torch.randn(HV, generator=gen)).to(device)
    return a, b, A_log, dt_bias


def _run_both(fn, *args, **kwargs):
    """(triton result, reference result) of one op on cloned arguments."""
    clone = lambda x: x.clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
    args_ref = [clone(a) for a in args]
    kwargs_ref = {k: clone(v) for k, v in kwargs.items()}
    with gdn.use_backend(BACKEND):
        got = fn(*args, **kwargs)
    with gdn.use_backend("reference"):
        ref = fn(*args_ref, **kwargs_ref)
    return got, ref, args_ref, kwargs_ref


# -- op 2: plain, varlen, gating flags ----------------------------------------------------------
def check_recurrent_plain(device, dtype, state_dtype, *, B, T, H, HV, K, V, v_first,
                          gate="log", beta_mode="given", l2norm=False, neg_eigval=False,
                          varlen=None, final="output", h0=True, seed=0):
    """Op 2 without pools against the float64 oracle.

    gate: "none" | "log" | "raw"; beta_mode: "none" | "given" | "sigmoid"; final: "none" |
    "output" | "inplace"; varlen: list of sequence lengths (then B must be 1).
    """
    q, k, v, g, beta = make_inputs(B, T, H, HV, K, V, dtype=dtype, device=device, seed=seed,
                                   normalize_k=not l2norm)
    a, braw, A_log, dt_bias = _raw_gates(B, T, HV, dtype, device, seed + 1)
    cu = None
    N = B
    if varlen is not None:
        assert B == 1 and sum(varlen) == T
        cu = torch.tensor([0] + list(torch.tensor(varlen).cumsum(0)), dtype=torch.int32,
                          device=device)
        N = len(varlen)
    g_in = {"none": None, "log": g, "raw": a}[gate]
    beta_in = {"none": None, "given": beta, "sigmoid": braw}[beta_mode]
    init = _state(N, HV, K, V, state_dtype, device, v_first) if h0 else None
    init_copy = init.clone() if init is not None else None
    _poison_allocator(device)
    with gdn.use_backend(BACKEND):
        o, ht = gdn.fused_recurrent_gated_delta_rule(
            q, k, v, g_in, beta_in, initial_state=init, output_final_state=final == "output",
            use_qk_l2norm_in_kernel=l2norm, use_gate_in_kernel=gate == "raw",
            A_log=A_log if gate == "raw" else None, dt_bias=dt_bias if gate == "raw" else None,
            use_beta_sigmoid_in_kernel=beta_mode == "sigmoid", allow_neg_eigval=neg_eigval,
            state_v_first=v_first, cu_seqlens=cu, inplace_final_state=final == "inplace")
    g64 = {"none": None, "log": g, "raw": gating64(A_log, a, dt_bias) if gate == "raw" else None}[gate]
    b64 = {"none": None, "given": beta,
           "sigmoid": torch.sigmoid(braw.double()) * (2.0 if neg_eigval else 1.0)}[beta_mode]
    ro, rh = recurrence64(q, k, v, g64, b64, h0=init_copy, l2norm=l2norm, cu_seqlens=cu,
                          state_v_first=v_first)
    tol = _tol_dtype(dtype, state_dtype)
    assert o.shape == v.shape and o.dtype == dtype
    _close(o, ro, tol, "o")
    if final == "none":
        assert ht is None
    elif final == "inplace":
        assert ht is init
        _close(ht, rh, tol, "final state (inplace)")
    else:
        assert ht.dtype == (state_dtype if h0 else torch.float32)
        assert ht.shape == ((N, HV, V, K) if v_first else (N, HV, K, V))
        _close(ht, rh, tol, "final state")


# -- op 2: pools ----------------------------------------------------------------------------
def check_recurrent_pool(device, dtype, state_dtype, *, N, T, H, HV, K, V, v_first, inplace,
                         seed=0):
    """Pool [N] with -1 and an out-of-range index: triton vs reference, untouched slots."""
    q, k, v, g, beta = make_inputs(N, T, H, HV, K, V, dtype=dtype, device=device, seed=seed)
    slots = N + 3
    pool = _state(slots, HV, K, V, state_dtype, device, v_first, seed + 5)
    perm = torch.randperm(slots, generator=_gen(seed))[:N]
    idx = perm.clone()
    idx[0] = -1
    if N > 2 and torch.device(device).type == "cuda":
        idx[2] = slots + 7  # out of range (value checks run only on CPU): padding
    idx = idx.to(device=device, dtype=torch.int32)
    before = pool.clone()
    _poison_allocator(device)
    got, ref, args_ref, kw_ref = _run_both(
        gdn.fused_recurrent_gated_delta_rule, q, k, v, g, beta, initial_state=pool,
        output_final_state=True, use_qk_l2norm_in_kernel=True, state_v_first=v_first,
        ssm_state_indices=idx, inplace_final_state=inplace)
    tol = _tol_dtype(dtype, state_dtype)
    _close(got[0], ref[0], tol, "o")
    pad = ((idx < 0) | (idx >= slots)).cpu()
    assert (got[0].cpu()[pad] == 0).all(), "padded sequences must output zeros"
    if inplace:
        assert got[1] is pool
        _close(pool, kw_ref["initial_state"], tol, "pool")
        used = set(int(i) for i in idx.tolist() if 0 <= i < slots)
        for s in range(slots):
            if s not in used:
                assert torch.equal(pool[s], before[s]), f"slot {s} changed"
    else:
        assert torch.equal(pool, before), "pool changed without inplace_final_state"
        _close(got[1], ref[1], tol, "final state")
        assert (got[1].cpu()[pad] == 0).all()
    # the valid sequences against the oracle
    ok = ~pad
    if ok.any():
        rows = idx.cpu()[ok].long()
        c = lambda t: t.cpu()[ok]  # noqa: E731
        ro, _ = recurrence64(c(q), c(k), c(v), c(g), c(beta), h0=before.cpu()[rows],
                             l2norm=True, state_v_first=v_first)
        _close(got[0].cpu()[ok], ro, tol, "o vs oracle")


def check_recurrent_spec(device, dtype, state_dtype, *, N, T, H, HV, K, V, v_first, inplace,
                         varlen=False, seed=0):
    """Speculative decoding: idx [N, T_max] with num_accepted_tokens and -1 entries."""
    T_max = T + 1
    if varlen:
        lens = [max(1, T - (n % 2)) for n in range(N)]
        total = sum(lens)
        q, k, v, g, beta = make_inputs(1, total, H, HV, K, V, dtype=dtype, device=device,
                                       seed=seed)
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int64,
                          device=device)
    else:
        q, k, v, g, beta = make_inputs(N, T, H, HV, K, V, dtype=dtype, device=device, seed=seed)
        cu = None
    slots = N * T_max + 2
    pool = _state(slots, HV, K, V, state_dtype, device, v_first, seed + 5)
    idx = torch.randperm(slots, generator=_gen(seed))[: N * T_max].view(N, T_max).clone()
    idx[0, :] = -1  # a padded sequence
    if N > 1:
        idx[1, -1] = -1  # a skipped write
    nat = torch.tensor([1 + (n % T_max) for n in range(N)], dtype=torch.int32)
    idx, nat = idx.to(device=device, dtype=torch.int32), nat.to(device)
    before = pool.clone()
    _poison_allocator(device)
    got, ref, args_ref, kw_ref = _run_both(
        gdn.fused_recurrent_gated_delta_rule, q, k, v, g, beta, initial_state=pool,
        state_v_first=v_first, cu_seqlens=cu, ssm_state_indices=idx, num_accepted_tokens=nat,
        inplace_final_state=inplace)
    tol = _tol_dtype(dtype, state_dtype)
    _close(got[0], ref[0], tol, "o")
    if inplace:
        assert got[1] is pool
        _close(pool, kw_ref["initial_state"], tol, "pool")
    else:
        assert torch.equal(pool, before)
        assert got[1].shape[0] == q.shape[0] * q.shape[1]
        _close(got[1], ref[1], tol, "per-token states")


# -- op 3 ------------------------------------------------------------------------------------
def check_sigmoid_update(device, dtype, state_dtype, *, B, T, H, HV, K, V, v_first, flat_ab,
                         varlen=False, seed=0):
    """Op 3 on strided q/k/v views of one packed projection; -1 skips."""
    gen = _gen(seed)
    if varlen:
        lens = [1 + (n % 3) for n in range(B)]
        Bq, Tq = 1, sum(lens)
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32,
                          device=device)
        N = B
    else:
        Bq, Tq, cu, N = B, T, None, B
    width = 2 * H * K + HV * V + 8
    packed = torch.randn(Bq * Tq, width, generator=gen).to(device=device, dtype=dtype)
    q = packed[:, : H * K].view(Bq, Tq, H, K)
    k = packed[:, H * K: 2 * H * K].view(Bq, Tq, H, K)
    v = packed[:, 2 * H * K: 2 * H * K + HV * V].view(Bq, Tq, HV, V)
    a, b, A_log, dt_bias = _raw_gates(Bq, Tq, HV, dtype, device, seed + 1)
    if flat_ab:
        a, b = a.reshape(Bq * Tq, HV), b.reshape(Bq * Tq, HV)
    slots = N + 2
    pool = _state(slots, HV, K, V, state_dtype, device, v_first, seed + 5)
    idx = torch.randperm(slots, generator=gen)[:N].to(device=device, dtype=torch.int64)
    idx[N // 2] = -1
    before = pool.clone()
    _poison_allocator(device)
    got, ref, args_ref, _ = _run_both(
        gdn.fused_sigmoid_gating_delta_rule_update, A_log, a, dt_bias, 1.0, 20.0, q, k, v, b,
        pool, idx, use_qk_l2norm_in_kernel=True, cu_seqlens=cu, state_v_first=v_first)
    tol = _tol_dtype(dtype, state_dtype)
    assert got.shape == (Bq, Tq, HV, V)
    _close(got, ref, tol, "o")
    _close(pool, args_ref[9], tol, "pool")
    used = set(int(i) for i in idx.tolist() if i >= 0)
    for s in range(slots):
        if s not in used:
            assert torch.equal(pool[s], before[s])


# -- op 4 ------------------------------------------------------------------------------------
def check_packed_decode(device, dtype, state_dtype, *, N, H, HV, K, V, v_first, seed=0):
    """Op 4: strided packed rows, poisoned out, -1 rows zero, pool in place."""
    gen = _gen(seed)
    width = 2 * H * K + HV * V
    wide = torch.randn(N, width + 24, generator=gen).to(device=device, dtype=dtype)
    mixed = wide[:, 8: 8 + width]  # a strided view
    a, b, A_log, dt_bias = _raw_gates(N, 1, HV, dtype, device, seed + 1)
    a, b = a.view(N, HV), b.view(N, HV)
    slots = N + 2
    pool = _state(slots, HV, K, V, state_dtype, device, v_first, seed + 5)
    idx = torch.randperm(slots, generator=gen)[:N].to(device=device, dtype=torch.int32)
    idx[-1] = -1
    out = poison_(torch.empty(N, 1, HV, V, dtype=dtype, device=device))
    out_ref = torch.empty_like(out)
    pool_ref = pool.clone()
    scale = K ** -0.5
    with gdn.use_backend(BACKEND):
        r = gdn.fused_recurrent_gated_delta_rule_packed_decode(
            mixed, a, b, A_log, dt_bias, scale, pool, out, idx, True, state_v_first=v_first)
    assert r[0] is out and r[1] is pool
    with gdn.use_backend("reference"):
        gdn.fused_recurrent_gated_delta_rule_packed_decode(
            mixed, a, b, A_log, dt_bias, scale, pool_ref, out_ref, idx, True,
            state_v_first=v_first)
    tol = _tol_dtype(dtype, state_dtype)
    _close(out, out_ref, tol, "out")
    assert (out[-1] == 0).all()
    _close(pool, pool_ref, tol, "pool")


# -- ops 5, 6, 7 -------------------------------------------------------------------------------
def check_gating(device, dtype, *, N, HV, softplus_beta=1.0, threshold=20.0, seed=0):
    gen = _gen(seed)
    wide = (4 * torch.randn(N, 2 * HV + 3, generator=gen)).to(device=device, dtype=dtype)
    a = wide[:, :HV]  # rows with a stride
    b = torch.randn(N, HV, generator=gen).to(device=device, dtype=dtype)
    A_log = torch.randn(HV, generator=gen).to(device)
    dt_bias = torch.randn(HV, generator=gen).to(device)
    _poison_allocator(device)
    with gdn.use_backend(BACKEND):
        g, beta = gdn.fused_gdn_gating(A_log, a, b, dt_bias, softplus_beta, threshold)
    assert g.dtype == torch.float32 and g.shape == (1, N, HV)
    assert beta.dtype == dtype and beta.shape == (1, N, HV)
    _close(g[0], gating64(A_log, a, dt_bias, softplus_beta, threshold), torch.float32, "g")
    _close(beta[0], torch.sigmoid(b.double()), dtype, "beta")


def check_split(device, dtype, *, N, Hqk, Hv, Dk, Dv, layout, seed=0):
    gen = _gen(seed)
    G = Hv // Hqk
    W = 2 * Hqk * Dk + 2 * Hv * Dv
    wide = torch.randn(N, W + 16, generator=gen).to(device=device, dtype=dtype)
    x = wide[:, :W]
    ba = torch.randn(N, 2 * Hv, generator=gen).to(device=device, dtype=dtype)
    if layout == "interleaved":
        per = x.view(N, Hqk, 2 * Dk + 2 * G * Dv)
        q, k = per[..., :Dk], per[..., Dk: 2 * Dk]
        v = per[..., 2 * Dk: 2 * Dk + G * Dv].reshape(N, Hv * Dv)
        z = per[..., 2 * Dk + G * Dv:].reshape(N, Hv, Dv)
        bap = ba.view(N, Hqk, 2 * G)
        b_ref, a_ref = bap[..., :G].reshape(N, Hv), bap[..., G:].reshape(N, Hv)
        qkv_ref = torch.cat([q.reshape(N, -1), k.reshape(N, -1), v], -1)
    else:
        qkv_ref = x[:, : 2 * Hqk * Dk + Hv * Dv]
        z = x[:, 2 * Hqk * Dk + Hv * Dv:].reshape(N, Hv, Dv)
        b_ref, a_ref = ba[:, :Hv], ba[:, Hv:]
    _poison_allocator(device)
    with gdn.use_backend(BACKEND):
        qkv, zz, bb, aa = gdn.fused_qkvzba_split_reshape_cat(x, ba, Hqk, Hv, Dk, Dv, layout)
    for got, ref in ((qkv, qkv_ref), (zz, z), (bb, b_ref), (aa, a_ref)):
        assert got.shape == ref.shape and got.is_contiguous()
        assert torch.equal(got, ref)


def check_l2norm(device, dtype, *, shape, strided, seed=0):
    gen = _gen(seed)
    x = torch.randn(*shape[:-1], shape[-1] * (2 if strided else 1), generator=gen)
    x = x.to(device=device, dtype=dtype)
    if strided:
        x = x[..., ::2]
    _poison_allocator(device)
    with gdn.use_backend(BACKEND):
        y = gdn.l2norm(x)
    ref = x.double() / torch.sqrt((x.double() ** 2).sum(-1, keepdim=True) + 1e-6)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    _close(y, ref, dtype, "l2norm")


def check_launcher_slices(device, dtype, *, v_first, BV):
    """The launcher directly with a small BV (several V-slices per head)."""
    from gdn_dispatch.backends.triton_common import recurrent as rec

    B, T, H, HV, K, V = 2, 2, 1, 2, 16, 32
    q, k, v, g, beta = make_inputs(B, T, H, HV, K, V, dtype=dtype, device=device, seed=4)
    h0 = _state(B, HV, K, V, torch.float32, device, v_first)
    o = poison_(torch.empty_like(v))
    ht = poison_(torch.empty_like(h0))
    rec.launch_recurrent(q, k, v, o, config=rec.RecurrentConfig(BV=BV, num_warps=1), N=B, T=T,
                         H=H, HV=HV, K=K, V=V, scale=K ** -0.5, q_strides=q.stride()[:3],
                         k_strides=k.stride()[:3], v_strides=v.stride()[:3],
                         o_strides=o.stride()[:3], g=g, gate_mode=rec.GATE_LOG, beta=beta,
                         beta_mode=rec.BETA_GIVEN, state_v_first=v_first, h_src=h0, h_dst=ht,
                         dst_mode=rec.DST_NEW)
    ro, rh = recurrence64(q, k, v, g, beta, h0=h0, state_v_first=v_first)
    _close(o, ro, dtype, "o")
    _close(ht, rh, dtype, "final state")


def check_packed_tile(device, dtype, *, K, V, big, state_dtypes):
    """Every state mode with the current recurrent config (set by the caller): pools with
    padding, packed decode, spec decode, one-token / empty / multi-token varlen sequences,
    no initial state, no gating.  ``big``: sizes for a GPU (else tiny CPU shapes)."""
    H, HV = (2, 4) if big else (1, 2)
    for v_first in (False, True):
        for sd in state_dtypes:
            check_recurrent_pool(device, dtype, sd, N=9 if big else 3, T=1, H=H, HV=HV, K=K,
                                 V=V, v_first=v_first, inplace=True)
            check_recurrent_pool(device, dtype, sd, N=5 if big else 3, T=2, H=H, HV=HV, K=K,
                                 V=V, v_first=v_first, inplace=False)
            check_packed_decode(device, dtype, sd, N=33 if big else 3, H=H, HV=2 * HV, K=K,
                                V=V, v_first=v_first)
            check_recurrent_plain(device, dtype, sd, B=1, T=6, H=H, HV=HV, K=K, V=V,
                                  v_first=v_first, varlen=[1, 0, 3, 1, 1], gate="raw",
                                  beta_mode="sigmoid", l2norm=True)
            check_recurrent_plain(device, dtype, sd, B=3, T=1, H=H, HV=HV, K=K, V=V,
                                  v_first=v_first, gate="none", beta_mode="none", h0=False)
            check_recurrent_plain(device, dtype, sd, B=2, T=1, H=H, HV=HV, K=K, V=V,
                                  v_first=v_first, neg_eigval=True, gate="raw",
                                  beta_mode="sigmoid", final="inplace")
        if torch.float32 in state_dtypes:
            check_recurrent_spec(device, dtype, torch.float32, N=5 if big else 3, T=3, H=H,
                                 HV=HV, K=K, V=V, v_first=v_first, inplace=True, varlen=True)
        check_recurrent_spec(device, dtype, state_dtypes[-1], N=5 if big else 3, T=2, H=H,
                             HV=HV, K=K, V=V, v_first=v_first, inplace=False)


# -- the GPU tests --------------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available() or torch.version.hip is not None,
                         reason="needs an NVIDIA GPU")
pytestmark = [pytest.mark.gpu, pytest.mark.nvidia, gpu]
DEV = "cuda"
STATE_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
IO_DTYPES = [torch.bfloat16, torch.float16, torch.float32]
_ids = lambda d: str(d).split(".")[-1]  # noqa: E731


@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=_ids)
@pytest.mark.parametrize("dtype", IO_DTYPES, ids=_ids)
def test_recurrent_dtypes(dtype, state_dtype, v_first):
    check_recurrent_plain(DEV, dtype, state_dtype, B=3, T=5, H=2, HV=4, K=128, V=128,
                          v_first=v_first, gate="raw", beta_mode="sigmoid", l2norm=True)


@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
@pytest.mark.parametrize("K,V", [(64, 64), (128, 128), (256, 256), (64, 256), (96, 80)])
@pytest.mark.parametrize("G", [1, 4])
def test_recurrent_sizes(K, V, G, v_first):
    check_recurrent_plain(DEV, torch.bfloat16, torch.float32, B=2, T=3, H=2, HV=2 * G, K=K, V=V,
                          v_first=v_first, gate="log", beta_mode="given")


@pytest.mark.parametrize("B", [1, 7, 64, 1024])
def test_recurrent_batches(B):
    check_recurrent_plain(DEV, torch.bfloat16, torch.float32, B=B, T=1, H=2, HV=4, K=128,
                          V=128, v_first=False, gate="raw", beta_mode="sigmoid", l2norm=True,
                          final="inplace")


@pytest.mark.parametrize("flags", [
    dict(gate="none", beta_mode="none"), dict(gate="log", beta_mode="given", l2norm=True),
    dict(gate="raw", beta_mode="sigmoid", neg_eigval=True), dict(final="none"),
    dict(final="inplace"), dict(h0=False), dict(varlen=[3, 1, 6, 2]),
    dict(varlen=[4, 0, 8], gate="raw", beta_mode="sigmoid", final="inplace"),
], ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_recurrent_flags(flags, v_first):
    B, T = (1, sum(flags["varlen"])) if "varlen" in flags else (2, 6)
    check_recurrent_plain(DEV, torch.float16, torch.float32, B=B, T=T, H=2, HV=4, K=64, V=128,
                          v_first=v_first, **flags)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=_ids)
def test_pool(state_dtype, v_first, inplace):
    check_recurrent_pool(DEV, torch.bfloat16, state_dtype, N=9, T=2, H=2, HV=4, K=128, V=128,
                         v_first=v_first, inplace=inplace)


@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_spec_decode(v_first, inplace, varlen):
    check_recurrent_spec(DEV, torch.bfloat16, torch.float32, N=5, T=3, H=2, HV=4, K=128,
                         V=128, v_first=v_first, inplace=inplace, varlen=varlen)


@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("flat_ab", [False, True])
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=_ids)
def test_sigmoid_update(state_dtype, v_first, flat_ab, varlen):
    check_sigmoid_update(DEV, torch.bfloat16, state_dtype, B=6, T=1 if not varlen else 1, H=2,
                         HV=8, K=128, V=128, v_first=v_first, flat_ab=flat_ab, varlen=varlen)


@pytest.mark.parametrize("N", [1, 33, 256])
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=_ids)
def test_packed_decode(state_dtype, v_first, N):
    check_packed_decode(DEV, torch.bfloat16, state_dtype, N=N, H=4, HV=8, K=128, V=128,
                        v_first=v_first)


@pytest.mark.parametrize("dtype", IO_DTYPES, ids=_ids)
def test_gating(dtype):
    check_gating(DEV, dtype, N=1000, HV=32)
    check_gating(DEV, dtype, N=7, HV=6, softplus_beta=2.0, threshold=5.0)


@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
@pytest.mark.parametrize("dims", [(16, 32, 128, 128), (4, 4, 64, 64), (2, 6, 96, 80)])
def test_split(layout, dims):
    Hqk, Hv, Dk, Dv = dims
    check_split(DEV, torch.bfloat16, N=37, Hqk=Hqk, Hv=Hv, Dk=Dk, Dv=Dv, layout=layout)


@pytest.mark.parametrize("dtype", IO_DTYPES, ids=_ids)
@pytest.mark.parametrize("shape,strided", [((300, 128), False), ((2, 5, 4, 100), True),
                                           ((77,), False)])
def test_l2norm(dtype, shape, strided):
    check_l2norm(DEV, dtype, shape=shape, strided=strided)


@pytest.mark.parametrize("BV", [8, 16, 32])
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_launcher_slices(v_first, BV):
    check_launcher_slices(DEV, torch.float32, v_first=v_first, BV=BV)


@pytest.mark.parametrize("tiles,BV,warps", [(2, 32, 4), (4, 64, 2), (2, 16, 2)])
def test_tiles_prefetch(monkeypatch, tiles, BV, warps):
    """Several work items per program (next state prefetched), every state mode."""
    from gdn_dispatch.backends.triton_common.recurrent import RecurrentConfig
    from gdn_dispatch.backends.triton_cuda import decode

    cfg = RecurrentConfig(BV=BV, num_warps=warps, tiles=tiles)
    configs = dataclasses.replace(decode.OPS.configs, recurrent=lambda *a, **k: cfg)
    monkeypatch.setattr(decode.OPS, "configs", configs)
    for v_first in (False, True):
        for sd in (torch.float32, torch.bfloat16):
            check_recurrent_pool(DEV, torch.bfloat16, sd, N=9, T=1, H=2, HV=4, K=128, V=128,
                                 v_first=v_first, inplace=True)
            check_packed_decode(DEV, torch.bfloat16, sd, N=33, H=4, HV=8, K=128, V=128,
                                v_first=v_first)
        check_recurrent_spec(DEV, torch.bfloat16, torch.float32, N=5, T=3, H=2, HV=4, K=128,
                             V=128, v_first=v_first, inplace=True, varlen=True)
        check_recurrent_plain(DEV, torch.float16, torch.float32, B=1, T=12, H=2, HV=4, K=64,
                              V=128, v_first=v_first, varlen=[3, 1, 6, 2], gate="raw",
                              beta_mode="sigmoid", l2norm=True)
        check_recurrent_plain(DEV, torch.float16, torch.float32, B=3, T=2, H=1, HV=3, K=64,
                              V=96, v_first=v_first)


@pytest.mark.parametrize("cfg", [
    dict(BV=32, num_warps=1, options=(("maxnreg", 200),)),
    dict(BV=16, num_warps=1, options=(("maxnreg", 104),), evict="evict_first"),
    dict(BV=64, num_warps=4, tiles=2, sub_bv=16),
    dict(BV=128, num_warps=8, evict="evict_last"),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items() if k != "options"))
@pytest.mark.parametrize("K,V", [(128, 128), (64, 96)])
@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=_ids)
def test_packed_tile(monkeypatch, cfg, K, V, state_dtype):
    """Packed state tiles (``RecurrentConfig.packed``): every state mode, one state dtype per
    case (each case compiles ~15 kernel variants: small cases spread over the workers)."""
    from gdn_dispatch.backends.triton_common.recurrent import RecurrentConfig
    from gdn_dispatch.backends.triton_cuda import decode

    config = RecurrentConfig(packed=True, **cfg)
    configs = dataclasses.replace(decode.OPS.configs, recurrent=lambda *a, **k: config)
    monkeypatch.setattr(decode.OPS, "configs", configs)
    check_packed_tile(DEV, torch.bfloat16, K=K, V=V, big=True, state_dtypes=[state_dtype])


@pytest.mark.parametrize("cfg,K,V", [
    (dict(BV=64, num_warps=1, chunk_k=64, sub_bv=16, evict="evict_first"), 128, 128),
    (dict(BV=32, num_warps=1, chunk_k=64, sub_bv=16), 256, 64),
    (dict(BV=64, num_warps=2, chunk_k=64, chunk_evict=""), 64, 96),
    (dict(BV=16, num_warps=1, chunk_k=32, packed=True), 128, 128),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) if isinstance(c, dict) else str(c))
@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=_ids)
def test_two_pass_tile(monkeypatch, cfg, K, V, state_dtype):
    """K-first tiles read twice instead of held (``RecurrentConfig.chunk_k``): every state
    mode, one state dtype per case (V-first calls of the same config ignore ``chunk_k``)."""
    from gdn_dispatch.backends.triton_common.recurrent import RecurrentConfig
    from gdn_dispatch.backends.triton_cuda import decode

    config = RecurrentConfig(**cfg)
    configs = dataclasses.replace(decode.OPS.configs, recurrent=lambda *a, **k: config)
    monkeypatch.setattr(decode.OPS, "configs", configs)
    check_packed_tile(DEV, torch.bfloat16, K=K, V=V, big=True, state_dtypes=[state_dtype])


def test_cached_launch_respects_alignment_and_strides():
    """Repeated calls hit the cached launch path; a misaligned view must not reuse the
    aligned kernel, and new strides must not reuse old ones."""
    for offset in (0, 0, 1, 1, 8):
        N, H, HV, K, V = 6, 2, 4, 64, 64
        width = 2 * H * K + HV * V
        gen = _gen(offset)
        wide = torch.randn(N, width + 24, generator=gen).to(DEV, torch.bfloat16)
        mixed = wide[:, offset: offset + width]
        a, b, A_log, dt_bias = _raw_gates(N, 1, HV, torch.bfloat16, DEV, 3)
        a, b = a.view(N, HV), b.view(N, HV)
        pool = _state(N, HV, K, V, torch.float32, DEV, True)
        pool_ref = pool.clone()
        idx = torch.arange(N, device=DEV, dtype=torch.int32)
        out = poison_(torch.empty(N, 1, HV, V, dtype=torch.bfloat16, device=DEV))
        out_ref = torch.empty_like(out)
        with gdn.use_backend(BACKEND):
            gdn.fused_recurrent_gated_delta_rule_packed_decode(mixed, a, b, A_log, dt_bias,
                                                               K ** -0.5, pool, out, idx, True)
        with gdn.use_backend("reference"):
            gdn.fused_recurrent_gated_delta_rule_packed_decode(mixed, a, b, A_log, dt_bias,
                                                               K ** -0.5, pool_ref, out_ref,
                                                               idx, True)
        _close(out, out_ref, torch.bfloat16, f"out offset {offset}")
        _close(pool, pool_ref, torch.bfloat16, f"pool offset {offset}")
    from gdn_dispatch.backends.triton_common import launch, recurrent

    assert launch.fast_launch_enabled(), "the cached launch path fell back to Triton's"
    assert recurrent._LAUNCHER.cache, "the cached launch path was never used"


def test_out_of_range_indices_do_not_fault():
    """An index far outside the pool (value checks off on CUDA) is padding, not a fault."""
    N, H, HV, K, V = 4, 2, 4, 128, 128
    q, k, v, g, beta = make_inputs(N, 1, H, HV, K, V, dtype=torch.bfloat16, device=DEV)
    pool = torch.randn(3, HV, K, V, device=DEV)
    before = pool.clone()
    idx = torch.tensor([1, 2**30, -5, 0], device=DEV, dtype=torch.int32)
    with gdn.use_backend(BACKEND):
        o, _ = gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=pool,
                                                    ssm_state_indices=idx,
                                                    inplace_final_state=True)
    torch.cuda.synchronize()
    assert (o[1:3] == 0).all()
    assert torch.equal(pool[2], before[2])


def test_cuda_graph_packed_decode_and_recurrent():
    """Capture ops 2, 4, 5, 6, 7 in one graph; replay with new inputs in the same buffers."""
    N, H, HV, K, V = 16, 4, 8, 128, 128
    dt = torch.bfloat16
    width = 2 * H * K + HV * V
    mixed = torch.randn(N, width, device=DEV, dtype=dt)
    a = torch.randn(N, HV, device=DEV, dtype=dt)
    b = torch.randn(N, HV, device=DEV, dtype=dt)
    A_log = torch.randn(HV, device=DEV)
    dt_bias = torch.randn(HV, device=DEV)
    pool = torch.randn(N + 4, HV, V, K, device=DEV)
    idx = torch.arange(N, device=DEV, dtype=torch.int32)
    out = torch.empty(N, 1, HV, V, device=DEV, dtype=dt)
    q, k, v, g, beta = make_inputs(N, 1, H, HV, K, V, dtype=dt, device=DEV)
    pool2 = torch.randn(N, HV, K, V, device=DEV)
    qkvz = torch.randn(N, 2 * H * K + 2 * HV * V, device=DEV, dtype=dt)
    ba = torch.randn(N, 2 * HV, device=DEV, dtype=dt)

    def step():
        gdn.fused_recurrent_gated_delta_rule_packed_decode(mixed, a, b, A_log, dt_bias,
                                                           K ** -0.5, pool, out, idx, True)
        o2, _ = gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=pool2,
                                                     ssm_state_indices=idx,
                                                     inplace_final_state=True)
        gg, bb = gdn.fused_gdn_gating(A_log, a, b, dt_bias)
        parts = gdn.fused_qkvzba_split_reshape_cat(qkvz, ba, H, HV, K, V)
        nq = gdn.l2norm(q)
        return o2, gg, bb, parts, nq

    with gdn.use_backend(BACKEND):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step()  # warm up (compiles)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = step()
        for trial in range(2):
            for t in (mixed, a, b, q, k, v, qkvz, ba):
                t.copy_(torch.randn_like(t))
            pool_ref, pool2_ref = pool.clone(), pool2.clone()
            graph.replay()
            torch.cuda.synchronize()
            out_ref = torch.empty_like(out)
            with gdn.use_backend("reference"):
                gdn.fused_recurrent_gated_delta_rule_packed_decode(
                    mixed, a, b, A_log, dt_bias, K ** -0.5, pool_ref, out_ref, idx, True)
                o2_ref, _ = gdn.fused_recurrent_gated_delta_rule(
                    q, k, v, g, beta, initial_state=pool2_ref, ssm_state_indices=idx,
                    inplace_final_state=True)
                nq_ref = gdn.l2norm(q)
                parts_ref = gdn.fused_qkvzba_split_reshape_cat(qkvz, ba, H, HV, K, V)
            _close(out, out_ref, torch.bfloat16, f"graph out {trial}")
            _close(pool, pool_ref, torch.bfloat16, f"graph pool {trial}")
            _close(outs[0], o2_ref, torch.bfloat16, f"graph o2 {trial}")
            _close(pool2, pool2_ref, torch.bfloat16, f"graph pool2 {trial}")
            _close(outs[4], nq_ref, torch.bfloat16, f"graph l2norm {trial}")
            for got, ref in zip(outs[3], parts_ref):
                assert torch.equal(got, ref)


def test_dispatch_chooses_triton():
    q, k, v, g, beta = make_inputs(2, 1, 2, 4, 128, 128, dtype=torch.bfloat16, device=DEV)
    ex = gdn.explain("fused_recurrent_gated_delta_rule", q, k, v, g, beta)
    assert ex.chosen == BACKEND, str(ex)

