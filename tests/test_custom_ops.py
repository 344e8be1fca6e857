"""The torch.library custom ops: opcheck, eager equivalence, and torch.compile without breaks.

Each case is a full call of a public op (bound through ``gdn.introspect.bind_call``).  For
every case: ``torch.library.opcheck`` passes on the op's custom op; calling the custom op
through ``custom_ops.compiled_call`` returns what the eager function returns and leaves the
mutated inputs (pools, ``out``) in the same state; ``torch.compile(fullgraph=True)`` of a
function calling the public op holds the custom op node and matches eager.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import torch

import gdn_dispatch as gdn
from gdn_dispatch import custom_ops
from gdn_dispatch.dispatch import OP_SPECS
from gdn_dispatch.introspect import bind_call

HAS_GPU = torch.cuda.is_available()


# -- cases -----------------------------------------------------------------------------------
def _rand(gen: torch.Generator, *shape: int, device: str, dtype: torch.dtype = torch.float32,
          scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)


def _idx(values: list, device: str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)


def make_cases(device: str, dtype: torch.dtype = torch.float32,
               seed: int = 1234) -> list[tuple[str, str, tuple]]:
    """(case id, op name, full positional args) covering every op and its state modes."""
    gen = torch.Generator().manual_seed(seed)
    B, T, H, HV, K, V = 2, 5, 2, 4, 16, 32  # head dims every backend serves
    r = lambda *s, **kw: _rand(gen, *s, device=device, dtype=kw.pop("dtype", dtype), **kw)

    def qkv(b: int = B, t: int = T) -> tuple[torch.Tensor, ...]:
        q, k = r(b, t, H, K), r(b, t, H, K)
        k = torch.nn.functional.normalize(k.float(), dim=-1).to(dtype)
        return q, k, r(b, t, HV, V)

    def gates(b: int = B, t: int = T) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.nn.functional.logsigmoid(r(b, t, HV, dtype=torch.float32) + 2.0)
        beta = torch.sigmoid(r(b, t, HV))
        return g, beta

    A_log, dt_bias = r(HV, dtype=torch.float32, scale=0.5), r(HV, dtype=torch.float32)
    cu = _idx([0, 3, 3, 7], device)  # 3 sequences, one empty, over T = 7 tokens
    cases: list[tuple[str, str, dict[str, Any], tuple]] = []

    def add(case_id: str, op: str, *args: Any, **kwargs: Any) -> None:
        cases.append((case_id, op, kwargs, args))

    # op 1
    q, k, v = qkv()
    g, beta = gates()
    add("chunk-plain", "chunk_gated_delta_rule", q, k, v, g, beta)
    add("chunk-state", "chunk_gated_delta_rule", q, k, v, g, beta,
        initial_state=r(B, HV, K, V), output_final_state=True, use_qk_l2norm_in_kernel=True)
    q1, k1, v1 = qkv(1, 7)
    g1, b1 = gates(1, 7)
    add("chunk-varlen-vk", "chunk_gated_delta_rule", q1, k1, v1, g1, b1,
        initial_state=r(3, HV, V, K), output_final_state=True, state_v_first=True, cu_seqlens=cu)
    add("chunk-gate-in-kernel", "chunk_gated_delta_rule", q, k, v, r(B, T, HV), r(B, T, HV),
        output_final_state=True, use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
        use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True)

    # op 2
    rec = "fused_recurrent_gated_delta_rule"
    add("rec-final", rec, q, k, v, g, beta, output_final_state=True)
    add("rec-nofinal-nogates", rec, q, k, v)
    add("rec-inplace-state", rec, q, k, v, g, beta, initial_state=r(B, HV, K, V),
        inplace_final_state=True)
    add("rec-varlen", rec, q1, k1, v1, g1, b1, initial_state=r(3, HV, K, V),
        output_final_state=True, cu_seqlens=cu)
    qd, kd, vd = qkv(3, 1)
    gd, bd = gates(3, 1)
    add("rec-pool-inplace", rec, qd, kd, vd, gd, bd, initial_state=r(6, HV, V, K),
        state_v_first=True, ssm_state_indices=_idx([4, -1, 1], device), inplace_final_state=True)
    add("rec-pool-final", rec, qd, kd, vd, gd, bd, initial_state=r(6, HV, K, V),
        output_final_state=True, ssm_state_indices=_idx([4, -1, 1], device))
    add("rec-pool-nofinal", rec, qd, kd, vd, gd, bd, initial_state=r(6, HV, K, V),
        ssm_state_indices=_idx([4, -1, 1], device))
    qs, ks, vs = qkv(2, 3)
    gs, bs = gates(2, 3)
    spec_idx = _idx([[0, 1, 2], [5, 6, -1]], device)
    add("rec-spec-inplace", rec, qs, ks, vs, gs, bs, initial_state=r(8, HV, K, V),
        ssm_state_indices=spec_idx, num_accepted_tokens=_idx([2, 1], device),
        inplace_final_state=True)
    add("rec-spec-per-token", rec, qs, ks, vs, gs, bs, initial_state=r(8, HV, K, V),
        ssm_state_indices=spec_idx)

    # op 3
    upd = "fused_sigmoid_gating_delta_rule_update"
    add("update-vk", upd, A_log, r(3, 1, HV), dt_bias, 1.0, 20.0, qd, kd, vd, r(3, 1, HV),
        r(6, HV, V, K), _idx([2, -1, 5], device), use_qk_l2norm_in_kernel=True)
    add("update-kv-flat-gates", upd, A_log, r(3, HV), None, 2.0, 10.0, qd, kd, vd, r(3, HV),
        r(6, HV, K, V), _idx([0, 3, -1], device), state_v_first=False)

    # op 4
    packed = "fused_recurrent_gated_delta_rule_packed_decode"
    width = 2 * H * K + HV * V
    mixed = r(3, width + 8)[:, 4:4 + width]  # a strided view of a wider projection
    add("packed-vk", packed, mixed, r(3, HV), r(3, HV), A_log, dt_bias, None,
        r(6, HV, V, K), torch.empty(3, 1, HV, V, device=device, dtype=dtype),
        _idx([1, -1, 4], device), True)
    add("packed-kv", packed, r(3, width), r(3, HV), r(3, HV), A_log, None, 0.3,
        r(6, HV, K, V), torch.empty(3, 1, HV, V, device=device, dtype=dtype),
        _idx([5, 0, 2], device), state_v_first=False)

    # op 5-7
    add("gating", "fused_gdn_gating", A_log, r(7, HV), r(7, HV), dt_bias)
    add("gating-no-bias", "fused_gdn_gating", A_log, r(7, HV), r(7, HV), None, 2.0, 15.0)
    Hqk, Hv, Dk, Dv = 2, 4, 8, 6
    add("split-interleaved", "fused_qkvzba_split_reshape_cat",
        r(5, 2 * Hqk * Dk + 2 * Hv * Dv), r(5, 2 * Hv), Hqk, Hv, Dk, Dv)
    add("split-contiguous", "fused_qkvzba_split_reshape_cat",
        r(5, 2 * Hqk * Dk + 2 * Hv * Dv), r(5, 2 * Hv), Hqk, Hv, Dk, Dv, "contiguous")
    add("l2norm", "l2norm", r(3, 4, 16))
    add("l2norm-strided", "l2norm", r(16, 6).t(), 1e-5)

    return [(cid, op, bind_call(op, args, kw)) for cid, op, kw, args in cases]


_CPU_CASES = make_cases("cpu")
_IDS = [c[0] for c in _CPU_CASES]


def _clone(args: tuple) -> tuple:
    """Deep copy of an argument tuple keeping each tensor's strides (views stay views)."""
    return copy.deepcopy(args)


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _tensors(item)]
    return []


