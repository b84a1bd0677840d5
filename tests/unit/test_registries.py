"""The registries that make a stage type, a source or an executor one module plus one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from schemas.pipeline import SOURCE_SPECS, STAGE_SPECS
from worker.engine.executors import EXECUTORS
from worker.sources import SOURCES
from worker.stages import STAGE_TYPES

REPO = Path(__file__).resolve().parents[2]


def test_every_registered_stage_type_has_its_spec_in_the_schema() -> None:
    assert set(STAGE_TYPES) == {"classify", "spam", "qa", "translate", "embed"}
    for kind, plugin in STAGE_TYPES.items():
        assert plugin.type == kind
        assert STAGE_SPECS[kind] is plugin.spec
        assert plugin.spec.model_fields["type"].default == kind


def test_every_source_type_has_a_reader_and_executors_are_named() -> None:
    assert set(SOURCES) == set(SOURCE_SPECS) == {"file", "kafka"}
    assert {entry.kind for entry in SOURCES.values()} == {"batch", "stream"}
    assert set(EXECUTORS) == {"local", "ray"}


def test_a_new_stage_type_and_source_type_join_the_pipeline_schema() -> None:
    """In a fresh interpreter (the schema is process-wide): register, then validate a pipeline using both."""
    code = textwrap.dedent('''
        from typing import Literal
        from schemas.pipeline import StageBase, StrictModel, register_source_spec, register_stage_spec
        from worker.config import parse_pipeline
        from worker.errors import PipelineFileError

        class Shout(StageBase):
            type: Literal["shout"] = "shout"
            volume: int = 3

        class Queue(StrictModel):
            type: Literal["queue"] = "queue"
            name: str
            max_chars: int = 1000

        register_stage_spec(Shout)
        register_source_spec(Queue)
        spec = parse_pipeline("""
        name: p
        source: {type: queue, name: q1}
        stages:
          - {name: a, type: shout, model: m, volume: 5}
          - {name: b, type: spam, model: m}
        """)
        assert spec.stages[0].volume == 5 and spec.source.name == "q1", spec
        try:
            parse_pipeline("name: p\\nsource: {type: queue, name: q}\\nstages: [{name: a, type: shout, model: m, loud: 1}]")
        except PipelineFileError as exc:
            assert "stages[0]" in str(exc) or "stages.0" in str(exc), str(exc)
        else:
            raise AssertionError("an unknown field was accepted")
        print("ok")
    ''')
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
