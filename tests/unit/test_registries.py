"""The registries that make a stage type, a source or an executor one module plus one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from schemas.pipeline import SINK_SPECS, SOURCE_SPECS, STAGE_SPECS
from worker.engine.executors import EXECUTORS
from worker.sinks import SINKS
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
    assert {kind for kind, entry in SINKS.items() if entry.role == "store"} == set(SINK_SPECS) == {"sql"}
    assert {kind for kind, entry in SINKS.items() if entry.role == "publisher"} == {"kafka_topics"}


def test_every_stage_type_reaches_its_lifecycle_through_its_plugin() -> None:
    """Training, evaluation, feedback, the gate metric, review and the dashboard: one registered object."""
    from worker.lifecycle.gate import default_metric
    from worker.lifecycle.references import known

    trained = {kind for kind, plugin in STAGE_TYPES.items() if plugin.trainer is not None}
    assert trained == {"classify", "spam", "qa", "translate"}
    for kind in trained:
        plugin = STAGE_TYPES[kind]
        trainer = plugin.load_trainer()
        assert trainer.auto_model.startswith("AutoModelFor") and known(kind)
        assert plugin.feedback_row is not None and plugin.feedback_example is not None and plugin.default_metric is not None
        spec = plugin.spec(name="s", model="m", **({"questions": ["q?"]} if kind == "qa" else {}))
        assert default_metric(spec) in {m.replace("<label>", "spam") for m in type(spec).gate_metrics} | {"f1:spam"}
    assert {kind for kind, p in STAGE_TYPES.items() if p.confidence is not None} == {"classify", "spam"}
    outputs = {"classify": {"scores": {"a": 1.0}}, "spam": {"spam_probability": 0.9, "scores": {}}, "qa": {"answers": []},
               "translate": {"translation": "x"}, "embed": {"embedding": [0.0], "dim": 1}}
    from worker.dashboard.queries import kind_of_output

    assert {kind: kind_of_output(output) for kind, output in outputs.items()} == {kind: kind for kind in outputs}


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


def test_a_new_sink_type_is_one_class_plus_one_registry_line(tmp_path: Path, models_dir: Path) -> None:
    """In a fresh interpreter: a JSON-lines sink registered in SINKS and SINK_SPECS, then `textworker run` into it."""
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "WIN a FREE prize, text 80086 now"}\n{"id": "b", "text": ""}\n'
                                         '{"id": "c", "text": "See you at lunch tomorrow"}\n', encoding="utf-8")
    (tmp_path / "p.yaml").write_text(f"""
name: p
source: {{type: file, path: {tmp_path / "docs.jsonl"}}}
stages:
  - {{name: spam, type: spam, model: {models_dir / "spam"}}}
sink: {{type: jsonl, path: {tmp_path / "out.jsonl"}}}
""", encoding="utf-8")
    code = textwrap.dedent('''
        import json, sys
        from typing import Literal
        from schemas.pipeline import StrictModel, register_sink_spec
        from worker.sinks import SINKS, SinkEntry

        class JsonlSinkSpec(StrictModel):
            type: Literal["jsonl"] = "jsonl"
            path: str

        class JsonlSink:
            def __init__(self, path, run_id):
                self.path, self.run_id = path, run_id
            @classmethod
            def from_spec(cls, spec, pipeline, run_id, **options):
                return cls(spec.path, run_id)
            def open(self):
                self.out = open(self.path, "a", encoding="utf-8")
                return self
            def write(self, batch):
                for r in batch.results:
                    self.out.write(json.dumps({"doc": r.doc_id, "label": r.label}) + "\\n")
                for d in batch.dead_letters:
                    self.out.write(json.dumps({"doc": d.ref, "dead": d.reason}) + "\\n")
            def start_run(self, stats=None): pass
            def finish_run(self, status, stats): self.out.write(json.dumps({"run": status}) + "\\n")
            def close(self): self.out.close()

        sys.modules["jsonl_sink"] = sys.modules[__name__]
        SINKS["jsonl"] = SinkEntry("jsonl_sink:JsonlSink", "store")
        register_sink_spec(JsonlSinkSpec)
        from worker.cli import main
        raise SystemExit(main(["run", sys.argv[1], "--quiet"]))
    ''')
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.yaml")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [__import__("json").loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {"doc": "a", "label": "spam"} in rows and {"doc": "c", "label": "ham"} in rows
    assert {"doc": "b", "dead": "empty_text"} in rows and rows[-1] == {"run": "finished"}
