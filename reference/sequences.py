"""Sequence layout shared by the reference ops: packed tokens <-> padded per-sequence rows.

A call holds N sequences either as ``B`` rows of ``T`` tokens or, with ``cu_seqlens``, as
``N`` variable-length runs of one ``[1, T]`` row.  ``SequenceLayout`` gathers them into a
zero-padded ``[N, T_pad, ...]`` block (``T_pad`` a multiple of ``multiple``) with a mask of
real tokens, so every op runs batched over sequences; ``unpack`` scatters back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SequenceLayout", "sequence_layout", "head_index"]


@dataclass(frozen=True)
class SequenceLayout:
    """Where each padded position ``[n, t]`` lives in the flattened ``[B*T]`` token axis.

    ``pos[n, t]``: flat token index (0 where padding); ``mask[n, t]``: a real token.
    """

    B: int
    T: int
    N: int
    T_pad: int
    pos: torch.Tensor   # [N, T_pad] int64
    mask: torch.Tensor  # [N, T_pad] bool
    dense: bool         # no cu_seqlens and T == T_pad: pack/unpack are reshapes

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...]`` -> ``[N, T_pad, ...]`` with zeros on padding positions."""
        if self.dense:
            return x
        flat = x.reshape(self.B * self.T, *x.shape[2:])
        out = flat[self.pos]
        return out * self.mask.view(*self.mask.shape, *([1] * (x.dim() - 2))).to(out.dtype)

    def unpack(self, xp: torch.Tensor) -> torch.Tensor:
        """``[N, T_pad, ...]`` -> ``[B, T, ...]`` (padding positions dropped)."""
        if self.dense:
            return xp
        return xp[self.mask].reshape(self.B, self.T, *xp.shape[2:])


def sequence_layout(B: int, T: int, cu_seqlens: torch.Tensor | None, multiple: int,
                    device: torch.device) -> SequenceLayout:
    """The padded layout of a call's sequences; ``T_pad`` rounds the longest up to
    ``multiple``.  Reads ``cu_seqlens`` on the host (the reference may synchronize)."""
    if cu_seqlens is None:
        N = B
        starts = torch.arange(B, device=device, dtype=torch.int64) * T
        lengths = torch.full((B,), T, device=device, dtype=torch.int64)
        longest = T
    else:
        cu = cu_seqlens.to(device=device, dtype=torch.int64)
        N = cu.shape[0] - 1
        starts = cu[:-1]
        lengths = cu[1:] - cu[:-1]
        longest = int(lengths.max()) if N > 0 else 0
    T_pad = -(-longest // multiple) * multiple
    t = torch.arange(T_pad, device=device, dtype=torch.int64)
    mask = t[None, :] < lengths[:, None]
    pos = torch.where(mask, starts[:, None] + t[None, :], torch.zeros((), dtype=torch.int64,
                                                                      device=device))
    dense = cu_seqlens is None and T_pad == T
    return SequenceLayout(B=B, T=T, N=N, T_pad=T_pad, pos=pos, mask=mask, dense=dense)


def head_index(H: int, HV: int, device: torch.device) -> torch.Tensor:
    """Key head of every value head: ``hv // (HV // H)`` (grouped value attention)."""
    return torch.arange(HV, device=device) // (HV // H)
