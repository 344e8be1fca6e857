"""The Triton-CUDA decode kernels on the CPU under ``TRITON_INTERPRET=1`` (tiny shapes,
fp16/fp32), through ``gdn.use_backend('triton_cuda')``: the same checks as the GPU tests.

Run: ``TRITON_INTERPRET=1 python -m pytest tests/test_triton_decode_interpreter.py -m interpreter``
(the variable must be set before Triton decorates the kernels, hence its own invocation).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_triton_decode import (
    check_gating,
    check_l2norm,
    check_launcher_slices,
    check_packed_decode,
    check_packed_tile,
    check_recurrent_plain,
    check_recurrent_pool,
    check_recurrent_spec,
    check_sigmoid_update,
    check_split,
)

from gdn_dispatch.probe import interpreter_enabled

pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(not interpreter_enabled(),
                       reason="needs TRITON_INTERPRET=1 set before Triton is imported "
                              "(run: TRITON_INTERPRET=1 pytest -m interpreter)"),
]

CPU = "cpu"
F32, F16 = torch.float32, torch.float16
_ids = lambda d: str(d).split(".")[-1]  # noqa: E731
SMALL = dict(H=1, HV=2, K=16, V=32)


@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
@pytest.mark.parametrize("dtype,state_dtype", [(F32, F32), (F16, F32), (F16, F16)],
                         ids=["f32-f32", "f16-f32", "f16-f16"])
def test_recurrent_gating_in_kernel(dtype, state_dtype, v_first):
    check_recurrent_plain(CPU, dtype, state_dtype, B=2, T=3, v_first=v_first, gate="raw",
                          beta_mode="sigmoid", l2norm=True, **SMALL)


@pytest.mark.parametrize("flags", [
    dict(gate="none", beta_mode="none"), dict(gate="log", beta_mode="given"),
    dict(gate="raw", beta_mode="sigmoid", neg_eigval=True), dict(final="none"),
    dict(final="inplace"), dict(h0=False), dict(varlen=[2, 0, 3]),
], ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_recurrent_flags(flags, v_first):
    B, T = (1, sum(flags["varlen"])) if "varlen" in flags else (2, 2)
    check_recurrent_plain(CPU, F32, F32, B=B, T=T, v_first=v_first, **flags, **SMALL)


def test_recurrent_odd_sizes_gva():
    check_recurrent_plain(CPU, F32, F32, B=1, T=2, H=1, HV=4, K=24, V=20, v_first=False)
    check_recurrent_plain(CPU, F32, F32, B=1, T=2, H=2, HV=4, K=20, V=24, v_first=True)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_pool(v_first, inplace):
    check_recurrent_pool(CPU, F32, F32, N=4, T=1, v_first=v_first, inplace=inplace, **SMALL)


def test_pool_fp16_state():
    check_recurrent_pool(CPU, F16, F16, N=3, T=2, v_first=True, inplace=True, **SMALL)


@pytest.mark.parametrize("inplace,varlen", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_spec_decode(v_first, inplace, varlen):
    check_recurrent_spec(CPU, F32, F32, N=3, T=2, v_first=v_first, inplace=inplace,
                         varlen=varlen, **SMALL)


@pytest.mark.parametrize("flat_ab,varlen", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_sigmoid_update(v_first, flat_ab, varlen):
    check_sigmoid_update(CPU, F32, F32, B=3, T=1, v_first=v_first, flat_ab=flat_ab,
                         varlen=varlen, **SMALL)


@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
@pytest.mark.parametrize("dtype,state_dtype", [(F32, F32), (F16, F16)], ids=["f32", "f16"])
def test_packed_decode(dtype, state_dtype, v_first):
    check_packed_decode(CPU, dtype, state_dtype, N=3, H=1, HV=2, K=16, V=32, v_first=v_first)


@pytest.mark.parametrize("dtype", [F32, F16], ids=_ids)
def test_gating(dtype):
    check_gating(CPU, dtype, N=5, HV=6)
    check_gating(CPU, dtype, N=3, HV=4, softplus_beta=2.0, threshold=1.0)


@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
def test_split(layout):
    check_split(CPU, F16, N=3, Hqk=2, Hv=4, Dk=8, Dv=12, layout=layout)
    check_split(CPU, F32, N=2, Hqk=1, Hv=3, Dk=4, Dv=4, layout=layout)


@pytest.mark.parametrize("dtype", [F32, F16], ids=_ids)
def test_l2norm(dtype):
    check_l2norm(CPU, dtype, shape=(3, 2, 20), strided=True)
    check_l2norm(CPU, dtype, shape=(17,), strided=False)


@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_launcher_several_v_slices(v_first):
    check_launcher_slices(CPU, F32, v_first=v_first, BV=8)


def test_aot_specs_describe_every_argument():
    """Each aot spec names all kernel arguments in order, with a type or 'constexpr'."""
    from gdn_dispatch.backends.triton_common import gating, recurrent, split

    for arch in ("sm_80", "sm_90", "sm_100"):
        for mod in (recurrent, gating, split):
            specs = mod.aot_specs(arch)
            assert specs, (arch, mod.__name__)
            for spec in specs:
                assert list(spec["signature"]) == list(spec["kernel"].arg_names)
                for name, ty in spec["signature"].items():
                    assert ty == "constexpr" or ty.startswith(("*", "i", "fp", "bf")), name
                    if ty == "constexpr":
                        assert name in spec["constexprs"], name


@pytest.mark.parametrize("tiles,BV", [(2, 8), (4, 16), (4, 32)])
def test_tiles_prefetch(monkeypatch, tiles, BV):
    """Several work items per program (the next state prefetched) and several V-slices."""
    from gdn_dispatch.backends.triton_common.recurrent import RecurrentConfig
    from gdn_dispatch.backends.triton_cuda import decode

    cfg = RecurrentConfig(BV=BV, num_warps=2, tiles=tiles)
    configs = dataclasses.replace(decode.OPS.configs, recurrent=lambda *a, **k: cfg)
    monkeypatch.setattr(decode.OPS, "configs", configs)
    for v_first in (False, True):
        check_recurrent_pool(CPU, F32, F32, N=3, T=2, v_first=v_first, inplace=True, **SMALL)
        check_recurrent_spec(CPU, F32, F32, N=3, T=2, v_first=v_first, inplace=True,
                             varlen=True, **SMALL)
        check_packed_decode(CPU, F32, F32, N=3, H=1, HV=2, K=16, V=32, v_first=v_first)
        check_recurrent_plain(CPU, F32, F32, B=1, T=5, v_first=v_first, varlen=[2, 0, 3],
                              gate="raw", beta_mode="sigmoid", l2norm=True, **SMALL)
        check_recurrent_plain(CPU, F32, F32, B=1, T=2, H=1, HV=3, K=16, V=24,
                              v_first=v_first)  # odd item count: fewer tiles


@pytest.mark.parametrize("kw", [dict(BV=16, num_warps=1),
                                dict(BV=8, num_warps=2, tiles=2, sub_bv=2,
                                     evict="evict_first")], ids=["w1", "tiles2-sub2-evict"])
def test_packed_tile(monkeypatch, kw):
    """16-bit state tiles kept packed in registers (every state mode, odd V)."""
    from gdn_dispatch.backends.triton_common.recurrent import RecurrentConfig
    from gdn_dispatch.backends.triton_cuda import decode

    cfg = RecurrentConfig(packed=True, **kw)
    configs = dataclasses.replace(decode.OPS.configs, recurrent=lambda *a, **k: cfg)
    monkeypatch.setattr(decode.OPS, "configs", configs)
    for K, V in ((16, 32), (16, 24)):
        check_packed_tile(CPU, F32, K=K, V=V, big=False,
                          state_dtypes=[torch.float32, torch.float16, torch.bfloat16])


@pytest.mark.parametrize("kw", [dict(BV=16, num_warps=1, chunk_k=8),
                                dict(BV=8, num_warps=2, chunk_k=16, sub_bv=4, packed=True,
                                     chunk_evict="", evict="evict_first")],
                         ids=["ck8-2chunks", "ck16-1chunk-packed"])
def test_two_pass_tile(monkeypatch, kw):
    """K-first tiles read twice instead of held (``RecurrentConfig.chunk_k``): every state
    mode and dtype, several chunks and one, odd V (V-first calls ignore ``chunk_k``)."""
    from gdn_dispatch.backends.triton_common.recurrent import RecurrentConfig
    from gdn_dispatch.backends.triton_cuda import decode

    cfg = RecurrentConfig(**kw)
    configs = dataclasses.replace(decode.OPS.configs, recurrent=lambda *a, **k: cfg)
    monkeypatch.setattr(decode.OPS, "configs", configs)
    for K, V in ((16, 32), (16, 24)):
        check_packed_tile(CPU, F32, K=K, V=V, big=False,
                          state_dtypes=[torch.float32, torch.float16, torch.bfloat16])


@pytest.mark.parametrize("bucket", ["medium", "large"])
def test_two_pass_table_configs(monkeypatch, bucket):
    """The sm_90 table's two-pass configs for K-first 16-bit states, as they are (BV=64, 64-row
    chunks, K = V = 128): one-token pool decode with padding, bf16 and fp16 pools (and a
    float32 pool through the same config, for a tight tolerance)."""
    from gdn_dispatch.backends.triton_cuda import configs as cuda_configs
    from gdn_dispatch.backends.triton_cuda import decode

    cfg = cuda_configs.RECURRENT_TABLE[("sm_90", False, 2)][bucket]
    assert cfg.chunk_k, cfg
    configs = dataclasses.replace(decode.OPS.configs, recurrent=lambda *a, **k: cfg)
    monkeypatch.setattr(decode.OPS, "configs", configs)
    for sd in (torch.float32, torch.bfloat16, torch.float16):
        check_recurrent_pool(CPU, F32, sd, N=3, T=1, H=1, HV=2, K=128, V=128, v_first=False,
                             inplace=True)


def test_config_lookup_gets_tokens_and_store_mode(monkeypatch):
    """Op 2 / op 3 tell the config lookup the tokens per sequence and whether a state is
    stored per token (spec decode), so the multi-token table can serve them."""
    from gdn_dispatch.backends.triton_cuda import decode

    from gdn_dispatch import dispatch

    seen: list[tuple[int, bool]] = []
    real = decode.OPS.configs.recurrent

    def recording(*args, tokens_per_seq=1, per_token_states=False):
        seen.append((tokens_per_seq, per_token_states))
        return real(*args, tokens_per_seq=tokens_per_seq, per_token_states=per_token_states)

    monkeypatch.setattr(decode.OPS, "configs",
                        dataclasses.replace(decode.OPS.configs, recurrent=recording))
    dispatch.clear_decision_cache()
    check_recurrent_plain(CPU, F32, F32, B=2, T=1, v_first=False, **SMALL)
    assert seen[-1] == (1, False)
    check_recurrent_plain(CPU, F32, F32, B=1, T=7, v_first=False, varlen=[3, 4], **SMALL)
    assert seen[-1] == (4, False)  # 7 tokens over 2 sequences, rounded up
    check_recurrent_spec(CPU, F32, F32, N=3, T=2, v_first=True, inplace=True, **SMALL)
    assert seen[-1] == (2, True)
    check_sigmoid_update(CPU, F32, F32, B=3, T=2, v_first=True, flat_ab=False, **SMALL)
    assert seen[-1] == (2, False)


def _table_configs() -> list:
    from gdn_dispatch.backends.triton_cuda import configs as cc

    found = []
    for (family, _v, _e), row in cc.MULTI_TOKEN_TABLE.items():
        for pair in row.values():
            found += [c for c in pair if family == "sm_90" and c not in found]
    rows = list(cc.RECURRENT_TABLE.items()) + list(cc.SPEC_ONE_TOKEN_TABLE.items())
    for (family, _v, _e), row in rows:
        for bucket, cfg in row.items():
            # every held tile (the tiny bucket's packed ones too); two-pass tiles have their
            # own test, packed ones of larger buckets run in the GPU tests
            held = not cfg.chunk_k and (bucket == "tiny" or not cfg.packed)
            if family == "sm_90" and held and cfg not in found:
                found.append(cfg)
    return found


@pytest.mark.parametrize("cfg", _table_configs(), ids=str)
def test_held_table_configs(monkeypatch, cfg):
    """The sm_90 held-tile configs of the tables as they are (multi-token, spec pool with one
    token, and the one-token buckets): several tokens per sequence (final state, spec decode
    with per-token states, varlen with an empty sequence) and one."""
    from gdn_dispatch.backends.triton_cuda import decode

    configs = dataclasses.replace(decode.OPS.configs, recurrent=lambda *a, **k: cfg)
    monkeypatch.setattr(decode.OPS, "configs", configs)
    sd = F16 if cfg.packed else F32
    for v_first in (False, True):
        check_recurrent_spec(CPU, F32, sd, N=3, T=3, v_first=v_first, inplace=True,
                             varlen=True, **SMALL)
        check_recurrent_plain(CPU, F32, sd, B=1, T=5, v_first=v_first, varlen=[2, 0, 3],
                              gate="raw", beta_mode="sigmoid", l2norm=True, **SMALL)
        check_recurrent_pool(CPU, F32, sd, N=3, T=1, v_first=v_first, inplace=True, **SMALL)
