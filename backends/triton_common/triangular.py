"""``(I + A)^-1`` of a strictly lower chunk matrix, in registers (shared by the chunked
prefill kernels of both Triton backends)."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["unit_lower_inverse"]


@triton.jit
def unit_lower_inverse(b_A, BT: tl.constexpr, PRECISION: tl.constexpr):
    """``(I + A)^-1`` (float32) of a strictly lower ``[BT, BT]`` float32 ``A``.

    The ``BT / 16`` diagonal 16x16 blocks are inverted together as a ``[NB, 16, 16]`` tensor
    by right-looking forward substitution in float32 (row j of X is final after step j - 1;
    subtract ``D[:, j] x X[j, :]``; both operands are reductions broadcast back along the
    reduced axis, so no layout shuffles); with ``Di`` their block-diagonal inverse and ``L``
    the strictly block-lower part of A, ``M = Di L`` is nilpotent of order ``NB`` (4), so
    ``(I + A)^-1 = (I - M)(I + M^2) Di`` (four ``BT``-square products at ``PRECISION``)."""
    NB: tl.constexpr = BT // 16
    o_t = tl.arange(0, BT)
    blk = o_t // 16
    o_b = tl.arange(0, NB)
    same_block = o_b[:, None, None, None] == o_b[None, None, :, None]      # [NB, 1, NB, 1]
    o_r = tl.arange(0, 16)
    row16 = o_r[None, :, None]                                             # [1, 16, 1]
    col16 = o_r[None, None, :]                                             # [1, 1, 16]
    eye16 = tl.where(o_r[:, None] == o_r[None, :], 1.0, 0.0)
    a4 = tl.reshape(b_A, (NB, 16, NB, 16))
    d3 = tl.sum(tl.where(same_block, a4, 0.0), 2)                          # [NB, 16, 16]
    x3 = tl.zeros([NB, 16, 16], dtype=tl.float32) + eye16[None, :, :]
    for j in tl.static_range(0, 15):
        col = tl.sum(tl.where(col16 == j, d3, 0.0), 2)                     # D[:, :, j]
        row = tl.sum(tl.where(row16 == j, x3, 0.0), 1)                     # X[:, j, :]
        x3 = x3 - col[:, :, None] * row[:, None, :]
    b_Di = tl.reshape(tl.where(same_block, x3[:, :, None, :], 0.0), (BT, BT))
    b_L = tl.where(blk[:, None] > blk[None, :], b_A, 0.0)
    b_M = tl.dot(b_Di, b_L, input_precision=PRECISION)
    b_M2 = tl.dot(b_M, b_M, input_precision=PRECISION)
    b_IM = tl.where(o_t[:, None] == o_t[None, :], 1.0, 0.0) - b_M
    b_Q = tl.dot(b_IM, b_M2, acc=b_IM, input_precision=PRECISION)
    return tl.dot(b_Q, b_Di, input_precision=PRECISION)
