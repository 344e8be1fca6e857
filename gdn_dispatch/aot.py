"""Ahead-of-time compilation of a backend's Triton kernels for a GPU target, without a GPU.

``python -m gdn_dispatch compile --backend triton_rocm --target gfx942`` uses this module to
prove, on a CPU machine, that every kernel of a backend compiles for an architecture, fits
its shared memory / LDS and does not spill registers.

How a kernel module takes part
------------------------------
A kernel module (one file per kernel family) defines::

    def aot_specs(arch: str) -> list[dict]

(optionally ``aot_specs(arch, backend=...)``; the backend name is passed when the function
takes that keyword) returning one dict per kernel configuration that runs on ``arch``
("sm_80", "sm_90", "sm_100", "gfx942", "gfx950"):

``name``        kernel name shown in the table
``fn``          the ``@triton.jit`` function (``autotune`` / ``heuristics`` wrappers are
                unwrapped); ``kernel`` is accepted as another name for it
``signature``   arg name -> Triton type: ``'*fp32'``, ``'*bf16'``, ``'i32'``, ``'i64'``,
                ``'fp32'`` ... or ``'constexpr'``; args named in ``constexprs`` may be left out
``constexprs``  arg name -> value (constexpr params with a Python default may be left out)
``num_warps``, ``num_stages``
``options``     optional extra compile options; HIP-only ones (``waves_per_eu``,
                ``matrix_instr_nonkdim``, ``kpack`` ...) are dropped when the target is CUDA
``attrs``       optional arg name -> Triton attributes; by default every pointer arg is
                16-byte aligned (``tt.divisibility`` 16), as the JIT sees it at run time
``max_spill_bytes``  optional, default 0: spills up to this many bytes are a warning (an
                explicit, reviewed allowance; say why next to it)

Where the compile command looks, for backend ``b``:

1. ``KERNEL_MODULES[b]`` below: kernel authors append their module's import path;
2. a ``KERNEL_MODULES`` list declared by the backend package itself, in
   ``gdn_dispatch.backends.<b>.configs`` or ``gdn_dispatch.backends.<b>``;
3. every module of ``gdn_dispatch.backends.<b>`` and of ``gdn_dispatch.backends.triton_common``
   that defines ``aot_specs`` (found automatically).

Step 3 scans ``triton_common`` only for a backend that declares no list in step 2.  Listed
modules that do not exist yet are skipped with a note.  A ``triton_common`` module used by
several backends whose ``aot_specs`` takes no ``backend`` is compiled once per target
(label ``common``).

Pass/fail (``target_role``, ``problem_is_fatal``): on a backend's primary targets (the
vendor it is preferred on: triton_cuda on sm_*, triton_rocm on gfx*; shared kernels
everywhere) a compile error, shared memory / LDS over the target's limit, or register spills
fail the run.  Where a backend runs only when forced (triton_rocm on sm_*, how it is checked
on an H100) spills are warnings.  Where it never runs (triton_cuda on gfx*) every problem is a
warning.  ``--strict`` makes every problem fatal.  Each spec compiles with
``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget(...))``;
shared bytes come from the kernel metadata, registers and spills from the ``ptxas -v`` log
(CUDA) or the AMDGPU kernel descriptor in the ``amdgcn`` assembly (HIP).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TARGETS", "BACKENDS", "KERNEL_MODULES", "Target", "KernelReport", "ModuleNote",
    "discover_modules", "load_module", "collect_specs", "compile_spec", "compile_all",
    "format_table", "CompileRun", "spills_fail", "target_role", "problem_is_fatal",
]


@dataclass(frozen=True)
class Target:
    """One compile target: Triton's GPUTarget fields and the per-block shared memory limit."""

    name: str
    backend: str           # "cuda" or "hip"
    arch: int | str        # 90 for sm_90, "gfx942" for gfx942
    warp_size: int
    shared_limit: int      # bytes of shared memory / LDS one block may use

    def gpu_target(self) -> Any:
        from triton.backends.compiler import GPUTarget

        return GPUTarget(self.backend, self.arch, self.warp_size)


KIB = 1024
TARGETS: dict[str, Target] = {
    "sm_80": Target("sm_80", "cuda", 80, 32, 163 * KIB),
    "sm_90": Target("sm_90", "cuda", 90, 32, 227 * KIB),
    "sm_100": Target("sm_100", "cuda", 100, 32, 227 * KIB),
    "gfx942": Target("gfx942", "hip", "gfx942", 64, 64 * KIB),
    "gfx950": Target("gfx950", "hip", "gfx950", 64, 160 * KIB),
}

