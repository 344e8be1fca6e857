"""The example Qwen3-Next GDN layer end to end (CPU, reference backend).

Prefill of T tokens per sequence, then M decode steps of one token each through a state pool
whose batches carry padded rows (slot -1), equals one float64 pass of the whole layer over the
T + M tokens of each sequence, written here from the weights alone (its own split, conv,
gating and the oracle's recurrence).  Both checkpoint layouts give the same output.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from oracle import TOL, gating64, recurrence64, rel_err

import gdn_dispatch as gdn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from qwen3_next_gdn_layer import (  # noqa: E402
    GDNConfig,
    GDNStateCache,
    Qwen3NextGatedDeltaNet,
    interleave_checkpoint,
)

CFG = GDNConfig(hidden_size=32, num_k_heads=2, num_v_heads=4, head_k_dim=16, head_v_dim=16,
                conv_kernel=4)
PREFILL_LENS = [5, 3, 7]
SLOTS = [4, 0, 2]          # pool slot of each sequence
POOL_SLOTS = 6
DECODE_STEPS = 3
# per decode step: the batch rows as sequence numbers, None = a padded row (slot -1)
DECODE_ROWS = [[2, None, 0, 1], [None, 1, 2, 0], [0, 1, None, 2]]


def _weights(cfg: GDNConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Contiguous-layout (Qwen3.5 order) float64 weights."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s, std=1.0: torch.randn(*s, generator=gen, dtype=torch.float64) * std
    D, HV = cfg.hidden_size, cfg.num_v_heads
    return dict(
        qkvz=r(2 * cfg.key_dim + 2 * cfg.value_dim, D, std=D ** -0.5),
        ba=r(2 * HV, D, std=D ** -0.5),
        conv=r(cfg.conv_dim, cfg.conv_kernel, std=0.5),
        A_log=torch.rand(HV, generator=gen, dtype=torch.float64) * 2.0 - 1.0,
        dt_bias=r(HV, std=0.5),
        norm=1.0 + r(cfg.head_v_dim, std=0.1),
        out=r(D, cfg.value_dim, std=cfg.value_dim ** -0.5),
    )


def _layer(cfg: GDNConfig, w: dict[str, torch.Tensor], dtype: torch.dtype,
           layout: str) -> Qwen3NextGatedDeltaNet:
    cfg = GDNConfig(**{**cfg.__dict__, "layout": layout})
    layer = Qwen3NextGatedDeltaNet(cfg, dtype=dtype)
    qkvz, ba = w["qkvz"], w["ba"]
    if layout == "interleaved":
        qkvz, ba = interleave_checkpoint(qkvz, ba, cfg)
    with torch.no_grad():
        layer.in_proj_qkvz.weight.copy_(qkvz)
        layer.in_proj_ba.weight.copy_(ba)
        layer.conv_weight.copy_(w["conv"])
        layer.A_log.copy_(w["A_log"])
        layer.dt_bias.copy_(w["dt_bias"])
        layer.norm_weight.copy_(w["norm"])
        layer.out_proj.weight.copy_(w["out"])
    return layer


def reference_layer64(cfg: GDNConfig, w: dict[str, torch.Tensor],
                      hidden: torch.Tensor) -> torch.Tensor:
    """The whole layer on one sequence ``[L, D]`` in float64, from contiguous weights."""
    x = hidden.double()
    L = x.shape[0]
    Hk, HV, Dk, Dv = cfg.num_k_heads, cfg.num_v_heads, cfg.head_k_dim, cfg.head_v_dim
    qkvz = x @ w["qkvz"].t()
    ba = x @ w["ba"].t()
    qkv, z = qkvz[:, : cfg.conv_dim], qkvz[:, cfg.conv_dim:].reshape(L, HV, Dv)
    b, a = ba[:, :HV], ba[:, HV:]
    W = cfg.conv_kernel
    conv = F.conv1d(qkv.t()[None], w["conv"][:, None, :], padding=W - 1,
                    groups=cfg.conv_dim)[0, :, :L].t()
    conv = F.silu(conv)
    q = conv[:, : Hk * Dk].reshape(1, L, Hk, Dk)
    k = conv[:, Hk * Dk: 2 * Hk * Dk].reshape(1, L, Hk, Dk)
    v = conv[:, 2 * Hk * Dk:].reshape(1, L, HV, Dv)
    g = gating64(w["A_log"], a, w["dt_bias"])[None]
    beta = torch.sigmoid(b)[None]
    o, _ = recurrence64(q, k, v, g, beta, l2norm=True)
    o = o[0]
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + cfg.rms_eps)
    y = w["norm"] * o * F.silu(z)
    return y.reshape(L, -1) @ w["out"].t()


def _run_layer(layer: Qwen3NextGatedDeltaNet, hiddens: list[torch.Tensor], dtype: torch.dtype,
               prefill=None, decode=None, device: str = "cpu",
               state_dtype: torch.dtype | None = None,
               ) -> tuple[torch.Tensor, list[torch.Tensor], GDNStateCache]:
    """Prefill every sequence, then DECODE_STEPS padded decode batches.  Returns the prefill
    output ``[sum T, D]``, the decode outputs per step and the cache."""
    prefill = prefill or layer.prefill
    decode = decode or layer.decode
    cache = GDNStateCache.empty(layer.cfg, POOL_SLOTS, dtype=dtype,
                                state_dtype=state_dtype or dtype, device=device)
    cu = torch.tensor([0] + list(torch.tensor(PREFILL_LENS).cumsum(0)), dtype=torch.int32)
    packed = torch.cat([h[:n] for h, n in zip(hiddens, PREFILL_LENS)]).to(dtype)
    slots = torch.tensor(SLOTS, dtype=torch.int32)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        y_prefill = prefill(packed.to(device), cu.to(device), slots.to(device), cache.ssm,
                            cache.conv)
        y_decode = []
        D = layer.cfg.hidden_size
        for step, rows in enumerate(DECODE_ROWS):
            h = torch.zeros(len(rows), D, dtype=dtype)
            sl = torch.full((len(rows),), -1, dtype=torch.int32)
            for i, n in enumerate(rows):
                if n is None:  # padding rows carry garbage
                    h[i] = torch.randn(D, generator=gen, dtype=torch.float64).to(dtype)
                else:
                    h[i] = hiddens[n][PREFILL_LENS[n] + step]
                    sl[i] = SLOTS[n]
            y_decode.append(decode(h.to(device), sl.to(device), cache.ssm, cache.conv))
    return y_prefill, y_decode, cache


def _hiddens(seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n + DECODE_STEPS, CFG.hidden_size, generator=gen, dtype=torch.float64)
            for n in PREFILL_LENS]


def _check_against_reference(y_prefill, y_decode, cache, w, hiddens, dtype,
                             tol: float | None = None) -> None:
    if tol is None:
        tol = {torch.float64: 1e-6, torch.float32: TOL[torch.float32]}[dtype]
    refs = [reference_layer64(CFG, w, h) for h in hiddens]
    starts = [0] + list(torch.tensor(PREFILL_LENS).cumsum(0).tolist())
    for n, ref in enumerate(refs):
        got = y_prefill[starts[n]:starts[n + 1]]
        assert rel_err(got, ref[:PREFILL_LENS[n]]) < tol, f"prefill of sequence {n}"
    for step, rows in enumerate(DECODE_ROWS):
        for i, n in enumerate(rows):
            got = y_decode[step][i]
            if n is None:
                assert torch.equal(got, torch.zeros_like(got)), "padded row not zero"
            else:
                ref = refs[n][PREFILL_LENS[n] + step]
                assert rel_err(got, ref) < tol, f"decode step {step}, sequence {n}"
    unused = [s for s in range(POOL_SLOTS) if s not in SLOTS]
    assert torch.equal(cache.ssm[unused], torch.zeros_like(cache.ssm[unused]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
def test_prefill_then_padded_decode_equals_float64_recurrence(dtype, layout):
    w = _weights(CFG)
    hiddens = _hiddens()
    layer = _layer(CFG, w, dtype, layout)
    with gdn.use_backend("reference"):
        y_prefill, y_decode, cache = _run_layer(layer, hiddens, dtype)
    _check_against_reference(y_prefill, y_decode, cache, w, hiddens, dtype)


def test_checkpoint_layouts_give_the_same_output():
    w = _weights(CFG, seed=3)
    hiddens = _hiddens(seed=4)
    a = _run_layer(_layer(CFG, w, torch.float64, "interleaved"), hiddens, torch.float64)
    b = _run_layer(_layer(CFG, w, torch.float64, "contiguous"), hiddens, torch.float64)
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-12)
    for x, y in zip(a[1], b[1]):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a[2].ssm, b[2].ssm, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a[2].conv, b[2].conv, rtol=1e-12, atol=1e-12)


def test_interleave_checkpoint_matches_the_split_op():
    """The weight permutation used above is the inverse of the op's interleaved layout."""
    w = _weights(CFG)
    x = torch.randn(3, CFG.hidden_size, dtype=torch.float64)
    qkvz_i, ba_i = interleave_checkpoint(w["qkvz"], w["ba"], CFG)
    args = (CFG.num_k_heads, CFG.num_v_heads, CFG.head_k_dim, CFG.head_v_dim)
    got = gdn.fused_qkvzba_split_reshape_cat(x @ qkvz_i.t(), x @ ba_i.t(), *args, "interleaved")
    exp = gdn.fused_qkvzba_split_reshape_cat(x @ w["qkvz"].t(), x @ w["ba"].t(), *args,
                                             "contiguous")
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


@pytest.mark.interpreter
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
                    reason="set TRITON_INTERPRET=1 (read when Triton kernels are defined)")
def test_layer_on_triton_cuda_in_interpreter():
    """The same end-to-end check with every op forced onto the Triton-CUDA kernels."""
    w = _weights(CFG)
    hiddens = _hiddens()
    layer = _layer(CFG, w, torch.float32, "interleaved")
    with gdn.use_backend("triton_cuda"):
        got = _run_layer(layer, hiddens, torch.float32)
    _check_against_reference(*got, w, hiddens, torch.float32)
