"""The Triton-ROCm prefill (variants ``opt`` and ``opt_vk``) on an NVIDIA GPU under the forced
backend, against the Triton-CUDA prefill (and flash-linear-attention when importable) on the
same inputs.

Shapes, inputs and timing are those of ``bench_prefill.py`` (H=16, HV=32, K=V=128, bf16,
l2norm in kernel, fp32 initial/final state, varlen batches, inputs rotated past L2, medians
of ``triton.testing.do_bench``).  Every timed triton_rocm call is also checked against the
Triton-CUDA result on the same inputs (relative error of the output and final state).

- ``--profile``: per-kernel device times (microseconds per call, ``torch.profiler``).
- ``--sweep``: also time a few prefill configs (split / fused scan, V blocks, warps), each
  in its own process so that a kernel fault in one config cannot end the run.

Usage: ``python benchmarks/bench_rocm_prefill.py [--profile] [--sweep] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_prefill import SHAPES, bench, fla_fn, input_sets  # noqa: E402

# short kernel names for the per-kernel table
_KERNELS = {
    "gate_cumsum_kkt_kernel": "kkt", "solve_wu_kernel": "solve_wu",
    "state_recurrence_kernel": "state", "output_kernel": "output",
    "chunk_gate_kkt_solve_kernel": "kkt_solve", "chunk_output_operator_kernel": "operator",
    "chunk_state_output_kernel": "state_output", "chunk_state_output_vt_kernel": "state_output",
}


def gdn_fn(backend: str, v_first: bool):
    import gdn_dispatch as gdn

    def fn(x: dict):
        with gdn.use_backend(backend):
            return gdn.chunk_gated_delta_rule(
                x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["h0"],
                output_final_state=True, use_qk_l2norm_in_kernel=True,
                state_v_first=v_first, cu_seqlens=x["cu"])
    return fn


def timed(fn, sets) -> float | None:
    try:
        return bench(fn, sets)
    except Exception as e:  # noqa: BLE001
        print(f"#   failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        return None


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(fn, ref, x) -> str:
    """``o`` / final-state relative errors of ``fn`` against ``ref`` on inputs ``x``."""
    with torch.no_grad():
        o, h = fn(x)
        ro, rh = ref(x)
        torch.cuda.synchronize()
    return f"o {rel(o, ro):.1e} h {rel(h, rh):.1e}"


def kernel_times(fn, x, n: int = 5) -> dict[str, float]:
    """Device microseconds per call of each kernel ``fn`` launches."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                fn(x)
            torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        name = next((v for k, v in _KERNELS.items() if e.key.startswith(k)), None)
        if t and name:
            out[name] = round(out.get(name, 0.0) + t / n, 1)
    out["sum"] = round(sum(out.values()), 1)
    return out


def sweep_configs() -> dict:
    """label -> config of the sweep (variations of the arch's table)."""
    from gdn_dispatch.backends.triton_rocm.configs import KernelLaunch, prefill_config

    import gdn_dispatch as gdn

    base = prefill_config(gdn.probe_device())
    split = dataclasses.replace(base, fuse_output="never")
    fused = dataclasses.replace(base, fuse_output="always")
    return {
        "split": split,
        "split BV=32": dataclasses.replace(split, state_bv=32),
        "fused": fused,
        "fused BV=32": dataclasses.replace(fused, fused_bv=32),
        "fused ppc=3": dataclasses.replace(fused, programs_per_cu=3.0),
        "fused w8": dataclasses.replace(fused, fused=KernelLaunch(8, 2)),
        "fused w4": dataclasses.replace(fused, scan_warps_wide=None),
        "kkt w8": dataclasses.replace(base, kkt=KernelLaunch(8, 1)),
    }


# configs the sweep runs by default (``--configs`` picks others by label)
_DEFAULT_SWEEP = ("split", "fused w4", "kkt w8")


