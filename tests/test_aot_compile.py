"""AOT compile machinery (gdn_dispatch.aot and `python -m gdn_dispatch compile`), no GPU needed.

This file is also a kernel module: ``aot_specs`` below describes a tiny kernel, so the CLI
can compile it with ``--module tests/test_aot_compile.py``.  A deliberately broken kernel
(LDS over the gfx942 limit) is written to a temporary file and must fail the compile command
and the ``ci/compile`` job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from gdn_dispatch import aot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()

pytestmark = [
    pytest.mark.compile,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                       reason="AOT compile needs the real Triton JIT (TRITON_INTERPRET is set)"),
]


@triton.jit
def scaled_add_kernel(x_ptr, y_ptr, out_ptr, n, alpha, BLOCK: tl.constexpr,
                      HAS_Y: tl.constexpr = True):
    """out = alpha * x (+ y): a tiny kernel to prove the pipeline."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * alpha
    if HAS_Y:
        acc += tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def tile_dot_kernel(a_ptr, b_ptr, c_ptr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """One [BM, BK] x [BK, BN] tile product: shared memory / LDS grows with the tile."""
    rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
    a = tl.load(a_ptr + rm[:, None] * BK + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * BN + rn[None, :])
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], tl.dot(a, b))


def _add_spec(dtype: str = "fp16") -> dict:
    return dict(name=f"scaled_add_{dtype}", fn=scaled_add_kernel,
                signature={"x_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "out_ptr": f"*{dtype}",
                           "n": "i32", "alpha": "fp32"},
                constexprs={"BLOCK": 1024}, num_warps=4, num_stages=1,
                options={"waves_per_eu": 2})


def _dot_spec(BM: int, BN: int, BK: int) -> dict:
    return dict(name=f"tile_dot_{BM}x{BN}x{BK}", fn=tile_dot_kernel,
                signature={"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp32"},
                constexprs={"BM": BM, "BN": BN, "BK": BK}, num_warps=4, num_stages=1)


def aot_specs(arch: str) -> list[dict]:
    """The kernel-module interface of gdn_dispatch.aot, for this file's tiny kernels."""
    return [_add_spec("fp16"), _add_spec("fp32"), _dot_spec(32, 32, 32)]


BROKEN_MODULE = '''
import triton
import triton.language as tl


@triton.jit
def lds_hog_kernel(a_ptr, b_ptr, c_ptr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
    a = tl.load(a_ptr + rm[:, None] * BK + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * BN + rn[None, :])
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], tl.dot(a, b))


def aot_specs(arch):
    # a 256 x 256 fp16 operand tile: 128 KiB of LDS, twice the gfx942 limit of 64 KiB
    return [dict(name="lds_hog_32x256x256", fn=lds_hog_kernel,
                 signature={"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp32"},
                 constexprs={"BM": 32, "BN": 256, "BK": 256}, num_warps=4, num_stages=1)]
'''


@pytest.fixture
def broken_module(tmp_path: Path) -> Path:
    path = tmp_path / "lds_hog.py"
    path.write_text(textwrap.dedent(BROKEN_MODULE))
    return path


def _cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, TRITON_DEFAULT_FP_FUSION="1", **(env or {}))
    full_env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", "gdn_dispatch", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# -- in-process compile ---------------------------------------------------------------------
@pytest.mark.parametrize("target", sorted(aot.TARGETS))
def test_tiny_kernel_compiles_for_every_target(target):
    report = aot.compile_spec(_add_spec(), target, "test", __name__)
    assert report.ok, report.problems
    assert report.shared is not None and 0 <= report.shared <= aot.TARGETS[target].shared_limit
    assert report.registers and report.registers > 0
    assert report.spills == 0
    assert "BLOCK=1024" in report.config and "w4" in report.config
    if aot.TARGETS[target].backend == "cuda":
        assert any("waves_per_eu" in n for n in report.notes)  # HIP-only option dropped
    else:
        assert "waves_per_eu=2" in report.config


