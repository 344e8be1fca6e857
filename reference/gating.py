"""Reference gating and normalization: ops ``fused_gdn_gating`` and ``l2norm``, and the
activation helpers every reference op shares.

    g    = -exp(A_log) * softplus(a + dt_bias)   # softplus(beta, threshold) as torch's
    beta = sigmoid(b)                            # 2 * sigmoid(b) with allow_neg_eigval
    l2norm(x) = x / sqrt(sum(x^2, -1) + eps)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gdn_dispatch.dtype_policy import policy_for
from gdn_dispatch.registry import CallMeta

__all__ = ["fused_gdn_gating", "l2norm", "decay_from_raw", "l2_normalize", "activated_gates"]


def decay_from_raw(A_log: torch.Tensor, a: torch.Tensor, dt_bias: torch.Tensor | None,
                   softplus_beta: float, threshold: float, dtype: torch.dtype) -> torch.Tensor:
    """Log-space decay ``g = -exp(A_log) * softplus(a + dt_bias)`` in ``dtype``.

    ``a`` ``[..., HV]``; ``A_log`` and ``dt_bias`` ``[HV]`` broadcast over the last axis.
    """
    x = a.to(dtype)
    if dt_bias is not None:
        x = x + dt_bias.to(dtype)
    return -torch.exp(A_log.to(dtype)) * F.softplus(x, beta=softplus_beta, threshold=threshold)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2, -1) + eps)`` in the dtype of ``x``."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def activated_gates(g: torch.Tensor | None, beta: torch.Tensor | None, shape: tuple[int, ...],
                    dtype: torch.dtype, device: torch.device, *, gate_in_kernel: bool = False,
                    A_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                    beta_sigmoid: bool = False, neg_eigval: bool = False,
                    softplus_beta: float = 1.0, threshold: float = 20.0,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The decay ``g`` and write strength ``beta`` (both ``shape``, in ``dtype``) a call uses.

    ``g=None``: no decay (zeros).  ``gate_in_kernel``: ``g`` is the raw input ``a``.
    ``beta=None``: ones.  ``beta_sigmoid``: ``beta`` is raw, ``sigmoid`` (times 2 with
    ``neg_eigval``) is applied; ``neg_eigval`` has no effect on a precomputed beta.
    """
    if g is None:
        gate = torch.zeros(shape, dtype=dtype, device=device)
    elif gate_in_kernel:
        assert A_log is not None  # validation guarantees it
        gate = decay_from_raw(A_log, g.reshape(shape), dt_bias, softplus_beta, threshold, dtype)
    else:
        gate = g.reshape(shape).to(dtype)
    if beta is None:
        strength = torch.ones(shape, dtype=dtype, device=device)
    elif beta_sigmoid:
        strength = torch.sigmoid(beta.reshape(shape).to(dtype))
        if neg_eigval:
            strength = strength * 2
    else:
        strength = beta.reshape(shape).to(dtype)
    return gate, strength


def fused_gdn_gating(A_log: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                     dt_bias: torch.Tensor | None, beta: float, threshold: float, *,
                     meta: CallMeta) -> tuple[torch.Tensor, torch.Tensor]:
    """``g = -exp(A_log) * softplus(a + dt_bias; beta, threshold)`` as float32 ``[1, N, HV]``
    and ``beta_output = sigmoid(b)`` ``[1, N, HV]`` in ``b.dtype`` (math in float32, or
    float64 for float64 inputs)."""
    compute = policy_for(meta.dtype, meta.probe).compute
    g = decay_from_raw(A_log, a, dt_bias, beta, threshold, compute)
    beta_out = torch.sigmoid(b.to(compute))
    return g.to(torch.float32).unsqueeze(0), beta_out.to(b.dtype).unsqueeze(0)


def l2norm(x: torch.Tensor, eps: float, *, meta: CallMeta) -> torch.Tensor:
    """``x / sqrt(sum(x^2, -1) + eps)`` in float32 (float64 for float64 input), cast back to
    ``x.dtype``; a new contiguous tensor."""
    compute = policy_for(meta.dtype, meta.probe).compute
    return l2_normalize(x.to(compute), eps).to(x.dtype).contiguous()
