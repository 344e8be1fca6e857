"""Where a chunk's rows lie in the packed token axis (shared by the per-chunk kernels)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def chunk_row_bounds(i_c, chunk_table, T, CHUNK: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(first row, end row) in int64 of chunk ``i_c``: from the varlen chunk table
    (``[start, end]`` pairs) or, for ``B x T`` inputs, from the chunk's batch and position."""
    if IS_VARLEN:
        bos = tl.load(chunk_table + 2 * i_c).to(tl.int64)
        eos = tl.load(chunk_table + 2 * i_c + 1).to(tl.int64)
    else:
        n_chunks = tl.cdiv(T, CHUNK)
        i_b = i_c // n_chunks
        bos = (i_b * T + (i_c % n_chunks) * CHUNK).to(tl.int64)
        eos = tl.minimum(bos + CHUNK, (i_b * T + T).to(tl.int64))
    return bos, eos