def test_constexpr_defaults_are_filled_and_marked():
    jit = aot._jit_function(scaled_add_kernel)
    sig, const = aot._complete_signature(jit, _add_spec())
    assert const == {"BLOCK": 1024, "HAS_Y": True}
    assert list(sig) == jit.arg_names
    assert sig["BLOCK"] == sig["HAS_Y"] == "constexpr"


def test_incomplete_spec_is_a_failed_row_not_a_crash():
    spec = _add_spec()
    del spec["signature"]["n"]
    report = aot.compile_spec(spec, "gfx942")
    assert not report.ok and "signature lacks n" in report.problems[0]
    spec = _dot_spec(16, 16, 16)
    del spec["constexprs"]["BK"]
    report = aot.compile_spec(spec, "sm_90")
    assert not report.ok and "constexprs lack BK" in report.problems[0]


def test_lds_over_gfx942_limit_fails_but_fits_gfx950():
    big = _dot_spec(32, 256, 256)  # a 256 x 256 fp16 operand tile: 128 KiB
    on_942 = aot.compile_spec(big, "gfx942")
    assert not on_942.ok
    assert on_942.shared > 64 * 1024
    assert any("LDS" in p and "gfx942 limit 65536" in p for p in on_942.problems)
    on_950 = aot.compile_spec(big, "gfx950")
    assert on_950.ok, on_950.problems


def test_a_crashing_compile_fails_its_row_only(tmp_path):
    bomb = tmp_path / "bomb.py"
    bomb.write_text("import os\n\n\nclass Bomb:\n    @property\n    def fn(self):\n"
                    "        os._exit(3)\n\n\ndef aot_specs(arch):\n"
                    "    return [dict(name='bomb', fn=Bomb())]\n")
    run = aot.compile_all(["triton_rocm"], ["gfx942"], modules=[str(bomb), str(THIS)], jobs=2)
    by_name = {r.name: r for r in run.reports}
    assert "compiler process died (exit code 3)" in by_name["bomb"].problems[0]
    assert all(r.ok for n, r in by_name.items() if n != "bomb"), run.reports
    assert len(run.reports) == 1 + len(aot_specs("gfx942"))


# -- usage parsing and policies -------------------------------------------------------------
def test_ptxas_log_parsing():
    log = ("ptxas info    : Function properties for k\n"
           "    1264 bytes stack frame, 2240 bytes spill stores, 2240 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 1264 bytes cumulative stack\n")
    assert aot._ptxas_usage(log) == (255, 4480, 1264)
    assert aot._ptxas_usage("nothing") == (None, None, None)


def test_amdgpu_descriptor_parsing():
    asm = ("    .agpr_count:     56\n    .group_segment_fixed_size: 0\n"
           "    .sgpr_count:     29\n    .sgpr_spill_count: 3\n    .vgpr_count:     312\n"
           "    .vgpr_spill_count: 7\n    .private_segment_fixed_size: 32\n")
    usage = aot._hip_usage(asm)
    assert usage["vgpr_count"] == 312 and usage["agpr_count"] == 56
    assert usage["vgpr_spill_count"] == 7 and usage["sgpr_spill_count"] == 3
    assert usage["private_segment_fixed_size"] == 32


def test_policy_follows_the_registry():
    assert aot.target_role("triton_rocm", "gfx942") == "primary"
    assert aot.target_role("triton_rocm", "sm_90") == "served"  # forced on NVIDIA
    assert aot.target_role("triton_cuda", "sm_80") == "primary"
    assert aot.target_role("triton_cuda", "gfx950") == "foreign"
    assert aot.target_role(aot.COMMON_LABEL, "gfx950") == "primary"
    assert aot.spills_fail("triton_rocm", "gfx942")
    assert not aot.spills_fail("triton_rocm", "sm_90")
    assert aot.spills_fail("triton_rocm", "sm_90", strict=True)
    assert aot.problem_is_fatal("LDS 1 B over", "served")
    assert not aot.problem_is_fatal("compile failed: x", "foreign")
    assert aot.problem_is_fatal("compile failed: x", "foreign", strict=True)

    def report(backend, target, problem="register spills: 64 B"):
        return aot.KernelReport(backend, target, "m", "k", spills=64, problems=[problem])

    r = report("triton_rocm", "sm_90")
    aot._apply_policy(r, {}, strict=False)
    assert r.ok and any(n.startswith("WARNING register spills") for n in r.notes)
    r = report("triton_rocm", "gfx950")
    aot._apply_policy(r, {}, strict=False)
    assert not r.ok
    r = report("triton_rocm", "gfx950")
    aot._apply_policy(r, {"max_spill_bytes": 64}, strict=False)
    assert r.ok
    r = report("triton_cuda", "gfx942", "LDS 90112 B over the gfx942 limit 65536 B")
    aot._apply_policy(r, {}, strict=False)
    assert r.ok and "never runs there" in r.notes[0]
    r = report("triton_cuda", "gfx942", "LDS 90112 B over the gfx942 limit 65536 B")
    aot._apply_policy(r, {}, strict=True)
    assert not r.ok


