"""Build textworker's wheel from a clean copy of the sources (no stale build/ directory can leak into it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "worker", "schemas", "pipelines")


def build_wheel(workdir: Path) -> Path:
    """Copy the package sources into `workdir/src`, build the wheel into `workdir/dist`, return its path."""
    src, dist = workdir / "src", workdir / "dist"
    src.mkdir(parents=True)
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("textworker-*-py3-none-any.whl")
    return wheel
