"""A Qwen3-Next-style gated DeltaNet block built only from ``gdn_dispatch`` ops and plain torch.

Not part of the package API: an end-to-end example of how an inference engine wires the ops.

    hidden -> in_proj_qkvz, in_proj_ba                        (two Linear layers)
           -> gdn.fused_qkvzba_split_reshape_cat              (checkpoint layout -> q|k|v, z, b, a)
           -> short causal depthwise conv + SiLU over q|k|v   (plain torch; conv state per slot)
           -> prefill: gdn.fused_gdn_gating + gdn.chunk_gated_delta_rule (varlen, cu_seqlens)
              decode:  gdn.fused_recurrent_gated_delta_rule_packed_decode (gating fused in)
           -> gated RMSNorm (norm(o) * w * silu(z)) -> out_proj

State lives in two pools indexed by a slot per sequence (``GDNStateCache``): the SSM pool
``[slots, HV, V, K]`` (V-first, as vLLM / SGLang keep it) and the conv pool
``[slots + 1, conv_dim, kernel - 1]`` whose last row is a scratch row that padded batch rows
(slot ``-1``) read and write, so no branch on data is needed and ``torch.compile`` sees one
graph.  Prefill starts new sequences (zero state); decode takes one token per row and rows
with slot ``-1`` are padding (their output is zero, no state changes).

Everything here is traceable with ``torch.compile(fullgraph=True)``: the gdn ops are custom
ops while compiling, and the varlen conv uses masks instead of Python loops over sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import gdn_dispatch as gdn

__all__ = ["GDNConfig", "GDNStateCache", "Qwen3NextGatedDeltaNet"]


@dataclass(frozen=True)
class GDNConfig:
    """Sizes of one gated DeltaNet layer (Qwen3-Next-80B uses 2048 / 16 / 32 / 128 / 128 / 4)."""

    hidden_size: int = 64
    num_k_heads: int = 2
    num_v_heads: int = 4
    head_k_dim: int = 16
    head_v_dim: int = 16
    conv_kernel: int = 4
    rms_eps: float = 1e-6
    layout: str = "interleaved"  # checkpoint order of in_proj rows: "interleaved" or "contiguous"

    @property
    def key_dim(self) -> int:
        return self.num_k_heads * self.head_k_dim

    @property
    def value_dim(self) -> int:
        return self.num_v_heads * self.head_v_dim

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim


@dataclass
class GDNStateCache:
    """Per-slot state of one layer: ``ssm`` ``[slots, HV, V, K]``, ``conv`` ``[slots + 1,
    conv_dim, kernel - 1]`` (the last conv row is scratch for padded rows)."""

    ssm: torch.Tensor
    conv: torch.Tensor

    @classmethod
    def empty(cls, cfg: GDNConfig, slots: int, dtype: torch.dtype = torch.float32,
              state_dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> GDNStateCache:
        ssm = torch.zeros(slots, cfg.num_v_heads, cfg.head_v_dim, cfg.head_k_dim,
                          dtype=state_dtype, device=device)
        conv = torch.zeros(slots + 1, cfg.conv_dim, cfg.conv_kernel - 1, dtype=dtype,
                           device=device)
        return cls(ssm=ssm, conv=conv)


def _conv_rows(slots: torch.Tensor, conv_pool: torch.Tensor) -> torch.Tensor:
    """Conv-pool row of each batch row: its slot, or the scratch row for padding (-1)."""
    scratch = conv_pool.shape[0] - 1
    return torch.where(slots >= 0, slots, torch.full_like(slots, scratch)).long()


class Qwen3NextGatedDeltaNet(nn.Module):
    """The linear-attention (gated DeltaNet) block of Qwen3-Next, inference only."""

    def __init__(self, cfg: GDNConfig, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg = cfg
        kw = dict(dtype=dtype, device=device)
        HV = cfg.num_v_heads
        self.in_proj_qkvz = nn.Linear(cfg.hidden_size, 2 * cfg.key_dim + 2 * cfg.value_dim,
                                      bias=False, **kw)
        self.in_proj_ba = nn.Linear(cfg.hidden_size, 2 * HV, bias=False, **kw)
        self.conv_weight = nn.Parameter(torch.empty(cfg.conv_dim, cfg.conv_kernel, **kw))
        self.A_log = nn.Parameter(torch.empty(HV, **kw))
        self.dt_bias = nn.Parameter(torch.empty(HV, **kw))
        self.norm_weight = nn.Parameter(torch.ones(cfg.head_v_dim, **kw))
        self.out_proj = nn.Linear(cfg.value_dim, cfg.hidden_size, bias=False, **kw)
        with torch.no_grad():
            nn.init.normal_(self.conv_weight, std=cfg.conv_kernel ** -0.5)
            self.A_log.copy_(torch.empty(HV).uniform_(1, 16).log())
            self.dt_bias.uniform_(-1.0, 1.0)

    # -- pieces shared by prefill and decode --------------------------------------------------
    def _project(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """hidden ``[N, D]`` -> ``(mixed_qkv [N, conv_dim], z [N, HV, V], b, a [N, HV])``."""
        c = self.cfg
        return gdn.fused_qkvzba_split_reshape_cat(
            self.in_proj_qkvz(hidden), self.in_proj_ba(hidden), c.num_k_heads, c.num_v_heads,
            c.head_k_dim, c.head_v_dim, c.layout)

    def _gated_norm_out(self, o: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gated RMSNorm per value head (``norm(o) * w * silu(z)``), then ``out_proj``."""
        dtype = o.dtype
        compute = torch.promote_types(dtype, torch.float32)
        of = o.to(compute)
        of = of * torch.rsqrt(of.pow(2).mean(-1, keepdim=True) + self.cfg.rms_eps)
        y = (self.norm_weight * of.to(dtype)).to(compute) * F.silu(z.to(compute))
        return self.out_proj(y.to(dtype).reshape(o.shape[0], -1))

    # -- prefill ----------------------------------------------------------------------------
    def prefill(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor, slots: torch.Tensor,
                ssm_pool: torch.Tensor, conv_pool: torch.Tensor) -> torch.Tensor:
        """New sequences packed along tokens: ``hidden`` ``[T, D]``, ``cu_seqlens`` ``[N+1]``,
        ``slots`` ``[N]`` (valid pool slots).  Writes each sequence's final SSM and conv state
        to its slot; returns ``[T, D]``."""
        c = self.cfg
        T = hidden.shape[0]
        mixed_qkv, z, b, a = self._project(hidden)
        x = self._causal_conv_varlen(mixed_qkv, cu_seqlens, slots, conv_pool)
        H, K, HV, V = c.num_k_heads, c.head_k_dim, c.num_v_heads, c.head_v_dim
        q = x[:, : H * K].view(1, T, H, K)
        k = x[:, H * K: 2 * H * K].view(1, T, H, K)
        v = x[:, 2 * H * K:].view(1, T, HV, V)
        g, beta = gdn.fused_gdn_gating(self.A_log, a, b, self.dt_bias)
        o, final = gdn.chunk_gated_delta_rule(
            q, k, v, g, beta, initial_state=None, output_final_state=True,
            use_qk_l2norm_in_kernel=True, state_v_first=True, cu_seqlens=cu_seqlens)
        ssm_pool[slots.long()] = final.to(ssm_pool.dtype)
        return self._gated_norm_out(o[0], z)

    def _causal_conv_varlen(self, x: torch.Tensor, cu_seqlens: torch.Tensor,
                            slots: torch.Tensor, conv_pool: torch.Tensor) -> torch.Tensor:
        """Depthwise causal conv + SiLU over packed sequences (taps never cross a sequence
        start); stores each sequence's last ``kernel - 1`` inputs in its conv slot."""
        W = self.cfg.conv_kernel
        T = x.shape[0]
        cu = cu_seqlens.long()
        tok = torch.arange(T, device=x.device)
        # sequence of each token = number of sequence ends at or before it (a compare-and-sum
        # rather than searchsorted: Inductor 2.11 cannot lower searchsorted over a slice)
        seq = (tok[:, None] >= cu[None, 1:]).sum(-1)
        pos = tok - cu[seq]  # position of each token inside its sequence
        y = torch.zeros_like(x)
        for j in range(W):  # tap j reads the input `shift` tokens back
            shift = W - 1 - j
            back = F.pad(x, (0, 0, shift, 0))[:T]
            y = y + (back * (pos >= shift)[:, None].to(x.dtype)) * self.conv_weight[:, j]
        # conv state: the last W-1 inputs of each sequence (zeros before its start)
        src = cu[1:, None] - (W - 1) + torch.arange(W - 1, device=x.device)
        keep = src >= cu[:-1, None]
        tail = x[src.clamp(min=0)] * keep[..., None].to(x.dtype)       # [N, W-1, C]
        conv_pool[_conv_rows(slots, conv_pool)] = tail.transpose(1, 2).to(conv_pool.dtype)
        return F.silu(y)

    # -- decode -----------------------------------------------------------------------------
    def decode(self, hidden: torch.Tensor, slots: torch.Tensor, ssm_pool: torch.Tensor,
               conv_pool: torch.Tensor) -> torch.Tensor:
        """One token per row: ``hidden`` ``[N, D]``, ``slots`` ``[N]`` (``-1``: padding row,
        output zero, no state touched).  Updates both pools in place; returns ``[N, D]``."""
        c = self.cfg
        N = hidden.shape[0]
        mixed_qkv, z, b, a = self._project(hidden)
        rows = _conv_rows(slots, conv_pool)
        window = torch.cat([conv_pool[rows].to(mixed_qkv.dtype), mixed_qkv[:, :, None]], -1)
        conv_pool[rows] = window[:, :, 1:].to(conv_pool.dtype)
        x = F.silu((window * self.conv_weight).sum(-1))
        out = torch.empty(N, 1, c.num_v_heads, c.head_v_dim, dtype=x.dtype, device=x.device)
        gdn.fused_recurrent_gated_delta_rule_packed_decode(
            x, a, b, self.A_log, self.dt_bias, None, ssm_pool, out, slots,
            use_qk_l2norm_in_kernel=True)
        return self._gated_norm_out(out[:, 0], z)

    def forward(self, hidden: torch.Tensor, slots: torch.Tensor, cache: GDNStateCache,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """Prefill when ``cu_seqlens`` is given, else one decode step."""
        if cu_seqlens is not None:
            return self.prefill(hidden, cu_seqlens, slots, cache.ssm, cache.conv)
        return self.decode(hidden, slots, cache.ssm, cache.conv)


def interleave_checkpoint(weight_qkvz: torch.Tensor, weight_ba: torch.Tensor,
                          cfg: GDNConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder contiguous-layout (Qwen3.5) ``in_proj`` rows into the interleaved
    (Qwen3-Next) order: per key head ``[q_h, k_h, v_h, z_h]`` and ``[b_h, a_h]``."""
    Hk, Dk, Dv = cfg.num_k_heads, cfg.head_k_dim, cfg.head_v_dim
    G = cfg.num_v_heads // Hk
    D = weight_qkvz.shape[1]
    q, k, v, z = weight_qkvz.split([cfg.key_dim, cfg.key_dim, cfg.value_dim, cfg.value_dim])
    per_head = torch.cat([q.reshape(Hk, Dk, D), k.reshape(Hk, Dk, D),
                          v.reshape(Hk, G * Dv, D), z.reshape(Hk, G * Dv, D)], dim=1)
    b, a = weight_ba.split([cfg.num_v_heads, cfg.num_v_heads])
    ba = torch.cat([b.reshape(Hk, G, D), a.reshape(Hk, G, D)], dim=1)
    return per_head.reshape(-1, D), ba.reshape(-1, D)
