"""Host (Python) overhead of the Triton-CUDA hot paths: decode and prefill, eager.

Per-call host wall clock (median of ``reps`` runs of ``n`` back-to-back calls, synced at the
end) of:

- decode, B = 1 and 8 (interleaved rounds, differences taken within a round), Qwen3-Next heads (H=16, HV=32, K=V=128, bf16), the issue's flags
  (gating and beta sigmoid in kernel, l2norm, ``cu_seqlens=arange``, fp32 initial state,
  ``output_final_state=True``), both state layouts, through ``gdn.fused_recurrent_gated_delta_rule``;
  the same call through the backend implementation (decision cached by the dispatcher), and
  the backend's launch plan alone (outputs preallocated): ``gdn - launcher`` is the dispatch
  overhead of issue 7; also the pool-in-place call (B = 1) and Triton's per-call
  ``launch_recurrent`` path (what the launcher cost before launch plans);
- packed decode (op 4), B = 1 and 8, through ``gdn``;
- prefill (op 1) through ``gdn``: 1 x 4096 and 1 x 64 tokens (varlen, bf16, l2norm, fp32
  states); "issue" is the host time to enqueue one call (no sync inside the loop), "wall" the
  synced time per call.

Plus a cProfile of 300 B = 1 decode calls.  Usage:
``python benchmarks/bench_host_overhead.py [--json out.json]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

import gdn_dispatch as gdn
from gdn_dispatch import dispatch

H, HV, K, V = 16, 32, 128, 128
DEV = "cuda"
_SMOKE = False  # --smoke: CPU tensors under TRITON_INTERPRET=1, a few calls (checks the script)


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def eager_us(fn: Callable[[], Any], n: int = 300, reps: int = 7) -> float:
    """Median host wall time per call of ``n`` back-to-back calls (synced at the end)."""
    if _SMOKE:
        n, reps = 2, 1
    for _ in range(2 if _SMOKE else 20):
        fn()
    _sync()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        _sync()
        out.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(out)


def issue_us(fn: Callable[[], Any], n: int = 50, reps: int = 7) -> float:
    """Median host time per call to enqueue ``n`` calls (the GPU may still be running)."""
    if _SMOKE:
        n, reps = 2, 1
    fn()
    _sync()
    out = []
    for _ in range(reps):
        _sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t) / n * 1e6)
        _sync()
    return statistics.median(out)


def decode_inputs(B: int, v_first: bool, seed: int = 0) -> dict:
    gen = torch.Generator(device=DEV).manual_seed(seed)
    bf = torch.bfloat16

    def r(*shape, dtype=bf):
        return torch.randn(*shape, device=DEV, dtype=dtype, generator=gen)

    state = (B, HV, V, K) if v_first else (B, HV, K, V)
    return dict(q=r(1, B, H, K), k=r(1, B, H, K), v=r(1, B, HV, V), a=r(1, B, HV),
                b=r(1, B, HV), A_log=r(HV, dtype=torch.float32),
                dt_bias=r(HV, dtype=torch.float32), h0=r(*state, dtype=torch.float32) * 0.1,
                cu=torch.arange(B + 1, device=DEV, dtype=torch.int32))


def paired_us(fns: dict[str, Callable[[], Any]], n: int = 200,
              rounds: int = 21) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Interleaved timing: each round runs ``n`` back-to-back calls of every function in turn
    (synced before and after each block).  Returns the median us per call of each function
    and the per-round figures, so differences can be taken within a round (the lent
    machine's host speed drifts by 2x between minutes: sequential blocks are not comparable).
    """
    if _SMOKE:
        n, rounds = 2, 1
    for fn in fns.values():
        for _ in range(2 if _SMOKE else 20):
            fn()
    _sync()
    per_round = []
    for _ in range(rounds):
        row = {}
        for name, fn in fns.items():
            _sync()
            t = time.perf_counter()
            for _ in range(n):
                fn()
            _sync()
            row[name] = (time.perf_counter() - t) / n * 1e6
        per_round.append(row)
    medians = {name: statistics.median(r[name] for r in per_round) for name in fns}
    return medians, per_round


def _paired_diff(per_round: list[dict[str, float]], a: str, b: str) -> float:
    """Median over rounds of (a - b) within each round."""
    return statistics.median(r[a] - r[b] for r in per_round)


def _decision(op: str) -> tuple[Callable[..., Any], Any]:
    """The most recently cached (impl, meta) of ``op``."""
    hits = [v for k, v in dispatch._DECISIONS.items() if k[0] == op]
    return hits[-1]