def _assert_same(a: Any, b: Any) -> None:
    if a is None or b is None:
        assert a is None and b is None, (type(a), type(b))
        return
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
        return
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, equal_nan=False)


def _torch_op_for(op: str, args: tuple) -> Any:
    if op == "fused_recurrent_gated_delta_rule" and args[18]:
        return custom_ops.torch_op("fused_recurrent_gated_delta_rule_inplace")
    return custom_ops.torch_op(op)


def _public(op: str, args: tuple) -> Any:
    """Call the public function by keyword (every API parameter can be passed so)."""
    return getattr(gdn, op)(**dict(zip(OP_SPECS[op].params, args)))


# -- registration ----------------------------------------------------------------------------
def test_every_public_op_is_registered():
    served = {d.public_op for d in custom_ops.CUSTOM_OPS.values()}
    assert served == set(gdn.OPS)
    for name in custom_ops.custom_op_names():
        schema = custom_ops.torch_op(name).default._schema
        assert schema.name == f"gdn_dispatch::{name}"
        params = tuple(a.name for a in schema.arguments)
        assert params == OP_SPECS[custom_ops.CUSTOM_OPS[name].public_op].params
        mutated = {a.name for a in schema.arguments
                   if a.alias_info is not None and a.alias_info.is_write}
        assert mutated == set(custom_ops.CUSTOM_OPS[name].mutates)


