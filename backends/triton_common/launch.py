"""Low-overhead kernel launches for decode: reuse the compiled kernel instead of re-binding.

A decode step launches the same few kernels with the same shapes thousands of times; Triton's
``kernel[grid](...)`` re-binds and re-specializes every argument, reads its runtime knobs and
rebuilds the cache key on each call.  ``CachedLauncher`` does that once per *launch key*
(constexprs, launch options, device, every integer argument's value, every tensor's dtype and
16-byte alignment — a superset of what Triton specializes on) and then calls the compiled
kernel's launcher directly.  A new key, the interpreter, or ``GDN_TRITON_FAST_LAUNCH=0`` take
Triton's normal path.  Triton launch hooks (profilers) are not called on the fast path.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

__all__ = ["CachedLauncher", "fast_launch_enabled", "set_fast_launch"]

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
