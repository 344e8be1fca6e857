"""Low-overhead kernel launches for decode: reuse the compiled kernel instead of re-binding.

A decode step launches the same few kernels with the same shapes thousands of times; Triton's
``kernel[grid](...)`` re-binds and re-specializes every argument, reads its runtime knobs and
rebuilds the cache key on each call.  ``CachedLauncher`` does that once per *launch key*
(constexprs, launch options, device, every integer argument's value, every tensor's dtype and
16-byte alignment — a superset of what Triton specializes on) and then calls the compiled
kernel's launcher directly.  A new key, the interpreter, or ``GDN_TRITON_FAST_LAUNCH=0`` take
Triton's normal path.  Triton launch hooks (profilers) are not called on the fast path.

``LaunchPlan`` goes one step further for callers that launch the same kernel with the same
metadata again and again (a backend keeps one in ``CallMeta.scratch``): grid, scalar
arguments, constexprs and options are fixed once, so a repeated launch only reads the data
pointers, picks the compiled kernel for their 16-byte alignment and calls Triton's launcher
with the pointers as plain integers (which also skips the launcher's per-pointer
``data_ptr()`` call and driver query).  A plan holds no pointers: it is safe to build outside
a CUDA graph and replay inside one, and the other way round.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["CachedLauncher", "LaunchPlan", "fast_launch_enabled", "set_fast_launch",
           "fast_empty", "contiguous_strides"]

_ENABLED = os.environ.get("GDN_TRITON_FAST_LAUNCH", "1") not in ("0", "false", "False", "no")
_MAX_KEYS = 1024


def fast_launch_enabled() -> bool:
    return _ENABLED


def set_fast_launch(on: bool) -> None:
    """Turn the cached launch path on or off for the process (benchmarks compare both)."""
    global _ENABLED
    _ENABLED = bool(on)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Strides of a contiguous tensor of ``shape`` (size-0 dims count as 1, as torch does)."""
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def fast_empty(device: torch.device) -> Any:
    """A cheaper ``torch.empty_strided`` for ``device``, or None where it is not usable.

    PyTorch's own compiled code allocates outputs with ``_empty_strided_cuda(size, stride,
    dtype)`` (no dispatcher, no argument parser; same caching allocator, so CUDA-graph
    capture is unaffected).  It allocates on the *current* device, so it is offered only on
    single-GPU processes, and only after a trial allocation returned what was asked for.
    """
    if device.type != "cuda" or not _ENABLED:
        return None
    fn = getattr(getattr(torch._C, "_dynamo", None), "guards", None)
    fn = getattr(fn, "_empty_strided_cuda", None)
    if fn is None:
        return None
    try:
        if torch.cuda.device_count() != 1:
            return None
        t = fn((2, 3), (3, 1), torch.float16)
        ok = (t.device == device or t.get_device() == (device.index or 0)) and \
            t.shape == (2, 3) and t.stride() == (3, 1) and t.dtype == torch.float16
    except Exception:  # another torch: take the plain path
        return None
    return fn if ok else None


class CachedLauncher:
    """Launch ``fn`` (a ``triton.jit`` function whose constexpr parameters all come after its
    runtime ones) with a per-key cache of compiled kernels.

    ``launch(grid, runtime_args, constexpr_values, num_warps, num_stages, options)``: the
    non-constexpr arguments and the constexpr values, each in declaration order.
    """

    def __init__(self, fn: Any, n_runtime: int):
        self.fn = fn
        self.constexpr_names = tuple(fn.arg_names[n_runtime:])
        self.cache: dict[tuple, tuple[Any, Any, Any]] = {}
        self.interpreted = _interpreting()

    def constexpr_tuple(self, values: dict[str, Any]) -> tuple:
        """Constexpr values in declaration order from a name -> value dict (missing names
        take the kernel's defaults)."""
        import inspect

        params = inspect.signature(getattr(self.fn, "fn", self.fn)).parameters
        defaults = {name: p.default for name, p in params.items()}
        return tuple(values[name] if name in values else defaults[name]
                     for name in self.constexpr_names)

    def _slow(self, grid, runtime_args, constexpr_values, num_warps, num_stages, options):
        return self.fn[grid](*runtime_args, **dict(zip(self.constexpr_names, constexpr_values)),
                             num_warps=num_warps, num_stages=num_stages, **dict(options))

    def launch(self, grid: tuple[int, ...], runtime_args: tuple, constexpr_values: tuple,
               num_warps: int, num_stages: int, options: tuple[tuple[str, Any], ...] = ()) -> None:
        if self.interpreted or not _ENABLED:
            self._slow(grid, runtime_args, constexpr_values, num_warps, num_stages, options)
            return
        dev = -1
        sig: list[Any] = []
        for a in runtime_args:
            if isinstance(a, torch.Tensor):
                dev = a.get_device()
                sig.append((a.dtype, a.data_ptr() & 15))
            elif isinstance(a, float):
                sig.append(float)
            else:
                sig.append(a)  # ints (exact values) and None
        key = (constexpr_values, num_warps, num_stages, options, dev, tuple(sig))
        hit = self.cache.get(key)
        if hit is None:
            kernel = self._slow(grid, runtime_args, constexpr_values, num_warps, num_stages,
                                options)
            if len(self.cache) >= _MAX_KEYS:
                self.cache.clear()
            self.cache[key] = (kernel.run, kernel.function, kernel.packed_metadata)
            return
        run, function, packed = hit
        stream = torch._C._cuda_getCurrentRawStream(dev)
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        try:
            run(grid[0], g1, g2, stream, function, packed, None, None, None, *runtime_args,
                *constexpr_values)
        except (TypeError, ValueError, AttributeError) as exc:
            # a Triton whose launcher takes other arguments: argument parsing fails before
            # anything is launched, so fall back to the plain path for good
            warnings.warn(f"gdn_dispatch: cached Triton launch unavailable ({exc!r}); "
                          "using Triton's plain launch", stacklevel=2)
            set_fast_launch(False)
            self._slow(grid, runtime_args, constexpr_values, num_warps, num_stages, options)


