"""Prefill benchmark: ``chunk_gated_delta_rule`` of gdn_dispatch (triton_cuda) against peers.

Peers run only when importable: flash-linear-attention (``fla``) and FlashQLA
(``flash_qla``).  Every row uses the same inputs for every implementation: H=16, HV=32,
K=V=128, bf16, l2norm in kernel, fp32 initial and final state, random non-zero data, inputs
rotated over several sets so that the working set exceeds L2.  Times are medians of
``triton.testing.do_bench`` under ``torch.no_grad()``.

FLOP count (stated once, used for every implementation): the chunked WY algorithm with chunk
C = 64, per token and value head ``2 C (3K + 2V) + 6 K V`` (K K^T, Q K^T, w, u, the intra-chunk
output, and the three state products), i.e. 180 224 FLOP for K = V = 128.  Bytes floor: q, k,
v read once, o written once, g and beta read, initial state read and final state written.
Floors measured in the same run: bf16 matmul rate (8192^3 ``torch.matmul``) and copy
bandwidth (1 GiB ``copy_``).

Usage: ``python benchmarks/bench_prefill.py [--sweep] [--profile] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

H, HV, K, V = 16, 32, 128, 128
CHUNK = 64
SHAPES = [(1, 4096), (4, 4096), (4, 16384), (32, 512)]
FLA_ISSUE_MS = {(1, 4096): 1.117, (4, 4096): 1.417, (4, 16384): 4.821, (32, 512): 1.296}
FLASHQLA_ISSUE_MS = {(1, 4096): 0.531, (4, 4096): 0.890, (4, 16384): 1.597, (32, 512): 0.502}


def flops(n: int, length: int) -> float:
    """FLOP of one call by the stated count."""
    per_token_head = 2 * CHUNK * (3 * K + 2 * V) + 6 * K * V
    return float(n * length * HV * per_token_head)


def bytes_floor(n: int, length: int) -> float:
    tokens = n * length
    per_token = (2 * H * K + 2 * HV * V) * 2 + HV * 4 + HV * 2
    return float(tokens * per_token + 2 * n * HV * K * V * 4)


def make_inputs(n: int, length: int, varlen: bool, seed: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    B, T = (1, n * length) if varlen else (n, length)
    q = torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(B, T, HV, V, device="cuda", dtype=torch.bfloat16, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, HV, device="cuda", generator=gen) + 2.0)
    beta = torch.rand(B, T, HV, device="cuda", generator=gen).to(torch.bfloat16)
    h0 = torch.randn(n, HV, K, V, device="cuda", generator=gen) * 0.1
    cu = (torch.arange(n + 1, device="cuda", dtype=torch.int64) * length) if varlen else None
    return dict(q=q, k=k, v=v, g=g, beta=beta, h0=h0, cu=cu)


def input_sets(n: int, length: int, varlen: bool) -> list[dict]:
    one = make_inputs(n, length, varlen, 0)
    size = sum(t.numel() * t.element_size() for t in one.values() if t is not None)
    count = max(2, min(6, math.ceil(150e6 / size)))
    return [one] + [make_inputs(n, length, varlen, s) for s in range(1, count)]


def ours(x: dict):
    import gdn_dispatch as gdn

    return gdn.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"],
                                      initial_state=x["h0"], output_final_state=True,
                                      use_qk_l2norm_in_kernel=True, cu_seqlens=x["cu"])


def ours_with_config(cfg):
    from gdn_dispatch.backends.triton_common.chunk_pipeline import run_chunk_pipeline

    def fn(x: dict):
        return run_chunk_pipeline(x["q"], x["k"], x["v"], x["g"], x["beta"], K ** -0.5,
                                  x["h0"], True, True, False, False, False, x["cu"], False, None,
                                  None, inter_dtype=torch.bfloat16, config=cfg)
    return fn


def fla_fn():
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
    except Exception as e:  # noqa: BLE001
        print(f"# fla not importable: {e!r}")
        return None

    def fn(x: dict):
        return fla_chunk(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["h0"],
                         output_final_state=True, use_qk_l2norm_in_kernel=True,
                         cu_seqlens=x["cu"])
    return fn


def flashqla_fn():
    try:
        import flash_qla  # noqa: F401
    except Exception as e:  # noqa: BLE001
        print(f"# FlashQLA not importable: {e!r}")
        return None
    fn_ = getattr(flash_qla, "chunk_gated_delta_rule", None)
    if fn_ is None:
        print("# FlashQLA has no chunk_gated_delta_rule")
        return None

    def fn(x: dict):
        return fn_(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["h0"],
                   output_final_state=True, use_qk_l2norm_in_kernel=True, cu_seqlens=x["cu"])
    return fn


def bench(fn, sets: list[dict]) -> float:
    import triton

    state = {"i": 0}

    def call():
        x = sets[state["i"] % len(sets)]
        state["i"] += 1
        fn(x)

    with torch.no_grad():
        call()
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(call, warmup=50, rep=300, return_mode="median"))


def floors() -> tuple[float, float]:
    """(bf16 matmul TFLOP/s, copy GB/s) measured now."""
    import triton

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, return_mode="median")
    tflops = 2 * 8192 ** 3 / (ms * 1e-3) / 1e12
    x = torch.empty(1 << 28, device="cuda", dtype=torch.float32).normal_()
    y = torch.empty_like(x)
    ms_c = triton.testing.do_bench(lambda: y.copy_(x), return_mode="median")
    gbs = 2 * x.numel() * 4 / (ms_c * 1e-3) / 1e9
    return tflops, gbs


def profile(fn, sets: list[dict], label: str) -> None:
    """Per-kernel device time of one call (average of 5) with torch.profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprof

    with torch.no_grad():
        fn(sets[0])
        torch.cuda.synchronize()
        with tprof(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(5):
                fn(sets[i % len(sets)])
            torch.cuda.synchronize()
    rows = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t > 0:
            rows[ev.key] = t / 5 / 1000.0
    print(f"# profile {label}: " + ", ".join(f"{k[:48]}={v:.3f}ms" for k, v in
                                             sorted(rows.items(), key=lambda kv: -kv[1])[:8]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", action="store_true", help="also time state-stage BV choices")
    ap.add_argument("--profile", action="store_true", help="per-kernel breakdown")
    ap.add_argument("--dense", action="store_true", help="B x T inputs instead of cu_seqlens")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import triton

    import gdn_dispatch as gdn

    dev = torch.cuda.get_device_name()
    print(f"# device {dev}; torch {torch.__version__}; triton {triton.__version__}")
    mm, bw = floors()
    print(f"# floors: bf16 matmul {mm:.0f} TFLOP/s, copy {bw:.0f} GB/s")
    fla = fla_fn()
    fqla = flashqla_fn()
    varlen = not args.dense
    results = []
    for n, length in SHAPES:
        t0 = time.time()
        sets = input_sets(n, length, varlen)
        row: dict = {"shape": f"{n}x{length}", "varlen": varlen}
        with gdn.use_backend("triton_cuda"):
            row["ours_ms"] = bench(ours, sets)
        if fla is not None:
            row["fla_ms"] = bench(fla, sets)
        if fqla is not None:
            try:
                row["flashqla_ms"] = bench(fqla, sets)
            except Exception as e:  # noqa: BLE001
                print(f"# FlashQLA failed: {e!r}")
        if fla is not None:
            with torch.no_grad(), gdn.use_backend("triton_cuda"):
                o1, h1 = ours(sets[0])
                o2, h2 = fla(sets[0])
            row["err_o_vs_fla"] = ((o1.float() - o2.float()).norm() / o2.float().norm()).item()
            row["err_h_vs_fla"] = ((h1 - h2).norm() / h2.norm()).item()
        if args.sweep:
            import dataclasses

            from gdn_dispatch.backends.triton_common.chunk_pipeline import config_for
            base = config_for("sm_90", K, V)
            variants = {f"bv{bv}": dataclasses.replace(base, state_bv=bv) for bv in (16, 32, 64)}
            variants["bv64_s3"] = dataclasses.replace(base, state_bv=64, state_stages_small=3)
            variants["intra_w8"] = dataclasses.replace(base, intra_warps_small=8)
            variants["vt_bv64"] = dataclasses.replace(base, state_transposed=True, state_bv=64)
            variants["vt_bv128_w8"] = dataclasses.replace(base, state_transposed=True,
                                                          state_bv=128, state_warps_small=8,
                                                          state_bv_max=128)
            for name, cfg in variants.items():
                try:
                    row[name + "_ms"] = bench(ours_with_config(cfg), sets)
                except Exception as e:  # noqa: BLE001
                    row[name + "_ms"] = f"error {type(e).__name__}: {str(e)[:80]}"
        with torch.no_grad(), gdn.use_backend("triton_cuda"):
            torch.cuda.synchronize()
            t_host = time.perf_counter()
            for i in range(10):
                ours(sets[i % len(sets)])
            row["host_us_per_call"] = (time.perf_counter() - t_host) / 10 * 1e6
            torch.cuda.synchronize()
        fl = flops(n, length)
        floor_ms = max(fl / (mm * 1e12), bytes_floor(n, length) / (bw * 1e9)) * 1e3
        row["tflops"] = fl / (row["ours_ms"] * 1e-3) / 1e12
        row["floor_ms"] = floor_ms
        row["frac_of_floor"] = floor_ms / row["ours_ms"]
        if "fla_ms" in row:
            row["speedup_vs_fla"] = row["fla_ms"] / row["ours_ms"]
        print(json.dumps(row), f"({time.time() - t0:.1f}s)", flush=True)
        if args.profile:
            with gdn.use_backend("triton_cuda"):
                profile(ours, sets, f"ours {n}x{length}")
            if fla is not None:
                profile(fla, sets, f"fla {n}x{length}")
        results.append(row)
        del sets
        torch.cuda.empty_cache()

    print("\n| shape | ours ms | fla ms | speedup vs fla | FlashQLA ms | ours TFLOP/s "
          "| floor ms | fraction of floor |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        fla_ms = f"{r['fla_ms']:.3f}" if "fla_ms" in r else "n/a"
        sp = f"{r['speedup_vs_fla']:.2f}x" if "speedup_vs_fla" in r else "n/a"
        fq = f"{r['flashqla_ms']:.3f}" if "flashqla_ms" in r else "n/a"
        print(f"| {r['shape']} | {r['ours_ms']:.3f} | {fla_ms} | {sp} | {fq} | "
              f"{r['tflops']:.1f} | {r['floor_ms']:.3f} | {r['frac_of_floor']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "triton": triton.__version__,
                       "matmul_tflops": mm, "copy_gbs": bw, "rows": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
