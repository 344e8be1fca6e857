"""The Triton-ROCm prefill (variants ``opt`` and ``opt_vk``) on an NVIDIA GPU under the forced
backend, against the Triton-CUDA prefill and flash-linear-attention on the same inputs.

Shapes, inputs and timing are those of ``bench_prefill.py`` (H=16, HV=32, K=V=128, bf16,
l2norm in kernel, fp32 initial/final state, varlen batches, inputs rotated past L2, medians
of ``triton.testing.do_bench``).  ``--sweep`` also times a few state-recurrence configs.

Usage: ``python benchmarks/bench_rocm_prefill.py [--sweep] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_prefill import SHAPES, bench, fla_fn, input_sets  # noqa: E402


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
        print(f"#   failed: {type(e).__name__}: {str(e)[:200]}")
        return None


def sweep_configs():
    """(label, config) pairs: the unfused scan + output kernel, and the fused scan."""
    from gdn_dispatch.backends.triton_rocm.configs import KernelLaunch, prefill_config

    base = prefill_config("generic")
    split = dataclasses.replace(base, fuse_output="never")
    fused = dataclasses.replace(base, fuse_output="always")
    yield "split default", split
    yield "split state BV=32 w8 s2", dataclasses.replace(split, state_bv=32)
    yield "split output BV=128 w8", dataclasses.replace(split, output_bv=128)
    yield "fused BV=32 w8 s1", fused
    yield "fused BV=64 w8 s2", dataclasses.replace(fused, fused_bv=64,
                                                   fused=KernelLaunch(8, 2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import triton
    from gdn_dispatch.backends.triton_rocm.chunk import override_config
    from gdn_dispatch.backends.triton_rocm.configs import prefill_config

    import gdn_dispatch as gdn

    print(f"# device {torch.cuda.get_device_name()}; torch {torch.__version__}; "
          f"triton {triton.__version__}")
    fla = fla_fn()
    rows = []
    for n, length in SHAPES:
        sets = input_sets(n, length, True)
        row: dict = {"shape": f"{n}x{length}"}
        cfg, probe = prefill_config(gdn.probe_device()), gdn.probe_device()
        scan = n * 32 * triton.cdiv(128, cfg.state_bv)
        row["auto_scan"] = "fused" if cfg.use_fused(scan, probe.multiprocessors) else "split"
        for name, fn in (("rocm_opt", gdn_fn("triton_rocm", False)),
                         ("rocm_opt_vk", gdn_fn("triton_rocm", True)),
                         ("cuda_kv", gdn_fn("triton_cuda", False)),
                         ("cuda_vk", gdn_fn("triton_cuda", True)),
                         ("fla", fla)):
            if fn is not None:
                row[name] = timed(fn, sets)
        for ours, ref in (("rocm_opt", "cuda_kv"), ("rocm_opt_vk", "cuda_vk")):
            if row.get(ours) and row.get(ref):
                row[ours + "_vs_cuda"] = row[ours] / row[ref]
        if args.sweep and (n, length) in ((1, 4096), (4, 16384)):
            for label, cfg in sweep_configs():
                with override_config(cfg):
                    t = timed(gdn_fn("triton_rocm", False), sets)
                print(f"#   sweep {row['shape']} {label}: {t}")
                row.setdefault("sweep", {})[label] = t
        rows.append(row)
        print(json.dumps(row), flush=True)
        del sets
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
