"""Files that ship with textworker, found the same way in a wheel and in a source checkout.

A wheel carries the pipeline files of the repository's top-level `pipelines/` directory
as package data under `worker/pipelines/` (`setup.py` maps them there), next to the seed
data (`worker/seed/`), the SQL migrations (`worker/sinks/migrations/`) and the dashboard
page (`worker/dashboard/page/`). An editable install or a checkout has no
`worker/pipelines/`; the files are then read from `pipelines/` beside the package.
Nothing here depends on the current directory.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from worker.errors import TextworkerError

DISTRIBUTION = "textworker"
PACKAGE_DIR = Path(__file__).resolve().parent


def package_version() -> str:
    """The installed distribution's version (what `textworker --version` prints)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
        return "0+unknown"


def pipelines_dir() -> Path:
    """The directory holding the shipped pipeline files (`demo.yaml`, `stream.yaml`, ...)."""
    packaged = PACKAGE_DIR / "pipelines"
    if packaged.is_dir():
        return packaged
    checkout = PACKAGE_DIR.parent / "pipelines"
    if checkout.is_dir():
        return checkout
    raise TextworkerError(
        f"no pipeline files found in {packaged} or {checkout}",
        hint="reinstall textworker from its wheel (`pip install textworker-*.whl`), or run from a checkout",
    )


def pipeline_path(name: str) -> Path:
    """The shipped pipeline file `name` (e.g. `demo.yaml`); an error naming the choices if it does not exist."""
    path = pipelines_dir() / name
    if not path.is_file():
        choices = ", ".join(p.name for p in shipped_pipelines())
        raise TextworkerError(f"no shipped pipeline file `{name}`", hint=f"shipped: {choices}")
    return path


def shipped_pipelines() -> list[Path]:
    """Every shipped pipeline file, sorted by name."""
    return sorted(pipelines_dir().glob("*.yaml"))


def seed_dir() -> Path:
    """The seed data the default models are built from, and the demo's sample documents."""
    return PACKAGE_DIR / "seed"
