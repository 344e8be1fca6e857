"""Launch configurations of the Triton-ROCm backend, one table per arch.

A config is plain data: block sizes, ``num_warps`` / ``num_stages`` per kernel and the
HIP-only compiler options (``waves_per_eu``, ``matrix_instr_nonkdim``).  HIP-only options are
handed to Triton only when the probe's ``triton_target`` is ``"hip"``; on NVIDIA (the backend
forced with ``GDN_BACKEND=triton_rocm``) and in the interpreter they are dropped.

Archs:
- ``gfx942`` (MI300X / MI325X): 64 KiB LDS per workgroup, 304 CUs, wave64.  The state
  recurrence keeps ``BV = 32`` so that more programs run per CU and the dot operands of one
  chunk fit in LDS with room to spare.
- ``gfx950`` (MI355X): 160 KiB LDS, 256 CUs, wave64.  Wider V blocks (``BV = 64``), since LDS
  is not the limit there.
- anything else (an NVIDIA GPU under the forced backend, the interpreter): a generic config.

Decode side: configs of the shared ``triton_common`` kernels (``RecurrentConfig``,
``RowConfig``, ``SplitConfig``), looked up like the CUDA backend's (``recurrent_config_for_arch``
etc., the names ``triton_common``'s ``aot_specs`` import), wave64-aware on gfx942 / gfx950.

The prefill chunk size is 64 and nothing else; asking for another size raises.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from gdn_dispatch.backends.triton_common.gating import RowConfig
from gdn_dispatch.backends.triton_common.recurrent import RecurrentConfig
from gdn_dispatch.backends.triton_common.split import SplitConfig

from gdn_dispatch.probe import DeviceProbe

__all__ = ["CHUNK_SIZE", "KernelLaunch", "PrefillConfig", "prefill_config", "config_arch",
           "describe_config", "LDS_BYTES", "recurrent_config", "recurrent_config_for_arch",
           "gating_config", "l2norm_config", "split_config"]

CHUNK_SIZE = 64

# LDS (shared memory) one workgroup may use, per arch
LDS_BYTES: dict[str, int] = {"gfx942": 64 * 1024, "gfx950": 160 * 1024}


@dataclass(frozen=True)
class KernelLaunch:
    """How one kernel is launched: warps, pipeline stages and HIP-only compiler options."""

    num_warps: int = 4
    num_stages: int = 2
    hip_options: tuple[tuple[str, Any], ...] = ()

    def launch_kwargs(self, probe: DeviceProbe) -> dict[str, Any]:
        """Keyword arguments for ``kernel[grid](...)`` on ``probe`` (HIP options only for HIP)."""
        kw: dict[str, Any] = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if probe.triton_target == "hip":
            kw.update(self.hip_options)
        return kw

    def compile_options(self, target: str) -> dict[str, Any]:
        """Options for ``triton.compile`` for a ``"hip"`` or ``"cuda"`` target."""
        kw: dict[str, Any] = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if target == "hip":
            kw.update(self.hip_options)
        return kw


@dataclass(frozen=True)
class PrefillConfig:
    """Config of the head-major chunked prefill (four kernels, or three with the fused scan).

    Dot precisions (Triton ``input_precision`` of products whose operands are float32; products
    of fp16 / bf16 operands ignore it): ``solve_precision`` for the float32 products of the
    triangular solve with half inputs, ``fp32_precision`` for every product with fp32 inputs
    (fp32 intermediates).  NVIDIA: "tf32" (tensor cores) for the solve, "tf32x3" (about fp32
    accuracy) for fp32 inputs, like the Triton-CUDA pipeline; AMD: "ieee" (native fp32 MFMA).
    """

    name: str
    chunk_size: int = CHUNK_SIZE
    kkt: KernelLaunch = field(default_factory=KernelLaunch)
    solve: KernelLaunch = field(default_factory=KernelLaunch)
    state: KernelLaunch = field(default_factory=KernelLaunch)
    # V block of the state scan; None: picked per call from the number of (sequence, head)
    # chains so that at least ``programs_per_cu`` programs per CU / SM run (``pick_bv``)
    state_bv: int | None = 64
    state_bv_max: int = 64
    programs_per_cu: float = 1.5
    output: KernelLaunch = field(default_factory=KernelLaunch)
    output_bv: int = 64         # V block of the output kernel
    # state scan with the output fused in (no h / v_new round trip through memory):
    # "always", "never", or "auto" = when the scan at its widest V block (``state_bv_max``)
    # already has at least ``fuse_min_waves`` waves of programs on the device's CUs / SMs (the
    # memory traffic saved then wins; with few chains the split scan's shorter sequential
    # step and the parallel output kernel win)
    fused: KernelLaunch = field(default_factory=lambda: KernelLaunch(8, 2))
    fused_bv: int | None = 64   # None: ``pick_bv`` as for the split scan
    # warps of either scan when its state tile has more than ``scan_wide`` elements (None:
    # the launch as given); the fused scan's extra operands need them at BV = 64
    scan_warps_wide: int | None = None
    scan_wide: int = 128 * 32
    fuse_output: str = "never"
    fuse_min_waves: float = 1.0
    solve_precision: str = "ieee"
    fp32_precision: str = "ieee"

    def __post_init__(self) -> None:
        if self.chunk_size != CHUNK_SIZE:
            raise ValueError(f"triton_rocm prefill supports chunk_size={CHUNK_SIZE} only; "
                             f"config {self.name!r} asks for chunk_size={self.chunk_size}")
        if self.fuse_output not in ("always", "never", "auto"):
            raise ValueError(f"fuse_output must be 'always', 'never' or 'auto', "
                             f"not {self.fuse_output!r}")

    def with_chunk_size(self, chunk_size: int) -> PrefillConfig:
        """A copy with another chunk size (raises unless it is 64)."""
        return dataclasses.replace(self, chunk_size=chunk_size)

    def precisions(self, half: bool) -> tuple[str, str]:
        """``(dot precision, solve precision)`` for half (fp16 / bf16) or fp32 intermediates."""
        if half:
            return "ieee", self.solve_precision
        return self.fp32_precision, self.fp32_precision

    def pick_bv(self, bv: int | None, V: int, chains: int, compute_units: int) -> int:
        """V block of a scan over ``chains`` (sequence, value head) chains: ``bv`` if fixed,
        else the widest power of two <= ``state_bv_max`` that still gives at least
        ``programs_per_cu`` programs per CU / SM (not below 16)."""
        vp = max(16, 1 << max(0, (int(V) - 1).bit_length()))
        if bv is not None:
            return min(bv, vp)
        want = self.programs_per_cu * max(compute_units, 1)
        out = min(vp, self.state_bv_max)
        while out > 16 and chains * -(-V // out) < want:
            out //= 2
        return out

    def scan_bv(self, fused: bool, V: int, chains: int, compute_units: int) -> int:
        """V block of the (fused or split) state scan for this call."""
        return self.pick_bv(self.fused_bv if fused else self.state_bv, V, chains,
                            compute_units)

    def scan_launch(self, fused: bool, BK: int, BV: int) -> KernelLaunch:
        """Launch of the (fused or split) scan with a ``[BK, BV]`` state tile."""
        kl = self.fused if fused else self.state
        if self.scan_warps_wide is not None and BK * BV > self.scan_wide:
            kl = dataclasses.replace(kl, num_warps=self.scan_warps_wide)
        return kl

    def use_fused(self, chains: int, V: int, compute_units: int) -> bool:
        """Whether a call with ``chains`` (sequence, value head) chains runs the fused
        state + output kernel (see ``fuse_output``)."""
        if self.fuse_output in ("always", "never"):
            return self.fuse_output == "always"
        widest = min(max(16, 1 << max(0, (int(V) - 1).bit_length())), self.state_bv_max)
        programs = chains * -(-V // widest)
        return programs >= self.fuse_min_waves * max(compute_units, 1)


def _hip(waves_per_eu: int, nonkdim: int | None = 16) -> tuple[tuple[str, Any], ...]:
    opts: list[tuple[str, Any]] = [("waves_per_eu", waves_per_eu)]
    if nonkdim is not None:
        opts.append(("matrix_instr_nonkdim", nonkdim))
    return tuple(opts)


_PREFILL: dict[str, PrefillConfig] = {
    "gfx942": PrefillConfig(
        name="gfx942",
        kkt=KernelLaunch(4, 1, _hip(2)),
        solve=KernelLaunch(4, 1, _hip(2)),
        state=KernelLaunch(4, 1, _hip(2)),
        state_bv=32,
        output=KernelLaunch(4, 1, _hip(2)),
        output_bv=64,
        fused=KernelLaunch(4, 1, _hip(1)),
        fused_bv=32,
    ),
    "gfx950": PrefillConfig(
        name="gfx950",
        kkt=KernelLaunch(4, 1, _hip(2)),
        solve=KernelLaunch(4, 1, _hip(2)),
        state=KernelLaunch(4, 1, _hip(2)),  # 2 stages: AGPR traffic, and spills at 2 waves/EU
        state_bv=64,
        output=KernelLaunch(4, 2, _hip(2)),
        output_bv=64,
        fused=KernelLaunch(4, 1, _hip(1)),
        fused_bv=64,
    ),
    # NVIDIA (forced) and the interpreter: tensor-core precisions like the Triton-CUDA
    # pipeline; V blocks of the scans picked from the number of chains (pick_bv); the fused
    # scan once the chains fill the SMs at BV = 64 (H100: from 4 x 4096 tokens, 32 heads;
    # one 4096-token sequence runs the split scan at BV = 16).  Wide scans (BV = 64) take 8
    # warps (no spills on sm_90).  H100 sweep (opt only, Triton 3.6): 4 warps there (32 B of
    # spills on sm_90, 144 B for opt_vk) ran faster: 4 x 16384 3.18 vs 3.70 ms, 4 x 4096
    # 0.83 vs 0.96 ms, 32 x 512 0.87 vs 1.00 ms; scan_warps_wide=None selects it once opt_vk
    # is measured and tested there too
    "generic": PrefillConfig(
        name="generic",
        kkt=KernelLaunch(4, 1),
        solve=KernelLaunch(4, 1),
        state=KernelLaunch(4, 2),
        state_bv=None,
        output=KernelLaunch(8, 2),
        output_bv=128,
        fused=KernelLaunch(4, 2),
        fused_bv=None,
        scan_warps_wide=8,
        fuse_output="auto",
        solve_precision="tf32",
        fp32_precision="tf32x3",
    ),
}

# -- decode side: configs of the shared kernels (triton_common) ----------------------------
# Recurrent kernel, (config for many heads, config for few heads) per (arch, v_first, state
# element bytes).  wave64: one warp is 64 lanes, so half the warps of the NVIDIA table cover
# the same [K, BV] fp32 tile at <= 32 registers per lane (K = 128).  Few heads (a small decode
# batch on 304 CUs): narrower V slices, more programs.
_RECURRENT: dict[tuple[str, bool, int], tuple[RecurrentConfig, RecurrentConfig]] = {}


def _rec(bv: int, warps: int, hip: bool = True) -> RecurrentConfig:
    return RecurrentConfig(BV=bv, num_warps=warps, num_stages=1,
                           options=_hip(4, None) if hip else ())


for _v_first in (False, True):
    for _arch in ("gfx942", "gfx950"):
        # fp32 state: [128, 32] tile over 2 wave64 warps = 32 registers per lane
        _RECURRENT[(_arch, _v_first, 4)] = (_rec(32, 2), _rec(16, 1))
        # 16-bit state: wider V slices keep 128-byte rows; 4 warps keep the tile at 32
        # registers per lane (2 warps spill under the 128-VGPR budget of waves_per_eu=4)
        _RECURRENT[(_arch, _v_first, 2)] = (_rec(64, 4), _rec(16, 1))
    _RECURRENT[("generic", _v_first, 4)] = (_rec(32, 4, False), _rec(16, 2, False))
    _RECURRENT[("generic", _v_first, 2)] = (_rec(64, 4, False), _rec(16, 2, False))

_FEW_HEADS_PER_CU = 4
_CUS = {"gfx942": 304, "gfx950": 256}

_HIP4 = _hip(4, None)
_GATING = {"gfx942": RowConfig(block=1024, num_warps=4, options=_HIP4),
           "gfx950": RowConfig(block=1024, num_warps=4, options=_HIP4),
           "generic": RowConfig(block=1024, num_warps=4)}
_SPLIT = {"gfx942": SplitConfig(num_warps=2, options=_HIP4),
          "gfx950": SplitConfig(num_warps=2, options=_HIP4),
          "generic": SplitConfig(num_warps=4)}


def config_arch(arch: str) -> str:
    """The config table key for an arch: the arch itself if tuned, else ``"generic"``."""
    return arch if arch in _PREFILL else "generic"


def prefill_config(probe: DeviceProbe | str) -> PrefillConfig:
    """The prefill config for a probe (or an arch name)."""
    arch = probe if isinstance(probe, str) else probe.arch
    return _PREFILL[config_arch(arch)]


def _for_target(cfg: Any, hip: bool) -> Any:
    """``cfg`` with its HIP-only options dropped unless the target is HIP."""
    return cfg if hip or not cfg.options else dataclasses.replace(cfg, options=())


@functools.lru_cache(maxsize=512)
def recurrent_config_for_arch(arch: str, v_first: bool, state_dtype: torch.dtype, K: int,
                              V: int, n_heads_total: int, sms: int | None = None,
                              hip: bool | None = None) -> RecurrentConfig:
    """Config of the shared recurrent kernel for ``n_heads_total`` = sequences x value heads
    (``hip``: keep HIP options; default: whether ``arch`` is an AMD arch)."""
    key = config_arch(arch)
    elem = 4 if state_dtype == torch.float32 else 2
    many, few = _RECURRENT[(key, bool(v_first), elem)]
    cus = sms or _CUS.get(arch, 132)
    cfg = few if n_heads_total < _FEW_HEADS_PER_CU * cus else many
    lanes = cfg.num_warps * (64 if key != "generic" else 32)
    # keep the fp32 state tile at <= 64 registers per lane for any K
    while cfg.BV > 8 and triton_next_pow2(K) * cfg.BV > 64 * lanes:
        cfg = dataclasses.replace(cfg, BV=cfg.BV // 2)
    return _for_target(cfg, arch.startswith("gfx") if hip is None else hip)


def recurrent_config(probe: DeviceProbe, v_first: bool, state_dtype: torch.dtype, K: int, V: int,
                     n_heads_total: int, *, tokens_per_seq: int = 1,
                     per_token_states: bool = False) -> RecurrentConfig:
    """Config of the recurrent kernel on the probed device (HIP options only on HIP).  The
    AMD table has no multi-token entries yet (no AMD GPU to tune them on): ``tokens_per_seq``
    and ``per_token_states`` are accepted and do not change the choice."""
    return recurrent_config_for_arch(probe.arch, bool(v_first), state_dtype, K, V, n_heads_total,
                                     probe.multiprocessors or None, probe.triton_target == "hip")


@functools.lru_cache(maxsize=64)
def gating_config(arch: str, hip: bool | None = None) -> RowConfig:
    """fused_gdn_gating: elements per program and warps."""
    return _for_target(_GATING[config_arch(arch)],
                       arch.startswith("gfx") if hip is None else hip)


@functools.lru_cache(maxsize=64)
def l2norm_config(arch: str, D: int, hip: bool | None = None) -> RowConfig:
    """l2norm: rows per program and warps for rows of ``D`` elements (wave64: half the warps)."""
    key = config_arch(arch)
    rows = max(1, min(16, 4096 // max(D, 1)))
    if key == "generic":
        cfg = RowConfig(block=rows, num_warps=4 if D <= 1024 else 8)
    else:
        cfg = RowConfig(block=rows, num_warps=2 if D <= 1024 else 4, options=_HIP4)
    return _for_target(cfg, arch.startswith("gfx") if hip is None else hip)


@functools.lru_cache(maxsize=64)
def split_config(arch: str, hip: bool | None = None) -> SplitConfig:
    """fused_qkvzba_split_reshape_cat: warps per (token, key head) program."""
    return _for_target(_SPLIT[config_arch(arch)], arch.startswith("gfx") if hip is None else hip)


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def describe_config(op: str, probe: DeviceProbe, state_v_first: bool = False) -> str:
    """One line saying which config (and prefill variant) this backend uses, and why."""
    key = config_arch(probe.arch)
    why = (f"tuned table for {probe.arch}" if key != "generic" else
           f"no table for {probe.arch}: generic config")
    if probe.triton_target == "hip":
        why += ", HIP options on"
    else:
        why += ", HIP-only options dropped"
    if op == "chunk_gated_delta_rule":
        cfg = prefill_config(probe)
        variant = "opt_vk" if state_v_first else "opt"
        because = ("state_v_first=True: state and per-chunk h kept [V, K]" if state_v_first
                   else "state_v_first=False: state and per-chunk h kept [K, V]")
        return (f"prefill variant {variant} ({because}); config {cfg.name} ({why}): "
                f"chunk {cfg.chunk_size}, state BV={cfg.state_bv or 'auto'} "
                f"warps={cfg.state.num_warps}, output BV={cfg.output_bv}; output fused into "
                f"the scan: {cfg.fuse_output}")
    if op in ("fused_recurrent_gated_delta_rule", "fused_sigmoid_gating_delta_rule_update",
              "fused_recurrent_gated_delta_rule_packed_decode"):
        many = recurrent_config(probe, state_v_first, torch.float32, 128, 128, 1 << 20)
        few = recurrent_config(probe, state_v_first, torch.float32, 128, 128, 1)
        return (f"decode config {key} ({why}): fp32 state, K=V=128: BV={many.BV} "
                f"warps={many.num_warps} (many heads), BV={few.BV} warps={few.num_warps} "
                f"(few heads), options={dict(many.options)}")
    return f"decode config {key} ({why})"
