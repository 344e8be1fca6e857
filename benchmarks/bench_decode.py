"""Decode-side benchmark of the Triton-CUDA backend against fla 0.6.0 and the copy roofline.

Shapes: Qwen3-Next per GPU (H=16, HV=32, K=V=128; also HV=64), bf16 inputs, one token per
sequence.  fla is called as the issue prescribes (``use_gate_in_kernel``,
``use_beta_sigmoid_in_kernel``, ``use_qk_l2norm_in_kernel``, ``cu_seqlens=arange``, an initial
state, ``output_final_state=True``) and so is ours, through ``gdn``.  Bytes counted: state
read + state written (each in the dtype the implementation really uses) + q, k, v, o.  The
copy bandwidth is measured in the same run (``dst.copy_(src)`` of 1 GiB, 2 bytes per byte).

Prints a table and writes every number as JSON (``--out``).  Sections, in order: a config
sweep of the recurrent kernel (the best config per batch bucket is installed into the CUDA
config table for the rest of the run and reported), the roofline table, eager per-call
latency (B=1, 8, including dispatch; with the cached launch path and with Triton's plain
launch), dispatch overhead, packed / fused-gating decode vs the unfused chain.  GPU times
come from CUDA-graph replays (no host launch cost inside), eager times from host wall clock.
"""

# ruff: noqa: B023  (closures are called inside the loop iteration that defines them)
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.testing
from gdn_dispatch.backends.triton_common import recurrent as rec
from gdn_dispatch.backends.triton_cuda import configs as cuda_configs

import gdn_dispatch as gdn

DEV = "cuda"
H, K, V = 16, 128, 128
L2_ROTATE_BYTES = 100 << 20
BATCHES = (1, 8, 32, 256, 1024)
HV64_BATCHES = (32, 256)
EAGER_BATCHES = (1, 8)
PACKED_N = 256
SWEEP_BATCHES = (256, 32, 8)
ROOFLINE_ROUNDS = 3
COPY_ELEMS = 1 << 28


def _fla():
    try:
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
        return fused_recurrent_gated_delta_rule
    except Exception as exc:  # fla absent: ours only
        print(f"fla unavailable: {exc!r}", file=sys.stderr)
        return None