class LaunchPlan:
    """One launch of a ``CachedLauncher``'s kernel with everything but the pointers fixed.

    The kernel's pointer parameters must be its first ``len(tensors)`` runtime parameters;
    ``scalars`` are the remaining runtime arguments and ``constexprs`` the constexpr values,
    both in declaration order.  Which pointers are None is part of the plan (None pointers
    specialize the kernel), so every ``launch`` must pass None in the same places.
    Everything here must come from call metadata (shapes, strides, dtypes, flags), never
    from data pointers.
    """

    __slots__ = ("launcher", "grid", "scalars", "constexprs", "tail", "num_warps",
                 "num_stages", "options", "device", "kernels", "g0", "g1", "g2")

    def __init__(self, launcher: CachedLauncher, grid: tuple[int, ...], scalars: Sequence[Any],
                 constexprs: Sequence[Any], num_warps: int, num_stages: int,
                 options: tuple[tuple[str, Any], ...] = (), device: int = 0):
        self.launcher = launcher
        self.grid = tuple(grid)
        self.g0 = self.grid[0]
        self.g1 = self.grid[1] if len(self.grid) > 1 else 1
        self.g2 = self.grid[2] if len(self.grid) > 2 else 1
        self.scalars = tuple(scalars)
        self.constexprs = tuple(constexprs)
        self.tail = self.scalars + self.constexprs
        self.num_warps = num_warps
        self.num_stages = num_stages
        self.options = tuple(options)
        self.device = device
        # pointer-alignment signature -> (run, function, packed metadata) of the compiled kernel
        self.kernels: dict[Any, tuple[Any, Any, Any]] = {}

    def _compile_and_launch(self, tensors: Sequence[Any], sig: Any) -> None:
        """First launch of a pointer-alignment signature: take the compiled kernel from the
        launcher's shared cache (another plan of the same launch compiled it) or compile it
        through Triton's normal path, and remember it in both."""
        dtypes = tuple(None if t is None else t.dtype for t in tensors)
        shared_key = ("plan", self.constexprs, self.num_warps, self.num_stages, self.options,
                      self.device, self.scalars, dtypes, sig)
        cache = self.launcher.cache
        hit = cache.get(shared_key)
        if hit is None:
            kernel = self.launcher._slow(self.grid, (*tensors, *self.scalars), self.constexprs,
                                         self.num_warps, self.num_stages, self.options)
            if kernel is None:
                return
            hit = (kernel.run, kernel.function, kernel.packed_metadata)
            if len(cache) >= _MAX_KEYS:
                cache.clear()
            cache[shared_key] = hit
            launched = True
        else:
            launched = False
        if len(self.kernels) >= 64:
            self.kernels.clear()
        self.kernels[sig] = hit
        if not launched:
            self._run(hit, [None if t is None else t.data_ptr() for t in tensors], tensors)

    def _run(self, hit: tuple[Any, Any, Any], ptrs: list, tensors: Sequence[Any]) -> None:
        run, function, packed = hit
        try:
            run(self.g0, self.g1, self.g2, torch._C._cuda_getCurrentRawStream(self.device),
                function, packed, None, None, None, *ptrs, *self.tail)
        except (TypeError, ValueError, AttributeError) as exc:
            warnings.warn(f"gdn_dispatch: planned Triton launch unavailable ({exc!r}); "
                          "using Triton's plain launch", stacklevel=3)
            set_fast_launch(False)
            self.launcher._slow(self.grid, (*tensors, *self.scalars), self.constexprs,
                                self.num_warps, self.num_stages, self.options)

    def launch(self, *tensors: Any) -> None:
        """Launch with these pointer arguments (tensors or None, in declaration order)."""
        if self.launcher.interpreted or not _ENABLED:
            self.launcher._slow(self.grid, (*tensors, *self.scalars), self.constexprs,
                                self.num_warps, self.num_stages, self.options)
            return
        ptrs = [None if t is None else t.data_ptr() for t in tensors]
        bits = 0
        for p in ptrs:
            if p:
                bits |= p
        # all 16-byte aligned (the usual case) -> key 0; else the per-pointer residues
        sig = 0 if not bits & 15 else tuple([-1 if p is None else p & 15 for p in ptrs])
        hit = self.kernels.get(sig)
        if hit is None:
            self._compile_and_launch(tensors, sig)
            return
        self._run(hit, ptrs, tensors)
