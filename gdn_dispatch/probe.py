"""Capability probing: one value describing the device a call runs on.

The probe is a plain frozen dataclass.  ``probe_device`` reads it off real hardware once per
device and caches it; ``DeviceProbe.simulated`` / ``DeviceProbe.from_description`` build one
from a description, so tests can present an MI300X or an A100 on a CPU machine.  Nothing in
the library reads hardware facts from module globals: selection always receives a probe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DeviceProbe", "probe_device", "simulate_device", "simulated_probe", "triton_importable", "interpreter_enabled", "KNOWN_DEVICES"]


def interpreter_enabled() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


_TRITON_STATE: tuple[bool, str | None] | None = None


def triton_importable() -> tuple[bool, str | None]:
    """(importable, version) of Triton, checked once."""
    global _TRITON_STATE
    if _TRITON_STATE is None:
        if importlib.util.find_spec("triton") is None:
            _TRITON_STATE = (False, None)
        else:
            try:
                import triton

                _TRITON_STATE = (True, str(triton.__version__))
            except Exception:  # a broken install counts as absent
                _TRITON_STATE = (False, None)
    return _TRITON_STATE


@dataclass(frozen=True)
class DeviceProbe:
    """What gdn_dispatch needs to know about one device.

    vendor: "cpu", "nvidia" or "amd".  arch: "sm_90", "gfx942", "cpu".  capability: CUDA
    compute capability (major, minor) or None.  shared_mem_per_block: bytes of shared memory
    (NVIDIA, opt-in maximum) or LDS (AMD) one block may use.  triton_target: "cuda", "hip" or
    None (no GPU target; the interpreter may still run kernels on the CPU).
    """

    vendor: str
    arch: str
    name: str = ""
    device_type: str = "cpu"
    capability: tuple[int, int] | None = None
    bf16: bool = True
    fp16: bool = True
    shared_mem_per_block: int = 0
    multiprocessors: int = 0
    warp_size: int = 32
    l2_bytes: int = 0
    triton_available: bool = False
    triton_version: str | None = None
    triton_target: str | None = None
    interpreter: bool = False
    is_simulated: bool = False  # built from a description, not read off hardware

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_description(cls, description: dict[str, Any]) -> DeviceProbe:
        """Build a probe from a plain dict; unknown keys raise, missing keys take defaults.

        If ``triton_available`` is not given it is assumed present, and ``triton_target``
        follows the vendor, so a simulated GPU looks like a real one with Triton installed.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(description) - names
        if unknown:
            raise ValueError(f"unknown probe fields: {sorted(unknown)}")
        d = dict(description)
        if "capability" in d and d["capability"] is not None:
            d["capability"] = tuple(d["capability"])
        vendor = d.get("vendor", "cpu")
        d.setdefault("device_type", "cpu" if vendor == "cpu" else "cuda")
        if vendor != "cpu":
            d.setdefault("triton_available", True)
            d.setdefault("triton_target", "cuda" if vendor == "nvidia" else "hip")
        d.setdefault("is_simulated", True)
        return cls(**d)

    @classmethod
    def simulated(cls, name: str, **overrides: Any) -> DeviceProbe:
        """A probe for a well-known device: see ``KNOWN_DEVICES`` for the names."""
        key = name.lower()
        if key not in KNOWN_DEVICES:
            raise ValueError(f"unknown device {name!r}; known: {sorted(KNOWN_DEVICES)}")
        d = dict(KNOWN_DEVICES[key])
        d.update(overrides)
        return cls.from_description(d)

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def is_gpu(self) -> bool:
        return self.vendor in ("nvidia", "amd")


KNOWN_DEVICES: dict[str, dict[str, Any]] = {
    "cpu": dict(vendor="cpu", arch="cpu", name="CPU", bf16=True, warp_size=1,
                triton_available=False),
    "a100": dict(vendor="nvidia", arch="sm_80", name="NVIDIA A100-SXM4-80GB", capability=(8, 0),
                 shared_mem_per_block=166912, multiprocessors=108, warp_size=32, l2_bytes=40 << 20),
    "h100": dict(vendor="nvidia", arch="sm_90", name="NVIDIA H100 80GB HBM3", capability=(9, 0),
                 shared_mem_per_block=232448, multiprocessors=132, warp_size=32, l2_bytes=50 << 20),
    "b200": dict(vendor="nvidia", arch="sm_100", name="NVIDIA B200", capability=(10, 0),
                 shared_mem_per_block=232448, multiprocessors=148, warp_size=32, l2_bytes=126 << 20),
    "t4": dict(vendor="nvidia", arch="sm_75", name="Tesla T4", capability=(7, 5), bf16=False,
               shared_mem_per_block=65536, multiprocessors=40, warp_size=32, l2_bytes=4 << 20),
    "v100": dict(vendor="nvidia", arch="sm_70", name="Tesla V100", capability=(7, 0), bf16=False,
                 shared_mem_per_block=98304, multiprocessors=80, warp_size=32, l2_bytes=6 << 20),
    "mi300x": dict(vendor="amd", arch="gfx942", name="AMD Instinct MI300X", bf16=True,
                   shared_mem_per_block=65536, multiprocessors=304, warp_size=64, l2_bytes=4 << 20),
    "mi325x": dict(vendor="amd", arch="gfx942", name="AMD Instinct MI325X", bf16=True,
                   shared_mem_per_block=65536, multiprocessors=304, warp_size=64, l2_bytes=4 << 20),
    "mi355x": dict(vendor="amd", arch="gfx950", name="AMD Instinct MI355X", bf16=True,
                   shared_mem_per_block=163840, multiprocessors=256, warp_size=64, l2_bytes=4 << 20),
    "mi250x": dict(vendor="amd", arch="gfx90a", name="AMD Instinct MI250X", bf16=True,
                   shared_mem_per_block=65536, multiprocessors=110, warp_size=64, l2_bytes=8 << 20),
    "rx7900xtx": dict(vendor="amd", arch="gfx1100", name="AMD Radeon RX 7900 XTX", bf16=True,
                      shared_mem_per_block=65536, multiprocessors=96, warp_size=32, l2_bytes=6 << 20),
}
KNOWN_DEVICES["gfx942"] = KNOWN_DEVICES["mi300x"]
KNOWN_DEVICES["gfx950"] = KNOWN_DEVICES["mi355x"]
KNOWN_DEVICES["gfx90a"] = KNOWN_DEVICES["mi250x"]
KNOWN_DEVICES["gfx1100"] = KNOWN_DEVICES["rx7900xtx"]