def decode_rows(results: dict) -> None:
    rows = []
    for B in (1, 8):
        for v_first in (True, False):
            x = decode_inputs(B, v_first)
            args = (x["q"], x["k"], x["v"], x["a"], x["b"], None, x["h0"], True, True, True,
                    x["A_log"], x["dt_bias"], True, False, v_first, x["cu"])

            def via_gdn(args=args):
                return gdn.fused_recurrent_gated_delta_rule(*args)

            dispatch.clear_decision_cache()
            via_gdn()
            impl, meta = _decision("fused_recurrent_gated_delta_rule")
            full = (*args[:5], K ** -0.5, *args[6:], None, None, False)
            plan = meta.scratch["triton_cuda.recurrent"]
            o = torch.empty(plan.o_shape, dtype=plan.o_dtype, device=DEV)
            h_dst = torch.empty(plan.state_shape, dtype=plan.state_dtype, device=DEV)

            def launcher(x=x, o=o, h_dst=h_dst, plan=plan):
                plan.launch.launch(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"],
                                   x["dt_bias"], o, x["h0"], h_dst, x["cu"], None, None)

            def launcher_alloc(x=x, plan=plan):  # what a caller of the launcher writes
                o = torch.empty(plan.o_shape, dtype=plan.o_dtype, device=DEV)
                h_dst = torch.empty(plan.state_shape, dtype=plan.state_dtype, device=DEV)
                plan.launch.launch(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"],
                                   x["dt_bias"], o, x["h0"], h_dst, x["cu"], None, None)
                return o, h_dst

            med, per_round = paired_us(dict(
                gdn=via_gdn, impl=lambda full=full, impl=impl, meta=meta: impl(*full, meta=meta),
                launcher=launcher, launcher_alloc=launcher_alloc))
            row = dict(B=B, layout="vk" if v_first else "kv", gdn_us=med["gdn"],
                       impl_us=med["impl"], launcher_us=med["launcher"],
                       launcher_alloc_us=med["launcher_alloc"])
            # paired (same round) differences: the dispatch layer, and gdn against the
            # backend's launch plan called directly with the caller allocating the outputs
            row["dispatch_us"] = _paired_diff(per_round, "gdn", "impl")
            row["gdn_minus_launcher_alloc_us"] = _paired_diff(per_round, "gdn", "launcher_alloc")
            row["gdn_minus_launcher_us"] = _paired_diff(per_round, "gdn", "launcher")
            rows.append(row)
            print(f"decode B={B} {row['layout']}: gdn {row['gdn_us']:.1f} us, impl "
                  f"{row['impl_us']:.1f}, launch plan {row['launcher_us']:.1f} (with "
                  f"torch.empty outputs {row['launcher_alloc_us']:.1f}); paired: dispatch layer "
                  f"{row['dispatch_us']:.1f}, gdn - launcher with outputs "
                  f"{row['gdn_minus_launcher_alloc_us']:.1f}, gdn - launcher "
                  f"{row['gdn_minus_launcher_us']:.1f}", flush=True)
    results["decode"] = rows


