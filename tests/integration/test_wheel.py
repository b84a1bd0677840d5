"""The wheel on its own: built from this checkout, installed into a fresh virtual environment
(torch first, as the README says), then used from an empty directory with no checkout on the path.

The default models are reused from `models_dir` (building them again inside the new
environment would take minutes and test nothing about packaging)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wheel_helpers import build_wheel

TORCH = os.environ.get("TEXTWORKER_TORCH_SPEC", "torch==2.13.0")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_wheel_installs_into_a_fresh_venv_and_runs_the_demo_from_an_empty_directory(models_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TEXTWORKER_DATABASE_URL")}
    env["TEXTWORKER_MODELS_DIR"] = str(models_dir)
    venv, empty = tmp_path / "venv", tmp_path / "empty"
    empty.mkdir()

    wheel = build_wheel(tmp_path / "build")
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, *TORCH.split()], tmp_path, env)
    _run([*pip, str(wheel)], tmp_path, env)

    bin_dir = venv / "bin"
    located = _run([str(bin_dir / "python"), "-c", "import worker, worker.resources as r; print(worker.__file__); print(r.pipelines_dir())"], empty, env)
    module_file, pipelines = located.stdout.split()
    assert Path(module_file).is_relative_to(venv) and Path(pipelines).is_relative_to(venv), located.stdout

    version = _run([str(bin_dir / "textworker"), "--version"], empty, env)
    assert version.stdout.strip().startswith("textworker ") and version.stdout.strip() != "textworker 0+unknown"

    demo = _run([str(bin_dir / "textworker"), "demo"], empty, env)
    assert "What the database (sqlite:///demo.db) now holds for pipeline `demo`" in demo.stdout, demo.stdout[-3000:]
    assert "documents: 61" in demo.stdout and "dead letters: 7" in demo.stdout, demo.stdout[-3000:]
    assert (empty / "demo.db").is_file()

    _run([str(bin_dir / "textworker"), "init", "project"], empty, env)
    project = empty / "project"
    checked = _run([str(bin_dir / "textworker"), "validate", "pipelines/demo.yaml"], project, env)
    assert "valid pipeline `demo`" in checked.stdout
    run = _run([str(bin_dir / "textworker"), "run", "pipelines/demo.yaml", "--quiet", "--json"], project, env)
    assert '"docs": 61' in run.stdout and (project / "textworker.db").is_file()