def test_pools_and_out_are_declared_mutated():
    mut = {n: set(d.mutates) for n, d in custom_ops.CUSTOM_OPS.items()}
    assert mut["fused_sigmoid_gating_delta_rule_update"] == {"initial_state_source"}
    assert mut["fused_recurrent_gated_delta_rule_packed_decode"] == {"initial_state", "out"}
    assert mut["fused_recurrent_gated_delta_rule_inplace"] == {"initial_state"}
    assert mut["fused_recurrent_gated_delta_rule"] == set()
    assert mut["chunk_gated_delta_rule"] == set()


# -- opcheck ---------------------------------------------------------------------------------
def _opcheck(op: str, args: tuple) -> None:
    result = torch.library.opcheck(_torch_op_for(op, args), _clone(args),
                                   raise_exception=True)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("case", _CPU_CASES, ids=_IDS)
def test_opcheck_cpu(case):
    _cid, op, args = case
    _opcheck(op, args)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA or ROCm GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck_gpu(dtype):
    for _cid, op, args in make_cases("cuda", dtype):
        _opcheck(op, args)


# -- eager equivalence of the custom-op path ---------------------------------------------------
def _check_custom_path_matches_eager(op: str, args: tuple) -> None:
    eager_args, op_args = _clone(args), _clone(args)
    expected = _public(op, eager_args)
    got = custom_ops.compiled_call(op, op_args)
    _assert_same(got, expected)
    # in-place effects: every tensor argument ends equal (pools, out; inputs untouched)
    for x, y in zip(_tensors(list(op_args)), _tensors(list(eager_args))):
        _assert_same(x, y)
    # returned in-place outputs are the caller's own tensors, as in eager
    exp_ids = {id(t) for t in _tensors(list(eager_args))}
    got_ids = {id(t) for t in _tensors(list(op_args))}
    for e, g in zip(_tensors(expected), _tensors(got)):
        assert (id(e) in exp_ids) == (id(g) in got_ids)


@pytest.mark.parametrize("case", _CPU_CASES, ids=_IDS)
def test_custom_op_path_matches_eager_cpu(case):
    _cid, op, args = case
    _check_custom_path_matches_eager(op, args)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA or ROCm GPU")
def test_custom_op_path_matches_eager_gpu():
    for _cid, op, args in make_cases("cuda", torch.bfloat16):
        _check_custom_path_matches_eager(op, args)


# -- torch.compile ---------------------------------------------------------------------------
def _compiled_matches_eager(op: str, args: tuple, backend: Any) -> list[Any]:
    """Compile ``fn(*tensors) -> public op`` with fullgraph=True; compare with eager."""
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def fn(*tensors: torch.Tensor) -> Any:
        full = list(args)
        for i, t in zip(positions, tensors):
            full[i] = t
        return _public(op, tuple(full))

    graphs: list[Any] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm)
        if backend == "capture":
            return gm.forward
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend(backend)(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=capture, dynamic=False)
    eager_args, comp_args = _clone(args), _clone(args)
    expected = fn(*[eager_args[i] for i in positions])
    got = compiled(*[comp_args[i] for i in positions])
    _assert_same(got, expected)
    for x, y in zip(_tensors(list(comp_args)), _tensors(list(eager_args))):
        _assert_same(x, y)
    assert len(graphs) == 1
    return graphs


def _targets(gm: torch.fx.GraphModule) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("case", _CPU_CASES, ids=_IDS)
def test_compile_fullgraph_holds_custom_op(case):
    _cid, op, args = case
    (gm,) = _compiled_matches_eager(op, args, "capture")
    name = _torch_op_for(op, args).default.name()  # e.g. gdn_dispatch::l2norm
    assert any(name.replace("::", ".") in t for t in _targets(gm)), _targets(gm)


@pytest.mark.parametrize("case", [c for c in _CPU_CASES if c[1] != "chunk_gated_delta_rule"
                                  or c[0] == "chunk-state"], ids=lambda c: c[0])
def test_compile_aot_eager_functionalizes_mutations(case):
    """AOTAutograd functionalizes the declared mutations and writes them back."""
    _cid, op, args = case
    _compiled_matches_eager(op, args, "aot_eager")