def pool_row(results: dict) -> None:
    """B = 1, pool in place (the row of docs/performance.md's dispatch bullet)."""
    from gdn_dispatch.backends.triton_common import recurrent as rec
    from gdn_dispatch.backends.triton_cuda import configs

    x = decode_inputs(1, True)
    pool = torch.randn(8, HV, V, K, device=DEV)
    idx = torch.tensor([3], device=DEV, dtype=torch.int32)

    def via_gdn():
        return gdn.fused_recurrent_gated_delta_rule(
            x["q"], x["k"], x["v"], x["a"], x["b"], None, pool, False, True, True, x["A_log"],
            x["dt_bias"], True, False, True, None, ssm_state_indices=idx,
            inplace_final_state=True)

    dispatch.clear_decision_cache()
    via_gdn()
    impl, meta = _decision("fused_recurrent_gated_delta_rule")
    plan = meta.scratch["triton_cuda.recurrent"]
    o = torch.empty_like(x["v"])
    cfg = configs.recurrent_config(meta.probe, True, torch.float32, K, V, HV)

    def planned():
        plan.launch.launch(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"],
                           o, pool, pool, None, idx, None)

    def per_call_launcher():  # launch_recurrent: the CachedLauncher path, key rebuilt per call
        rec.launch_recurrent(
            x["q"], x["k"], x["v"], o, config=cfg, N=1, T=1, H=H, HV=HV, K=K, V=V,
            scale=K ** -0.5, q_strides=x["q"].stride()[:3], k_strides=x["k"].stride()[:3],
            v_strides=x["v"].stride()[:3], o_strides=o.stride()[:3], g=x["a"],
            gate_mode=rec.GATE_RAW, A_log=x["A_log"], dt_bias=x["dt_bias"], beta=x["b"],
            beta_mode=rec.BETA_SIGMOID, l2norm=True, state_v_first=True, h_src=pool,
            h_dst=pool, idx=idx, idx_mode=rec.IDX_POOL, dst_mode=rec.DST_INPLACE)

    row = dict(gdn_us=eager_us(via_gdn), launch_plan_us=eager_us(planned),
               launch_recurrent_us=eager_us(per_call_launcher),
               empty_like_us=eager_us(lambda: torch.empty_like(x["v"])))
    row["gdn_minus_launcher_us"] = row["gdn_us"] - row["launch_plan_us"]
    results["pool_b1"] = row
    print("pool B=1 in place: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)


def packed_rows(results: dict) -> None:
    rows = []
    for B in (1, 8):
        gen = torch.Generator(device=DEV).manual_seed(1)
        mixed = torch.randn(B, 2 * H * K + HV * V, device=DEV, dtype=torch.bfloat16,
                            generator=gen)
        a = torch.randn(B, HV, device=DEV, dtype=torch.bfloat16, generator=gen)
        b = torch.randn(B, HV, device=DEV, dtype=torch.bfloat16, generator=gen)
        A_log = torch.randn(HV, device=DEV, generator=gen)
        dt_bias = torch.randn(HV, device=DEV, generator=gen)
        pool = torch.randn(B + 4, HV, V, K, device=DEV, generator=gen) * 0.1
        out = torch.empty(B, 1, HV, V, device=DEV, dtype=torch.bfloat16)
        idx = torch.arange(B, device=DEV, dtype=torch.int32)

        def via_gdn(mixed=mixed, a=a, b=b, A_log=A_log, dt_bias=dt_bias, pool=pool, out=out,
                    idx=idx):
            return gdn.fused_recurrent_gated_delta_rule_packed_decode(
                mixed, a, b, A_log, dt_bias, None, pool, out, idx, True)

        row = dict(B=B, gdn_us=eager_us(via_gdn))
        rows.append(row)
        print(f"packed decode B={B}: gdn {row['gdn_us']:.1f} us", flush=True)
    results["packed"] = rows


def prefill_rows(results: dict) -> None:
    import torch.nn.functional as F

    rows = []
    for length in ((128, 64) if _SMOKE else (4096, 64)):
        gen = torch.Generator(device=DEV).manual_seed(2)
        q = torch.randn(1, length, H, K, device=DEV, dtype=torch.bfloat16, generator=gen)
        k = torch.randn(1, length, H, K, device=DEV, dtype=torch.bfloat16, generator=gen)
        v = torch.randn(1, length, HV, V, device=DEV, dtype=torch.bfloat16, generator=gen)
        g = F.logsigmoid(torch.randn(1, length, HV, device=DEV, generator=gen) + 2.0)
        beta = torch.rand(1, length, HV, device=DEV, generator=gen).to(torch.bfloat16)
        h0 = torch.randn(1, HV, K, V, device=DEV, generator=gen) * 0.1
        cu = torch.tensor([0, length], device=DEV, dtype=torch.int64)

        def via_gdn(q=q, k=k, v=v, g=g, beta=beta, h0=h0, cu=cu):
            return gdn.chunk_gated_delta_rule(q, k, v, g, beta, None, h0, True, True,
                                              cu_seqlens=cu)

        with torch.no_grad():
            row = dict(N=1, T=length, issue_us=issue_us(via_gdn),
                       wall_us=eager_us(via_gdn, n=50))
        rows.append(row)
        print(f"prefill 1x{length}: host issue {row['issue_us']:.1f} us/call, wall "
              f"{row['wall_us']:.1f} us/call", flush=True)
    results["prefill"] = rows


def profile_decode(results: dict) -> None:
    x = decode_inputs(1, True)

    def call():
        return gdn.fused_recurrent_gated_delta_rule(
            x["q"], x["k"], x["v"], x["a"], x["b"], None, x["h0"], True, True, True,
            x["A_log"], x["dt_bias"], True, False, True, x["cu"])

    calls = 3 if _SMOKE else 300
    for _ in range(calls // 10):
        call()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        call()
    prof.disable()
    _sync()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
    text = buf.getvalue()
    results["profile"] = text[-5000:]
    print(text[-3500:], flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="CPU tensors under TRITON_INTERPRET=1, a few calls (checks the script)")
    opts = ap.parse_args()
    global DEV, _SMOKE
    if opts.smoke:
        DEV, _SMOKE = "cpu", True
        gdn_dispatch_ctx = gdn.use_backend("triton_cuda")
        gdn_dispatch_ctx.__enter__()
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    import triton

    name = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (interpreter smoke test)"
    results: dict = dict(device=name, torch=torch.__version__,
                         triton=triton.__version__,
                         date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(results, flush=True)
    for section in (decode_rows, pool_row, packed_rows, prefill_rows, profile_decode):
        try:
            section(results)
        except Exception:  # keep the other sections
            traceback.print_exc()
            results.setdefault("errors", []).append(section.__name__)
    if _SMOKE and results.get("errors"):
        return 1
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
