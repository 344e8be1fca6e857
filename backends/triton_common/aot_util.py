"""Helpers the decode-side kernel modules share to describe their AOT compile specs."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch

__all__ = ["TRITON_TY", "divisibility_attrs", "aligned", "vendor_configs"]

# torch dtype -> Triton signature element type
TRITON_TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def divisibility_attrs(fn: Any, names: list[str]) -> dict[tuple[int, ...], list[list[Any]]]:
    """``ASTSource`` attrs marking ``names`` (pointers, ints) as divisible by 16."""
    return {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in names}


def aligned(fn: Any, sig: dict[str, str]) -> dict[str, Any]:
    """``divisible_by_16`` (pointers and row strides ``s_*`` except ``s_col``) and the
    matching ASTSource ``attrs``, as spec entries."""
    names = [n for n, ty in sig.items() if ty.startswith("*") or n.startswith("s_")
             and n != "s_col"]
    return {"divisible_by_16": names, "attrs": divisibility_attrs(fn, names)}


def vendor_configs(arch: str) -> ModuleType | None:
    """The ``configs`` module of the backend serving ``arch`` (``sm_*``: triton_cuda, else
    triton_rocm), or None when it is not importable."""
    vendor = "triton_cuda" if arch.startswith("sm_") else "triton_rocm"
    try:
        return importlib.import_module(f"gdn_dispatch.backends.{vendor}.configs")
    except ImportError:
        return None
