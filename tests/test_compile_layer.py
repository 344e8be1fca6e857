"""torch.compile(fullgraph=True) of the example GDN layer: no graph breaks, same results.

CPU: the reference backend under Inductor (C++).  GPU (marked ``gpu``): whatever the registry
picks there (the Triton backends on NVIDIA / AMD), bf16 activations, float32 state pools.
"""

from __future__ import annotations

import time

import pytest
import torch
from test_example_layer import (
    CFG,
    _check_against_reference,
    _hiddens,
    _layer,
    _run_layer,
    _weights,
)

import gdn_dispatch as gdn

HAS_GPU = torch.cuda.is_available()


def _gdn_nodes(gm: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes
            if n.op == "call_function" and "gdn_dispatch" in str(n.target)]


def _compile_counted(fn, graphs: list, backend: str = "inductor"):
    """torch.compile with fullgraph=True, recording every Dynamo graph it produces."""
    from torch._dynamo.backends.registry import lookup_backend

    def record(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend(backend)(gm, example_inputs)

    return torch.compile(fn, fullgraph=True, backend=record, dynamic=False)


@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
def test_compiled_layer_cpu_matches_eager_and_float64(layout):
    torch._dynamo.reset()
    dtype = torch.float32
    w = _weights(CFG)
    hiddens = _hiddens()
    layer = _layer(CFG, w, dtype, layout)
    graphs: list = []
    prefill = _compile_counted(layer.prefill, graphs)
    decode = _compile_counted(layer.decode, graphs)
    t0 = time.perf_counter()
    with gdn.use_backend("reference"):
        torch.manual_seed(0)
        got = _run_layer(layer, hiddens, dtype, prefill=prefill, decode=decode)
        torch.manual_seed(0)
        eager = _run_layer(layer, hiddens, dtype)
    elapsed = time.perf_counter() - t0
    # one graph for prefill, one for decode (decode shapes repeat: no recompiles)
    assert len(graphs) == 2, [g.graph for g in graphs]
    prefill_ops = _gdn_nodes(graphs[0])
    decode_ops = _gdn_nodes(graphs[1])
    assert any("chunk_gated_delta_rule" in t for t in prefill_ops), prefill_ops
    assert any("fused_gdn_gating" in t for t in prefill_ops), prefill_ops
    assert any("packed_decode" in t for t in decode_ops), decode_ops
    assert all(any("split_reshape_cat" in t for t in ops) for ops in (prefill_ops, decode_ops))
    torch.testing.assert_close(got[0], eager[0], rtol=1e-5, atol=1e-5)
    for x, y in zip(got[1], eager[1]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2].ssm, eager[2].ssm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2].conv, eager[2].conv, rtol=1e-5, atol=1e-5)
    _check_against_reference(*got, w, hiddens, dtype)
    print(f"compile + run of the layer on CPU: {elapsed:.1f} s")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA or ROCm GPU")
@pytest.mark.parametrize("dtype, backend", [(torch.bfloat16, "inductor"),
                                            (torch.float32, "aot_eager")],
                         ids=["bf16-inductor", "fp32-aot_eager"])
def test_compiled_layer_gpu(dtype, backend):
    """On the GPU, with the backends the registry picks there (Triton on NVIDIA / AMD);
    float32 state pools as engines keep them."""
    torch._dynamo.reset()
    w = _weights(CFG)
    hiddens = _hiddens()
    layer = _layer(CFG, w, dtype, "interleaved").cuda()
    graphs: list = []
    prefill = _compile_counted(layer.prefill, graphs, backend)
    decode = _compile_counted(layer.decode, graphs, backend)
    run = dict(device="cuda", state_dtype=torch.float32)
    got = _run_layer(layer, hiddens, dtype, prefill=prefill, decode=decode, **run)
    eager = _run_layer(layer, hiddens, dtype, **run)
    assert len(graphs) == 2
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got[0], eager[0], rtol=tol, atol=tol)
    for x, y in zip(got[1], eager[1]):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)
    torch.testing.assert_close(got[2].ssm, eager[2].ssm, rtol=tol, atol=tol)
    # against the float64 layer (TF32 dots may serve fp32 on the GPU; bf16 activations)
    _check_against_reference(*[_cpu(x) for x in got[:2]], _cpu_cache(got[2]), w, hiddens,
                             dtype, tol=1e-2 if dtype == torch.float32 else 6e-2)
    used = _backends_used()
    print(f"{dtype}: backends used by the layer: {used}")
    assert {"chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule_packed_decode",
            "fused_gdn_gating", "fused_qkvzba_split_reshape_cat"} <= set(used)
    if torch.version.hip is None and dtype == torch.bfloat16:
        # NVIDIA, bf16: every op of the layer on the Triton-CUDA kernels (fp32 chunk goes to
        # the reference there by declaration, see backends/triton_cuda/backend.py)
        assert all(names == {"triton_cuda"} for names in used.values()), used


def _cpu(x):
    return [t.cpu() for t in x] if isinstance(x, list) else x.cpu()


def _cpu_cache(cache):
    return type(cache)(ssm=cache.ssm.cpu(), conv=cache.conv.cpu())


def _backends_used() -> dict[str, set[str]]:
    """op -> names of the backends whose implementation the cached decisions point at."""
    from gdn_dispatch import dispatch, registry

    used: dict[str, set[str]] = {}
    for impl, meta in list(dispatch._DECISIONS.values()):
        for b in registry.registered_backends():
            if b._impls.get(meta.op) is impl:
                used.setdefault(meta.op, set()).add(b.name)
    return used
