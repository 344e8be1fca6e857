"""Elementwise decode helpers: GDN gating and row-wise L2 normalisation.

``gdn_gating_kernel``: ``g = -exp(A_log) * softplus(a + dt_bias)`` (torch's softplus with
beta / threshold) into float32, ``beta_out = sigmoid(b)`` in ``b``'s dtype, over ``[N, HV]``
inputs with any row stride.  ``l2norm_kernel``: ``x / sqrt(sum(x^2) + eps)`` per row in
float32, for rows with any row and element stride.  Launch choices come from the caller
(``RowConfig``); vendor-only options ride in ``RowConfig.options``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from .aot_util import TRITON_TY, aligned, vendor_configs
from .launch import CachedLauncher

__all__ = ["RowConfig", "gdn_gating_kernel", "l2norm_kernel", "launch_gdn_gating",
           "launch_l2norm", "aot_specs"]


@dataclass(frozen=True)
class RowConfig:
    """``block``: elements (gating) or rows (l2norm) per program."""

    block: int
    num_warps: int
    num_stages: int = 1
    options: tuple[tuple[str, Any], ...] = ()


@triton.jit
def gdn_gating_kernel(A_log, a, b, dt_bias, g_out, beta_out, softplus_beta, softplus_threshold,
                      total, s_a, s_b, HV: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
                      BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    n = offs // HV
    h = offs % HV
    x = tl.load(a + n * s_a + h, mask=mask, other=0).to(tl.float32)
    if HAS_DT_BIAS:
        x = x + tl.load(dt_bias + h, mask=mask, other=0).to(tl.float32)
    bx = x * softplus_beta
    sp = tl.where(bx <= softplus_threshold, tl.log(1.0 + tl.exp(bx)) / softplus_beta, x)
    A = tl.load(A_log + h, mask=mask, other=0).to(tl.float32)
    tl.store(g_out + offs, -tl.exp(A) * sp, mask=mask)
    bb = tl.load(b + n * s_b + h, mask=mask, other=0).to(tl.float32)
    tl.store(beta_out + offs, tl.sigmoid(bb).to(beta_out.dtype.element_ty), mask=mask)


@triton.jit
def l2norm_kernel(x, y, eps, rows, s_row, s_col, D: tl.constexpr, BD: tl.constexpr,
                  ROWS: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BD)
    mask = (r < rows)[:, None] & (c < D)[None, :]
    xv = tl.load(x + r[:, None] * s_row + c[None, :] * s_col, mask=mask, other=0).to(tl.float32)
    inv = tl.rsqrt(tl.sum(xv * xv, 1) + eps)
    tl.store(y + r[:, None] * D + c[None, :], (xv * inv[:, None]).to(y.dtype.element_ty),
             mask=mask)


_GATING = CachedLauncher(gdn_gating_kernel, n_runtime=gdn_gating_kernel.arg_names.index("HV"))
_L2NORM = CachedLauncher(l2norm_kernel, n_runtime=l2norm_kernel.arg_names.index("D"))


def launch_gdn_gating(A_log: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                      dt_bias: torch.Tensor | None, g_out: torch.Tensor, beta_out: torch.Tensor,
                      softplus_beta: float, softplus_threshold: float, *,
                      config: RowConfig) -> None:
    """Gating of ``a, b`` ``[N, HV]`` (last dim contiguous) into contiguous outputs."""
    N, HV = a.shape
    total = N * HV
    if total == 0:
        return
    _GATING.launch(((total + config.block - 1) // config.block,),
                   (A_log, a, b, dt_bias, g_out, beta_out, float(softplus_beta),
                    float(softplus_threshold), total, a.stride(0), b.stride(0)),
                   (HV, dt_bias is not None, config.block),
                   config.num_warps, config.num_stages, config.options)


def launch_l2norm(x2d: torch.Tensor, y: torch.Tensor, eps: float, *, config: RowConfig) -> None:
    """Row-wise L2 norm of ``x2d`` ``[rows, D]`` (any strides) into contiguous ``y``."""
    rows, D = x2d.shape
    if rows == 0 or D == 0:
        return
    _L2NORM.launch(((rows + config.block - 1) // config.block,),
                   (x2d, y, float(eps), rows, x2d.stride(0), x2d.stride(1)),
                   (D, triton.next_power_of_2(D), config.block),
                   config.num_warps, config.num_stages, config.options)




def aot_specs(arch: str) -> list[dict[str, Any]]:
    """AOT compile descriptions (see ``recurrent.aot_specs`` for the dict format) of the
    gating and l2norm kernels for Qwen3-Next shapes (HV = 32, D = 128), bf16 and fp16."""
    try:
        cfgs = vendor_configs(arch)
        gcfg = cfgs.gating_config(arch)
        lcfg = cfgs.l2norm_config(arch, 128)
    except AttributeError:  # no configs module (None) or no such table
        return []
    out = []
    for dt in (torch.bfloat16, torch.float16):
        ty = "*" + TRITON_TY[dt]
        sig = {"A_log": "*fp32", "a": ty, "b": ty, "dt_bias": "*fp32", "g_out": "*fp32",
               "beta_out": ty, "softplus_beta": "fp32", "softplus_threshold": "fp32",
               "total": "i32", "s_a": "i32", "s_b": "i32", "HV": "constexpr",
               "HAS_DT_BIAS": "constexpr", "BLOCK": "constexpr"}
        out.append({"name": f"gdn_gating_{TRITON_TY[dt]}_HV32", "kernel": gdn_gating_kernel,
                    "signature": sig,
                    "constexprs": {"HV": 32, "HAS_DT_BIAS": True, "BLOCK": gcfg.block},
                    "num_warps": gcfg.num_warps, "num_stages": gcfg.num_stages,
                    "options": dict(gcfg.options), **aligned(gdn_gating_kernel, sig)})
        sig = {"x": ty, "y": ty, "eps": "fp32", "rows": "i32", "s_row": "i32", "s_col": "i32",
               "D": "constexpr", "BD": "constexpr", "ROWS": "constexpr"}
        out.append({"name": f"l2norm_{TRITON_TY[dt]}_D128", "kernel": l2norm_kernel, "signature": sig,
                    "constexprs": {"D": 128, "BD": 128, "ROWS": lcfg.block},
                    "num_warps": lcfg.num_warps, "num_stages": lcfg.num_stages,
                    "options": dict(lcfg.options), **aligned(l2norm_kernel, sig)})
    return out