BACKENDS: tuple[str, ...] = ("triton_cuda", "triton_rocm")

# backend name -> import paths of its kernel modules (kernel authors: append yours here)
KERNEL_MODULES: dict[str, list[str]] = {
    "triton_cuda": [],
    "triton_rocm": [],
}

_PACKAGE = "gdn_dispatch.backends"
_COMMON = _PACKAGE + ".triton_common"


@dataclass
class ModuleNote:
    """Something the compile command has to say about one kernel module."""

    module: str
    message: str
    failure: bool = False


@dataclass
class KernelReport:
    """The outcome of compiling one kernel configuration for one target."""

    backend: str
    target: str
    module: str
    name: str
    config: str = ""
    constexprs: dict[str, Any] = field(default_factory=dict)
    shared: int | None = None
    shared_limit: int | None = None
    registers: int | None = None
    spills: int | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# -- finding kernel modules -----------------------------------------------------------------
def load_module(path_or_name: str) -> Any:
    """Import a module by dotted name or by ``.py`` file path."""
    if path_or_name.endswith(".py") or os.sep in path_or_name:
        path = Path(path_or_name).resolve()
        name = "gdn_aot_" + re.sub(r"\W", "_", path.stem)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    return importlib.import_module(path_or_name)


def _is_missing(exc: ModuleNotFoundError, name: str) -> bool:
    """True when the module ``name`` itself (not one of its imports) does not exist."""
    missing = exc.name or ""
    return name == missing or name.startswith(missing + ".")


def _declared_lists(backend: str, notes: list[ModuleNote]) -> list[str]:
    """The ``KERNEL_MODULES`` a backend package declares (configs module or package)."""
    out: list[str] = []
    for holder in (f"{_PACKAGE}.{backend}.configs", f"{_PACKAGE}.{backend}"):
        try:
            mod = importlib.import_module(holder)
        except ModuleNotFoundError as exc:
            if not _is_missing(exc, holder):
                notes.append(ModuleNote(holder, f"import failed: {exc!r}", failure=True))
            continue
        except Exception as exc:
            notes.append(ModuleNote(holder, f"import failed: {type(exc).__name__}: {exc}",
                                    failure=True))
            continue
        declared = getattr(mod, "KERNEL_MODULES", None)
        if isinstance(declared, (list, tuple)):
            out.extend(str(m) for m in declared)
    return out


def _package_modules(package: str) -> list[str]:
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        return []
    paths = getattr(pkg, "__path__", None)
    if not paths:
        return []
    return sorted(package + "." + info.name for info in pkgutil.iter_modules(paths)
                  if not info.ispkg and info.name not in ("backend",))


def discover_modules(backend: str) -> tuple[list[Any], list[ModuleNote]]:
    """The imported kernel modules of ``backend`` that define ``aot_specs``, plus notes."""
    notes: list[ModuleNote] = []
    declared = _declared_lists(backend, notes)
    listed = list(dict.fromkeys(KERNEL_MODULES.get(backend, []) + declared))
    # the backend's own package is always scanned; shared kernels only when the backend
    # does not say which of them it uses
    scanned = _package_modules(f"{_PACKAGE}.{backend}")
    if not declared:
        scanned += _package_modules(_COMMON)
    modules: list[Any] = []
    seen: set[str] = set()
    for name in listed + [m for m in scanned if m not in listed]:
        if name in seen:
            continue
        seen.add(name)
        explicit = name in listed
        try:
            mod = load_module(name)
        except ModuleNotFoundError as exc:
            if _is_missing(exc, name):
                if explicit:
                    notes.append(ModuleNote(name, "listed but not present yet: skipped"))
                continue
            notes.append(ModuleNote(name, f"import failed: {exc!r}", failure=True))
            continue
        except Exception as exc:  # a module that cannot import is a failed kernel
            notes.append(ModuleNote(name, f"import failed: {type(exc).__name__}: {exc}",
                                    failure=True))
            continue
        if hasattr(mod, "aot_specs"):
            modules.append(mod)
        elif explicit:
            notes.append(ModuleNote(name, "listed but defines no aot_specs(arch)", failure=True))
    return modules, notes


