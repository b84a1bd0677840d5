"""One source of truth for "current": a pipeline against a database loads that database's champion.

Promotion in one registry (SQLite) must not change what a pipeline against another
database (PostgreSQL, no registry rows) loads; only moving the on-disk pointer
explicitly (`models promote --pointer`) does, and a third database with its own
registry keeps its own champion even then. Hot swap is off in the pipeline file, so
the run loads its model once, at the start, from the registry or the pointer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration.lifecycle_helpers import spam_pipeline
from worker.cli import main
from worker.models import loading
from worker.sinks.sql import normalise_url


def _loaded(pipeline: Path, docs: Path, url: str) -> set[str]:
    """Run the pipeline against `url`; the model versions its results carry."""
    assert main(["run", str(pipeline), "--input", str(docs), "--database-url", url, "--quiet"]) == 0
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(sa.text("SELECT DISTINCT model_version FROM results"))}
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_promotion_in_one_database_does_not_change_what_a_pipeline_on_another_loads(
    models_dir: Path, tmp_path: Path, sqlite_url: str, postgres_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    seed = loading.current_version_dir(models_dir / "spam")
    assert seed is not None
    models = tmp_path / "models"
    family = models / "spam"
    for version in ("v0", "v1"):
        shutil.copytree(seed, family / version)
        loading.write_metadata(family / version, {**loading.read_metadata(seed), "version": version})
    loading.set_current_version(family, family / "v0")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": text}) + "\n" for i, text in
                            enumerate(["WINNER! Claim your prize now, call 09061701461", "See you at lunch?", "ok thanks"])),
                    encoding="utf-8")
    pipeline = spam_pipeline(tmp_path / "p.yaml", family, sqlite_url, tmp_path / "unused.tsv",
                             stage_extra={"swap_check_seconds": None})
    registry_a, other_b = sqlite_url, postgres_url
    registry_c = f"sqlite:///{tmp_path / 'c.db'}"
    dirs = ["--dir", str(models)]

    assert main(["models", "promote", "spam", "v0", *dirs, "--database-url", registry_c, "--quiet"]) == 0  # C's own champion
    assert main(["models", "promote", "spam", "v1", *dirs, "--database-url", registry_a, "--quiet"]) == 0
    assert (family / "current").read_text(encoding="utf-8").strip() == "v0"
    assert _loaded(pipeline, docs, registry_a) == {"spam@v1"}  # follows its database's registry
    assert _loaded(pipeline, docs, other_b) == {"spam@v0"}  # no registry there: the pointer, which did not move
    assert _loaded(pipeline, docs, registry_c) == {"spam@v0"}

    capsys.readouterr()
    assert main(["models", "list", *dirs, "--database-url", registry_a]) == 0
    assert "warning: `spam`: the registry's champion is v1 but the on-disk `current` file names v0" in capsys.readouterr().err

    assert main(["models", "promote", "spam", "v1", "--pointer", *dirs, "--database-url", registry_a, "--quiet"]) == 0
    assert (family / "current").read_text(encoding="utf-8").strip() == "v1"
    assert _loaded(pipeline, docs, other_b) == {"spam@v1"}  # moved explicitly: now pipelines without a registry follow
    assert _loaded(pipeline, docs, registry_c) == {"spam@v0"}  # C's registry still names v0
    capsys.readouterr()
    assert main(["models", "list", *dirs, "--database-url", registry_a]) == 0
    assert "warning" not in capsys.readouterr().err