def run_sweep_one(label: str, variants: tuple[bool, ...]) -> list[dict]:
    """Time one sweep config on every shape (run in a child process)."""
    from gdn_dispatch.backends.triton_rocm.chunk import override_config

    cfg = sweep_configs()[label]
    rows = []
    for n, length in SHAPES:
        sets = input_sets(n, length, True)
        row: dict = {"shape": f"{n}x{length}", "config": label}
        for v_first in variants:
            name = "opt_vk" if v_first else "opt"
            fn = gdn_fn("triton_rocm", v_first)
            with override_config(cfg):
                row[name] = timed(fn, sets)
                if row[name] is not None:
                    row[name + "_check"] = check(fn, gdn_fn("triton_cuda", v_first), sets[0])
        rows.append(row)
        print(json.dumps(row), flush=True)
        del sets
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--only-sweep", action="store_true",
                    help="skip the default-config table (with --sweep)")
    ap.add_argument("--configs", default=",".join(_DEFAULT_SWEEP),
                    help="comma list of sweep config labels")
    ap.add_argument("--sweep-vk", action="store_true", help="sweep opt_vk too")
    ap.add_argument("--no-fla", action="store_true", help="skip flash-linear-attention")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    variants = (False, True) if args.sweep_vk else (False,)
    if args.sweep_one:
        run_sweep_one(args.sweep_one, variants)
        return 0
    import triton
    from gdn_dispatch.backends.triton_rocm.configs import prefill_config

    import gdn_dispatch as gdn

    probe = gdn.probe_device()
    cfg = prefill_config(probe)
    print(f"# device {torch.cuda.get_device_name()}; torch {torch.__version__}; "
          f"triton {triton.__version__}; config {cfg}", flush=True)
    rows: list[dict] = []

    def dump() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)

    if not args.only_sweep:
        fla = None if args.no_fla else fla_fn()
        for n, length in SHAPES:
            sets = input_sets(n, length, True)
            row: dict = {"shape": f"{n}x{length}"}
            chains = n * 32
            fused = cfg.use_fused(chains, 128, probe.multiprocessors)
            row["scan"] = (f"{'fused' if fused else 'split'} "
                           f"BV={cfg.scan_bv(fused, 128, chains, probe.multiprocessors)}")
            fns = {"rocm_opt": gdn_fn("triton_rocm", False),
                   "rocm_opt_vk": gdn_fn("triton_rocm", True),
                   "cuda_kv": gdn_fn("triton_cuda", False),
                   "cuda_vk": gdn_fn("triton_cuda", True)}
            if fla is not None:
                fns["fla"] = fla
            for name, fn in fns.items():
                row[name] = timed(fn, sets)
            for ours, ref in (("rocm_opt", "cuda_kv"), ("rocm_opt_vk", "cuda_vk")):
                if row.get(ours) and row.get(ref):
                    row[ours + "_vs_cuda"] = round(row[ours] / row[ref], 3)
                if row.get(ours):
                    row[ours + "_check"] = check(fns[ours], fns[ref], sets[0])
            if args.profile:
                for name in ("rocm_opt", "rocm_opt_vk", "cuda_kv", "cuda_vk"):
                    try:
                        row[name + "_us"] = kernel_times(fns[name], sets[0])
                    except Exception as e:  # noqa: BLE001
                        row[name + "_us"] = f"failed: {type(e).__name__}: {str(e)[:100]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
            dump()
            del sets
            torch.cuda.empty_cache()
    if args.sweep:
        for label in args.configs.split(","):
            print(f"# sweep {label}", flush=True)
            cmd = [sys.executable, os.path.abspath(__file__), "--sweep-one", label]
            res = subprocess.run(cmd + (["--sweep-vk"] if args.sweep_vk else []),
                                 capture_output=True, text=True, timeout=300)
            for line in res.stdout.splitlines():
                print(line, flush=True)
                if line.startswith("{"):
                    rows.append(json.loads(line))
            if res.returncode != 0:
                print(f"#   config {label!r} failed (rc {res.returncode}): "
                      f"{res.stderr.strip()[-400:]}", flush=True)
                rows.append({"config": label, "failed": res.stderr.strip()[-400:]})
            dump()
    dump()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
