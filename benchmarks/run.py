"""Benchmarks people can read: ``python -m gdn_dispatch bench`` (or ``python benchmarks/run.py``).

Runs every benchmark family with a progress bar, prints one table, writes the numbers as JSON
and one PNG per family (time vs batch or tokens: ours, flash-linear-attention, roofline) into
``docs/``.

Where the numbers come from, per family:

- ``decode``: the inputs, calls and byte counts of ``benchmarks/bench_decode.py``, swept over
  the batch; ``prefill``: those of ``benchmarks/bench_prefill.py``, swept over the tokens of
  one sequence (the helpers define what is measured; this file only sweeps, tabulates, plots);
- when such a module is missing or lacks a function run.py calls, the small built-in sweep of
  this file (same Qwen3-Next head sizes) runs instead, and the run says so.
Peers run only when importable (``fla``); the roofline is computed from the copy bandwidth and
bf16 matmul rate measured in the same run.

On a machine without a GPU the run is a smoke test (reference backend, tiny shapes, wall-clock
medians) and writes into a temporary directory unless ``--out`` is given, so CPU numbers
never replace the GPU plots in ``docs/``.  ``--from-json FILE`` redraws the table and plots
from an earlier run (e.g. on a machine that has matplotlib).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import gdn_dispatch as gdn  # noqa: E402

FAMILIES = ("decode", "prefill")
X_LABELS = {"decode": "batch (sequences, one token each)", "prefill": "tokens"}
L2_ROTATE_BYTES = 100 << 20  # rotate input sets until one pass touches more than L2 (50 MB)


# -- results ------------------------------------------------------------------------------------
@dataclass
class Row:
    """One measurement: ``series`` (a line on the plot) at ``x`` (batch or tokens)."""

    family: str                  # "decode" or "prefill"
    series: str                  # e.g. "ours: packed_decode", "fla: fused_recurrent"
    x: int                       # batch size (decode) or tokens (prefill)
    ms: float | None             # median time; None when it could not run
    kind: str = "ours"           # "ours", "peer" or "roofline"
    backend: str = ""            # the backend gdn chose (ours) or the peer's package
    note: str = ""               # why it did not run, or shape details

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Environment:
    device: str
    torch: str
    triton: str | None
    python: str
    commit: str
    date: str
    copy_gbps: float | None = None     # measured device copy bandwidth, GB/s
    matmul_tflops: float | None = None  # measured bf16 matmul rate, TFLOP/s
    notes: list[str] = field(default_factory=list)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def environment() -> Environment:
    gpu = torch.cuda.is_available()
    try:
        import triton

        triton_version: str | None = triton.__version__
    except Exception:
        triton_version = None
    return Environment(
        device=torch.cuda.get_device_name() if gpu else f"CPU ({platform.processor() or 'cpu'})",
        torch=torch.__version__, triton=triton_version, python=platform.python_version(),
        commit=_commit(), date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


# -- timing -------------------------------------------------------------------------------------
def time_ms(fn: Callable[[], Any]) -> float:
    """Median milliseconds of ``fn()``: ``triton.testing.do_bench`` on a GPU, wall clock on the
    CPU (a smoke test, not a performance number)."""
    if torch.cuda.is_available():
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return samples[len(samples) // 2]


def rotating(make: Callable[[int], Any], bytes_per_set: int) -> Callable[[], Any]:
    """Input sets built by ``make(i)``, enough that cycling through them defeats L2; returns
    a function giving the next set on each call."""
    sets = [make(i) for i in range(max(1, min(16, math.ceil(L2_ROTATE_BYTES /
                                                         max(bytes_per_set, 1)))))]
    state = {"i": 0}

    def next_set() -> Any:
        state["i"] = (state["i"] + 1) % len(sets)
        return sets[state["i"]]

    return next_set


def measure_rooflines(env: Environment) -> None:
    """Copy bandwidth and bf16 matmul rate of this device, measured now."""
    if not torch.cuda.is_available():
        env.notes.append("no GPU: no roofline")
        return
    n = 256 << 20
    src = torch.randn(n // 4, device="cuda")
    dst = torch.empty_like(src)
    env.copy_gbps = 2 * n / (time_ms(lambda: dst.copy_(src)) * 1e-3) / 1e9
    m = 8192
    a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    env.matmul_tflops = 2 * m ** 3 / (time_ms(lambda: a @ b) * 1e-3) / 1e12


def roofline_ms(env: Environment, bytes_moved: float, flops: float = 0.0) -> float | None:
    if env.copy_gbps is None:
        return None
    t = bytes_moved / (env.copy_gbps * 1e9)
    if flops and env.matmul_tflops:
        t = max(t, flops / (env.matmul_tflops * 1e12))
    return t * 1e3


# -- built-in sweeps (used when bench_decode / bench_prefill do not provide rows) -----------------
@dataclass(frozen=True)
class Dims:
    H: int = 16
    HV: int = 32
    K: int = 128
    V: int = 128


def _dims(gpu: bool) -> Dims:
    return Dims() if gpu else Dims(H=2, HV=4, K=16, V=16)


def _fla() -> Any | None:
    try:
        return importlib.import_module("fla.ops.gated_delta_rule")
    except Exception:
        return None


def _chosen(op: str, *args: Any, **kwargs: Any) -> str:
    try:
        return gdn.explain(op, *args, **kwargs).chosen or "none"
    except Exception as exc:
        return f"? ({type(exc).__name__})"


def builtin_decode(env: Environment, quick: bool) -> Iterator[tuple[str, Callable[[], Row]]]:
    """Decode: N sequences, one token each, fp32 V-first state pool (vLLM's layout)."""
    gpu = torch.cuda.is_available()
    dev, dt, d = ("cuda" if gpu else "cpu"), torch.bfloat16, _dims(gpu)
    batches = ([1, 32, 256] if quick else [1, 4, 16, 64, 128, 256, 512]) if gpu else [1, 4]
    fla = _fla() if gpu else None
    state_bytes = d.HV * d.K * d.V * 4
    width = 2 * d.H * d.K + d.HV * d.V

    for N in batches:
        per_set = 2 * N * state_bytes + N * width * 2

        def packed(N: int = N, per_set: int = per_set) -> Row:
            def make(i: int) -> tuple:
                g = torch.Generator(device=dev).manual_seed(i)
                r = lambda *s, dt=dt: torch.randn(*s, device=dev, generator=g).to(dt)
                return (r(N, width), r(N, d.HV), r(N, d.HV), r(d.HV, dt=torch.float32),
                        r(d.HV, dt=torch.float32), None,
                        r(N, d.HV, d.V, d.K, dt=torch.float32) * 0.1,
                        torch.empty(N, 1, d.HV, d.V, device=dev, dtype=dt),
                        torch.arange(N, device=dev, dtype=torch.int32), True)
            nxt = rotating(make, per_set)
            op = gdn.fused_recurrent_gated_delta_rule_packed_decode
            return Row("decode", "ours: packed_decode", N, time_ms(lambda: op(*nxt())),
                       backend=_chosen("fused_recurrent_gated_delta_rule_packed_decode",
                                       *nxt()))

        def recurrent(N: int = N, per_set: int = per_set, peer: bool = False) -> Row:
            def make(i: int) -> tuple:
                g = torch.Generator(device=dev).manual_seed(i)
                r = lambda *s, dt=dt: torch.randn(*s, device=dev, generator=g).to(dt)
                q, k, v = r(N, 1, d.H, d.K), r(N, 1, d.H, d.K), r(N, 1, d.HV, d.V)
                gate = -torch.rand(N, 1, d.HV, device=dev, generator=g)
                beta = torch.rand(N, 1, d.HV, device=dev, generator=g).to(dt)
                pool = r(N, d.HV, d.K, d.V, dt=torch.float32) * 0.1
                return q, k, v, gate, beta, pool
            nxt = rotating(make, per_set)
            if peer:
                fn = lambda: _run_fla_recurrent(fla, *nxt())
                return Row("decode", "fla: fused_recurrent (dense states)", N, time_ms(fn),
                           kind="peer", backend="fla")
            idx = torch.arange(N, device=dev, dtype=torch.int32)

            def ours() -> Any:
                q, k, v, gate, beta, pool = nxt()
                return gdn.fused_recurrent_gated_delta_rule(
                    q, k, v, gate, beta, initial_state=pool, use_qk_l2norm_in_kernel=True,
                    ssm_state_indices=idx, inplace_final_state=True)
            q, k, v, gate, beta, pool = nxt()
            chosen = _chosen("fused_recurrent_gated_delta_rule", q, k, v, gate, beta,
                             initial_state=pool, ssm_state_indices=idx,
                             inplace_final_state=True, use_qk_l2norm_in_kernel=True)
            return Row("decode", "ours: fused_recurrent (pool)", N, time_ms(ours),
                       backend=chosen)

        yield f"decode N={N} packed", packed
        yield f"decode N={N} recurrent", recurrent
        if fla is not None:
            yield f"decode N={N} fla", lambda N=N, per_set=per_set: recurrent(N, per_set, True)
        yield f"decode N={N} roofline", lambda N=N, per_set=per_set: Row(
            "decode", "roofline (state read + write)", N, roofline_ms(env, per_set),
            kind="roofline")


def _run_fla_recurrent(fla: Any, q, k, v, gate, beta, pool) -> Any:
    return fla.fused_recurrent_gated_delta_rule(
        q, k, v, g=gate, beta=beta, initial_state=pool, output_final_state=True,
        use_qk_l2norm_in_kernel=True)


def chunk_flops(T: int, d: Dims, chunk: int = 64) -> float:
    """Matmul FLOPs of the chunked form per call (all value heads)."""
    C, K, V = chunk, d.K, d.V
    per_token = 4 * C * K + C * (K + V) + 2 * C * V + 6 * K * V
    return float(per_token * T * d.HV)


def builtin_prefill(env: Environment, quick: bool) -> Iterator[tuple[str, Callable[[], Row]]]:
    """Prefill: one sequence of T tokens, bf16, l2norm in kernel, final state out."""
    gpu = torch.cuda.is_available()
    dev, dt, d = ("cuda" if gpu else "cpu"), torch.bfloat16, _dims(gpu)
    if not gpu:
        dt = torch.float32
    tokens = ([1024, 8192, 32768] if quick else [512, 1024, 2048, 4096, 8192, 16384, 32768,
                                                  65536]) if gpu else [64, 128]
    fla = _fla() if gpu else None
    for T in tokens:
        io_bytes = T * (2 * d.H * d.K + 2 * d.HV * d.V) * 2 + T * d.HV * 6 \
            + d.HV * d.K * d.V * 4

        def make(i: int, T: int = T) -> tuple:
            g = torch.Generator(device=dev).manual_seed(i)
            r = lambda *s: torch.randn(*s, device=dev, generator=g).to(dt)
            q, k, v = r(1, T, d.H, d.K), r(1, T, d.H, d.K), r(1, T, d.HV, d.V)
            gate = torch.nn.functional.logsigmoid(
                torch.randn(1, T, d.HV, device=dev, generator=g) + 3.0)
            beta = torch.rand(1, T, d.HV, device=dev, generator=g).to(dt)
            return q, k, v, gate, beta

        def ours(T: int = T, io_bytes: int = io_bytes) -> Row:
            nxt = rotating(lambda i: make(i, T), io_bytes)
            fn = lambda: gdn.chunk_gated_delta_rule(*nxt(), output_final_state=True,
                                                    use_qk_l2norm_in_kernel=True)
            return Row("prefill", "ours: chunk_gated_delta_rule", T, time_ms(fn),
                       backend=_chosen("chunk_gated_delta_rule", *nxt(),
                                       output_final_state=True))

        def peer(T: int = T, io_bytes: int = io_bytes) -> Row:
            nxt = rotating(lambda i: make(i, T), io_bytes)
            fn = lambda: fla.chunk_gated_delta_rule(*nxt(), output_final_state=True,
                                                    use_qk_l2norm_in_kernel=True)
            return Row("prefill", "fla: chunk_gated_delta_rule", T, time_ms(fn), kind="peer",
                       backend="fla")

        yield f"prefill T={T} ours", ours
        if fla is not None:
            yield f"prefill T={T} fla", peer
        yield f"prefill T={T} roofline", lambda T=T, io_bytes=io_bytes: Row(
            "prefill", "roofline (max of bytes, bf16 matmul FLOPs)", T,
            roofline_ms(env, io_bytes, chunk_flops(T, d)), kind="roofline")


BUILTIN = {"decode": builtin_decode, "prefill": builtin_prefill}


# -- sweeps through the helpers' benchmark modules (the measurements are defined there) --------
_NEEDS = {
    "bench_decode": ("decode_inputs", "call_kwargs", "io_bytes", "Rotating", "graph_ms", "_fla"),
    "bench_prefill": ("input_sets", "ours", "fla_fn", "bench", "flops", "bytes_floor"),
}


def bench_module(name: str) -> tuple[Any | None, str]:
    """``benchmarks/<name>.py`` if it imports and has what run.py calls, else (None, why)."""
    if not (HERE / f"{name}.py").is_file():
        return None, f"benchmarks/{name}.py is not present"
    try:
        mod = importlib.import_module(name)
    except Exception as exc:
        return None, f"benchmarks/{name}.py does not import ({type(exc).__name__}: {exc})"
    missing = [a for a in _NEEDS[name] if not hasattr(mod, a)]
    if missing:
        return None, f"benchmarks/{name}.py lacks {', '.join(missing)}"
    return mod, f"benchmarks/{name}.py"


def module_decode(mod: Any, env: Environment,
                  quick: bool) -> Iterator[tuple[str, Callable[[], Row]]]:
    """Decode through bench_decode: its inputs (H=16, HV=32, K=V=128, bf16, fp32 V-first
    states, gating + l2norm in kernel, cu_seqlens = arange) and its call of ours and fla."""
    HV, v_first, sdt = 32, True, torch.float32
    K, V = mod.K, mod.V
    fla = mod._fla()
    batches = (1, 32, 256) if quick else (1, 4, 16, 64, 256, 1024)
    for B in batches:
        sbytes = B * HV * K * V * sdt.itemsize

        def rot(B: int = B, sbytes: int = sbytes) -> Any:
            return mod.Rotating(lambda i: mod.decode_inputs(B, HV, sdt, v_first, i),
                                sbytes + mod.io_bytes(B, HV))

        def ours(B: int = B, sbytes: int = sbytes) -> Row:
            r = rot(B, sbytes)

            def call(x: dict) -> Any:
                return gdn.fused_recurrent_gated_delta_rule(
                    x["q"], x["k"], x["v"], x["a"], x["b"], **mod.call_kwargs(x, v_first))
            x = r.next()
            chosen = _chosen("fused_recurrent_gated_delta_rule", x["q"], x["k"], x["v"],
                             x["a"], x["b"], **mod.call_kwargs(x, v_first))
            # CUDA-graph replays (bench_decode's method): do_bench of one small eager call
            # measures the host launch, not the kernel
            ms = mod.graph_ms(call, r.sets, sbytes + mod.io_bytes(B, HV))
            return Row("decode", "ours: fused_recurrent_gated_delta_rule", B, ms,
                       backend=chosen)

        def peer(B: int = B, sbytes: int = sbytes) -> Row:
            r = rot(B, sbytes)

            def call(x: dict) -> Any:
                return fla(x["q"], x["k"], x["v"], x["a"], beta=x["b"],
                           **mod.call_kwargs(x, v_first))
            ms = mod.graph_ms(call, r.sets, 2 * sbytes + mod.io_bytes(B, HV))
            return Row("decode", "fla: fused_recurrent_gated_delta_rule", B, ms,
                       kind="peer", backend="fla")

        yield f"decode B={B} ours", ours
        if fla is not None:
            yield f"decode B={B} fla", peer
        yield f"decode B={B} roofline", lambda B=B, sbytes=sbytes: Row(
            "decode", "roofline (state read + write, q k v o)", B,
            roofline_ms(env, 2 * sbytes + mod.io_bytes(B, HV)), kind="roofline")


def module_prefill(mod: Any, env: Environment,
                   quick: bool) -> Iterator[tuple[str, Callable[[], Row]]]:
    """Prefill through bench_prefill: one sequence of T tokens (cu_seqlens), its inputs
    (H=16, HV=32, K=V=128, bf16, fp32 states, l2norm in kernel), its FLOP and byte counts."""
    fla = mod.fla_fn()
    tokens = (1024, 8192, 32768) if quick else (512, 1024, 2048, 4096, 8192, 16384, 32768,
                                                65536)
    for T in tokens:
        def ours(T: int = T) -> Row:
            sets = mod.input_sets(1, T, True)
            x = sets[0]
            chosen = _chosen("chunk_gated_delta_rule", x["q"], x["k"], x["v"], x["g"],
                             x["beta"], initial_state=x["h0"], output_final_state=True,
                             use_qk_l2norm_in_kernel=True, cu_seqlens=x["cu"])
            return Row("prefill", "ours: chunk_gated_delta_rule", T, mod.bench(mod.ours, sets),
                       backend=chosen)

        def peer(T: int = T) -> Row:
            return Row("prefill", "fla: chunk_gated_delta_rule", T,
                       mod.bench(fla, mod.input_sets(1, T, True)), kind="peer", backend="fla")

        yield f"prefill T={T} ours", ours
        if fla is not None:
            yield f"prefill T={T} fla", peer
        yield f"prefill T={T} roofline", lambda T=T: Row(
            "prefill", "roofline (max of bytes, bf16 matmul FLOPs)", T,
            roofline_ms(env, mod.bytes_floor(1, T), mod.flops(1, T)), kind="roofline")


MODULE_SWEEPS = {"decode": ("bench_decode", module_decode),
                 "prefill": ("bench_prefill", module_prefill)}


def plan(family: str, env: Environment, quick: bool) -> list[tuple[str, Callable[[], Row]]]:
    """The cases of one family: through the helper module on a GPU, else the built-in sweep
    (and a note saying why)."""
    name, sweep = MODULE_SWEEPS[family]
    if torch.cuda.is_available():
        mod, why = bench_module(name)
        if mod is not None:
            env.notes.append(f"{family}: measured with {why}")
            return list(sweep(mod, env, quick))
    else:
        why = "no GPU: CPU smoke run"
    env.notes.append(f"{family}: built-in sweep of run.py ({why})")
    return list(BUILTIN[family](env, quick))


# -- progress -----------------------------------------------------------------------------------
class Progress:
    """tqdm when importable, else a one-line bar on stderr."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        try:
            from tqdm import tqdm

            self._bar: Any = tqdm(total=total, unit="case", dynamic_ncols=True)
        except Exception:
            self._bar = None

    def note(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_description(label)
        else:
            self._draw(label)

    def step(self, label: str = "") -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
            if label:
                self._bar.set_description(label)
        else:
            self._draw(label)

    def _draw(self, label: str) -> None:
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} {label[:50]:50s}")
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")


# -- table and plots ----------------------------------------------------------------------------
def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms * 1e3:.1f} us" if ms < 1 else f"{ms:.3f} ms"


def table(rows: list[Row]) -> str:
    """One table per family: a line per x, a column per series, then ours vs peer/roofline."""
    out = []
    for family in FAMILIES:
        fam = [r for r in rows if r.family == family]
        if not fam:
            continue
        series = list(dict.fromkeys(r.series for r in fam))
        xs = sorted({r.x for r in fam})
        by = {(r.series, r.x): r for r in fam}
        ours = [s for s in series if by_kind(fam, s) == "ours"]
        peers = [s for s in series if by_kind(fam, s) == "peer"]
        roof = [s for s in series if by_kind(fam, s) == "roofline"]
        header = ["x"] + series
        if ours and peers:
            header.append(f"speedup vs {_short(peers[0])}")   # peer time / our time
        if ours and roof:
            header.append("fraction of roofline")           # roofline time / our time
        lines = [header]
        for x in xs:
            line = [str(x)] + [_fmt_ms(by[(s, x)].ms) if (s, x) in by else "" for s in series]
            first = by.get((ours[0], x)) if ours else None
            for other in ([peers[0]] if ours and peers else []) + ([roof[0]] if ours and roof
                                                                    else []):
                o = by.get((other, x))
                ratio = (o.ms / first.ms) if (o and first and o.ms and first.ms) else None
                line.append(f"{ratio:.2f}x" if ratio else "-")
            lines.append(line)
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        text = [f"== {family} ({X_LABELS[family]}) =="]
        for i, row in enumerate(lines):
            text.append("  ".join(c.rjust(w) for c, w in zip(row, widths)))
            if i == 0:
                text.append("  ".join("-" * w for w in widths))
        backends = sorted({f"{r.series} -> {r.backend}" for r in fam if r.kind == "ours"
                           and r.backend})
        if backends:
            text.append("backends: " + "; ".join(backends))
        notes = sorted({f"{r.series} x={r.x}: {r.note}" for r in fam if r.ms is None and r.note})
        text += [f"not run: {n}" for n in notes]
        out.append("\n".join(text))
    return "\n\n".join(out)


def by_kind(rows: list[Row], series: str) -> str:
    return next(r.kind for r in rows if r.series == series)


def _short(series: str) -> str:
    return series.split(":")[0].split(" (")[0]


def plot(rows: list[Row], env: Environment, out_dir: Path) -> list[Path]:
    """One PNG per family; returns the paths written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except Exception:
        return []
    written = []
    style = {"ours": dict(marker="o", linewidth=2), "peer": dict(marker="s", linewidth=1.5),
             "roofline": dict(linestyle="--", color="gray", linewidth=1.5)}
    for family in FAMILIES:
        fam = [r for r in rows if r.family == family and r.ms]
        if not fam:
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for series in dict.fromkeys(r.series for r in fam):
            pts = sorted((r.x, r.ms) for r in fam if r.series == series)
            kind = by_kind(fam, series)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=series, **style[kind])
        ax.set_xscale("log", base=2)
        xs = sorted({r.x for r in fam})
        ax.set_xticks(xs)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _pos: f"{int(v) // 1024}k" if v >= 1024 and int(v) % 1024 == 0
            else f"{int(v)}"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel(X_LABELS[family])
        ax.set_ylabel("time (ms, median)")
        ax.set_title(f"{family}: {env.device}\ntorch {env.torch}, triton {env.triton}, "
                     f"{env.commit}, {env.date}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"bench_{family}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


# -- main ---------------------------------------------------------------------------------------
def collect(families: Iterable[str], quick: bool, env: Environment,
            save: Callable[[list[Row]], None] | None = None) -> list[Row]:
    """Run every case of the families with a progress bar; ``save(rows)`` after each case (so
    a run cut short still leaves its numbers)."""
    plans = {fam: plan(fam, env, quick) for fam in families}
    progress = Progress(sum(len(p) for p in plans.values()))
    rows: list[Row] = []
    try:
        for fam, cases in plans.items():
            for label, case in cases:
                progress.note(label)
                try:
                    rows.append(case())
                except Exception as exc:  # one failing case must not lose the others
                    rows.append(Row(fam, label, 0, None, note=f"{type(exc).__name__}: {exc}"))
                progress.step(label)
                if save is not None:
                    save(rows)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    finally:
        progress.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gdn_dispatch bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(FAMILIES),
                   help="comma list of " + ", ".join(FAMILIES))
    p.add_argument("--quick", action="store_true", help="fewer sizes")
    p.add_argument("--out", help="directory for the PNGs and bench_results.json (default: "
                   "docs/ on a GPU, a temporary directory on the CPU)")
    p.add_argument("--from-json", help="redraw the table and plots from an earlier run")
    p.add_argument("--no-plots", action="store_true")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv[1:] if argv[:1] == ["--"] else argv)

    if args.out:
        out_dir = Path(args.out)
    elif args.from_json or torch.cuda.is_available():
        out_dir = ROOT / "docs"
    else:
        out_dir = Path(tempfile.mkdtemp(prefix="gdn-bench-cpu-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "bench_results.json"

    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        env = Environment(**data["environment"])
        rows = [Row.from_dict(r) for r in data["rows"]]
    else:
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        unknown = set(families) - set(FAMILIES)
        if unknown:
            p.error(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
        env = environment()
        measure_rooflines(env)

        def save(rows: list[Row]) -> None:
            results_path.write_text(json.dumps({"environment": asdict(env),
                                                "rows": [asdict(r) for r in rows]}, indent=1))

        rows = collect(families, args.quick, env, save)
        save(rows)

    print(f"\n{env.device} | torch {env.torch} | triton {env.triton} | commit {env.commit} | "
          f"{env.date}")
    if env.copy_gbps:
        print(f"measured: copy {env.copy_gbps:.0f} GB/s, bf16 matmul {env.matmul_tflops:.0f} "
              "TFLOP/s (the roofline uses these)")
    for note in env.notes:
        print(f"note: {note}")
    print()
    print(table(rows))
    if not args.from_json:
        print(f"\nnumbers: {results_path}")
    if not args.no_plots:
        written = plot(rows, env, out_dir)
        if written:
            print("plots: " + ", ".join(str(w) for w in written))
        else:
            print("plots: matplotlib is not importable here; redraw with "
                  f"`python -m gdn_dispatch bench --from-json {out_dir / 'bench_results.json'}`"
                  " where it is (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