def test_listed_module_that_does_not_exist_is_skipped_with_a_note(monkeypatch):
    missing = "gdn_dispatch.backends.triton_cuda.kernel_not_written_yet"
    monkeypatch.setitem(aot.KERNEL_MODULES, "triton_cuda",
                        aot.KERNEL_MODULES["triton_cuda"] + [missing])
    _mods, notes = aot.discover_modules("triton_cuda")
    note = [n for n in notes if n.module == missing]
    assert note and not note[0].failure and "not present yet" in note[0].message


def test_load_module_by_path_and_collect_specs():
    mod = aot.load_module(str(THIS))
    specs, notes = aot.collect_specs(mod, "gfx942", "triton_rocm")
    assert not notes and [s["name"] for s in specs][0] == "scaled_add_fp16"


def test_table_has_the_columns():
    r = aot.KernelReport("triton_rocm", "gfx942", "m", "k", config="BT=64 w4 s1", shared=1024,
                         shared_limit=65536, registers=90, spills=0)
    head, row = aot.format_table([r]).splitlines()
    for col in ("kernel", "config", "shared/LDS B", "regs", "spills", "status"):
        assert col in head
    assert "BT=64 w4 s1" in row and "1024" in row and row.rstrip().endswith("ok")


# -- the command and the CI job ---------------------------------------------------------------
def test_cli_compiles_a_module_for_two_targets():
    res = _cli("compile", "--backend", "triton_rocm", "--target", "gfx942,sm_90",
               "--module", str(THIS), "--jobs", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tile_dot_32x32x32" in res.stdout and "scaled_add_fp32" in res.stdout
    assert "6 kernel compilations" in res.stdout and "6 ok (0 with warnings), 0 failed" in res.stdout


def test_cli_fails_on_the_broken_kernel(broken_module):
    res = _cli("compile", "--backend", "triton_rocm", "--target", "gfx942",
               "--module", str(broken_module), "--jobs", "1")
    assert res.returncode != 0
    assert "LDS 131072 B over the gfx942 limit 65536 B" in res.stdout
    assert "FAILED triton_rocm gfx942 lds_hog_32x256x256" in res.stdout


def test_cli_rejects_unknown_target():
    res = _cli("compile", "--backend", "triton_rocm", "--target", "gfx1100")
    assert res.returncode != 0 and "unknown target 'gfx1100'" in res.stderr


@pytest.mark.slow
def test_ci_compile_job_fails_on_the_broken_kernel(broken_module, tmp_path):
    """Issue 4's done-when: a deliberately broken kernel makes the compile job fail."""
    env = dict(os.environ, GDN_AOT_EXTRA_MODULES=str(broken_module),
               CI_COMPILE_TARGETS="gfx942", CI_COMPILE_BACKENDS="triton_rocm",
               CI_REPORT_DIR=str(tmp_path))
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run(["bash", str(ROOT / "ci" / "compile")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode != 0, res.stdout[-3000:]
    assert ("FAILED triton_rocm gfx942 lds_hog_32x256x256: LDS 131072 B over the gfx942 limit"
            in res.stdout), res.stdout[-3000:]
    assert (tmp_path / "compile.json").is_file()