# -- real hardware ---------------------------------------------------------------------
_CACHE: dict[Any, DeviceProbe] = {}
_LOCK = threading.Lock()


def _probe_cpu() -> DeviceProbe:
    ok, ver = triton_importable()
    return DeviceProbe(vendor="cpu", arch="cpu", name="CPU", device_type="cpu", bf16=True,
                       warp_size=1, multiprocessors=os.cpu_count() or 1,
                       triton_available=ok, triton_version=ver, triton_target=None,
                       interpreter=ok and interpreter_enabled())


def _probe_gpu(index: int) -> DeviceProbe:
    props = torch.cuda.get_device_properties(index)
    ok, ver = triton_importable()
    is_amd = torch.version.hip is not None
    shared = int(getattr(props, "shared_memory_per_block_optin", 0)
                 or getattr(props, "shared_memory_per_block", 0) or 0)
    warp = int(getattr(props, "warp_size", 64 if is_amd else 32) or (64 if is_amd else 32))
    l2 = int(getattr(props, "L2_cache_size", 0) or 0)
    if is_amd:
        arch = str(getattr(props, "gcnArchName", "gfx000")).split(":")[0]
        bf16 = arch.startswith(("gfx90a", "gfx94", "gfx95", "gfx11", "gfx12"))
        cap = None
        vendor, target = "amd", "hip"
    else:
        cap = (int(props.major), int(props.minor))
        arch = f"sm_{cap[0]}{cap[1]}"
        bf16 = cap >= (8, 0)
        vendor, target = "nvidia", "cuda"
    return DeviceProbe(vendor=vendor, arch=arch, name=str(props.name), device_type="cuda",
                       capability=cap, bf16=bf16, fp16=True, shared_mem_per_block=shared,
                       multiprocessors=int(props.multi_processor_count), warp_size=warp,
                       l2_bytes=l2, triton_available=ok, triton_version=ver,
                       triton_target=target if ok else None,
                       interpreter=ok and interpreter_enabled())


def probe_device(device: torch.device | str | None = None) -> DeviceProbe:
    """The probe of ``device`` (default: the current CUDA device if any, else the CPU), cached."""
    probe = _CACHE.get(device)
    if probe is not None:
        return probe
    dev = torch.device(device) if device is not None else (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
        else torch.device("cpu"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    with _LOCK:
        probe = _CACHE.get(dev)
        if probe is None:
            if dev.type == "cuda":
                probe = _probe_gpu(dev.index)
            elif dev.type == "cpu":
                probe = _probe_cpu()
            else:
                probe = DeviceProbe(vendor=dev.type, arch=dev.type, name=dev.type,
                                    device_type=dev.type)
            _CACHE[dev] = probe
        if device is not None:
            _CACHE[device] = probe
    return probe


def clear_cache() -> None:
    """Forget probed devices (tests that change TRITON_INTERPRET use this)."""
    with _LOCK:
        _CACHE.clear()


# -- simulation ----------------------------------------------------------------------------
_SIM = threading.local()
_SIM_LOCK = threading.Lock()
# number of simulate_device blocks open in any thread (the dispatcher's guard fast path is
# skipped while it is non-zero, then the thread-local probe decides)
SIM_ACTIVE = [0]


@contextlib.contextmanager
def simulate_device(probe: DeviceProbe | str) -> Iterator[DeviceProbe]:
    """Within the block, calls in this thread are dispatched as if their tensors lived on
    ``probe`` (a DeviceProbe or a name from KNOWN_DEVICES).  For selection tests and
    ``gdn.explain`` on machines without that hardware; decisions made here are not cached.
    Running a kernel for a device that is not there fails, so use it with ``explain`` or
    with backends that run on the tensors' real device."""
    p = DeviceProbe.simulated(probe) if isinstance(probe, str) else probe
    prev = getattr(_SIM, "probe", None)
    _SIM.probe = p
    with _SIM_LOCK:
        SIM_ACTIVE[0] += 1
    try:
        yield p
    finally:
        _SIM.probe = prev
        with _SIM_LOCK:
            SIM_ACTIVE[0] -= 1


def simulated_probe() -> DeviceProbe | None:
    """The probe set by ``simulate_device`` in this thread, if any."""
    return getattr(_SIM, "probe", None)
