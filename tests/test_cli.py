"""The command line (`python -m gdn_dispatch info | compile | bench`) and the CI surface:
the ci/ job scripts, .ci/run and the GitHub Actions workflow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gdn_dispatch as gdn
from gdn_dispatch import cli

ROOT = Path(__file__).resolve().parent.parent
JOBS = ("cpu", "interpreter", "compile", "gpu", "bench-smoke", "lint")


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    for name in [n for n in full_env if n.startswith("GDN_BACKEND")]:
        if not (env and name in env):
            full_env.pop(name)
    return subprocess.run([sys.executable, "-m", "gdn_dispatch", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=300)


# -- info -----------------------------------------------------------------------------------
def test_info_prints_probe_backends_and_a_choice_per_op():
    res = _run("info")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for field in ("vendor", "arch", "capability", "bf16", "shared_mem_per_block",
                  "multiprocessors", "warp_size", "triton_available", "triton_target",
                  "interpreter", "is_simulated"):
        assert re.search(rf"^\s+{field}\s", out, re.M), field
    assert re.search(r"^\s+is_simulated\s+False$", out, re.M)
    for backend in ("reference", "triton_cuda", "triton_rocm"):
        assert re.search(rf"^\s+{backend} \(priority \d+\): (available|unavailable)", out, re.M)
    for op in gdn.OPS:
        assert re.search(rf"^\s+{op}: runs on \w+", out, re.M), op
    assert "explain failed" not in out


def test_info_shows_a_forced_backend():
    res = _run("info", env={"GDN_BACKEND": "reference"})
    assert res.returncode == 0, res.stderr
    assert "chunk_gated_delta_rule: runs on reference (forced by GDN_BACKEND)" in res.stdout
    assert "GDN_BACKEND=reference" in res.stdout


def test_typical_calls_validate_on_this_device():
    """Every op's typical call passes validation, so `info` shows choices, not errors."""
    for op, build in cli.typical_calls(torch.device("cpu"), torch.float32, 64).items():
        args, kwargs = build()
        exp = gdn.explain(op, *args, **kwargs)
        assert exp.error is None and exp.chosen, (op, str(exp))


def test_typical_calls_pick_the_vendor_backend_on_simulated_devices():
    """On a simulated H100 / MI300X the registry answers for each op (which backend depends on
    what the Triton backends declare; the answer must be a backend or a list of reasons)."""
    for device in ("h100", "mi300x"):
        with gdn.simulate_device(device):
            for op, build in cli.typical_calls(torch.device("cpu"), torch.bfloat16, 64).items():
                args, kwargs = build()
                exp = gdn.explain(op, *args, **kwargs)
                assert exp.chosen in {b["name"] for b in gdn.backends()}, (device, str(exp))


def test_readme_support_matrix_is_current():
    readme = (ROOT / "README.md").read_text()
    expected = cli.readme_with_matrix(readme, cli.support_markdown())
    assert readme == expected, ("README's support matrix is stale: run "
                                "`python -m gdn_dispatch support --readme README.md`")


def test_readme_names_the_commands_and_warns_about_layouts():
    readme = (ROOT / "README.md").read_text()
    for needle in ("python3 -m gdn_dispatch info", "bash ci/all", "GDN_BACKEND_<OP>",
                   "GDN_CHECK_VALUES", "gdn.use_backend", "gdn.explain", "gdn.simulate_device",
                   "state_v_first", "K == V", "AOT compile + interpreter + forced-backend runs"):
        assert needle in readme, needle


# -- compile / bench ------------------------------------------------------------------------
def test_compile_help_lists_targets_and_flags():
    res = _run("compile", "--help")
    assert res.returncode == 0
    for word in ("--backend", "--target", "--module", "--extra-module", "--jobs", "--json",
                 "--strict", "--kernel-timeout"):
        assert word in res.stdout


