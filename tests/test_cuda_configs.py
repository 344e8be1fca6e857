"""The CUDA config tables: every arch family and bucket has an entry, and the lookup picks
by batch bucket, tokens per sequence and the state-store mode (no GPU needed)."""

from __future__ import annotations

import pytest
import torch
from gdn_dispatch.backends.triton_cuda import configs as cc

FAMILIES = ("sm_80", "sm_90", "sm_100")
BUCKETS = ("tiny", "small", "medium", "large")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_row_has_every_bucket(family):
    for v_first in (False, True):
        for elem in (2, 4):
            assert set(cc.RECURRENT_TABLE[(family, v_first, elem)]) == set(BUCKETS)
            multi = cc.MULTI_TOKEN_TABLE[(family, v_first, elem)]
            assert set(multi) == set(BUCKETS)
            for final, per_token in multi.values():
                # several tokens run on a held float32 tile: no packed / two-pass entries
                assert not (final.packed or final.chunk_k or per_token.packed
                            or per_token.chunk_k)


def test_buckets_by_heads_per_sm():
    assert cc.batch_bucket(32, 132) == "tiny"          # B = 1, HV = 32
    assert cc.batch_bucket(64, 132) == "tiny"          # B = 2
    assert cc.batch_bucket(128, 132) == "small"        # B = 4
    assert cc.batch_bucket(256, 132) == "small"        # B = 8
    assert cc.batch_bucket(1024, 132) == "medium"      # B = 32
    assert cc.batch_bucket(8192, 132) == "large"       # B = 256


@pytest.mark.parametrize("state_dtype,elem", [(torch.float32, 4), (torch.bfloat16, 2)])
@pytest.mark.parametrize("v_first", [False, True], ids=["kv", "vk"])
def test_lookup_follows_tokens_and_store_mode(state_dtype, elem, v_first):
    cc.clear_config_cache()
    for heads, bucket in ((32, "tiny"), (1024, "medium"), (8192, "large")):
        one = cc.recurrent_config_for_arch("sm_90", v_first, state_dtype, 128, 128, heads)
        assert one == cc.RECURRENT_TABLE[("sm_90", v_first, elem)][bucket]
        final, per_token = cc.MULTI_TOKEN_TABLE[("sm_90", v_first, elem)][bucket]
        got = cc.recurrent_config_for_arch("sm_90", v_first, state_dtype, 128, 128, heads,
                                           tokens_per_seq=3)
        assert got == final
        got = cc.recurrent_config_for_arch("sm_90", v_first, state_dtype, 128, 128, heads,
                                           tokens_per_seq=2, per_token_states=True)
        assert got == per_token
        # one token with per-token stores (spec decode with T = 1): the decode table, unless
        # the spec table overrides that bucket (fp32 vk large, fp32 kv medium)
        spec = cc.SPEC_ONE_TOKEN_TABLE.get(("sm_90", v_first, elem), {}).get(bucket, one)
        got = cc.recurrent_config_for_arch("sm_90", v_first, state_dtype, 128, 128, heads,
                                           tokens_per_seq=1, per_token_states=True)
        assert got == spec
        if (v_first, elem, bucket) in ((True, 4, "large"), (False, 4, "medium")):
            # held one-warp tiles, where the decode pick is larger or two-pass
            assert spec != one and not (spec.packed or spec.chunk_k) and spec.num_warps == 1


def test_multi_token_tile_fits_large_k():
    """K = 256 halves a held tile's BV (<= 128 float32 values per thread)."""
    cc.clear_config_cache()
    cfg = cc.recurrent_config_for_arch("sm_90", False, torch.float32, 256, 128, 1 << 20,
                                       tokens_per_seq=4, per_token_states=True)
    assert 256 * cfg.BV <= 128 * 32 * cfg.num_warps
