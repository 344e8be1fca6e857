"""How fast can a decode program's state tile move at all?  Pure tile copies, no arithmetic.

Copies bf16 state heads [128, 128] (B=256 x HV=32, 268 MB) tile by tile, one program per tile
shape a decode kernel could use, and prints the fraction of the copy bandwidth
(``dst.copy_(src)`` of 1 GiB, measured in the same run).  This is the ceiling of a recurrent
kernel with that tile, whatever it computes: K-first tiles of 64-byte row pieces ([128, 32]
bf16) move ~0.86 of copy bandwidth on H100, 128-byte pieces ~0.94 (docs/performance.md,
"Third session").  Usage: ``python benchmarks/bench_tile_copy.py [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl
from bench_decode import bench_ms as _ms
from bench_decode import copy_bandwidth as _copy_bandwidth

# (name, rows per program, columns per program, warps); heads are [128, 128]
TILES = [("kv [128, 16] (32-byte pieces)", 128, 16, 1),
         ("kv [128, 32] (64-byte pieces)", 128, 32, 1),
         ("kv [128, 64] (128-byte pieces)", 128, 64, 1),
         ("kv [128, 64] two warps", 128, 64, 2),
         ("kv [128, 128] four warps", 128, 128, 4),
         ("vk [16, 128] (whole rows)", 16, 128, 1)]


@triton.jit
def tile_copy_kernel(src, dst, C: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """Program = (block of BR rows, block of BC columns) of a row-major [*, C] matrix."""
    NC: tl.constexpr = C // BC
    pid = tl.program_id(0)
    rows = (pid // NC).to(tl.int64) * BR + tl.arange(0, BR)
    cols = (pid % NC) * BC + tl.arange(0, BC)
    off = rows[:, None] * C + cols[None, :]
    tl.store(dst + off, tl.load(src + off))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return
    copy_bw = _copy_bandwidth()
    src = torch.randn(256 * 32 * 128, 128, device="cuda").to(torch.bfloat16)
    dst = torch.empty_like(src)
    rows = []
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {copy_bw / 1e9:.0f} GB/s")
    for name, BR, BC, warps in TILES:
        grid = (src.shape[0] // BR * (128 // BC),)
        t = _ms(lambda grid=grid, BR=BR, BC=BC, warps=warps: tile_copy_kernel[grid](
            src, dst, C=128, BR=BR, BC=BC, num_warps=warps))
        assert torch.equal(dst, src), name
        frac = 2 * src.numel() * 2 / (t * 1e-3) / copy_bw
        rows.append(dict(tile=name, warps=warps, us=t * 1e3, frac=frac))
        print(f"{name:34s} {t * 1e3:8.1f} us  {frac:.3f} of copy")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                           triton=triton.__version__, copy_GBps=copy_bw / 1e9, rows=rows), f,
                      indent=1)


if __name__ == "__main__":
    main()
