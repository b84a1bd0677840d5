"""Packaging: the files a wheel ships, `textworker --version`, `textworker init DIR`."""

from __future__ import annotations

import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from schemas.pipeline import FileSource
from tests.wheel_helpers import build_wheel
from worker import resources, scaffold
from worker.cli import main
from worker.config import load_pipeline
from worker.errors import TextworkerError

REPO = Path(__file__).resolve().parents[2]


def test_version_flag_prints_the_distribution_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"textworker {metadata.version('textworker')}"


def test_shipped_pipelines_are_the_top_level_pipeline_files() -> None:
    assert [p.name for p in resources.shipped_pipelines()] == sorted(p.name for p in (REPO / "pipelines").glob("*.yaml"))
    assert resources.pipeline_path("demo.yaml").read_text() == (REPO / "pipelines" / "demo.yaml").read_text()
    with pytest.raises(TextworkerError, match="no shipped pipeline file `nope.yaml`") as err:
        resources.pipeline_path("nope.yaml")
    assert "demo.yaml" in err.value.hint


def test_wheel_carries_every_module_and_data_file(tmp_path: Path) -> None:
    """The wheel (built without dependencies, a few seconds) holds every source module and nothing else
    of Python, the migrations, seed data, dashboard page and the top-level pipeline files under worker/pipelines/."""
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    modules = {p.relative_to(REPO).as_posix() for top in ("worker", "schemas") for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts}
    expected = modules | {f"worker/pipelines/{p.name}" for p in (REPO / "pipelines").glob("*.yaml")}
    for folder in ("worker/seed", "worker/dashboard/page", "worker/sinks/migrations"):
        expected |= {p.relative_to(REPO).as_posix() for p in (REPO / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert expected - names == set()
    assert {n for n in names if n.endswith(".py")} == modules
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "infra/"))]


def test_init_writes_a_project_whose_pipelines_load_from_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "reviews"
    written = scaffold.init_project(project)
    relative = sorted(p.relative_to(project).as_posix() for p in written)
    assert relative == sorted([".env.example", "README.md", "data/sample_docs.jsonl", "data/spam.tsv",
                               *(f"pipelines/{n}" for n in scaffold.STARTER_PIPELINES)])
    assert all("worker/seed" not in p.read_text() for p in written)
    assert (project / "README.md").read_text().startswith("# reviews\n")

    monkeypatch.chdir(project)
    for var in ("TEXTWORKER_INPUT", "TEXTWORKER_MODELS_DIR", "TEXTWORKER_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    for name in scaffold.STARTER_PIPELINES:
        spec = load_pipeline(f"pipelines/{name}")
        path = getattr(spec.source, "path", None)
        if path is not None:
            assert Path(path).is_file(), f"{name}: source {path} is not in the project"
    demo = load_pipeline("pipelines/demo.yaml")
    assert isinstance(demo.source, FileSource) and demo.source.path == "data/sample_docs.jsonl"
    assert demo.stages[0].model == "models/sentiment"


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    scaffold.init_project(tmp_path)
    edited = tmp_path / "pipelines" / "demo.yaml"
    edited.write_text("mine\n")
    with pytest.raises(TextworkerError, match="would overwrite") as err:
        scaffold.init_project(tmp_path)
    assert str(edited) in err.value.message and edited.read_text() == "mine\n"
    scaffold.init_project(tmp_path, force=True)
    assert edited.read_text().startswith("# The demo pipeline")


def test_init_command_refuses_a_file_as_its_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    assert main(["init", str(target)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "new"), "--quiet"]) == 0
    assert (tmp_path / "new" / "pipelines" / "demo.yaml").is_file()
