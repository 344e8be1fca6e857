"""Small decode batches and speculative decoding, against fla 0.6.0 and the copy roofline.

Two sections (``--sections small,spec``), Qwen3-Next shapes (H=16, HV=32, K=V=128, bf16
inputs), GPU times from CUDA-graph replays (``bench_decode.graph_ms``):

- ``small``: B = 1, 2, 4, 8 one-token sequences, every state dtype / layout.  The config the
  CUDA table picks, a few alternatives (through the launcher, outputs allocated once) and fla
  are timed in interleaved rounds (each round times every candidate once, in a rotated
  order), so a drift of the GPU's clocks between minutes hits every candidate alike; the
  median over rounds is reported.  This is where a program's latency, not the bandwidth,
  sets the time (the whole state of B=1 is 1-2 MB).
- ``spec``: N sequences of T = 1-4 tokens (speculative decoding).  Ours through ``gdn`` two
  ways: the final state only (the call fla makes, side by side with fla), and the vLLM
  spec-decode pool mode (``ssm_state_indices`` ``[N, T]``, ``num_accepted_tokens``: the
  state after every token is written into the pool, so T states are written per sequence).
  Bytes counted: states read + written in the dtype each one really uses, plus q, k, v, o.
- ``multi`` (not in the default sections): the config study behind ``MULTI_TOKEN_TABLE``:
  N = 32 / 256 sequences of T = 2 / 4 tokens, the table's multi-token config and
  alternatives through the launcher (final state only, and per-token states in a spec pool),
  fla for the final-state call.

- ``open`` (not in the default sections): the open questions of issue 7 -- fp32 vk
  tiles against fla (B = 32 / 256 / 1024), and the spec-pool mode with one token per sequence
  (N = 32 / 256) through the table's pick, the multi-token config and alternatives.

Usage: ``python benchmarks/bench_decode_small.py [--sections small,spec,multi,open] [--out FILE]``.
"""

# ruff: noqa: B023  (closures are called inside the loop iteration that defines them)
from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from typing import Any

import torch
from bench_decode import (
    DEV,
    H,
    K,
    Rotating,
    V,
    call_kwargs,
    decode_inputs,
    graph_ms,
    io_bytes,
    results_header,
)
from gdn_dispatch.backends.triton_common import recurrent as rec
from gdn_dispatch.backends.triton_cuda import configs as cuda_configs

import gdn_dispatch as gdn

HV = 32
SMALL_BATCHES = (1, 2, 4, 8)
ROUNDS = 3
_R = rec.RecurrentConfig
_EF = "evict_first"
# alternatives to the table's pick, per (state bytes, v_first); fla's own choice is BV=8 w1
# with a float32 tile (one program per 8 value columns)
SMALL_CANDIDATES: dict[tuple[int, bool], list[rec.RecurrentConfig]] = {
    (4, False): [_R(8, 1), _R(16, 1), _R(32, 1, chunk_k=64, evict=_EF), _R(16, 1, chunk_k=64),
                 _R(16, 1, evict=_EF), _R(16, 1, chunk_k=64, evict=_EF)],
    (4, True): [_R(8, 1, evict=_EF), _R(16, 1), _R(8, 2), _R(16, 1, evict=_EF)],
    (2, False): [_R(8, 1), _R(16, 1), _R(16, 1, packed=True, evict=_EF),
                 _R(32, 1, chunk_k=64, evict=_EF)],
    (2, True): [_R(8, 1), _R(8, 1, packed=True), _R(16, 1), _R(8, 1, evict=_EF),
                _R(8, 1, packed=True, evict=_EF)],
}
# several tokens per sequence: the tile is held in float32 (or run in float32 slices) while
# the tokens go through one after the other, so a token's latency (loads, two reductions)
# counts T times; candidates with more, smaller programs (fla: BV=8 w1)
MULTI_CANDIDATES: dict[tuple[int, bool], list[rec.RecurrentConfig]] = {
    (4, False): [_R(8, 1), _R(16, 1), _R(32, 1), _R(32, 2), _R(16, 1, evict=_EF)],
    (4, True): [_R(8, 1), _R(16, 1), _R(8, 1, evict=_EF), _R(16, 2), _R(32, 2)],
    (2, False): [_R(8, 1), _R(16, 1), _R(32, 1), _R(32, 2), _R(16, 1, evict=_EF)],
    (2, True): [_R(8, 1), _R(16, 1), _R(8, 1, evict=_EF), _R(32, 2),
                _R(16, 1, packed=True, options=(("maxnreg", 104),))],
}
MULTI_N = (32, 256)
MULTI_T = (2, 4)
SPEC_N = (32, 256)
SPEC_T = (1, 2, 3, 4)