@pytest.mark.compile
def test_compile_a_tiny_kernel(tmp_path):
    pytest.importorskip("triton")
    module = ROOT / "tests" / "test_aot_compile.py"
    out = tmp_path / "r.json"
    res = _run("compile", "--backend", "triton_cuda", "--target", "sm_80", "--module",
               str(module), "--json", str(out), env={"TRITON_INTERPRET": "0"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "scaled_add_fp16" in res.stdout and "3 ok (0 with warnings), 0 failed" in res.stdout
    import json

    data = json.loads(out.read_text())
    assert {r["name"] for r in data["reports"]} >= {"scaled_add_fp16", "tile_dot_32x32x32"}
    assert all(r["ok"] and r["registers"] for r in data["reports"])


def test_bench_without_the_script_says_so(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_bench_script", lambda: None)
    assert cli.main(["bench"]) == 2
    assert "benchmarks/run.py is not present" in capsys.readouterr().err


def test_bench_delegates_with_arguments(monkeypatch, tmp_path, capsys):
    script = tmp_path / "run.py"
    script.write_text("import sys\nprint('bench args', sys.argv[1:])\nsys.exit(3)\n")
    monkeypatch.setattr(cli, "_bench_script", lambda: script)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert cli.main(["bench", "--quick", "x"]) == 3
    assert "bench args ['--quick', 'x']" in capsys.readouterr().out


# -- CI surface -----------------------------------------------------------------------------
@pytest.mark.parametrize("job", JOBS + ("all", "setup"))
def test_ci_scripts_exist_are_executable_and_parse(job):
    path = ROOT / "ci" / job
    assert path.is_file() and os.access(path, os.X_OK), path
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_ci_run_installs_cpu_torch_and_runs_the_readme_command():
    text = (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in text and "triton==3.9.0" in text
    installs = [ln for ln in text.splitlines() if "pip install" in ln and not ln.startswith("#")]
    assert installs and not any(re.search(r"\btorch\b(?!==)", ln) for ln in installs)
    assert "bash ci/all" in text
    assert "bash ci/all" in (ROOT / "README.md").read_text()


def test_pytest_exit_5_is_reported_and_fails(tmp_path):
    """A job whose pytest collects nothing fails loudly unless CI_ALLOW_NO_TESTS=1."""
    empty = tmp_path / "t"
    empty.mkdir()
    (empty / "test_none.py").write_text("import pytest\n\n@pytest.mark.slow\ndef test_x():\n"
                                        "    pass\n")
    script = (f"source {ROOT / 'ci' / 'lib.sh'}; cd {empty}; "
              "run_pytest none -q -m 'not slow' -p no:randomly --rootdir . -c /dev/null")
    env = dict(os.environ, CI_REPORT_DIR=str(tmp_path / "r"), CI_JOB="test")
    res = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert res.returncode == 5 and "collected NO tests" in res.stderr
    res = subprocess.run(["bash", "-c", script], env=dict(env, CI_ALLOW_NO_TESTS="1"),
                         capture_output=True, text=True)
    assert res.returncode == 0 and "CI_ALLOW_NO_TESTS=1" in res.stderr


def _workflow() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())


def test_workflow_steps_call_only_ci_scripts():
    wf = _workflow()
    assert wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True
    runs = []
    for job in wf["jobs"].values():
        for step in job["steps"]:
            if "run" in step:
                runs.append(step["run"])
            else:
                assert step["uses"].split("@")[0] in {
                    "actions/checkout", "actions/setup-python", "actions/upload-artifact"}
    assert runs
    for line in runs:
        assert re.fullmatch(r"ci/(\$\{\{ matrix\.job \}\}|[a-z-]+)", line.strip()), line
        name = line.strip().removeprefix("ci/")
        if "matrix" not in name:
            assert (ROOT / "ci" / name).is_file()


def test_workflow_matrix_is_defined_once_and_places_jobs_on_the_right_runners():
    wf = _workflow()
    with_matrix = [j for j in wf["jobs"].values() if "matrix" in j.get("strategy", {})]
    assert len(with_matrix) == 1
    job = with_matrix[0]
    m = job["strategy"]["matrix"]
    combos = [(r, j) for r in m["runner"] for j in m["job"]
              if {"runner": r, "job": j} not in m["exclude"]]
    assert set(combos) == {("cpu", j) for j in ("lint", "cpu", "interpreter", "compile")} | {
        (v, j) for v in ("nvidia", "amd") for j in ("gpu", "bench-smoke")}
    assert set(m["job"]) == set(JOBS)
    inc = {e["runner"]: e for e in m["include"]}
    assert inc["cpu"]["runs-on"] == "ubuntu-latest"
    assert "self-hosted" in inc["nvidia"]["runs-on"] and "nvidia" in inc["nvidia"]["runs-on"]
    assert "self-hosted" in inc["amd"]["runs-on"] and "amd" in inc["amd"]["runs-on"]
    assert "--gpus" in inc["nvidia"]["container"]["options"]
    amd_opts = inc["amd"]["container"]["options"]
    assert "/dev/kfd" in amd_opts and "/dev/dri" in amd_opts
    assert "rocm" in inc["amd"]["container"]["image"]
    assert "cuda" in inc["nvidia"]["container"]["image"]
    assert job["runs-on"] == "${{ matrix.runs-on }}"


def _bench_smoke_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gdn_bench_smoke", ROOT / "ci" / "bench_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_smoke_device_classes_and_the_2x_rule():
    bs = _bench_smoke_module()
    assert bs.device_class(gdn.DeviceProbe.simulated("h100")) == "h100"
    assert bs.device_class(gdn.DeviceProbe.simulated("mi300x")) == "mi300x"
    assert bs.device_class(gdn.DeviceProbe.simulated("cpu")) == "cpu"
    bad, notes = bs.compare({"a": 2.5, "b": 1.9, "c": 1.0}, {"a": 1.0, "b": 1.0, "c": None})
    assert len(bad) == 1 and bad[0].startswith("a:") and notes == ["c: no baseline"]


def test_h100_baseline_names_every_op():
    import json

    data = json.loads((ROOT / "ci" / "baselines" / "h100.json").read_text())
    assert data["device_class"] == "h100"
    assert {case.split("/")[0] for case in data["ms"]} == set(gdn.OPS)
