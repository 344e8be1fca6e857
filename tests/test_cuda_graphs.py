"""CUDA graphs: decode ops captured once, replayed with new inputs in the same buffers.

For each decode-side op (fused_recurrent with a state pool, plain and speculative; the fused
sigmoid-gating update; packed decode; gating; the qkvzba split) and for a whole decode step of
the example layer: capture with ``torch.cuda.CUDAGraph``, copy fresh inputs (new values, new
slot assignments, padded rows) into the captured buffers, replay, and compare outputs and
pools with an eager call on the same inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from test_custom_ops import _public, _tensors, make_cases

import gdn_dispatch as gdn
from gdn_dispatch.dispatch import OP_SPECS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU"),
]

DEVICE = "cuda"
DECODE_CASES = ["rec-pool-inplace", "rec-pool-final", "rec-spec-inplace", "update-vk",
                "update-kv-flat-gates", "packed-vk", "packed-kv", "gating", "gating-no-bias",
                "split-interleaved", "split-contiguous"]


def _fresh_inputs(op_case: str, dtype: torch.dtype, seed: int) -> tuple:
    """The case's arguments with new values; integer index tensors rolled by ``seed`` rows
    so sequences move to other slots (padding moves with them)."""
    (args,) = [a for cid, _op, a in make_cases(DEVICE, dtype, seed=seed) if cid == op_case]
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and not a.is_floating_point():
            a = a.roll(seed, dims=0)
        out.append(a)
    return tuple(out)


def _skip_if_reference(op: str, args: tuple) -> None:
    """The pure-torch reference reads indices on the host (it synchronizes), so it cannot be
    captured; only GPU backends are held to capture."""
    chosen = gdn.explain(op, **dict(zip(OP_SPECS[op].params, args))).chosen
    if chosen == "reference":
        pytest.skip(f"{op} runs on the reference backend on this GPU (host syncs; no GPU "
                    "kernel registered for this call yet)")


def _copy_into(static: tuple, new: tuple) -> None:
    for s, n in zip(static, new):
        if isinstance(s, torch.Tensor):
            s.copy_(n)


def _capture(fn: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Warm up on a side stream (decisions cached, kernels compiled), then capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = fn()
    return graph, result


def _assert_close(got: Any, exp: Any, dtype: torch.dtype) -> None:
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for g, e in zip(_tensors(got), _tensors(exp)):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", DECODE_CASES)
def test_decode_op_graph_replay_matches_eager(case, dtype):
    (op,) = [o for cid, o, _a in make_cases(DEVICE, dtype) if cid == case]
    static = _fresh_inputs(case, dtype, seed=0)
    _skip_if_reference(op, static)
    graph, captured = _capture(lambda: _public(op, static))
    for seed in (1, 2):
        new = _fresh_inputs(case, dtype, seed)
        eager_args = copy.deepcopy(new)
        expected = _public(op, eager_args)
        _copy_into(static, new)
        graph.replay()
        torch.cuda.synchronize()
        _assert_close(captured, expected, dtype)
        _assert_close(list(static), list(eager_args), dtype)  # pools and `out` alike


def test_layer_decode_step_graph_replay_matches_eager():
    """A whole decode step of the example layer, captured as an engine would."""
    from test_example_layer import CFG, GDNStateCache, _layer, _weights

    dtype = torch.bfloat16
    layer = _layer(CFG, _weights(CFG), dtype, "interleaved").to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    N, slots_total = 4, 6

    def state() -> GDNStateCache:
        c = GDNStateCache.empty(CFG, slots_total, dtype=dtype, device=DEVICE)
        c.ssm.copy_(torch.randn(c.ssm.shape, generator=gen))
        c.conv.copy_(torch.randn(c.conv.shape, generator=gen))
        return c

    def tokens(slots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.randn(N, CFG.hidden_size, generator=gen).to(DEVICE, dtype)
        return h, torch.tensor(slots, dtype=torch.int32, device=DEVICE)

    cache = state()
    h_static, slots_static = tokens([0, 1, 2, 3])
    for op, args in _layer_decode_calls(layer, dtype, N).items():
        _skip_if_reference(op, args)
    with torch.no_grad():
        graph, y_static = _capture(
            lambda: layer.decode(h_static, slots_static, cache.ssm, cache.conv))
        for slots in ([3, -1, 5, 0], [-1, 2, 1, 4]):
            fresh = state()
            h, sl = tokens(slots)
            eager = GDNStateCache(ssm=fresh.ssm.clone(), conv=fresh.conv.clone())
            y_eager = layer.decode(h, sl, eager.ssm, eager.conv)
            cache.ssm.copy_(fresh.ssm)
            cache.conv.copy_(fresh.conv)
            h_static.copy_(h)
            slots_static.copy_(sl)
            graph.replay()
            torch.cuda.synchronize()
            _assert_close([y_static, cache.ssm, cache.conv], [y_eager, eager.ssm, eager.conv],
                          dtype)
            pad = (sl < 0).nonzero()[:, 0]
            assert torch.equal(y_static[pad], torch.zeros_like(y_static[pad]))


def _layer_decode_calls(layer: Any, dtype: torch.dtype, N: int) -> dict[str, tuple]:
    """The gdn calls one decode step of the example layer makes (for backend checks)."""
    c = layer.cfg
    dev = DEVICE
    z = lambda *s, dt=dtype: torch.zeros(*s, device=dev, dtype=dt)
    idx = torch.arange(N, device=dev, dtype=torch.int32)
    split = (z(N, 2 * c.key_dim + 2 * c.value_dim), z(N, 2 * c.num_v_heads), c.num_k_heads,
             c.num_v_heads, c.head_k_dim, c.head_v_dim, c.layout)
    packed = (z(N, c.conv_dim), z(N, c.num_v_heads), z(N, c.num_v_heads), layer.A_log.detach(),
              layer.dt_bias.detach(), None,
              z(8, c.num_v_heads, c.head_v_dim, c.head_k_dim, dt=torch.float32),
              z(N, 1, c.num_v_heads, c.head_v_dim), idx, True, True)
    return {"fused_qkvzba_split_reshape_cat": split,
            "fused_recurrent_gated_delta_rule_packed_decode": packed}
