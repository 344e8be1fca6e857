"""Command line: ``python -m gdn_dispatch info | support | compile | bench``.

``info``     the device probe, every backend with its availability, and which backend each op
             would pick for a typical call on this machine (``gdn.explain``; nothing runs).
``support``  the support matrix of the README (op x device x backend), computed from the
             registry with simulated devices.
``compile``  AOT-compiles every Triton kernel of a backend for GPU targets, no GPU needed
             (see ``gdn_dispatch.aot``); exits non-zero on a failure, shared memory / LDS over
             the arch limit, or register spills.
``bench``    runs ``benchmarks/run.py`` from the source tree, passing the arguments through.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "typical_calls", "info_text", "support_markdown"]


# -- info ---------------------------------------------------------------------------------------
def typical_calls(device: Any, dtype: Any, T: int) -> dict[str, Callable[[], tuple[tuple, dict]]]:
    """Per op, a builder of (args, kwargs) of a typical Qwen3-Next-sized call on ``device``.

    16 key heads, 32 value heads, head dim 128; the chunk op gets one sequence of ``T``
    tokens, the decode ops 8 sequences of one token over a 16-slot V-first state pool.
    Tensors are uninitialised (``gdn.explain`` reads metadata only).
    """
    import torch

    H, HV, K, V, N, slots = 16, 32, 128, 128, 8, 16

    def e(*shape: int, dt: Any = dtype) -> torch.Tensor:
        return torch.empty(*shape, device=device, dtype=dt)

    f32 = torch.float32
    idx = torch.arange(N, device=device, dtype=torch.int32)

    def chunk() -> tuple[tuple, dict]:
        return (e(1, T, H, K), e(1, T, H, K), e(1, T, HV, V), e(1, T, HV, dt=f32),
                e(1, T, HV)), {"output_final_state": True}

    def recurrent() -> tuple[tuple, dict]:
        return (e(N, 1, H, K), e(N, 1, H, K), e(N, 1, HV, V), e(N, 1, HV, dt=f32),
                e(N, 1, HV)), {"initial_state": e(slots, HV, K, V, dt=f32),
                               "ssm_state_indices": idx, "inplace_final_state": True}

    def sigmoid_gating() -> tuple[tuple, dict]:
        return (e(HV, dt=f32), e(N, HV), e(HV, dt=f32), 1.0, 20.0, e(1, N, H, K), e(1, N, H, K),
                e(1, N, HV, V), e(N, HV), e(slots, HV, V, K, dt=f32), idx), {
                    "cu_seqlens": torch.arange(N + 1, device=device, dtype=torch.int32),
                    "use_qk_l2norm_in_kernel": True}

    def packed() -> tuple[tuple, dict]:
        return (e(N, 2 * H * K + HV * V), e(N, HV), e(N, HV), e(HV, dt=f32), e(HV, dt=f32),
                K ** -0.5, e(slots, HV, V, K, dt=f32), e(N, 1, HV, V), idx), {
                    "use_qk_l2norm_in_kernel": True}

    def gating() -> tuple[tuple, dict]:
        return (e(HV, dt=f32), e(N, HV), e(N, HV), e(HV, dt=f32)), {}

    def split() -> tuple[tuple, dict]:
        return (e(N, 2 * H * K + 2 * HV * V), e(N, 2 * HV), H, HV, K, V), {}

    def l2norm() -> tuple[tuple, dict]:
        return (e(N, H, K),), {}

    return {
        "chunk_gated_delta_rule": chunk,
        "fused_recurrent_gated_delta_rule": recurrent,
        "fused_sigmoid_gating_delta_rule_update": sigmoid_gating,
        "fused_recurrent_gated_delta_rule_packed_decode": packed,
        "fused_gdn_gating": gating,
        "fused_qkvzba_split_reshape_cat": split,
        "l2norm": l2norm,
    }


def info_text() -> str:
    """What ``python -m gdn_dispatch info`` prints."""
    import torch

    import gdn_dispatch as gdn
    from gdn_dispatch.probe import probe_device

    gpu = torch.cuda.is_available()
    device = torch.device("cuda") if gpu else torch.device("cpu")
    probe = probe_device(device)
    lines = [f"gdn_dispatch {gdn.__version__}  torch {torch.__version__}"
             f"  python {sys.version.split()[0]}", "", f"device probe ({device}):"]
    for key, value in probe.describe().items():
        lines.append(f"  {key:22s} {value}")
    lines += ["", "backends:"]
    for b in gdn.backends(device):
        state = "available" if b["available"] else "unavailable: " + "; ".join(b["reasons"])
        ops = ", ".join(b["ops"]) if b["ops"] else "(none yet)"
        lines.append(f"  {b['name']} (priority {b['priority']}): {state}")
        lines.append(f"      ops: {ops}")
    dtype = torch.bfloat16 if gpu and probe.bf16 else torch.float32
    T = 4096 if gpu else 64
    lines += ["", f"typical calls on {device} ({str(dtype).replace('torch.', '')}, H=16 HV=32 "
              f"K=V=128; chunk T={T}; decode N=8):"]
    for op, build in typical_calls(device, dtype, T).items():
        try:
            args, kwargs = build()
            text = str(gdn.explain(op, *args, **kwargs))
        except Exception as exc:  # info must always print something useful
            text = f"{op}: explain failed: {type(exc).__name__}: {exc}"
        lines += ["  " + line for line in text.splitlines()]
    forced = {k: v for k, v in os.environ.items() if k.startswith("GDN_")}
    if forced:
        lines += ["", "environment: " + ", ".join(f"{k}={v}" for k, v in sorted(forced.items()))]
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    print(info_text())
    return 0


# -- support matrix -----------------------------------------------------------------------------
MATRIX_DEVICES: tuple[tuple[str, str], ...] = (
    ("cpu", "CPU"), ("a100", "A100 sm_80"), ("h100", "H100 sm_90"), ("b200", "B200 sm_100"),
    ("mi300x", "MI300X gfx942"), ("mi355x", "MI355X gfx950"), ("mi250x", "MI250X gfx90a"),
    ("rx7900xtx", "RX 7900 XTX gfx1100"))


def _constraints(sup: Any) -> str:
    from gdn_dispatch.registry import dtype_name

    parts = []
    if sup.dtypes is not None:
        parts.append("/".join(dtype_name(d) for d in sorted(sup.dtypes, key=str)))
    if sup.head_dims is not None:
        parts.append("K,V in {" + ",".join(str(d) for d in sorted(sup.head_dims)) + "}")
    elif sup.max_head_dim is not None:
        parts.append(f"dim <= {sup.max_head_dim}")
    if sup.unsupported_flags:
        parts.append("not: " + ", ".join(sorted(sup.unsupported_flags)))
    if sup.archs is not None:
        parts.append("archs " + ",".join(sorted(sup.archs)))
    return "; ".join(parts) or "any"


def support_markdown() -> str:
    """The README's support matrix, computed from the registry: per op and device (simulated
    probes), the backend a typical bf16 call gets; per op and backend, what it declares."""
    import torch

    import gdn_dispatch as gdn
    from gdn_dispatch import registry

    head = "| op | " + " | ".join(label for _, label in MATRIX_DEVICES) + " |"
    lines = ["Backend picked for a typical bf16 call (H=16, HV=32, K=V=128; fp32 on the CPU):",
             "", head, "|" + "---|" * (len(MATRIX_DEVICES) + 1)]
    for op in gdn.OPS:
        cells = []
        for device, _label in MATRIX_DEVICES:
            dtype = torch.float32 if device == "cpu" else torch.bfloat16
            with gdn.simulate_device(device):
                args, kwargs = typical_calls(torch.device("cpu"), dtype, 64)[op]()
                exp = gdn.explain(op, *args, **kwargs)
            cells.append(exp.chosen or "none")
        lines.append(f"| `{op}` | " + " | ".join(cells) + " |")
    backends = [b for b in registry.registered_backends()]
    lines += ["", "What each backend declares (`SUPPORT` tables; dtypes, head dims, flags):", "",
              "| op | " + " | ".join(b.name for b in backends) + " |",
              "|" + "---|" * (len(backends) + 1)]
    for op in gdn.OPS:
        cells = []
        for b in backends:
            sup = b.support.get(op)
            cells.append("-" if sup is None else _constraints(sup))
        lines.append(f"| `{op}` | " + " | ".join(cells) + " |")
    vend = ", ".join(f"{b.name}: " + "/".join(sorted(b.vendors))
                     + (" (+ CPU under TRITON_INTERPRET=1)" if b.interpreter_cpu else "")
                     for b in backends)
    lines += ["", f"Devices served: {vend}."]
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"


def readme_with_matrix(text: str, matrix: str) -> str:
    """``text`` with the block between the support-matrix markers replaced by ``matrix``."""
    head, sep, rest = text.partition(README_BEGIN)
    _old, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise ValueError(f"markers {README_BEGIN} / {README_END} not found")
    return head + README_BEGIN + "\n" + matrix + "\n" + README_END + tail


def _cmd_support(args: argparse.Namespace) -> int:
    matrix = support_markdown()
    if args.readme:
        path = Path(args.readme)
        path.write_text(readme_with_matrix(path.read_text(), matrix))
        print(f"support matrix written into {path}")
    else:
        print(matrix)
    return 0


# -- compile ------------------------------------------------------------------------------------
def _split(values: Sequence[str], known: Sequence[str], what: str) -> list[str]:
    out: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item == "all":
                out += list(known)
            elif item in known:
                out.append(item)
            else:
                raise SystemExit(f"unknown {what} {item!r}; known: {', '.join(known)} or all")
    return list(dict.fromkeys(out))


def _cmd_compile(args: argparse.Namespace) -> int:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the runtime default; quiets a warning
    from gdn_dispatch import aot

    backends = _split(args.backend, aot.BACKENDS, "backend")
    targets = _split(args.target, list(aot.TARGETS), "target")
    run = aot.compile_all(backends, targets, modules=args.module or None,
                          extra_modules=args.extra_module or (), jobs=args.jobs,
                          strict=args.strict, kernel_timeout=args.kernel_timeout)
    reports, notes = run.reports, run.notes
    for note in notes:
        print(("FAIL " if note.failure else "note ") + f"{note.module}: {note.message}")
    if reports:
        print(aot.format_table(reports))
    failed = run.failed
    bad_notes = [n for n in notes if n.failure]
    empty = [] if args.module else _empty_backends(backends, run.specs_per_backend)
    for name in empty:
        print(f"FAIL {name}: declares ops in SUPPORT but no kernel module exposes "
              "aot_specs(arch) for these targets")
    if args.json:
        Path(args.json).write_text(json.dumps({"reports": aot.reports_as_dicts(reports),
                                               "notes": [vars(n) for n in notes]}, indent=1))
    total = sum(r.seconds for r in reports)
    warned = sum(1 for r in reports if r.ok and any(n.startswith("WARNING") for n in r.notes))
    print(f"\n{len(reports)} kernel compilations for {', '.join(backends)} x "
          f"{', '.join(targets)}: {len(reports) - len(failed)} ok ({warned} with warnings), "
          f"{len(failed)} failed, {len(bad_notes)} module errors ({total:.0f} s of compile time)")
    for r in failed:
        print(f"FAILED {r.backend} {r.target} {r.name}: {'; '.join(r.problems)}")
    if not reports and not empty:
        print("no kernels to compile yet (no module defines aot_specs)")
    return 1 if failed or bad_notes or empty else 0


def _empty_backends(backends: list[str], specs_per_backend: dict[str, int]) -> list[str]:
    """Backends that declare ops in SUPPORT yet contributed no kernel spec to this run."""
    from gdn_dispatch import registry

    out = []
    for name in backends:
        try:
            backend = registry.get_backend(name)
        except Exception:
            continue
        if backend.support and not specs_per_backend.get(name):
            out.append(name)
    return out


# -- bench --------------------------------------------------------------------------------------
def _bench_script() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    for root in (here, Path.cwd()):
        script = root / "benchmarks" / "run.py"
        if script.is_file():
            return script
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    script = _bench_script()
    if script is None:
        print("benchmarks/run.py is not present in this checkout: nothing to run.\n"
              "The benchmarks live in the source tree (benchmarks/), not in the installed "
              "package; run this from a clone of the repository.", file=sys.stderr)
        return 2
    sys.argv = [str(script), *args.rest]
    sys.path.insert(0, str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


# -- entry point --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gdn_dispatch",
                                     description="gdn_dispatch: Gated DeltaNet ops on any GPU")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the device probe, the backends and per-op choices")
    sup = sub.add_parser("support", help="print the support matrix (op x device x backend) "
                         "as Markdown, computed from the registry with simulated devices")
    sup.add_argument("--readme", help="rewrite the matrix block of this README instead")
    comp = sub.add_parser("compile", help="AOT-compile a backend's Triton kernels for GPU "
                          "targets (no GPU needed)")
    comp.add_argument("--backend", action="append", required=True,
                      help="triton_cuda, triton_rocm, a comma list, or all (repeatable)")
    comp.add_argument("--target", action="append", required=True,
                      help="sm_80, sm_90, sm_100, gfx942, gfx950, a comma list, or all")
    comp.add_argument("--module", action="append",
                      help="compile only this kernel module (dotted name or .py path)")
    comp.add_argument("--extra-module", action="append",
                      help="compile this kernel module too, beside the backends' own")
    comp.add_argument("--jobs", type=int, default=None,
                      help="parallel compilations (default: one per CPU)")
    comp.add_argument("--json", help="also write the reports to this JSON file")
    comp.add_argument("--kernel-timeout", type=float, default=900.0,
                      help="seconds one kernel may take to compile (default 900)")
    comp.add_argument("--strict", action="store_true",
                      help="every problem fails, also on targets the backend runs on only "
                      "when forced or never (default: those are warnings)")
    bench = sub.add_parser("bench", help="run benchmarks/run.py (arguments passed through)")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # pass everything through (argparse REMAINDER rejects "--x")
        return _cmd_bench(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    handler = {"info": _cmd_info, "support": _cmd_support, "compile": _cmd_compile,
               "bench": _cmd_bench}[args.command]
    return handler(args)
