"""Launch configs of the decode-side kernels on NVIDIA GPUs: one table per kernel, per arch.

Looked up by the probe's arch (and, for the recurrent kernel, by how many (sequence, head)
pairs a call has, so small decode batches get more, smaller programs).  Lookups are cached:
no autotuning ever runs on the hot path.  The sm_90 medium/large entries are the winners of
the H100 sweep in ``benchmarks/bench_decode.py`` (see docs/performance.md); sm_80 / sm_100
share them for now (same 128-byte lines, same warp size; the batch buckets scale with the SM
count), untuned, except where ptxas spills there (see ``_TWO_PASS_KV16_SAFE``).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from gdn_dispatch.backends.triton_common.gating import RowConfig
from gdn_dispatch.backends.triton_common.recurrent import RecurrentConfig
from gdn_dispatch.backends.triton_common.split import SplitConfig

from gdn_dispatch.probe import DeviceProbe

__all__ = ["recurrent_config", "recurrent_config_for_arch", "gating_config", "l2norm_config",
           "split_config", "batch_bucket", "clear_config_cache", "RECURRENT_TABLE",
           "MULTI_TOKEN_TABLE", "SPEC_ONE_TOKEN_TABLE"]

# (arch family, state_v_first, state element bytes) -> config per batch bucket.  Buckets by
# (sequences x value heads) per SM: "tiny" < 1/2 (B = 1-2 at HV = 32: one program's latency
# is the time), "small" < 4 (latency-bound: many small programs), "medium" < 32, "large"
# otherwise (bandwidth-bound).  Every program reads a full K x BV tile.  One token per
# sequence (decode); several tokens per sequence take ``MULTI_TOKEN_TABLE``.
_PACKED_KV = RecurrentConfig(BV=32, num_warps=1, packed=True, options=(("maxnreg", 200),))
# vk cap: 96 measured best (0.96 / 0.99 at B = 256 / 1024; no cap, 128 registers: 0.95 /
# 0.99), but the pool / packed-decode variants spill 24 B there: 104 is the lowest cap
# without spills on sm_80 / sm_90 / sm_100 (AOT compile)
_PACKED_VK = RecurrentConfig(BV=16, num_warps=1, packed=True, options=(("maxnreg", 104),))
_PACKED_VK8 = RecurrentConfig(BV=8, num_warps=1, packed=True, evict="evict_first")
# medium batches (the whole state is a few tens of MB): the state loads and stores marked
# evict-first helped at B = 32 in 4 of 5 paired H100 measurements (kv BV=32 w1: 0.76 vs
# 0.71, vk BV=16 w1: 0.84 vs 0.79); at B >= 256 the effect was within noise, either sign
_EVICT = "evict_first"
# K-first tiles read twice instead of held (``chunk_k``, "two-pass"): a program can own
# 128-byte row pieces without holding them.  Why it matters, H100: a pure copy kernel with the
# tiles of a [128, 32] bf16 program (64-byte row pieces) moves 0.86 of copy bandwidth,
# [128, 64] (128-byte pieces) 0.94, [16, 128] (whole rows, the V-first tiles) 0.97; the
# held-tile kv kernel sat at the first figure (0.84-0.86)
_TWO_PASS_KV16 = RecurrentConfig(BV=64, num_warps=1, chunk_k=64, sub_bv=16, evict=_EVICT)
# tiny / small batches (H100, 2026-11-25 17:24 UTC, ``bench_decode_small.py``: CUDA-graph
# time per call, median of 3 interleaved rounds, B = 1 / 2 / 4 / 8 at HV = 32, fla 0.6.0 in the
# same rounds): state loads and stores marked evict-first take 10-20% off at these sizes,
# fp32 vk BV=8 w1 3.40 / 4.85 / 7.58 / 12.44 us (no hint 4.03 / 5.45 / 8.15 / 13.78; fla 4.09 /
# 5.47 / 8.09 / 13.67); fp32 kv BV=16 w1 3.62 / 4.86 at B = 1 / 2 (two-pass BV=32 4.80 / 5.87,
# fla 4.52 / 6.11) and two-pass BV=32 7.96 / 12.39 at B = 4 / 8 (fla 8.99 / 17.39); bf16 vk
# packed BV=8 3.04 / 3.67 / 4.96 / 8.01 (packed BV=16 cap 104: 3.94 / 4.19 / 5.58 / 8.22; fla
# 3.70 / 4.62 / 6.55 / 10.39)
_EVICT_FIRST_8 = RecurrentConfig(BV=8, num_warps=1, evict=_EVICT)
RECURRENT_TABLE: dict[tuple[str, bool, int], dict[str, RecurrentConfig]] = {
    # H100 sweep of 2026-11-25 16:30 UTC (fraction of copy bandwidth through the launcher,
    # B = 8 / 32 / 256, HV = 32): two-pass BV=32 w1 0.864 / 0.875, BV=64 w2 0.995 at 256
    # (held tiles: BV=16 w2 0.688 at 8, BV=32 w2 0.839 at 32, BV=64 w2 0.981 at 256)
    ("sm_90", False, 4): {"tiny": RecurrentConfig(BV=16, num_warps=1, evict=_EVICT),
                          "small": RecurrentConfig(BV=32, num_warps=1, chunk_k=64, evict=_EVICT),
                          "medium": RecurrentConfig(BV=32, num_warps=1, chunk_k=64),
                          "large": RecurrentConfig(BV=64, num_warps=2, chunk_k=64)},
    # vk small / medium: one-warp programs (H100, 2026-11-25 14:57 UTC, fraction of copy
    # bandwidth through the launcher: B=8 BV=8 w1 0.831 vs BV=16 w2 0.739 (fla 0.780);
    # B=32 BV=16 w1 0.894 vs 0.860 (fla 0.874), HV=64 B=32 0.957 vs 0.930 (fla 0.932)).
    # medium / large re-measured (H100, 2026-12-05 09:07 UTC, ``bench_decode_small.py
    # --sections open``, CUDA-graph us, median of 5 interleaved rounds, fla in the same
    # rounds): B=32 HV=32 / 64: BV=16 w1 evict-first 49.6 / 95.0 (no hint 50.3 / 95.3,
    # BV=8 w1 evict-first 49.3 / 95.2; fla 49.9 / 96.0); large, B=256 HV=32 / B=1024 HV=32 /
    # B=256 HV=64: BV=32 w2 365.4 / 1435.5 / 720.5 (BV=64 w4 366.2 / 1430.9 / 721.1, BV=16 w1
    # 365.2 / 1441.1 / 723.1; fla 365.9 / 1442.7 / 724.3).  BV=32 w2 was within 0.3% of the
    # best tile and ahead of fla in all six large rows of two such studies that day; BV=64 w4
    # behind fla in one (the tiles differ by less than the run-to-run spread, ~0.5%)
    ("sm_90", True, 4): {"tiny": _EVICT_FIRST_8,
                         "small": _EVICT_FIRST_8,
                         "medium": RecurrentConfig(BV=16, num_warps=1, evict=_EVICT),
                         "large": RecurrentConfig(BV=32, num_warps=2)},
    # 16-bit states, medium/large: the tile stays in the state dtype in registers
    # (``packed``), one warp per program (no cross-warp reductions: no barriers), registers
    # capped (``maxnreg``) so that ptxas does not widen the whole tile ahead of its uses: kv
    # [128, 32] at 200 registers (10 programs per SM), vk [16, 128] at 104 (19 per SM).  H100
    # sweep of 2026-11-25 (Triton 3.6, fla-style decode launch, fraction of copy bandwidth at
    # B = 32 / 256 / 1024, HV = 32): kv 0.76 / 0.83 / 0.86 (was 0.56 / 0.69 / 0.71 with
    # BV=64 w2), vk 0.84 / 0.96 / 0.99 (was 0.60 / 0.73 / 0.76 with BV=32 w2).  Wider kv
    # slices need cross-warp reductions (BV=64 w4 packed: 0.70) and one warp cannot hold a
    # [128, 64] tile without spilling; see docs/performance.md.
    # K-first 16-bit states (same sweep): two-pass BV=64 w1 with evict-first stores 0.953 at
    # B = 256 and 0.789 at 32 (packed BV=32 w1: 0.812 / 0.756 with evict-first); B = 8:
    # packed BV=32 w1 evict-first 0.745 (two-pass 0.573-0.664, BV=32 w2 0.493)
    ("sm_90", False, 2): {"tiny": dataclasses.replace(_PACKED_KV, evict=_EVICT),
                          "small": dataclasses.replace(_PACKED_KV, evict=_EVICT),
                          "medium": _TWO_PASS_KV16,
                          "large": _TWO_PASS_KV16},
    # tiny / small: packed BV=8 with evict-first (see above; the earlier sweep at B=8 had
    # packed BV=16 w1 cap 104 0.711 vs BV=16 w2 0.565, and BV=16 with evict-first spilled
    # 12-36 B in the pool / packed-decode variants on sm_100; BV=8 holds half the tile)
    ("sm_90", True, 2): {"tiny": _PACKED_VK8,
                         "small": _PACKED_VK8,
                         "medium": dataclasses.replace(_PACKED_VK, evict=_EVICT),
                         "large": _PACKED_VK},
}

# sm_100 (untuned, like sm_80): the sm_90 entries, with the kv register cap raised to what
# ptxas needs there without spills (the pool / packed-decode variants spill up to 224)
# (kv: 232; vk: 128, where the pool / packed-decode variants spill 12-36 B at 104)
_SM100_CAP = {False: 232, True: 128}
for (_arch, _v_first, _elem), _row in list(RECURRENT_TABLE.items()):
    RECURRENT_TABLE[("sm_100", _v_first, _elem)] = {
        bucket: (dataclasses.replace(cfg, options=(("maxnreg", _SM100_CAP[_v_first]),))
                 if cfg.packed and _elem == 2 else cfg)
        for bucket, cfg in _row.items()}

# other arches (untuned): the sm_90 rows, except that the two-pass 16-bit kv tile streams
# chunks of 32 rows (ptxas for sm_80 / sm_100 spills 8-328 B with 64-row chunks; no spills
# with 32, whose first pass then keeps half as many loads in flight)
_TWO_PASS_KV16_SAFE = dataclasses.replace(_TWO_PASS_KV16, chunk_k=32)
for (_arch, _v_first, _elem), _row in list(RECURRENT_TABLE.items()):
    if _arch == "sm_90":
        RECURRENT_TABLE[("sm_80", _v_first, _elem)] = dict(_row)
for _arch in ("sm_80", "sm_100"):
    RECURRENT_TABLE[(_arch, False, 2)] = {**RECURRENT_TABLE[(_arch, False, 2)],
                                          "medium": _TWO_PASS_KV16_SAFE,
                                          "large": _TWO_PASS_KV16_SAFE}
# sm_100, fp32 vk, large: BV=64 w4 (sm_90's tile until 2026-12-05) spills 16 B there in the
# spec-decode variant (one token per sequence with per-token stores); BV=16 w1 holds a quarter
# of the tile per thread and was the fastest vk tile of the H100 sweep at B = 256 (363.6 us vs
# 365.9 for BV=64 w4; in the 2026-12-05 study 365.2 vs 365.4 for sm_90's BV=32 w2, and 0.4%
# behind BV=32 w2 at B = 1024)
RECURRENT_TABLE[("sm_100", True, 4)] = {**RECURRENT_TABLE[("sm_100", True, 4)],
                                        "large": RecurrentConfig(BV=16, num_warps=1)}

# Several tokens per sequence (speculative decoding, short varlen sequences): the tile is held
# in float32 while the tokens go through one after the other, so each token's latency (loads,
# two reductions, the state update) counts T times and more, smaller one-warp programs win.
# (arch family, v_first, state element bytes) -> bucket -> (final state only, a state stored
# after every token: spec-decode pools).  H100, 2026-11-25 17:24 UTC (``bench_decode_small.py
# --sections multi``, N = 32 / 256 sequences ("medium" / "large") of T = 2 and 4 tokens, us;
# the one-token configs in brackets, fla 0.6.0 for the final-state call):
# fp32 kv final BV=16 w1: 57.4 / 69.1 / 388.5 / 454.0 (two-pass 63.5 / 82.3 / 459.2 / 606.0;
#   fla 66.0 / 82.3 / 450.9 / 583.6), evict-first at N = 32: 56.8 / 61.7; per-token BV=32 w1
#   80.8 / 131.0 / 599.2 / 1021.3 (104.8 / 202.2 / 667.6 / 1154.3)
# fp32 vk final BV=8 w1 evict-first at N = 32: 52.1 / 59.0 (fla 56.6 / 70.2), BV=16 w1 at
#   N = 256: 373.0 / 447.8 (BV=64 w4 467.8 / 634.4; fla 391.1 / 468.2); per-token the same
#   choices 75.6 / 124.8 / 567.3 / 966.7 (77.8 / 128.2 / 688.9 / 1158.0)
# bf16 kv final BV=16 w1 evict-first 37.0 / 48.1 / 266.2 / 353.5 (48.1 / 66.2 / 318.3 / 487.1;
#   fla 62.4 / 82.7 / 454.0 / 609.4); per-token BV=16 evict-first at N = 32 50.3 / 78.6,
#   BV=32 w1 at N = 256 359.2 / 591.6 (79.6 / 196.4 / 597.7 / 1592.2: the two-pass tile runs
#   16-column float32 slices, each storing a 32-byte piece of every row per token)
# bf16 vk final BV=8 w1 evict-first at N = 32: 33.7 / 49.0, BV=16 w1 at N = 256 254.1 / 331.8
#   (41.7 / 57.2 / 271.7 / 380.9; fla 47.6 / 59.7 / 329.5 / 404.3); per-token the same choices
#   42.9 / 68.7 / 304.8 / 498.8 (45.4 / 73.7 / 333.0 / 558.5)
# "tiny" / "small" take the "medium" entry (not measured separately).
_R1 = functools.partial(RecurrentConfig, num_warps=1)
MULTI_TOKEN_TABLE: dict[tuple[str, bool, int], dict[str, tuple[RecurrentConfig,
                                                                RecurrentConfig]]] = {
    ("sm_90", False, 4): {"medium": (_R1(BV=16, evict=_EVICT), _R1(BV=32)),
                          "large": (_R1(BV=16), _R1(BV=32))},
    ("sm_90", True, 4): {"medium": (_R1(BV=8, evict=_EVICT), _R1(BV=8, evict=_EVICT)),
                         "large": (_R1(BV=16), _R1(BV=16))},
    ("sm_90", False, 2): {"medium": (_R1(BV=16, evict=_EVICT), _R1(BV=16, evict=_EVICT)),
                          "large": (_R1(BV=16, evict=_EVICT), _R1(BV=32))},
    ("sm_90", True, 2): {"medium": (_R1(BV=8, evict=_EVICT), _R1(BV=8, evict=_EVICT)),
                         "large": (_R1(BV=16), _R1(BV=16))},
}
for (_arch, _v_first, _elem), _row in list(MULTI_TOKEN_TABLE.items()):
    for _bucket in ("tiny", "small"):
        _row[_bucket] = _row["medium"]
    for _other in ("sm_80", "sm_100"):  # untuned there: the same (plain tiles, no caps)
        MULTI_TOKEN_TABLE[(_other, _v_first, _elem)] = _row

# One token per sequence with a state stored after it (vLLM's spec-decode pool with T = 1):
# the one-token table, except where its tile needs many more registers in the per-token
# store variant.  fp32 vk large: BV=64 w4 takes 208 registers there (168 without the
# per-token stores; sm_90 AOT) and ran at 0.823 of copy bandwidth, BV=16 w1 (the per-token
# multi-token pick, 128 registers) at 0.959 (H100, 2026-12-05 08:47 UTC, ``bench_decode_small.py
# --sections open``, N = 256, HV = 32: 437.0 vs 375.1 us).  The other layouts / dtypes were
# faster on the one-token pick (fp32 kv 369.9 vs 392.7, bf16 kv 209.2 vs 237.5, bf16 vk 200.4
# vs 206.9 us).  N = 32 (medium, 09:07 UTC, 5 rounds): fp32 kv held BV=32 w1 (the per-token
# multi-token pick) 50.6 us (0.889) vs the two-pass one-token tile 54.6 (0.824); fp32 vk
# BV=16 w1 52.4 vs BV=8 w1 evict-first 52.2, bf16 kv / vk the one-token pick 32.8 / 29.9 vs
# 35.5 / 30.2.  (fp32 vk large, after the one-token large tile became BV=32 w2: BV=16 w1
# 372.6 vs BV=32 w2 420.4.)  Rows / buckets absent here: the one-token table.
SPEC_ONE_TOKEN_TABLE: dict[tuple[str, bool, int], dict[str, RecurrentConfig]] = {
    ("sm_90", False, 4): {"medium": _R1(BV=32)},
    ("sm_90", True, 4): {"large": _R1(BV=16)},
}
for (_arch, _v_first, _elem), _row in list(SPEC_ONE_TOKEN_TABLE.items()):
    SPEC_ONE_TOKEN_TABLE[("sm_80", _v_first, _elem)] = _row

_TINY_PER_SM, _SMALL_PER_SM, _MEDIUM_PER_SM = 0.5, 4, 32
_SMS = {"sm_80": 108, "sm_90": 132, "sm_100": 148, "sm_120": 84}


def _family(arch: str) -> str:
    """Table row for an arch: sm_90 (tuned), sm_10x (register caps), every other arch the
    sm_80 row (the sm_90 entries with configs that compile without spills there)."""
    if arch == "sm_90" or arch.startswith("sm_10"):
        return arch if arch == "sm_90" else "sm_100"
    return "sm_80"


def batch_bucket(n_heads_total: int, sms: int) -> str:
    """"tiny", "small", "medium" or "large" for a call with ``n_heads_total`` (sequence,
    head) pairs."""
    if n_heads_total < _TINY_PER_SM * sms:
        return "tiny"
    if n_heads_total < _SMALL_PER_SM * sms:
        return "small"
    return "medium" if n_heads_total < _MEDIUM_PER_SM * sms else "large"


@functools.lru_cache(maxsize=512)
def _recurrent(arch: str, sms: int, v_first: bool, elem: int, K: int, V: int,
               n_heads_total: int, multi_token: bool = False,
               per_token_states: bool = False) -> RecurrentConfig:
    bucket = batch_bucket(n_heads_total, sms)
    if multi_token:
        cfg = MULTI_TOKEN_TABLE[(_family(arch), v_first, elem)][bucket][int(per_token_states)]
        return _fit_held(cfg, K)
    cfg = RECURRENT_TABLE[(_family(arch), v_first, elem)][bucket]
    if per_token_states:
        cfg = SPEC_ONE_TOKEN_TABLE.get((_family(arch), v_first, elem), {}).get(bucket, cfg)
    if cfg.chunk_k and not v_first:
        # two-pass: the first pass issues every chunk's loads at once, so keep the tile at
        # <= 512 bytes per thread (the tuned K = 128 tiles), e.g. BV=32 for K = 256
        while cfg.BV > 8 and _pow2(K) * cfg.BV * elem > 512 * 32 * cfg.num_warps:
            cfg = dataclasses.replace(cfg, BV=cfg.BV // 2)
        return cfg
    cfg = _fit_held(cfg, K)
    # a register cap is tuned for K = 128: keep the tile's values per thread for larger K
    if any(name == "maxnreg" for name, _ in cfg.options):
        tuned = RECURRENT_TABLE[(_family(arch), v_first, elem)][batch_bucket(n_heads_total,
                                                                             sms)].BV
        while cfg.BV > 8 and _pow2(K) * cfg.BV > 128 * tuned:
            cfg = dataclasses.replace(cfg, BV=cfg.BV // 2)
        if _pow2(K) * cfg.BV > 128 * tuned:  # still larger: drop the cap
            cfg = dataclasses.replace(cfg, options=tuple(
                (name, value) for name, value in cfg.options if name != "maxnreg"))
    return cfg


def _fit_held(cfg: RecurrentConfig, K: int) -> RecurrentConfig:
    """``cfg`` with BV halved until a float32 tile is <= 128 values per thread (no spills
    for K up to 256)."""
    while cfg.BV > 8 and K * cfg.BV > 128 * 32 * cfg.num_warps:
        cfg = dataclasses.replace(cfg, BV=cfg.BV // 2)
    return cfg


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


def recurrent_config_for_arch(arch: str, v_first: bool, state_dtype: torch.dtype, K: int, V: int,
                              n_heads_total: int, sms: int | None = None, *,
                              tokens_per_seq: int = 1,
                              per_token_states: bool = False) -> RecurrentConfig:
    """Config of the recurrent kernel for ``n_heads_total`` = sequences x value heads, with
    ``tokens_per_seq`` tokens per sequence (on average; > 1 takes ``MULTI_TOKEN_TABLE``) and
    ``per_token_states`` (a state stored after every token)."""
    elem = 4 if state_dtype == torch.float32 else 2
    return _recurrent(arch, sms or _SMS.get(arch, 132), bool(v_first), elem, K, V, n_heads_total,
                      tokens_per_seq > 1, bool(per_token_states))


def recurrent_config(probe: DeviceProbe, v_first: bool, state_dtype: torch.dtype, K: int, V: int,
                     n_heads_total: int, *, tokens_per_seq: int = 1,
                     per_token_states: bool = False) -> RecurrentConfig:
    """Config of the recurrent kernel on the probed device."""
    elem = 4 if state_dtype == torch.float32 else 2
    return _recurrent(probe.arch, probe.multiprocessors or 132, bool(v_first), elem, K, V,
                      n_heads_total, tokens_per_seq > 1, bool(per_token_states))


@functools.lru_cache(maxsize=64)
def gating_config(arch: str) -> RowConfig:
    """fused_gdn_gating: elements per program and warps."""
    return RowConfig(block=1024, num_warps=4)


@functools.lru_cache(maxsize=64)
def l2norm_config(arch: str, D: int) -> RowConfig:
    """l2norm: rows per program (block) and warps, for rows of D elements."""
    rows = max(1, min(16, 4096 // max(D, 1)))
    return RowConfig(block=rows, num_warps=4 if D <= 1024 else 8)


@functools.lru_cache(maxsize=64)
def split_config(arch: str) -> SplitConfig:
    """fused_qkvzba_split_reshape_cat: warps per (token, key head) program."""
    return SplitConfig(num_warps=4)


def clear_config_cache() -> None:
    """Forget cached lookups (after editing ``RECURRENT_TABLE``, e.g. in a tuning sweep)."""
    _recurrent.cache_clear()
