"""Reference ``fused_qkvzba_split_reshape_cat``: split one fused input projection.

``layout="interleaved"`` (Qwen3-Next checkpoints): each row of ``mixed_qkvz`` holds, per key
head h, ``[q_h (Dk), k_h (Dk), v_h (G*Dv), z_h (G*Dv)]`` with ``G = Hv / Hqk``, and each row
of ``mixed_ba`` holds ``[b_h (G), a_h (G)]`` per key head.
``layout="contiguous"`` (Qwen3.5): ``[q (Hqk*Dk), k (Hqk*Dk), v (Hv*Dv), z (Hv*Dv)]`` and
``[b (Hv), a (Hv)]``.
Outputs (new contiguous tensors in the input dtype): ``mixed_qkv`` ``[N, 2*Hqk*Dk + Hv*Dv]``
(all q heads, then k, then v), ``z`` ``[N, Hv, Dv]``, ``b`` and ``a`` ``[N, Hv]``.
"""

from __future__ import annotations

import torch

from gdn_dispatch.registry import CallMeta

__all__ = ["fused_qkvzba_split_reshape_cat"]


def fused_qkvzba_split_reshape_cat(
    mixed_qkvz: torch.Tensor, mixed_ba: torch.Tensor, num_heads_qk: int, num_heads_v: int,
    head_qk: int, head_v: int, layout: str, *, meta: CallMeta,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``mixed_qkvz`` / ``mixed_ba`` into ``(mixed_qkv, z, b, a)`` (see module doc)."""
    N = mixed_qkvz.shape[0]
    Hqk, Hv, Dk, Dv = num_heads_qk, num_heads_v, head_qk, head_v
    G = Hv // Hqk
    if layout == "interleaved":
        per_head = mixed_qkvz.reshape(N, Hqk, 2 * Dk + 2 * G * Dv)
        q, k, v, z = per_head.split([Dk, Dk, G * Dv, G * Dv], dim=-1)
        b, a = mixed_ba.reshape(N, Hqk, 2 * G).split([G, G], dim=-1)
    else:
        q, k, v, z = mixed_qkvz.split([Hqk * Dk, Hqk * Dk, Hv * Dv, Hv * Dv], dim=-1)
        b, a = mixed_ba.split([Hv, Hv], dim=-1)
    mixed_qkv = torch.cat([q.reshape(N, -1), k.reshape(N, -1), v.reshape(N, -1)], dim=-1)
    fresh = torch.contiguous_format
    return (mixed_qkv, z.reshape(N, Hv, Dv).clone(memory_format=fresh),
            b.reshape(N, Hv).clone(memory_format=fresh), a.reshape(N, Hv).clone(memory_format=fresh))
