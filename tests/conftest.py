"""Shared fixtures: the real data sets, the default models, a real PostgreSQL database.

A service the tests need that is missing fails the run when CI=true, and skips
with the reason otherwise (a developer's laptop without PostgreSQL).
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def missing(reason: str) -> None:
    """Skip with the reason on a developer's machine; fail when CI=true, where every service and data set must be present."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


_missing = missing


def int8_runtime_setting(runtime: str) -> Iterator[None]:
    """`TEXTWORKER_INT8_RUNTIME=runtime` for a module's tests (module-scoped fixtures included), restored after."""
    saved = os.environ.get("TEXTWORKER_INT8_RUNTIME")
    os.environ["TEXTWORKER_INT8_RUNTIME"] = runtime
    yield
    if saved is None:
        os.environ.pop("TEXTWORKER_INT8_RUNTIME", None)
    else:
        os.environ["TEXTWORKER_INT8_RUNTIME"] = saved


def spam_runs_at(model_dir: Path, texts: list[str], precisions: tuple[str, ...] = ("fp32", "int8")) -> dict[str, list[Any]]:
    """A spam stage on `model_dir` loaded at each precision (checking it says so), and its results for `texts`."""
    from schemas.documents import Document
    from schemas.pipeline import SpamStage
    from worker.stages import build_stage

    docs = [Document(id=f"d{i}", text=text) for i, text in enumerate(texts)]
    runs = {}
    for wanted in precisions:
        stage = build_stage(SpamStage(name="spam", model=str(model_dir), precision=wanted))
        stage.load()
        assert stage.precision == wanted
        runs[wanted] = stage.run(docs, {})
    return runs


def benchmark_script(name: str) -> ModuleType:
    """A script under benchmarks/ (not a package) loaded as a module, for the tests of its functions."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_data_path() -> Path:
    """../shared/data (or $TEXTWORKER_SHARED_DATA); a skip without it, a failure when CI=true (CI always has it)."""
    path = Path(os.environ.get("TEXTWORKER_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (path / "docs").is_dir():
        missing(f"the shared data sets are not on this machine ({path}); set TEXTWORKER_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data sets (../shared/data, or $TEXTWORKER_SHARED_DATA)."""
    return shared_data_path()


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The default models, built once if missing (`make models` builds them ahead)."""
    from worker.lifecycle.defaults import build_defaults

    path = Path(os.environ.get("TEXTWORKER_MODELS_DIR", REPO / "models")).resolve()
    build_defaults(path, log_step=lambda message: None)
    os.environ["TEXTWORKER_MODELS_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    return os.environ.get("TEXTWORKER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    name = f"tw_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        _missing(f"PostgreSQL is not reachable at {postgres_admin_url}: {str(exc.orig).strip()[:200]}")
    url = postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'textworker.db'}"