@pytest.mark.slow
def test_compile_inductor_decode_step_cpu():
    """Inductor (C++ on the CPU) around a decode step that mutates a pool."""
    by_id = {c[0]: c for c in _CPU_CASES}
    for cid in ("packed-vk", "rec-pool-inplace", "update-vk"):
        _cid, op, args = by_id[cid]
        _compiled_matches_eager(op, args, "inductor")


def test_eager_path_does_not_use_custom_ops(monkeypatch):
    """Eager calls go straight to dispatch.run (the custom-op path is for compile only)."""
    def boom(*_a: Any, **_k: Any) -> None:
        raise AssertionError("custom op path taken in eager mode")

    monkeypatch.setattr(custom_ops, "compiled_call", boom)
    _cid, op, args = _CPU_CASES[_IDS.index("gating")]
    _public(op, _clone(args))


# -- the Triton backends' real outputs against the fake implementations (CPU interpreter) -----
_ONE_CASE_PER_CUSTOM_OP = ["chunk-varlen-vk", "rec-pool-final", "rec-spec-inplace", "update-vk",
                           "packed-vk", "gating", "split-interleaved", "l2norm-strided"]


@pytest.mark.interpreter
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
                    reason="set TRITON_INTERPRET=1 (read when Triton kernels are defined)")
@pytest.mark.parametrize("backend", ["triton_cuda", "triton_rocm"])
def test_opcheck_triton_backends_in_interpreter(backend):
    by_id = {c[0]: c for c in _CPU_CASES}
    for cid in _ONE_CASE_PER_CUSTOM_OP:
        _cid, op, args = by_id[cid]
        with gdn.use_backend(backend):
            _opcheck(op, args)
            _check_custom_path_matches_eager(op, args)


# -- dispatch still happens per call inside compiled code -------------------------------------
class _CountingBackend(gdn.registry.Backend):
    """Serves l2norm on the CPU through the reference, counting calls."""

    name = "counting"
    vendors = frozenset({"cpu"})
    support = {"l2norm": gdn.registry.OpSupport(vendors=frozenset({"cpu"}))}

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def _load(self, op: str) -> Any:
        inner = gdn.registry.get_backend("reference").impl(op)

        def run(*args: Any, meta: Any) -> Any:
            self.calls += 1
            return inner(*args, meta=meta)

        return run


def test_use_backend_around_a_compiled_call_is_honoured(restore_registry):
    counting = gdn.register_backend(_CountingBackend())
    torch._dynamo.reset()
    fn = torch.compile(lambda x: gdn.l2norm(x) * 2, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 16)
    expected = gdn.l2norm(x) * 2
    torch.testing.assert_close(fn(x), expected)
    assert counting.calls == 0  # automatic choice on the CPU: the reference
    with gdn.use_backend("counting"):
        torch.testing.assert_close(fn(x), expected)
    assert counting.calls == 1
    fn(x)
    assert counting.calls == 1


def test_compile_dynamic_batch_decode():
    """One graph with a symbolic batch serves decode batches of several sizes."""
    torch._dynamo.reset()
    graphs: list[Any] = []

    def count(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm)
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend("aot_eager")(gm, example_inputs)

    def step(mixed, a, b, A_log, dt_bias, pool, out, idx):
        return gdn.fused_recurrent_gated_delta_rule_packed_decode(
            mixed, a, b, A_log, dt_bias, None, pool, out, idx, True)

    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend=count)
    H, HV, K, V = 2, 4, 16, 32
    gen = torch.Generator().manual_seed(0)
    A_log, dt_bias = torch.randn(HV, generator=gen), torch.randn(HV, generator=gen)
    for N in (3, 5, 7):
        mixed = torch.randn(N, 2 * H * K + HV * V, generator=gen)
        a, b = torch.randn(N, HV, generator=gen), torch.randn(N, HV, generator=gen)
        pool = torch.randn(9, HV, V, K, generator=gen)
        idx = torch.randperm(9, generator=gen)[:N].to(torch.int32)
        idx[1] = -1
        out_c, out_e = torch.empty(N, 1, HV, V), torch.empty(N, 1, HV, V)
        pool_c, pool_e = pool.clone(), pool.clone()
        compiled(mixed, a, b, A_log, dt_bias, pool_c, out_c, idx)
        step(mixed, a, b, A_log, dt_bias, pool_e, out_e, idx)
        torch.testing.assert_close(out_c, out_e)
        torch.testing.assert_close(pool_c, pool_e)
    assert len(graphs) <= 2  # static first call, then one dynamic graph for every N