def _jit_function(fn: Any) -> Any:
    """The JITFunction under autotune / heuristics wrappers."""
    from triton.runtime.jit import JITFunction

    seen = 0
    while not isinstance(fn, JITFunction) and hasattr(fn, "fn") and seen < 8:
        fn, seen = fn.fn, seen + 1
    return fn


def collect_specs(mod: Any, arch: str, backend: str) -> tuple[list[dict], list[ModuleNote]]:
    """``mod.aot_specs(arch)`` (with ``backend=`` when it takes it), and notes on it."""
    fn = mod.aot_specs
    try:
        params = inspect.signature(fn).parameters
        specs = fn(arch, backend=backend) if "backend" in params else fn(arch)
    except Exception as exc:
        return [], [ModuleNote(mod.__name__, f"aot_specs({arch!r}) raised "
                               f"{type(exc).__name__}: {exc}", failure=True)]
    if not isinstance(specs, (list, tuple)):
        return [], [ModuleNote(mod.__name__, f"aot_specs({arch!r}) returned "
                               f"{type(specs).__name__}, expected a list of dicts",
                               failure=True)]
    return list(specs), []


# -- compiling one spec -----------------------------------------------------------------------
def _complete_signature(jit: Any, spec: dict) -> tuple[dict[str, str], dict[str, Any]]:
    """Signature with every arg (constexprs marked) and constexprs with Python defaults."""
    signature = dict(spec.get("signature") or {})
    constexprs = dict(spec.get("constexprs") or {})
    defaults = {n: p.default for n, p in inspect.signature(jit.fn).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for param in jit.params:
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
            if name not in constexprs and name in defaults:
                constexprs[name] = defaults[name]
        elif name in constexprs:
            signature[name] = "constexpr"
    missing = [n for n in jit.arg_names if n not in signature]
    if missing:
        raise ValueError("signature lacks " + ", ".join(missing))
    unset = [n for n in jit.arg_names if signature[n] == "constexpr" and n not in constexprs]
    if unset:
        raise ValueError("constexprs lack " + ", ".join(unset))
    # keep Triton's arg order
    return {n: signature[n] for n in jit.arg_names}, constexprs


def _attrs(jit: Any, signature: dict[str, str], spec: dict) -> dict[tuple[int, ...], list]:
    given = spec.get("attrs")
    if given is not None:
        return {(jit.arg_names.index(k),) if isinstance(k, str) else k: v
                for k, v in given.items()}
    return {(i,): [["tt.divisibility", 16]] for i, n in enumerate(jit.arg_names)
            if signature[n].startswith("*")}


_TILE_NAME = re.compile(r"B[A-Z0-9]{1,2}|BLOCK\w*|NUM_\w+|CHUNK\w*")


def _config_text(constexprs: dict[str, Any], spec: dict, options: dict[str, Any]) -> str:
    """Tile sizes, warps, stages and extra options (the full constexprs go to ``--json``)."""
    parts = [f"{k}={v}" for k, v in constexprs.items() if _TILE_NAME.fullmatch(k)]
    parts.append(f"w{spec.get('num_warps', 4)}")
    parts.append(f"s{spec.get('num_stages', 2)}")
    parts += [f"{k}={v}" for k, v in options.items()]
    return " ".join(parts)


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame")


def _ptxas_usage(log: str) -> tuple[int | None, int | None, int | None]:
    """(registers, spill bytes stores+loads, stack bytes) from a ``ptxas -v`` log."""
    regs = _PTXAS_REGS.findall(log)
    spills = _PTXAS_SPILL.findall(log)
    stack = _PTXAS_STACK.findall(log)
    return (max(int(r) for r in regs) if regs else None,
            sum(int(a) + int(b) for a, b in spills) if spills else None,
            max(int(s) for s in stack) if stack else None)


def _rerun_ptxas(ptx: str, capability: int) -> str:
    """Run ``ptxas -v`` on the PTX (when Triton's own log was not captured, e.g. a cache hit)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptxas = get_ptxas(capability).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run([ptxas, "-v", f"--gpu-name={sm_arch_from_capability(capability)}",
                              str(src), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True, check=False)
    return res.stdout + res.stderr


def _amdgpu_field(asm: str, key: str) -> int | None:
    m = re.search(rf"^\s*\.{key}:\s+(\d+)", asm, re.M)
    return int(m.group(1)) if m else None


def _hip_usage(asm: str) -> dict[str, int | None]:
    """Register / spill / LDS fields of the AMDGPU kernel descriptor in ``amdgcn`` assembly."""
    return {k: _amdgpu_field(asm, k) for k in (
        "vgpr_count", "agpr_count", "sgpr_count", "vgpr_spill_count", "sgpr_spill_count",
        "group_segment_fixed_size", "private_segment_fixed_size")}


def compile_spec(spec: dict, target: Target | str, backend: str = "", module: str = "") -> KernelReport:
    """Compile one spec for ``target`` and check it against the target's limits."""
    import triton
    from triton import knobs
    from triton.compiler import ASTSource, make_backend

    tgt = TARGETS[target] if isinstance(target, str) else target
    report = KernelReport(backend=backend, target=tgt.name, module=module,
                          name=str(spec.get("name") or "?"), shared_limit=tgt.shared_limit)
    start = time.perf_counter()
    try:
        jit = _jit_function(spec["fn"] if "fn" in spec else spec["kernel"])
        if not hasattr(jit, "arg_names") or not hasattr(jit, "params"):
            raise TypeError(f"fn is {type(jit).__name__}, not a @triton.jit function "
                            "(is TRITON_INTERPRET=1 set? the compile command needs it unset)")
        signature, constexprs = _complete_signature(jit, spec)
        options = dict(spec.get("options") or {})
        gpu = tgt.gpu_target()
        fields = set(type(make_backend(gpu).parse_options({})).__dataclass_fields__)
        dropped = sorted(k for k in options if k not in fields)
        options = {k: v for k, v in options.items() if k in fields}
        if dropped:
            report.notes.append("dropped for this target: " + ", ".join(dropped))
        report.config = _config_text(constexprs, spec, options)
        report.constexprs = {k: v if isinstance(v, (int, float, bool, str, type(None))) else repr(v)
                             for k, v in constexprs.items()}
        opts = dict(num_warps=int(spec.get("num_warps", 4)),
                    num_stages=int(spec.get("num_stages", 2)), **options)
        src = ASTSource(jit, signature, constexprs=constexprs, attrs=_attrs(jit, signature, spec))
        log = io.StringIO()
        with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(src, target=gpu, options=opts)
    except Exception as exc:  # every failure becomes a row, never a crash of the whole run
        msg = str(exc).strip().splitlines()
        head = next((line for line in msg if "error" in line.lower() or "fatal" in line.lower()),
                    msg[0] if msg else "")
        report.problems.append(f"compile failed: {type(exc).__name__}: {head[:300]}")
        report.seconds = time.perf_counter() - start
        return report
    md = compiled.metadata
    report.shared = int(getattr(md, "shared", 0) or 0)
    if tgt.backend == "cuda":
        text = log.getvalue()
        if "Used" not in text and "ptx" in compiled.asm:
            text = _rerun_ptxas(compiled.asm["ptx"], int(tgt.arch))
        regs, spills, stack = _ptxas_usage(text)
        report.registers, report.spills = regs, spills
        if stack:
            report.notes.append(f"stack frame {stack} B")
    else:
        usage = _hip_usage(compiled.asm.get("amdgcn", ""))
        report.registers = usage["vgpr_count"]
        report.spills = usage["vgpr_spill_count"]
        static_lds = usage["group_segment_fixed_size"] or 0
        report.shared += static_lds
        if usage["agpr_count"]:
            report.notes.append(f"agpr {usage['agpr_count']}")
        if usage["sgpr_spill_count"]:
            report.notes.append(f"sgpr spills {usage['sgpr_spill_count']} (to VGPR lanes)")
        if usage["private_segment_fixed_size"]:
            report.notes.append(f"scratch {usage['private_segment_fixed_size']} B")
    if report.shared > tgt.shared_limit:
        kind = "LDS" if tgt.backend == "hip" else "shared memory"
        report.problems.append(f"{kind} {report.shared} B over the {tgt.name} limit "
                               f"{tgt.shared_limit} B")
    if report.spills:
        report.problems.append(f"register spills: {report.spills} B")
    if report.registers is None:
        report.notes.append("register count not found")
    report.seconds = time.perf_counter() - start
    return report


# -- compiling many ---------------------------------------------------------------------------
COMMON_LABEL = "common"
_TARGET_VENDOR = {"cuda": "nvidia", "hip": "amd"}


def target_role(backend: str, target: Target | str) -> str:
    """How ``backend`` relates to ``target``, from its registry declaration.

    "primary": the target's vendor is one the backend is preferred on (triton_cuda on sm_*,
    triton_rocm on gfx*; shared kernels and unregistered labels count as primary);
    "served": the backend runs there, but only when forced (triton_rocm on sm_*);
    "foreign": the backend never runs there (triton_cuda on gfx*).
    """
    from .registry import registered_backends

    tgt = TARGETS[target] if isinstance(target, str) else target
    vendor = _TARGET_VENDOR[tgt.backend]
    found = next((b for b in registered_backends() if b.name == backend), None)
    if found is None or vendor in found.preferred_vendors:
        return "primary"
    return "served" if vendor in found.vendors else "foreign"


def problem_is_fatal(problem: str, role: str, strict: bool = False) -> bool:
    """Whether a problem fails the run: everything on a primary target; compile errors and
    shared memory over the limit where the backend runs when forced; nothing where it never
    runs (reported as a warning).  ``strict``: everything, everywhere."""
    if strict or role == "primary":
        return True
    if role == "served":
        return not problem.startswith("register spills")
    return False


def spills_fail(backend: str, target: Target | str, strict: bool = False) -> bool:
    """Whether register spills fail the run for ``backend`` on ``target``."""
    return problem_is_fatal("register spills", target_role(backend, target), strict)


@dataclass
class CompileRun:
    """Everything one compile command produced."""

    reports: list[KernelReport]
    notes: list[ModuleNote]
    specs_per_backend: dict[str, int]

    @property
    def failed(self) -> list[KernelReport]:
        return [r for r in self.reports if not r.ok]


_TASKS: list[tuple[dict, str, str, str]] = []


def _run_task(index: int) -> KernelReport:
    spec, target, backend, module = _TASKS[index]
    return compile_spec(spec, target, backend, module)


def _task_failure(index: int, problem: str) -> KernelReport:
    spec, target, backend, module = _TASKS[index]
    return KernelReport(backend=backend, target=target, module=module,
                        name=str(spec.get("name") or "?"),
                        shared_limit=TARGETS[target].shared_limit, problems=[problem])


def _child(index: int, conn: Any) -> None:
    try:
        report = _run_task(index)
    except BaseException as exc:  # anything at all becomes a failed row
        report = _task_failure(index, f"compile crashed: {type(exc).__name__}: {exc}")
    conn.send(report)
    conn.close()


def _run_forked(n: int, workers: int, timeout: float) -> list[KernelReport]:
    """Run tasks 0..n-1, ``workers`` at a time, one forked process per task."""
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")
    results: list[KernelReport | None] = [None] * n
    pending = list(range(n))
    running: dict[int, tuple[Any, Any, float]] = {}
    while pending or running:
        while pending and len(running) < workers:
            index = pending.pop(0)
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(index, child), daemon=True)
            proc.start()
            child.close()
            running[index] = (proc, parent, time.monotonic())
        wait([conn for _p, conn, _t in running.values()], timeout=1.0)
        for index, (proc, conn, started) in list(running.items()):
            if conn.poll():
                try:
                    results[index] = conn.recv()
                except EOFError:
                    proc.join()
                    results[index] = _task_failure(
                        index, f"compiler process died (exit code {proc.exitcode})")
            elif time.monotonic() - started > timeout:
                proc.kill()
                results[index] = _task_failure(index, f"compile timed out after {timeout:.0f} s")
            else:
                continue
            proc.join()
            conn.close()
            del running[index]
    return [r if r is not None else _task_failure(i, "no result") for i, r in enumerate(results)]


