"""Split one fused q/k/v/z + b/a projection into (mixed_qkv, z, b, a): one kernel per layout.

Both kernels run one program per (token, key head) and copy that head's q, k, its
``G = Hv / Hqk`` value heads, z heads, b and a entries straight from the projection into the
outputs (no intermediate tensors).  They differ only in where the source pieces sit:

- ``split_interleaved_kernel`` (Qwen3-Next): per key head ``[q_h, k_h, v_h.., z_h..]`` and
  ``[b_h.., a_h..]``;
- ``split_contiguous_kernel`` (Qwen3.5): ``[q (all heads), k, v, z]`` and ``[b, a]``.

Outputs: ``mixed_qkv`` rows ``[q heads, k heads, v heads]``, ``z`` ``[N, Hv, Dv]``,
``b``/``a`` ``[N, Hv]``, all contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from .aot_util import TRITON_TY, aligned, vendor_configs
from .launch import CachedLauncher

__all__ = ["SplitConfig", "split_interleaved_kernel", "split_contiguous_kernel",
           "launch_split", "aot_specs"]


@dataclass(frozen=True)
class SplitConfig:
    num_warps: int
    num_stages: int = 1
    options: tuple[tuple[str, Any], ...] = ()


@triton.jit
def _copy_head(src_qkvz, src_ba, qkv, z, b, a, n, h, q_src, k_src, v_src, z_src, b_src, a_src,
               HQK: tl.constexpr, HV: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
               BDK: tl.constexpr, BGV: tl.constexpr, BG: tl.constexpr):
    """Copy key head h of token n; the *_src are element offsets inside the source rows."""
    G: tl.constexpr = HV // HQK
    W_QKV: tl.constexpr = 2 * HQK * DK + HV * DV
    ok = tl.arange(0, BDK)
    mk = ok < DK
    ov = tl.arange(0, BGV)
    mv = ov < G * DV
    og = tl.arange(0, BG)
    mg = og < G
    dst = qkv + n * W_QKV
    tl.store(dst + h * DK + ok, tl.load(src_qkvz + q_src + ok, mask=mk), mask=mk)
    tl.store(dst + HQK * DK + h * DK + ok, tl.load(src_qkvz + k_src + ok, mask=mk), mask=mk)
    tl.store(dst + 2 * HQK * DK + h * G * DV + ov, tl.load(src_qkvz + v_src + ov, mask=mv),
             mask=mv)
    tl.store(z + n * (HV * DV) + h * G * DV + ov, tl.load(src_qkvz + z_src + ov, mask=mv),
             mask=mv)
    tl.store(b + n * HV + h * G + og, tl.load(src_ba + b_src + og, mask=mg), mask=mg)
    tl.store(a + n * HV + h * G + og, tl.load(src_ba + a_src + og, mask=mg), mask=mg)


@triton.jit
def split_interleaved_kernel(mixed_qkvz, mixed_ba, qkv, z, b, a, s_qkvz, s_ba,
                             HQK: tl.constexpr, HV: tl.constexpr, DK: tl.constexpr,
                             DV: tl.constexpr, BDK: tl.constexpr, BGV: tl.constexpr,
                             BG: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    G: tl.constexpr = HV // HQK
    W_HEAD: tl.constexpr = 2 * DK + 2 * G * DV
    base = h * W_HEAD
    _copy_head(mixed_qkvz + n * s_qkvz, mixed_ba + n * s_ba, qkv, z, b, a, n, h,
               base, base + DK, base + 2 * DK, base + 2 * DK + G * DV, h * 2 * G, h * 2 * G + G,
               HQK, HV, DK, DV, BDK, BGV, BG)


@triton.jit
def split_contiguous_kernel(mixed_qkvz, mixed_ba, qkv, z, b, a, s_qkvz, s_ba,
                            HQK: tl.constexpr, HV: tl.constexpr, DK: tl.constexpr,
                            DV: tl.constexpr, BDK: tl.constexpr, BGV: tl.constexpr,
                            BG: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    G: tl.constexpr = HV // HQK
    _copy_head(mixed_qkvz + n * s_qkvz, mixed_ba + n * s_ba, qkv, z, b, a, n, h,
               h * DK, HQK * DK + h * DK, 2 * HQK * DK + h * G * DV,
               2 * HQK * DK + HV * DV + h * G * DV, h * G, HV + h * G,
               HQK, HV, DK, DV, BDK, BGV, BG)


_KERNELS = {"interleaved": split_interleaved_kernel, "contiguous": split_contiguous_kernel}
_LAUNCHERS = {name: CachedLauncher(fn, n_runtime=fn.arg_names.index("HQK"))
              for name, fn in _KERNELS.items()}


def launch_split(mixed_qkvz: torch.Tensor, mixed_ba: torch.Tensor, qkv: torch.Tensor,
                 z: torch.Tensor, b: torch.Tensor, a: torch.Tensor, Hqk: int, Hv: int, Dk: int,
                 Dv: int, layout: str, *, config: SplitConfig) -> None:
    """Run the split kernel of ``layout`` (rows of the inputs may have any stride)."""
    N = mixed_qkvz.shape[0]
    if N == 0:
        return
    G = Hv // Hqk
    _LAUNCHERS[layout].launch(
        (N, Hqk),
        (mixed_qkvz, mixed_ba, qkv, z, b, a, mixed_qkvz.stride(0), mixed_ba.stride(0)),
        (Hqk, Hv, Dk, Dv, triton.next_power_of_2(Dk), triton.next_power_of_2(G * Dv),
         triton.next_power_of_2(G)),
        config.num_warps, config.num_stages, config.options)




def aot_specs(arch: str) -> list[dict[str, Any]]:
    """AOT compile descriptions (format of ``recurrent.aot_specs``) of both split kernels for
    Qwen3-Next shapes (Hqk = 16, Hv = 32, Dk = Dv = 128), bf16 and fp16."""
    try:
        cfg = vendor_configs(arch).split_config(arch)
    except AttributeError:  # no configs module (None) or no such table
        return []
    out = []
    for layout, fn in _KERNELS.items():
        for dt in (torch.bfloat16, torch.float16):
            ty = "*" + TRITON_TY[dt]
            sig = {"mixed_qkvz": ty, "mixed_ba": ty, "qkv": ty, "z": ty, "b": ty, "a": ty,
                   "s_qkvz": "i32", "s_ba": "i32"}
            const = {"HQK": 16, "HV": 32, "DK": 128, "DV": 128, "BDK": 128, "BGV": 256, "BG": 2}
            sig.update({name: "constexpr" for name in const})
            out.append({"name": f"split_{layout}_{TRITON_TY[dt]}_H16_HV32_D128", "kernel": fn,
                        "signature": sig, "constexprs": const, "num_warps": cfg.num_warps,
                        "num_stages": cfg.num_stages, "options": dict(cfg.options),
                        **aligned(fn, sig)})
    return out