def bench_ms(fn: Callable[[], Any]) -> float:
    """Median GPU time of one call (do_bench flushes L2 between calls)."""
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def eager_us(fn: Callable[[], Any], n: int = 200, reps: int = 7) -> float:
    """Median host wall time per call of ``n`` back-to-back eager calls (synced at the end)."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(out)


def graph_ms(call: Callable[[dict], Any], sets: list[dict], out_bytes: int) -> float:
    """GPU time of one call, from CUDA-graph replays of calls cycling over ``sets`` (no CPU
    launch cost in the figure).  Falls back to do_bench when capture fails."""
    n = max(len(sets), 2)
    n = max(2, min(n, 48, (1 << 30) // max(out_bytes, 1)))
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for x in sets[: min(len(sets), 2)]:
                call(x)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(n):
                call(sets[i % len(sets)])
        # warm up for ~50 ms: the first replays after new inputs were allocated run up to
        # 15% slow (clocks, first touch of the pages), which once made the row measured first
        # after each new input set look slower than the same kernel measured later
        warm_until = time.perf_counter() + 0.05
        graph.replay()
        torch.cuda.synchronize()
        while time.perf_counter() < warm_until:
            graph.replay()
            torch.cuda.synchronize()
        times = []
        for _ in range(7):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / n)
        del graph
        return statistics.median(times)
    except Exception as exc:  # not capturable: time eagerly
        print(f"graph capture failed ({exc!r}); using do_bench", flush=True)
        it = iter(range(1 << 62))
        return bench_ms(lambda: call(sets[next(it) % len(sets)]))


def copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    n = COPY_ELEMS
    src = torch.randn(n, device=DEV)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * n * 4 / (ms * 1e-3)


class Rotating:
    """Input sets, cycled per call so that repeated calls do not hit L2."""

    def __init__(self, make: Callable[[int], dict], set_bytes: int):
        self.count = max(1, min(64, -(-L2_ROTATE_BYTES // max(set_bytes, 1))))
        self.sets = [make(i) for i in range(self.count)]
        self.i = 0

    def next(self) -> dict:
        s = self.sets[self.i]
        self.i = (self.i + 1) % self.count
        return s


def decode_inputs(B: int, HV: int, state_dtype: torch.dtype, v_first: bool, seed: int) -> dict:
    gen = torch.Generator(device=DEV).manual_seed(seed)
    dt = torch.bfloat16
    r = lambda *s: torch.randn(*s, device=DEV, generator=gen)  # noqa: E731
    shape = (B, HV, V, K) if v_first else (B, HV, K, V)
    return dict(q=r(1, B, H, K).to(dt), k=r(1, B, H, K).to(dt), v=r(1, B, HV, V).to(dt),
                a=r(1, B, HV).to(dt), b=r(1, B, HV).to(dt), A_log=r(HV).abs().log(),
                dt_bias=r(HV), h0=(0.1 * r(*shape)).to(state_dtype),
                cu=torch.arange(B + 1, device=DEV, dtype=torch.int64))


def call_kwargs(x: dict, v_first: bool) -> dict:
    return dict(initial_state=x["h0"], output_final_state=True, use_qk_l2norm_in_kernel=True,
                use_gate_in_kernel=True, A_log=x["A_log"], dt_bias=x["dt_bias"],
                use_beta_sigmoid_in_kernel=True, state_v_first=v_first, cu_seqlens=x["cu"])


def io_bytes(B: int, HV: int) -> int:
    return 2 * (2 * B * H * K + 2 * B * HV * V)  # q, k, v, o in bf16


def roofline_table(copy_bw: float, fla_fn, results: dict) -> None:
    rows = []
    for HV in (32, 64):
        for state_dtype in (torch.float32, torch.bfloat16):
            for v_first in (False, True):
                for B in BATCHES:
                    if HV == 64 and B not in HV64_BATCHES:
                        continue
                    es = state_dtype.itemsize
                    sbytes = B * HV * K * V * es
                    rot = Rotating(lambda i: decode_inputs(B, HV, state_dtype, v_first, i),
                                   sbytes + io_bytes(B, HV))
                    row: dict[str, Any] = dict(HV=HV, state=str(state_dtype)[6:],
                                               layout="vk" if v_first else "kv", B=B)

                    def ours(x):
                        return gdn.fused_recurrent_gated_delta_rule(
                            x["q"], x["k"], x["v"], x["a"], x["b"], **call_kwargs(x, v_first))

                    def theirs(x):
                        return fla_fn(x["q"], x["k"], x["v"], x["a"], beta=x["b"],
                                      **call_kwargs(x, v_first))

                    # ours and fla alternate over ROOFLINE_ROUNDS rounds (the order flips
                    # each round); medians: the GPU's speed drifts between minutes
                    ours_t: list[float] = []
                    fla_t: list[float] = []
                    for r in range(ROOFLINE_ROUNDS):
                        order = [(ours, ours_t), (theirs, fla_t)] if fla_fn is not None \
                            else [(ours, ours_t)]
                        for fn, times in (order if r % 2 == 0 else order[::-1]):
                            try:
                                times.append(graph_ms(fn, rot.sets, sbytes + io_bytes(B, HV)))
                            except Exception as exc:
                                if fn is ours:
                                    raise
                                row["fla_error"] = repr(exc)
                    ms = statistics.median(ours_t)
                    ours_bytes = 2 * sbytes + io_bytes(B, HV)
                    row.update(ours_ms=ms, ours_frac=ours_bytes / (ms * 1e-3) / copy_bw,
                               ours_rounds_ms=ours_t)
                    if fla_t:
                        fms = statistics.median(fla_t)
                        # fla writes a float32 final state whatever the initial state dtype
                        fbytes = sbytes + B * HV * K * V * 4 + io_bytes(B, HV)
                        row.update(fla_ms=fms, fla_frac=fbytes / (fms * 1e-3) / copy_bw,
                                   fla_rounds_ms=fla_t)
                    rows.append(row)
                    print(_fmt_row(row), flush=True)
                    rot = None
    results["roofline"] = rows


def _fmt_row(r: dict) -> str:
    s = f"HV={r['HV']:3d} {r['state']:9s} {r['layout']} B={r['B']:5d}  ours {r['ours_ms']*1e3:8.1f} us"
    s += f" ({r['ours_frac']:.3f} of copy)"
    if "fla_ms" in r:
        s += f" | fla {r['fla_ms']*1e3:8.1f} us ({r['fla_frac']:.3f})"
    return s


def eager_latency(fla_fn, results: dict) -> None:
    from gdn_dispatch.backends.triton_common import launch

    rows = []
    for B in EAGER_BATCHES:
        for state_dtype in (torch.float32, torch.bfloat16):
            for v_first in (False, True):
                x = decode_inputs(B, 32, state_dtype, v_first, 0)
                kw = call_kwargs(x, v_first)
                row = dict(B=B, state=str(state_dtype)[6:], layout="vk" if v_first else "kv")
                op = lambda: gdn.fused_recurrent_gated_delta_rule(  # noqa: E731
                    x["q"], x["k"], x["v"], x["a"], x["b"], **kw)
                row["ours_us"] = eager_us(op)
                launch.set_fast_launch(False)
                row["ours_triton_launch_us"] = eager_us(op)
                launch.set_fast_launch(True)
                if fla_fn is not None:
                    try:
                        row["fla_us"] = eager_us(lambda: fla_fn(x["q"], x["k"], x["v"], x["a"],
                                                                beta=x["b"], **kw))
                    except Exception as exc:
                        row["fla_error"] = repr(exc)
                rows.append(row)
                print(f"eager B={B} {row['state']} {row['layout']}: ours {row['ours_us']:.1f} us"
                      f" (plain triton launch {row['ours_triton_launch_us']:.1f})"
                      + (f" | fla {row['fla_us']:.1f} us" if "fla_us" in row else ""), flush=True)
    results["eager"] = rows
    # where the host time of one call goes
    import cProfile
    import io
    import pstats

    x = decode_inputs(1, 32, torch.float32, True, 0)
    kw = call_kwargs(x, True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        gdn.fused_recurrent_gated_delta_rule(x["q"], x["k"], x["v"], x["a"], x["b"], **kw)
    prof.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
    results["eager_profile"] = buf.getvalue()[-6000:]


def dispatch_overhead(results: dict) -> None:
    """gdn op vs the impl function vs the bare launcher (same work, pool in place, B=1)."""
    from gdn_dispatch.backends.triton_cuda import decode

    B, HV = 1, 32
    x = decode_inputs(B, HV, torch.float32, True, 0)
    pool = torch.randn(8, HV, V, K, device=DEV)
    idx = torch.tensor([3], device=DEV, dtype=torch.int32)
    q, k, v = x["q"].view(B, 1, H, K), x["k"].view(B, 1, H, K), x["v"].view(B, 1, HV, V)
    g, b = x["a"].view(B, 1, HV), x["b"].view(B, 1, HV)
    args = (q, k, v, g, b, K ** -0.5, pool, False, True, True, x["A_log"], x["dt_bias"], True,
            False, True, None, idx, None, True)

    def via_gdn():
        return gdn.fused_recurrent_gated_delta_rule(
            q, k, v, g, b, None, pool, False, True, True, x["A_log"], x["dt_bias"], True, False,
            True, None, ssm_state_indices=idx, inplace_final_state=True)

    via_gdn()
    meta = gdn.explain("fused_recurrent_gated_delta_rule", q, k, v, g, b, None, pool, False,
                       True, True, x["A_log"], x["dt_bias"], True, False, True, None,
                       ssm_state_indices=idx, inplace_final_state=True).meta
    cfg = cuda_configs.recurrent_config(meta.probe, True, torch.float32, K, V, B * HV)
    o = torch.empty_like(v)

    def launcher_only():
        rec.launch_recurrent(
            q, k, v, o, config=cfg, N=B, T=1, H=H, HV=HV, K=K, V=V, scale=K ** -0.5,
            q_strides=(H * K, H * K, K), k_strides=(H * K, H * K, K),
            v_strides=(HV * V, HV * V, V), o_strides=(HV * V, HV * V, V), g=g,
            gate_mode=rec.GATE_RAW, A_log=x["A_log"], dt_bias=x["dt_bias"], beta=b,
            beta_mode=rec.BETA_SIGMOID, l2norm=True, state_v_first=True, h_src=pool,
            h_dst=pool, idx=idx, idx_mode=rec.IDX_POOL, dst_mode=rec.DST_INPLACE)

    def launcher_alloc():
        torch.empty_like(v)
        launcher_only()

    from gdn_dispatch.backends.triton_common import launch

    row = dict(gdn_us=eager_us(via_gdn, n=500), impl_us=eager_us(
        lambda: decode.fused_recurrent_gated_delta_rule(*args, meta=meta), n=500),
        launcher_alloc_us=eager_us(launcher_alloc, n=500),
        launcher_us=eager_us(launcher_only, n=500))
    launch.set_fast_launch(False)
    row["gdn_plain_launch_us"] = eager_us(via_gdn, n=500)
    row["launcher_plain_launch_us"] = eager_us(launcher_only, n=500)
    launch.set_fast_launch(True)
    row["empty_like_us"] = eager_us(lambda: torch.empty_like(v), n=500)
    row["dispatch_overhead_us"] = row["gdn_us"] - row["launcher_alloc_us"]
    row["dispatch_layer_us"] = row["gdn_us"] - row["impl_us"]
    results["dispatch"] = row
    print("dispatch: " + ", ".join(f"{k_}={v_:.2f}" for k_, v_ in row.items()), flush=True)


def packed_vs_chain(results: dict) -> None:
    rows = []
    N = PACKED_N
    for HV in (32,):
        for state_dtype in (torch.float32, torch.bfloat16):
            for v_first in (True, False):
                gen = torch.Generator(device=DEV).manual_seed(1)
                dt = torch.bfloat16
                W = 2 * H * K + HV * V
                qkvz = torch.randn(N, W + HV * V, device=DEV, dtype=dt, generator=gen)
                ba = torch.randn(N, 2 * HV, device=DEV, dtype=dt, generator=gen)
                A_log = torch.randn(HV, device=DEV, generator=gen).abs().log()
                dt_bias = torch.randn(HV, device=DEV, generator=gen)
                shape = (N, HV, V, K) if v_first else (N, HV, K, V)
                pool = (0.1 * torch.randn(*shape, device=DEV, generator=gen)).to(state_dtype)
                idx = torch.arange(N, device=DEV, dtype=torch.int32)
                cu = torch.arange(N + 1, device=DEV, dtype=torch.int32)
                out = torch.empty(N, 1, HV, V, device=DEV, dtype=dt)
                mixed, z, b, a = gdn.fused_qkvzba_split_reshape_cat(qkvz, ba, H, HV, K, V)

                def fused():
                    gdn.fused_recurrent_gated_delta_rule_packed_decode(
                        mixed, a, b, A_log, dt_bias, K ** -0.5, pool, out, idx, True,
                        state_v_first=v_first)

                def sigmoid_update():
                    q = mixed[:, : H * K].view(1, N, H, K)
                    k = mixed[:, H * K: 2 * H * K].view(1, N, H, K)
                    v = mixed[:, 2 * H * K:].view(1, N, HV, V)
                    gdn.fused_sigmoid_gating_delta_rule_update(
                        A_log, a, dt_bias, 1.0, 20.0, q, k, v, b, pool, idx,
                        use_qk_l2norm_in_kernel=True, cu_seqlens=cu, state_v_first=v_first)

                def chain():
                    g, beta = gdn.fused_gdn_gating(A_log, a, b, dt_bias)
                    q = mixed[:, : H * K].contiguous().view(1, N, H, K)
                    k = mixed[:, H * K: 2 * H * K].contiguous().view(1, N, H, K)
                    v = mixed[:, 2 * H * K:].contiguous().view(1, N, HV, V)
                    gdn.fused_recurrent_gated_delta_rule(
                        q, k, v, g, beta, initial_state=pool, use_qk_l2norm_in_kernel=True,
                        state_v_first=v_first, cu_seqlens=cu, ssm_state_indices=idx,
                        inplace_final_state=True)

                def split_then(fn):
                    def run():
                        gdn.fused_qkvzba_split_reshape_cat(qkvz, ba, H, HV, K, V)
                        fn()
                    return run

                row = dict(N=N, HV=HV, state=str(state_dtype)[6:],
                           layout="vk" if v_first else "kv")
                for name, fn in (("packed", fused), ("sigmoid_update", sigmoid_update),
                                 ("chain", chain), ("split+packed", split_then(fused)),
                                 ("split+chain", split_then(chain))):
                    row[name + "_ms"] = graph_ms(lambda _x, fn=fn: fn(), [{}], 64 << 20)
                    row[name + "_eager_us"] = eager_us(fn, n=50, reps=5)
                row["speedup_gpu"] = row["chain_ms"] / row["packed_ms"]
                row["speedup_gpu_with_split"] = row["split+chain_ms"] / row["split+packed_ms"]
                row["speedup_eager"] = row["chain_eager_us"] / row["packed_eager_us"]
                rows.append(row)
                print("packed vs chain: " + json.dumps({k_: (round(v_, 4) if isinstance(v_, float)
                                                              else v_) for k_, v_ in row.items()}),
                      flush=True)
    results["packed_vs_chain"] = rows


_R = rec.RecurrentConfig
_MAXNREG = lambda n: (("maxnreg", n),)  # noqa: E731
SWEEP_CANDIDATES: dict[tuple[int, bool], list[rec.RecurrentConfig]] = {
    # (state bytes, v_first) -> candidate configs; "packed" keeps a 16-bit tile in its dtype
    # "chunk_k": K-first tiles read twice instead of held (two-pass)
    (4, False): [_R(64, 2), _R(32, 2), _R(16, 2), _R(32, 1), _R(16, 1),
                 _R(64, 2, chunk_k=64), _R(64, 2, chunk_k=64, chunk_evict=""),
                 _R(32, 2, chunk_k=128), _R(32, 1, chunk_k=64), _R(64, 4, chunk_k=128)],
    (4, True): [_R(32, 2), _R(16, 2), _R(64, 4), _R(32, 4), _R(32, 4, tiles=2),
                _R(16, 2, tiles=2), _R(8, 2), _R(16, 1), _R(8, 1)],
    (2, False): [_R(32, 2), _R(32, 1, packed=True, options=_MAXNREG(200)),
                 _R(32, 1, packed=True, options=_MAXNREG(200), evict="evict_first"),
                 _R(64, 1, chunk_k=64, sub_bv=16), _R(64, 1, chunk_k=64, sub_bv=16, chunk_evict=""),
                 _R(64, 1, chunk_k=64, sub_bv=16, evict="evict_first"),
                 _R(64, 2, chunk_k=64), _R(32, 1, chunk_k=64), _R(32, 2, chunk_k=128),
                 _R(32, 1, chunk_k=64, chunk_evict="")],
    (2, True): [_R(32, 2), _R(64, 2), _R(16, 1),
                _R(16, 1, packed=True, options=_MAXNREG(104)),
                _R(16, 1, packed=True, options=_MAXNREG(96)),
                _R(16, 1, packed=True, options=_MAXNREG(104), evict="evict_first"),
                _R(16, 1, packed=True), _R(8, 1, packed=True),
                _R(32, 1, packed=True, options=_MAXNREG(168))],
}
SWEEP_BUCKET = {256: "large", 32: "medium", 8: "small"}


def _cfg_text(cfg: rec.RecurrentConfig) -> str:
    """Short text of a recurrent config: BV=32 w1 tiles=1 [packed] [maxnreg=200] [evict]."""
    out = f"BV={cfg.BV} w{cfg.num_warps} tiles={cfg.tiles}"
    if cfg.chunk_k:
        out += f" two-pass chunk_k={cfg.chunk_k} {cfg.chunk_evict or 'no-hint'}"
    if cfg.packed:
        out += " packed" + (f" sub_bv={cfg.sub_bv}" if cfg.sub_bv else "")
    out += "".join(f" {name}={value}" for name, value in cfg.options)
    return out + (f" {cfg.evict}" if cfg.evict else "")


def config_sweep(copy_bw: float, results: dict, deadline: float) -> None:
    """Time candidate configs through the launcher; install each bucket's best into the
    CUDA config table (so the tables below use them) and record the choice."""
    rows, chosen = [], {}
    for state_dtype in (torch.float32, torch.bfloat16):
        for v_first in (False, True):
            for B in SWEEP_BATCHES:
                HV = 32
                sbytes = B * HV * K * V * state_dtype.itemsize
                rot = Rotating(lambda i: decode_inputs(B, HV, state_dtype, v_first, i),
                               sbytes + io_bytes(B, HV))
                out_state = torch.empty_like(rot.sets[0]["h0"])
                o = torch.empty(1, B, HV, V, device=DEV, dtype=torch.bfloat16)
                best = None
                for cfg in SWEEP_CANDIDATES[(state_dtype.itemsize, v_first)]:
                    if time.time() > deadline:
                        print("sweep: deadline reached", flush=True)
                        break

                    def run(x):
                        rec.launch_recurrent(
                            x["q"], x["k"], x["v"], o, config=cfg, N=B, T=B, H=H, HV=HV,
                            K=K, V=V, scale=K ** -0.5, q_strides=(0, H * K, K),
                            k_strides=(0, H * K, K), v_strides=(0, HV * V, V),
                            o_strides=(0, HV * V, V), g=x["a"], gate_mode=rec.GATE_RAW,
                            A_log=x["A_log"], dt_bias=x["dt_bias"], beta=x["b"],
                            beta_mode=rec.BETA_SIGMOID, l2norm=True, state_v_first=v_first,
                            cu_seqlens=x["cu"], h_src=x["h0"], h_dst=out_state,
                            dst_mode=rec.DST_NEW)

                    try:
                        ms = graph_ms(run, rot.sets, 0)
                    except Exception as exc:
                        rows.append(dict(state=str(state_dtype)[6:], B=B, config=_cfg_text(cfg),
                                         error=repr(exc)[:200]))
                        continue
                    frac = (2 * sbytes + io_bytes(B, HV)) / (ms * 1e-3) / copy_bw
                    rows.append(dict(state=str(state_dtype)[6:], layout="vk" if v_first else "kv",
                                     B=B, config=_cfg_text(cfg), BV=cfg.BV, warps=cfg.num_warps,
                                     tiles=cfg.tiles, ms=ms, frac=frac))
                    print(f"sweep {rows[-1]['state']} {rows[-1]['layout']} B={B} "
                          f"{_cfg_text(cfg)}: {ms*1e3:.1f} us {frac:.3f}", flush=True)
                    if best is None or ms < best[0]:
                        best = (ms, cfg)
                rot = None
                if best is not None and B in SWEEP_BUCKET:
                    table = cuda_configs.RECURRENT_TABLE[("sm_90", v_first, state_dtype.itemsize)]
                    table[SWEEP_BUCKET[B]] = best[1]
                    chosen[f"{str(state_dtype)[6:]}/{'vk' if v_first else 'kv'}/"
                           f"{SWEEP_BUCKET[B]}"] = repr(best[1])
    cuda_configs.clear_config_cache()
    results["sweep"] = rows
    results["chosen_configs"] = chosen
    print("chosen configs: " + json.dumps(chosen, indent=1), flush=True)


def results_header() -> tuple[dict[str, Any], float, Any]:
    """(results dict with device / versions / date / copy bandwidth, copy bytes per second,
    fla's op or None); prints the header line."""
    props = torch.cuda.get_device_properties(0)
    results: dict[str, Any] = dict(device=props.name, torch=torch.__version__,
                                   triton=triton.__version__,
                                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    fla_fn = _fla()
    if fla_fn is not None:
        import fla
        results["fla"] = getattr(fla, "__version__", "?")
    bw = copy_bandwidth()
    results["copy_GBps"] = bw / 1e9
    print(f"{props.name} torch {torch.__version__} triton {triton.__version__}; "
          f"copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    return results, bw, fla_fn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_decode.json")
    ap.add_argument("--sections", default="sweep,roofline,eager,dispatch,packed")
    ap.add_argument("--sweep-budget-s", type=float, default=120.0)
    ap.add_argument("--rounds", type=int, default=3,
                    help="roofline: interleaved rounds of ours / fla per row (median)")
    args = ap.parse_args()
    global ROOFLINE_ROUNDS
    ROOFLINE_ROUNDS = max(1, args.rounds)
    start = time.time()
    results, bw, fla_fn = results_header()
    sections = args.sections.split(",")
    steps = [("sweep", lambda: config_sweep(bw, results, start + args.sweep_budget_s)),
             ("roofline", lambda: roofline_table(bw, fla_fn, results)),
             ("eager", lambda: eager_latency(fla_fn, results)),
             ("dispatch", lambda: dispatch_overhead(results)),
             ("packed", lambda: packed_vs_chain(results))]
    for name, step in steps:
        if name not in sections:
            continue
        try:
            step()
        except Exception:
            traceback.print_exc()
            results.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    from gdn_dispatch.backends.triton_common import launch

    results["fast_launch_enabled_at_end"] = launch.fast_launch_enabled()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"fast launch enabled at end: {launch.fast_launch_enabled()}", flush=True)
    print(f"total {time.time() - start:.0f} s; wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