def interleaved_ms(runners: dict[str, Any], sets: list[dict], out_bytes: int,
                   rounds: int = ROUNDS) -> dict[str, list[float]]:
    """GPU ms per call of every runner in ``rounds`` rounds, each round in a rotated order (so
    a drift of the GPU's clocks hits every runner alike); NaN for a runner that fails."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            try:
                times[name].append(graph_ms(runners[name], sets, out_bytes))
            except Exception as exc:  # a candidate that does not build or run
                times[name].append(float("nan"))
                print(f"{name}: {exc!r}"[:200], flush=True)
    return times


def _cfg_text(cfg: rec.RecurrentConfig) -> str:
    out = f"BV={cfg.BV} w{cfg.num_warps}"
    if cfg.chunk_k:
        out += f" two-pass{cfg.chunk_k}"
    if cfg.packed:
        out += " packed"
    out += "".join(f" {n}={v}" for n, v in cfg.options)
    return out + (f" {cfg.evict}" if cfg.evict else "")


def _launcher(cfg: rec.RecurrentConfig, N: int, T: int, v_first: bool, o: torch.Tensor,
              h_out: torch.Tensor | None, pool: bool = False, hv: int | None = None):
    """The recurrent kernel through the launcher with ``cfg``: N sequences of T tokens
    (``cu_seqlens``), a new final state in ``h_out``, or with ``pool`` the spec-decode pool
    mode (start at ``pool[idx[n, nat[n] - 1]]``, the state after token t into
    ``pool[idx[n, t]]``)."""
    hv = hv or HV

    def run(x: dict) -> None:
        states: dict[str, Any] = dict(h_src=x["h0"], h_dst=h_out, dst_mode=rec.DST_NEW)
        if pool:
            states = dict(h_src=x["pool"], h_dst=x["pool"], idx=x["idx"], idx_mode=rec.IDX_SPEC,
                          num_accepted=x["nat"], dst_mode=rec.DST_SPEC_INPLACE)
        rec.launch_recurrent(
            x["q"], x["k"], x["v"], o, config=cfg, N=N, T=N * T, H=H, HV=hv, K=K, V=V,
            scale=K ** -0.5, q_strides=(0, H * K, K), k_strides=(0, H * K, K),
            v_strides=(0, hv * V, V), o_strides=(0, hv * V, V), g=x["a"],
            gate_mode=rec.GATE_RAW, A_log=x["A_log"], dt_bias=x["dt_bias"], beta=x["b"],
            beta_mode=rec.BETA_SIGMOID, l2norm=True, state_v_first=v_first,
            cu_seqlens=x["cu"], **states)
    return run


def _fla_runner(fla_fn, v_first: bool):
    """fla's fused recurrent call on an input set (the issue's flags)."""
    return lambda x: fla_fn(x["q"], x["k"], x["v"], x["a"], beta=x["b"],
                            **call_kwargs(x, v_first))


def _summarize(times: dict[str, list[float]], nbytes: int | dict[str, int],
               copy_bw: float) -> dict[str, dict[str, Any]]:
    """Per runner: median us, fraction of copy bandwidth (``nbytes``: one count for all, or
    per runner), the rounds in us."""
    out = {}
    for name, ts in times.items():
        ms = statistics.median(ts)
        b = nbytes[name] if isinstance(nbytes, dict) else nbytes
        out[name] = dict(us=ms * 1e3, frac=b / (ms * 1e-3) / copy_bw,
                         rounds_us=[t * 1e3 for t in ts])
    return out


def small_batches(copy_bw: float, fla_fn, results: dict) -> None:
    """Table config vs alternatives vs fla at B = 1-8, interleaved rounds."""
    rows = []
    for state_dtype in (torch.float32, torch.bfloat16):
        for v_first in (False, True):
            es = state_dtype.itemsize
            for B in SMALL_BATCHES:
                sbytes = B * HV * K * V * es
                rot = Rotating(lambda i: decode_inputs(B, HV, state_dtype, v_first, i),
                               sbytes + io_bytes(B, HV))
                o = torch.empty(1, B, HV, V, device=DEV, dtype=torch.bfloat16)
                h_out = torch.empty_like(rot.sets[0]["h0"])
                table = cuda_configs.recurrent_config_for_arch("sm_90", v_first, state_dtype,
                                                               K, V, B * HV)
                runners: dict[str, Any] = {"table " + _cfg_text(table):
                                           _launcher(table, B, 1, v_first, o, h_out)}
                for cfg in SMALL_CANDIDATES[(es, v_first)]:
                    if cfg != table:
                        runners[_cfg_text(cfg)] = _launcher(cfg, B, 1, v_first, o, h_out)

                def via_gdn(x):
                    return gdn.fused_recurrent_gated_delta_rule(
                        x["q"], x["k"], x["v"], x["a"], x["b"], **call_kwargs(x, v_first))
                runners["gdn"] = via_gdn
                if fla_fn is not None:
                    runners["fla"] = _fla_runner(fla_fn, v_first)
                times = interleaved_ms(runners, rot.sets, sbytes)
                names = list(runners)
                row: dict[str, Any] = dict(state=str(state_dtype)[6:],
                                           layout="vk" if v_first else "kv", B=B)
                row.update(_summarize(times, 2 * sbytes + io_bytes(B, HV), copy_bw))
                rows.append(row)
                best = min((n for n in times if n != "fla"), key=lambda n: row[n]["us"])
                fla_us = row["fla"]["us"] if "fla" in row else float("nan")
                others = " | ".join(f"{n} {row[n]['us']:.2f}" for n in names
                                    if n not in ("gdn", "fla"))
                print(f"small {row['state']:8s} {row['layout']} B={B}: gdn {row['gdn']['us']:.2f}"
                      f" us | {others} | fla {fla_us:.2f} | best {best}", flush=True)
                rot = None
    results["small"] = rows


def _spec_inputs(N: int, T: int, state_dtype: torch.dtype, v_first: bool, seed: int) -> dict:
    gen = torch.Generator(device=DEV).manual_seed(seed)
    dt = torch.bfloat16
    r = lambda *s: torch.randn(*s, device=DEV, generator=gen)  # noqa: E731
    shape = (N, HV, V, K) if v_first else (N, HV, K, V)
    slots = N * (T + 1)
    pool_shape = (slots,) + shape[1:]
    perm = torch.randperm(slots, device=DEV, generator=gen)
    return dict(q=r(1, N * T, H, K).to(dt), k=r(1, N * T, H, K).to(dt),
                v=r(1, N * T, HV, V).to(dt), a=r(1, N * T, HV).to(dt),
                b=r(1, N * T, HV).to(dt), A_log=r(HV).abs().log(), dt_bias=r(HV),
                h0=(0.1 * r(*shape)).to(state_dtype), pool=(0.1 * r(*pool_shape)).to(state_dtype),
                idx=perm[: N * T].view(N, T).to(torch.int32).contiguous(),
                nat=torch.randint(1, T + 1, (N,), device=DEV, generator=gen, dtype=torch.int32),
                cu=torch.arange(0, N * T + 1, T, device=DEV, dtype=torch.int64))


def spec_decode(copy_bw: float, fla_fn, results: dict) -> None:
    """T = 1-4 tokens per sequence: final state only (vs fla) and the spec-decode pool mode."""
    rows = []
    for state_dtype in (torch.float32, torch.bfloat16):
        for v_first in (False, True):
            es = state_dtype.itemsize
            for N in SPEC_N:
                for T in SPEC_T:
                    sbytes = N * HV * K * V * es
                    io = io_bytes(N * T, HV)
                    # rotate by the bytes one call touches (the pool's untouched slots
                    # do not count), so that small states are not served from L2
                    rot = Rotating(lambda i: _spec_inputs(N, T, state_dtype, v_first, i),
                                   2 * sbytes + io)
                    kw = lambda x: call_kwargs(x, v_first)  # noqa: E731

                    def final_only(x):
                        return gdn.fused_recurrent_gated_delta_rule(
                            x["q"], x["k"], x["v"], x["a"], x["b"], **kw(x))

                    def pool_mode(x):
                        args = {**kw(x), "initial_state": x["pool"], "output_final_state": False}
                        return gdn.fused_recurrent_gated_delta_rule(
                            x["q"], x["k"], x["v"], x["a"], x["b"], **args,
                            ssm_state_indices=x["idx"], num_accepted_tokens=x["nat"],
                            inplace_final_state=True)

                    runners: dict[str, Any] = {"final": final_only, "spec_pool": pool_mode}
                    if fla_fn is not None:
                        runners["fla"] = _fla_runner(fla_fn, v_first)
                    times = interleaved_ms(runners, rot.sets, sbytes)
                    names = list(runners)
                    byte_counts = {"final": 2 * sbytes + io, "spec_pool": (1 + T) * sbytes + io,
                                   "fla": sbytes + N * HV * K * V * 4 + io}
                    row: dict[str, Any] = dict(state=str(state_dtype)[6:],
                                               layout="vk" if v_first else "kv", N=N, T=T)
                    row.update(_summarize(times, byte_counts, copy_bw))
                    rows.append(row)
                    print(f"spec {row['state']:8s} {row['layout']} N={N:4d} T={T}: "
                          + " | ".join(f"{n} {row[n]['us']:.1f} us ({row[n]['frac']:.3f})"
                                       for n in names), flush=True)
                    rot = None
    results["spec"] = rows


def multi_token(copy_bw: float, fla_fn, results: dict) -> None:
    """Configs for T > 1 tokens per sequence: final state (vs fla) and spec pool mode."""
    rows = []
    for state_dtype in (torch.float32, torch.bfloat16):
        for v_first in (False, True):
            es = state_dtype.itemsize
            for N in MULTI_N:
                for T in MULTI_T:
                    sbytes = N * HV * K * V * es
                    io = io_bytes(N * T, HV)
                    rot = Rotating(lambda i: _spec_inputs(N, T, state_dtype, v_first, i),
                                   2 * sbytes + io)
                    o = torch.empty(1, N * T, HV, V, device=DEV, dtype=torch.bfloat16)
                    h_out = torch.empty_like(rot.sets[0]["h0"])
                    for pool in (False, True):
                        # what the table picks for this call (multi-token entries)
                        table = cuda_configs.recurrent_config_for_arch(
                            "sm_90", v_first, state_dtype, K, V, N * HV, tokens_per_seq=T,
                            per_token_states=pool)
                        cands = [table] + [c for c in MULTI_CANDIDATES[(es, v_first)]
                                           if c != table]
                        runners: dict[str, Any] = {}
                        for n, cfg in enumerate(cands):
                            name = ("table " if n == 0 else "") + _cfg_text(cfg)
                            runners[name] = _launcher(cfg, N, T, v_first, o, h_out, pool)
                        if fla_fn is not None and not pool:
                            runners["fla"] = _fla_runner(fla_fn, v_first)
                        times = interleaved_ms(runners, rot.sets, sbytes)
                        names = list(runners)
                        nbytes = ((1 + T) if pool else 2) * sbytes + io
                        row: dict[str, Any] = dict(state=str(state_dtype)[6:],
                                                   layout="vk" if v_first else "kv", N=N, T=T,
                                                   mode="spec_pool" if pool else "final")
                        row.update(_summarize(times, nbytes, copy_bw))
                        rows.append(row)
                        best = min((n for n in names if n != "fla"), key=lambda n: row[n]["us"])
                        print(f"multi {row['state']:8s} {row['layout']} N={N:4d} T={T} "
                              f"{row['mode']:9s}: "
                              + " | ".join(f"{n} {row[n]['us']:.1f}" for n in names)
                              + f" | best {best}", flush=True)
                    rot = None
    results["multi"] = rows


# open questions of issue 7 (docs/performance.md, "Fourth session" and "Sixth session"): the
# fp32 vk tiles at medium and large batches (fla 0.2-1.8% faster at B = 32 / 256 with the
# tiles the table had then, BV=16 w1 / BV=64 w4), and the spec-pool mode with one token per
# sequence (fp32 vk at 0.83 of copy: the BV=64 w4 spec variant needs 208 registers)
VK_FP32_CANDIDATES = [_R(64, 4), _R(32, 2), _R(16, 1), _R(16, 1, evict=_EF), _R(8, 1),
                      _R(8, 1, evict=_EF)]
VK_FP32_CASES = ((32, 32), (64, 32), (32, 256), (32, 1024), (64, 256))  # (HV, B)
# extra spec-pool T = 1 candidates, per (state bytes, v_first), next to the table's picks
SPEC_T1_EXTRA: dict[tuple[int, bool], list[rec.RecurrentConfig]] = {
    (4, True): [_R(16, 1), _R(8, 1, evict=_EF), _R(32, 2)]}
OPEN_ROUNDS = 5


def open_questions(copy_bw: float, fla_fn, results: dict) -> None:
    """fp32 vk medium / large tiles vs fla; spec-pool T = 1: one-token vs multi-token config
    (and extra tiles), N = 32 / 256.  OPEN_ROUNDS interleaved rounds each."""
    rows = []
    for hv, B in VK_FP32_CASES:
        sbytes = B * hv * K * V * 4
        rot = Rotating(lambda i: decode_inputs(B, hv, torch.float32, True, i),
                       sbytes + io_bytes(B, hv))
        o = torch.empty(1, B, hv, V, device=DEV, dtype=torch.bfloat16)
        h_out = torch.empty_like(rot.sets[0]["h0"])
        table = cuda_configs.recurrent_config_for_arch("sm_90", True, torch.float32, K, V,
                                                       B * hv)
        runners: dict[str, Any] = {"table " + _cfg_text(table):
                                   _launcher(table, B, 1, True, o, h_out, hv=hv)}
        runners.update({_cfg_text(c): _launcher(c, B, 1, True, o, h_out, hv=hv)
                        for c in VK_FP32_CANDIDATES if c != table})
        if fla_fn is not None:
            runners["fla"] = _fla_runner(fla_fn, True)
        times = interleaved_ms(runners, rot.sets, sbytes, OPEN_ROUNDS)
        row: dict[str, Any] = dict(case="fp32 vk", HV=hv, B=B)
        row.update(_summarize(times, 2 * sbytes + io_bytes(B, hv), copy_bw))
        rows.append(row)
        print(f"fp32 vk HV={hv} B={B}: " + " | ".join(
            f"{n} {row[n]['us']:.1f} ({row[n]['frac']:.3f})" for n in times), flush=True)
        rot = None
    T = 1
    for N in SPEC_N:
        for state_dtype in (torch.float32, torch.bfloat16):
            for v_first in (False, True):
                sbytes = N * HV * K * V * state_dtype.itemsize
                rot = Rotating(lambda i: _spec_inputs(N, T, state_dtype, v_first, i),
                               2 * sbytes + io_bytes(N, HV))
                o = torch.empty(1, N, HV, V, device=DEV, dtype=torch.bfloat16)
                table = cuda_configs.recurrent_config_for_arch(
                    "sm_90", v_first, state_dtype, K, V, N * HV, tokens_per_seq=1,
                    per_token_states=True)
                multi = cuda_configs.recurrent_config_for_arch(
                    "sm_90", v_first, state_dtype, K, V, N * HV, tokens_per_seq=2,
                    per_token_states=True)
                runners = {"table " + _cfg_text(table):
                           _launcher(table, N, T, v_first, o, None, True)}
                extra = [multi] + SPEC_T1_EXTRA.get((state_dtype.itemsize, v_first), [])
                for c in extra:
                    if c != table:
                        runners.setdefault(_cfg_text(c), _launcher(c, N, T, v_first, o, None,
                                                                   True))
                times = interleaved_ms(runners, rot.sets, sbytes, OPEN_ROUNDS)
                row = dict(case="spec pool T=1", state=str(state_dtype)[6:],
                           layout="vk" if v_first else "kv", N=N)
                row.update(_summarize(times, 2 * sbytes + io_bytes(N, HV), copy_bw))
                rows.append(row)
                print(f"spec T=1 {row['state']} {row['layout']} N={N}: " + " | ".join(
                    f"{n} {row[n]['us']:.1f} ({row[n]['frac']:.3f})" for n in times),
                    flush=True)
                rot = None
    results["open"] = rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_decode_small.json")
    ap.add_argument("--sections", default="small,spec")
    args = ap.parse_args()
    start = time.time()
    results, bw, fla_fn = results_header()
    steps = {"small": lambda: small_batches(bw, fla_fn, results),
             "spec": lambda: spec_decode(bw, fla_fn, results),
             "multi": lambda: multi_token(bw, fla_fn, results),
             "open": lambda: open_questions(bw, fla_fn, results)}
    for name in args.sections.split(","):
        try:
            steps[name]()
        except Exception:
            traceback.print_exc()
            results.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(f"total {time.time() - start:.0f} s; wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
