"""Varlen bookkeeping shared by the chunked prefill launchers of both Triton backends.

``slot_chunks`` maps every grid slot of a varlen call (an upper bound of ``T // chunk + N``
chunks) to its sequence and chunk with torch ops on the device, so nothing waits for the
host to read ``cu_seqlens``.  ``memo_by_tensor`` keeps a table built from a ``cu_seqlens``
for as long as that same tensor is passed unchanged (engines pass one to every layer).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["slot_chunks", "memo_by_tensor"]


def slot_chunks(cu_seqlens: torch.Tensor, slots: int,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(seq, local, valid, starts)`` int64 / bool on the device of ``cu_seqlens``: for
    each of ``slots`` grid slots its sequence (clamped into range) and chunk within that
    sequence, whether the slot holds a chunk at all, and per sequence the slot of its first
    chunk."""
    cu = cu_seqlens.to(torch.int64)
    n = cu.numel() - 1
    n_chunks = (cu[1:] - cu[:-1] + chunk - 1) // chunk
    ends = torch.cumsum(n_chunks, 0)
    starts = ends - n_chunks
    slot = torch.arange(slots, device=cu.device, dtype=torch.int64)
    seq = torch.searchsorted(ends, slot, right=True)
    valid = seq < n
    seq = seq.clamp(max=max(n - 1, 0))
    return seq, slot - starts[seq], valid, starts


_Cache = dict[int, tuple[Any, tuple, Any]]


def memo_by_tensor(cache: _Cache, t: torch.Tensor, extra: tuple,
                   build: Callable[[], Any]) -> Any:
    """``build()``, memoised in ``cache`` for the same live tensor ``t`` and ``extra``.

    The entry is keyed by the tensor object (held weakly), its storage pointer, version
    counter and size, so an in-place change, a new tensor or a freed one misses.  Nothing
    is cached during CUDA-graph capture (the result must then live in the graph's pool);
    the cache is cleared when it holds 8 entries."""
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    key = id(t)
    stamp = (t.data_ptr(), t._version, t.numel(), *extra)
    hit = None if capturing else cache.get(key)
    if hit is not None and hit[0]() is t and hit[1] == stamp:
        return hit[2]
    value = build()
    if not capturing:
        if len(cache) >= 8:
            cache.clear()
        cache[key] = (weakref.ref(t), stamp, value)
    return value
