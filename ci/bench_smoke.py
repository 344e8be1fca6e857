"""Bench-smoke: time the typical calls of every op on this device (~30 s) and compare them with
the checked-in baseline of the device class; fail on a 2x regression.

    python ci/bench_smoke.py --baselines ci/baselines [--update-baseline] [--out report.json]

Device class: a short name from the probe ("h100", "h200", "a100", "mi300x", "mi355x", "cpu"
or the device name as a slug).  Baseline file: ``<baselines>/<device-class>.json`` with
``{"device_class": ..., "ms": {case: milliseconds or null}}``; a missing file or a null entry
is reported and passes (a placeholder waiting for real numbers).  GPU timings are the median
of ``triton.testing.do_bench``; inputs are random (never zeros) and the prefill inputs are
larger than the L2 cache, decode calls rotate over several input sets.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import gdn_dispatch as gdn
from gdn_dispatch.probe import DeviceProbe, probe_device

REGRESSION_FACTOR = 2.0
KNOWN_CLASSES = ("h100", "h200", "h800", "a100", "b200", "l40s", "mi300x", "mi325x", "mi355x",
                 "mi250x")


def device_class(probe: DeviceProbe) -> str:
    """A short, stable name for the kind of device (the baseline file's stem)."""
    if probe.vendor == "cpu":
        return "cpu"
    name = probe.name.lower().replace(" ", "")
    for known in KNOWN_CLASSES:
        if known in name:
            return known
    return re.sub(r"[^a-z0-9]+", "-", probe.name.lower()).strip("-") or probe.arch


def _cases(device: torch.device, gpu: bool) -> dict[str, Callable[[], Any]]:
    """Each case: a zero-argument callable running one op on prepared random inputs."""
    dt = torch.bfloat16 if gpu else torch.float32
    H, HV, K, V = 16, 32, 128, 128
    T = 4096 if gpu else 256
    N, slots, sets = (64, 256, 4) if gpu else (8, 16, 2)
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*shape: int, dtype: torch.dtype = dt, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    def log_decay(*shape: int) -> torch.Tensor:
        return (-torch.nn.functional.softplus(torch.randn(*shape, generator=g)) * 0.1).to(
            device=device, dtype=torch.float32)

    q, k, v = r(1, T, H, K), r(1, T, H, K), r(1, T, HV, V)
    gl, beta = log_decay(1, T, HV), torch.rand(1, T, HV, generator=g).to(device, dt)
    pool = r(slots, HV, V, K, dtype=torch.float32, scale=0.1)
    pool_kv = r(slots, HV, K, V, dtype=torch.float32, scale=0.1)
    idx = [torch.randperm(slots, generator=g)[:N].to(device=device, dtype=torch.int32)
           for _ in range(sets)]
    dec = [dict(q=r(N, 1, H, K), k=r(N, 1, H, K), v=r(N, 1, HV, V), g=log_decay(N, 1, HV),
                beta=torch.rand(N, 1, HV, generator=g).to(device, dt), a=r(N, HV), b=r(N, HV),
                qkv=r(N, 2 * H * K + HV * V), qkvz=r(N, 2 * H * K + 2 * HV * V),
                ba=r(N, 2 * HV)) for _ in range(sets)]
    A_log, dt_bias = r(HV, dtype=torch.float32, scale=0.5), r(HV, dtype=torch.float32)
    out = torch.empty(N, 1, HV, V, device=device, dtype=dt)
    cu = torch.arange(N + 1, device=device, dtype=torch.int32)
    turn = [0]

    def nxt() -> tuple[dict, torch.Tensor]:
        turn[0] = (turn[0] + 1) % sets
        return dec[turn[0]], idx[turn[0]]

    def recurrent() -> Any:
        d, i = nxt()
        return gdn.fused_recurrent_gated_delta_rule(
            d["q"], d["k"], d["v"], d["g"], d["beta"], initial_state=pool_kv,
            ssm_state_indices=i, inplace_final_state=True)

    def sigmoid_update() -> Any:
        d, i = nxt()
        return gdn.fused_sigmoid_gating_delta_rule_update(
            A_log, d["a"].view(1, N, HV), dt_bias, 1.0, 20.0, d["q"].view(1, N, H, K),
            d["k"].view(1, N, H, K), d["v"].view(1, N, HV, V), d["b"].view(1, N, HV), pool, i,
            use_qk_l2norm_in_kernel=True, cu_seqlens=cu)

    def packed() -> Any:
        d, i = nxt()
        return gdn.fused_recurrent_gated_delta_rule_packed_decode(
            d["qkv"], d["a"], d["b"], A_log, dt_bias, K ** -0.5, pool, out, i,
            use_qk_l2norm_in_kernel=True)

    def gating() -> Any:
        d, _ = nxt()
        return gdn.fused_gdn_gating(A_log, d["a"], d["b"], dt_bias)

    def split() -> Any:
        d, _ = nxt()
        return gdn.fused_qkvzba_split_reshape_cat(d["qkvz"], d["ba"], H, HV, K, V)

    return {
        f"chunk_gated_delta_rule/T{T}": lambda: gdn.chunk_gated_delta_rule(
            q, k, v, gl, beta, output_final_state=True, use_qk_l2norm_in_kernel=True),
        f"fused_recurrent_gated_delta_rule/N{N}": recurrent,
        f"fused_sigmoid_gating_delta_rule_update/N{N}": sigmoid_update,
        f"fused_recurrent_gated_delta_rule_packed_decode/N{N}": packed,
        f"fused_gdn_gating/N{N}": gating,
        f"fused_qkvzba_split_reshape_cat/N{N}": split,
        f"l2norm/T{T}": lambda: gdn.l2norm(q),
    }


def _time_ms(fn: Callable[[], Any], gpu: bool, budget_s: float) -> float:
    if gpu:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=max(50, int(budget_s * 400)),
                                             return_mode="median"))
    fn()
    samples: list[float] = []
    end = time.perf_counter() + budget_s
    while time.perf_counter() < end or len(samples) < 3:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def compare(measured: dict[str, float], baseline: dict[str, float | None],
            factor: float = REGRESSION_FACTOR) -> tuple[list[str], list[str]]:
    """(regressions, notes): a case slower than ``factor`` x its baseline is a regression."""
    bad, notes = [], []
    for case, ms in measured.items():
        ref = baseline.get(case)
        if ref is None:
            notes.append(f"{case}: no baseline")
        elif ms > factor * ref:
            bad.append(f"{case}: {ms:.4f} ms > {factor:g} x baseline {ref:.4f} ms")
    return bad, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baselines", default="ci/baselines")
    ap.add_argument("--out", default=None, help="write the measurements here (JSON)")
    ap.add_argument("--update-baseline", action="store_true",
                    help="write the measured numbers as this device class's baseline")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per case (about)")
    args = ap.parse_args(argv)

    gpu = torch.cuda.is_available()
    device = torch.device("cuda") if gpu else torch.device("cpu")
    probe = probe_device(device)
    cls = device_class(probe)
    print(f"bench-smoke on {probe.name} ({probe.arch}), device class {cls!r}")
    measured: dict[str, float] = {}
    for case, fn in _cases(device, gpu).items():
        ms = _time_ms(fn, gpu, args.budget)
        measured[case] = round(ms, 5)
        print(f"  {case:55s} {ms:10.4f} ms")
    path = Path(args.baselines) / f"{cls}.json"
    record = {"device_class": cls, "device": probe.name, "arch": probe.arch,
              "torch": torch.__version__, "ms": measured}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1))
    if args.update_baseline:
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"baseline written: {path}")
        return 0
    if not path.is_file():
        print(f"no baseline for device class {cls!r} ({path} missing): reported, not checked")
        return 0
    baseline = json.loads(path.read_text()).get("ms", {})
    bad, notes = compare(measured, baseline)
    for line in notes:
        print("  note: " + line)
    for line in bad:
        print("  REGRESSION: " + line)
    checked = len(measured) - len(notes)
    print(f"bench-smoke: {checked - len(bad)} passed, {len(bad)} failed "
          f"({len(notes)} without baseline)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
