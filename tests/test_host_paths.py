"""The host-side hot paths: launch plans kept in ``CallMeta.scratch`` and the dispatcher's key.

CPU tests run everywhere (a fake compiled kernel stands in for Triton's launcher); the
interpreter tests (``TRITON_INTERPRET=1 pytest -m interpreter``) check that repeated calls
through a kept plan give the reference's results with new data, and that new metadata gets a
new plan.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from gdn_dispatch.backends.triton_common import launch as launch_mod
from oracle import make_inputs, poison_, rel_err

import gdn_dispatch as gdn
from gdn_dispatch import api, dispatch, fast_path
from gdn_dispatch.probe import interpreter_enabled


@triton.jit
def _toy_kernel(x, y, z, n, scale, BLOCK: tl.constexpr, FLAG: tl.constexpr = False):
    offs = tl.arange(0, BLOCK)
    tl.store(y + offs, tl.load(x + offs, mask=offs < n) * scale, mask=offs < n)


class _FakeCompiled:
    def __init__(self, calls: list):
        self.calls = calls
        self.function = "fn"
        self.packed_metadata = "meta"

    def run(self, *args):
        self.calls.append(args)


@pytest.fixture
def fake_triton(monkeypatch):
    """A CachedLauncher whose compile path returns a fake kernel that records its launches."""
    launcher = launch_mod.CachedLauncher(_toy_kernel, n_runtime=_toy_kernel.arg_names.index(
        "BLOCK"))
    launcher.interpreted = False
    compiled: list = []
    runs: list = []

    def slow(grid, runtime_args, constexpr_values, num_warps, num_stages, options):
        compiled.append((grid, runtime_args, constexpr_values))
        return _FakeCompiled(runs)

    monkeypatch.setattr(launcher, "_slow", slow)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda dev: 1234, raising=False)
    monkeypatch.setattr(launch_mod, "_ENABLED", True)
    return launcher, compiled, runs


def test_constexpr_tuple_fills_defaults():
    launcher = launch_mod.CachedLauncher(_toy_kernel, n_runtime=3 + 2)
    assert launcher.constexpr_names == ("BLOCK", "FLAG")
    assert launcher.constexpr_tuple({"BLOCK": 16}) == (16, False)
    assert launcher.constexpr_tuple({"BLOCK": 16, "FLAG": True}) == (16, True)


def test_plan_launches_with_integer_pointers(fake_triton):
    launcher, compiled, runs = fake_triton
    plan = launch_mod.LaunchPlan(launcher, (3,), (7, 0.5), (16, False), 2, 1, device=0)
    x, y = torch.zeros(32), torch.zeros(32)
    plan.launch(x, y, None)
    assert len(compiled) == 1 and not runs  # first launch compiles (and launches) via Triton
    assert compiled[0][1] == (x, y, None, 7, 0.5)
    plan.launch(x, y, None)
    assert len(compiled) == 1 and len(runs) == 1
    args = runs[0]
    assert args[:9] == (3, 1, 1, 1234, "fn", "meta", None, None, None)
    assert args[9:] == (x.data_ptr(), y.data_ptr(), None, 7, 0.5, 16, False)
    assert all(type(a) is int for a in args[9:11])  # pointers passed as plain integers


def test_plan_keys_kernels_by_pointer_alignment(fake_triton):
    launcher, compiled, runs = fake_triton
    plan = launch_mod.LaunchPlan(launcher, (1,), (7, 0.5), (16, False), 2, 1)
    base = torch.zeros(64)
    aligned, misaligned = base[:32], base[1:33]  # 4-byte offset: not 16-byte aligned
    assert misaligned.data_ptr() % 16
    plan.launch(aligned, aligned, None)
    plan.launch(misaligned, aligned, None)  # must not reuse the aligned kernel
    assert len(compiled) == 2
    plan.launch(misaligned, aligned, None)
    plan.launch(aligned, aligned, None)
    assert len(compiled) == 2 and len(runs) == 2
    # a second plan of the same launch finds the compiled kernels in the launcher's cache
    again = launch_mod.LaunchPlan(launcher, (1,), (7, 0.5), (16, False), 2, 1)
    again.launch(aligned, aligned, None)
    assert len(compiled) == 2 and len(runs) == 3
    # pointer dtypes are part of a plan's metadata: a plan for float64 compiles its own
    other = launch_mod.LaunchPlan(launcher, (1,), (7, 0.5), (16, False), 2, 1)
    other.launch(aligned.double(), aligned, None)
    assert len(compiled) == 3


def test_plan_holds_no_pointers(fake_triton):
    launcher, _, _ = fake_triton
    plan = launch_mod.LaunchPlan(launcher, (1,), (7, 0.5), (16, False), 2, 1)
    x = torch.zeros(32)
    plan.launch(x, x, None)
    plan.launch(x, x, None)
    held = [plan.grid, plan.scalars, plan.constexprs, plan.tail, tuple(plan.kernels)]
    assert x.data_ptr() not in [v for part in held for v in part]


def test_key_is_flat_and_names_op_and_forced(clean_dispatch):
    x = torch.randn(3, 8)
    gdn.l2norm(x)
    keys = [k for k in dispatch._DECISIONS if k[0] == "l2norm"]
    assert len(keys) == 1
    key = keys[0]
    assert key[:2] == ("l2norm", None)
    assert key[2] == (x.shape, x.stride(), x.dtype, x.device)
    with gdn.use_backend("reference"):
        gdn.l2norm(x)
    assert any(k[:2] == ("l2norm", "reference") for k in dispatch._DECISIONS)


def test_repeated_calls_reuse_one_callmeta(clean_dispatch):
    """Backends keep launch plans in meta.scratch: a repeated call must get the same CallMeta,
    a call with other strides another one."""
    q, k, v, g, beta = make_inputs(2, 3, 2, 4, 8, 8)
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    metas = {id(m) for _, m in dispatch._DECISIONS.values()}
    gdn.fused_recurrent_gated_delta_rule(q.clone(), k.clone(), v.clone(), g.clone(),
                                         beta.clone())
    assert {id(m) for _, m in dispatch._DECISIONS.values()} == metas
    qt = q.transpose(0, 1).contiguous().transpose(0, 1)  # same shape, other strides
    gdn.fused_recurrent_gated_delta_rule(qt, k, v, g, beta)
    assert len({id(m) for _, m in dispatch._DECISIONS.values()}) == len(metas) + 1


def test_default_scale_resolved_per_call(clean_dispatch, restore_registry):
    """scale=None reaches the backend as K ** -0.5; an explicit scale as given."""
    seen = []
    spec = api._L2NORM  # any op without scale must pass through untouched
    assert spec.scale_arg is None
    q, k, v, g, beta = make_inputs(1, 2, 2, 2, 16, 8)

    def impl(*args, meta):
        seen.append(args[5])
        return v, None

    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)
    key = next(k for k in dispatch._DECISIONS if k[0] == "fused_recurrent_gated_delta_rule")
    dispatch._DECISIONS[key] = (impl, dispatch._DECISIONS[key][1])
    fast_path.clear()  # the guarded entry still holds the old impl
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)  # key path
    gdn.fused_recurrent_gated_delta_rule(q, k, v, g, beta)  # guarded entry
    assert seen == [16 ** -0.5, 16 ** -0.5]


# -- interpreter: plans reused across calls with new data --------------------------------------
interp = pytest.mark.skipif(not interpreter_enabled(),
                            reason="needs TRITON_INTERPRET=1 set before Triton is imported "
                                   "(run: TRITON_INTERPRET=1 pytest -m interpreter)")


def _both(fn, *args, **kwargs):
    with gdn.use_backend("triton_cuda"):
        out = fn(*args, **kwargs)
    with gdn.use_backend("reference"):
        ref = fn(*args, **kwargs)
    return out, ref


@pytest.mark.interpreter
@interp
@pytest.mark.parametrize("v_first", [False, True])
def test_interpreter_recurrent_plan_reused(clean_dispatch, v_first):
    B, T, H, HV, K, V = 2, 2, 1, 2, 16, 16
    shape = (B, HV, V, K) if v_first else (B, HV, K, V)
    metas = set()
    for seed in (0, 1, 2):
        q, k, v, g, beta = make_inputs(B, T, H, HV, K, V, seed=seed)
        h0 = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1
        (o, h), (o_ref, h_ref) = _both(gdn.fused_recurrent_gated_delta_rule, q, k, v, g, beta,
                                       None, h0, True, state_v_first=v_first)
        assert rel_err(o, o_ref) < 1e-4 and rel_err(h, h_ref) < 1e-4, seed
        metas |= {id(m) for key, (_, m) in dispatch._DECISIONS.items()
                  if key[1] == "triton_cuda"}
        plans = [m.scratch.get("triton_cuda.recurrent") for key, (_, m)
                 in dispatch._DECISIONS.items() if key[1] == "triton_cuda"]
        assert plans and all(p is not None for p in plans)
    assert len(metas) == 1  # one plan served the three calls


@pytest.mark.interpreter
@interp
def test_interpreter_pool_inplace_plan_reused(clean_dispatch):
    N, H, HV, K, V = 3, 1, 2, 16, 16
    pool = torch.randn(5, HV, K, V) * 0.1
    pool_ref = pool.clone()
    idx = torch.tensor([4, -1, 0], dtype=torch.int32)
    for seed in (0, 1):
        q, k, v, g, beta = make_inputs(N, 1, H, HV, K, V, seed=seed)
        with gdn.use_backend("triton_cuda"):
            o, ret = gdn.fused_recurrent_gated_delta_rule(
                q, k, v, g, beta, None, pool, ssm_state_indices=idx, inplace_final_state=True)
        with gdn.use_backend("reference"):
            o_ref, _ = gdn.fused_recurrent_gated_delta_rule(
                q, k, v, g, beta, None, pool_ref, ssm_state_indices=idx,
                inplace_final_state=True)
        assert ret is pool
        assert rel_err(o, o_ref) < 1e-4 and rel_err(pool, pool_ref) < 1e-4, seed


@pytest.mark.interpreter
@interp
def test_interpreter_packed_decode_plan_reused(clean_dispatch):
    N, H, HV, K, V = 2, 1, 2, 16, 16
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(3, HV, V, K, generator=gen) * 0.1
    pool_ref = pool.clone()
    A_log, dt_bias = torch.randn(HV, generator=gen), torch.randn(HV, generator=gen)
    idx = torch.tensor([2, 0], dtype=torch.int32)
    for seed in (1, 2):
        gen.manual_seed(seed)
        mixed = torch.randn(N, 2 * H * K + HV * V, generator=gen)
        a, b = torch.randn(N, HV, generator=gen), torch.randn(N, HV, generator=gen)
        out, out_ref = poison_(torch.empty(N, 1, HV, V)), torch.empty(N, 1, HV, V)
        with gdn.use_backend("triton_cuda"):
            gdn.fused_recurrent_gated_delta_rule_packed_decode(mixed, a, b, A_log, dt_bias,
                                                               None, pool, out, idx, True)
        with gdn.use_backend("reference"):
            gdn.fused_recurrent_gated_delta_rule_packed_decode(mixed, a, b, A_log, dt_bias,
                                                               None, pool_ref, out_ref, idx,
                                                               True)
        assert rel_err(out, out_ref) < 1e-4 and rel_err(pool, pool_ref) < 1e-4, seed


@pytest.mark.interpreter
@interp
def test_interpreter_chunk_plan_reused(clean_dispatch):
    T, H, HV, K, V = 70, 1, 2, 16, 16
    cu = torch.tensor([0, 5, 70], dtype=torch.int64)
    metas = set()
    for seed in (0, 1):
        q, k, v, g, beta = make_inputs(1, T, H, HV, K, V, seed=seed)
        h0 = torch.randn(2, HV, K, V, generator=torch.Generator().manual_seed(seed)) * 0.1
        (o, h), (o_ref, h_ref) = _both(gdn.chunk_gated_delta_rule, q, k, v, g, beta, None, h0,
                                       True, True, cu_seqlens=cu)
        assert rel_err(o, o_ref) < 2e-3 and rel_err(h, h_ref) < 2e-3, seed
        metas |= {id(m) for key, (_, m) in dispatch._DECISIONS.items()
                  if key[0] == "chunk_gated_delta_rule" and key[1] == "triton_cuda"}
    assert len(metas) == 1
    (meta,) = [m for key, (_, m) in dispatch._DECISIONS.items()
               if key[0] == "chunk_gated_delta_rule" and key[1] == "triton_cuda"]
    assert "chunk_pipeline" in meta.scratch


@pytest.fixture
def cpu_fast_empty(monkeypatch):
    """Route the plans' fast allocator to PyTorch's CPU twin so the interpreter runs it."""
    from gdn_dispatch.backends.triton_common import chunk_pipeline, decode_ops

    fn = torch._C._dynamo.guards._empty_strided_cpu
    monkeypatch.setattr(decode_ops, "fast_empty", lambda device: fn)
    monkeypatch.setattr(chunk_pipeline, "fast_empty", lambda device: fn)
    return fn


@pytest.mark.interpreter
@interp
def test_interpreter_fast_allocation_paths(clean_dispatch, cpu_fast_empty):
    B, T, H, HV, K, V = 2, 2, 1, 2, 16, 16
    for seed in (0, 1):
        q, k, v, g, beta = make_inputs(B, T, H, HV, K, V, seed=seed)
        h0 = torch.randn(B, HV, K, V, generator=torch.Generator().manual_seed(seed)) * 0.1
        (o, h), (o_ref, h_ref) = _both(gdn.fused_recurrent_gated_delta_rule, q, k, v, g, beta,
                                       None, h0, True)
        assert rel_err(o, o_ref) < 1e-4 and rel_err(h, h_ref) < 1e-4, seed
        assert o.is_contiguous() and h.is_contiguous()
        cu = torch.tensor([0, 3, 4], dtype=torch.int64)
        q1, k1, v1, g1, b1 = (x[:1].repeat(1, 2, *([1] * (x.dim() - 2))) for x in
                              (q, k, v, g, beta))
        (o, h), (o_ref, h_ref) = _both(gdn.chunk_gated_delta_rule, q1, k1, v1, g1, b1, None,
                                       h0, True, cu_seqlens=cu)
        assert rel_err(o, o_ref) < 2e-3 and rel_err(h, h_ref) < 2e-3, seed
    plans = [m.scratch for key, (_, m) in dispatch._DECISIONS.items() if key[1] == "triton_cuda"]
    assert any(s.get("triton_cuda.recurrent") is not None and
               s["triton_cuda.recurrent"].alloc is cpu_fast_empty for s in plans)
    assert any(s.get("chunk_pipeline") is not None and s["chunk_pipeline"].alloc is cpu_fast_empty
               for s in plans)


def test_varlen_memo_by_tensor():
    """A table built from cu_seqlens is reused only for the same unchanged tensor."""
    from gdn_dispatch.backends.triton_common.varlen import memo_by_tensor, slot_chunks

    cache: dict = {}
    builds = []
    cu = torch.tensor([0, 3, 3, 70], dtype=torch.int32)

    def get(t, extra=(64,)):
        return memo_by_tensor(cache, t, extra, lambda: builds.append(1) or len(builds))

    assert get(cu) == 1 and get(cu) == 1
    cu[1] = 2  # in place: version counter moves
    assert get(cu) == 2
    assert get(cu.clone()) == 3  # another tensor
    assert get(cu, (32,)) == 4  # other extra key
    seq, local, valid, starts = slot_chunks(cu, 70 // 64 + 3, 64)
    # chunks: seq 0 (2 tokens) -> 1, seq 1 (1 token) -> 1, seq 2 (67 tokens) -> 2; 4 slots
    assert seq.tolist() == [0, 1, 2, 2] and local.tolist() == [0, 0, 0, 1]
    assert valid.tolist() == [True, True, True, True] and starts.tolist() == [0, 1, 2]