def _check_interpreter_off() -> None:
    """Kernels must be decorated with the real JIT: turn the interpreter off for this process."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        os.environ["TRITON_INTERPRET"] = "0"


def _takes_backend(mod: Any) -> bool:
    try:
        return "backend" in inspect.signature(mod.aot_specs).parameters
    except (TypeError, ValueError):
        return False


def _plan(backends: list[str], targets: list[str], modules: list[str] | None,
          extra: list[str]) -> tuple[list[tuple[dict, str, str, str]], list[ModuleNote],
                                     dict[str, int]]:
    notes: list[ModuleNote] = []
    plan: list[tuple[dict, str, str, str]] = []
    counts: dict[str, int] = {}
    done_common: set[tuple[str, str]] = set()
    explicit: list[Any] = []
    for name in (modules or []) + extra:
        try:
            explicit.append(load_module(name))
        except Exception as exc:
            notes.append(ModuleNote(name, f"import failed: {type(exc).__name__}: {exc}",
                                    failure=True))
    per_backend: dict[str, list[Any]] = {}
    for backend in backends:
        if modules is not None:
            per_backend[backend] = explicit
            continue
        mods, found = discover_modules(backend)
        notes += [n for n in found if n not in notes]
        per_backend[backend] = mods + [m for m in explicit if m not in mods]
    users: dict[str, int] = {}
    for mods in per_backend.values():
        for mod in mods:
            users[mod.__name__] = users.get(mod.__name__, 0) + 1
    for backend, mods in per_backend.items():
        counts[backend] = 0
        for target in targets:
            for mod in mods:
                label = backend
                if (mod.__name__.startswith(_COMMON + ".") and users[mod.__name__] > 1
                        and not _takes_backend(mod)):
                    # a kernel shared by several backends with one config table per arch:
                    # compile it once per target
                    label = COMMON_LABEL
                    if (mod.__name__, target) in done_common:
                        counts[backend] += 1
                        continue
                    done_common.add((mod.__name__, target))
                specs, why = collect_specs(mod, target, backend)
                notes += why
                counts[backend] += len(specs)
                plan += [(s, target, label, mod.__name__) for s in specs]
    return plan, notes, counts


def compile_all(backends: Iterable[str], targets: Iterable[str], *,
                modules: Iterable[str] | None = None, extra_modules: Iterable[str] = (),
                jobs: int | None = None, strict: bool = False,
                kernel_timeout: float = 900.0) -> CompileRun:
    """Compile every spec of ``backends`` (or of ``modules`` alone) for every target.

    ``extra_modules`` are compiled in addition to the backends' own modules.
    Runs ``jobs`` compilations at a time, each in its own forked process (default: one per
    CPU), so that a compiler crash or a hang (``kernel_timeout`` seconds) fails one row.
    Problems on targets the backend does not serve first become warnings unless ``strict``
    (``problem_is_fatal``).
    """
    _check_interpreter_off()
    plan, notes, counts = _plan(list(backends), list(targets),
                                None if modules is None else list(modules), list(extra_modules))
    _TASKS[:] = plan
    workers = max(1, min(jobs or os.cpu_count() or 1, len(plan)))
    try:
        if workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
            reports = [_run_task(i) for i in range(len(plan))]
        else:
            reports = _run_forked(len(plan), workers, kernel_timeout)
    finally:
        _TASKS.clear()
    for report, (spec, *_rest) in zip(reports, plan):
        _apply_policy(report, spec, strict)
    return CompileRun(reports, notes, counts)


def _apply_policy(report: KernelReport, spec: dict, strict: bool) -> None:
    """Turn problems into warnings where the target role or the spec allows it."""
    if not report.problems:
        return
    role = target_role(report.backend, report.target)
    allowed = int(spec.get("max_spill_bytes", 0) or 0)
    kept = []
    for problem in report.problems:
        spill = problem.startswith("register spills")
        if spill and report.spills is not None and report.spills <= allowed:
            report.notes.append(f"WARNING {problem} (within the spec's max_spill_bytes="
                                f"{allowed})")
        elif not problem_is_fatal(problem, role, strict):
            where = ("runs there only when forced" if role == "served"
                     else "never runs there")
            report.notes.append(f"WARNING {problem} ({report.backend} {where})")
        else:
            kept.append(problem)
    report.problems = kept


def format_table(reports: list[KernelReport]) -> str:
    """The compile table: kernel, config, shared/LDS bytes, registers, spills, status."""
    header = ("backend", "target", "kernel", "config", "shared/LDS B", "limit B", "regs",
              "spills", "s", "status")
    rows = [header]
    for r in reports:
        status = "ok" if r.ok else "FAIL: " + "; ".join(r.problems)
        if r.notes:
            status += "  (" + "; ".join(r.notes) + ")"
        rows.append((r.backend, r.target, r.name, r.config,
                     "-" if r.shared is None else str(r.shared),
                     "-" if r.shared_limit is None else str(r.shared_limit),
                     "-" if r.registers is None else str(r.registers),
                     "-" if r.spills is None else str(r.spills), f"{r.seconds:.1f}", status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1])
    return "\n".join(lines)


def reports_as_dicts(reports: list[KernelReport]) -> list[dict[str, Any]]:
    """JSON-ready reports (for ``--json``)."""
    return [dict(asdict(r), ok=r.ok) for r in reports]
