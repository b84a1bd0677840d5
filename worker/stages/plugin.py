"""What a stage type is: one registered object (`StagePlugin`) that reaches everything about it.

A stage type lives in one module that defines its spec class (pydantic, registered
into the pipeline schema with `register_stage_spec`), its runtime class (`load()`,
`run(docs, context)`) and a module-level `PLUGINS` tuple of `StagePlugin`s. Adding a
stage type is that module plus one line in `worker.stages.PLUGIN_MODULES`.

Everything else the project does with a stage type goes through its plug-in; no code
outside it branches on the `type:` string:

- inference: `spec`, `stage`; how one result reads in a line (`show`);
- its default model, built offline by `make models` (`build_default`);
- what its output depends on, for the engine's duplicate-text cache (`cache_key`; see
  `worker.engine.dedupe`);
- whether it labels from a fixed set (`label_set`), which labels (`labels`), and the gate's
  default metric (`default_metric`);
- labelled feedback: the fields of a row (`feedback_row`), the header names a CSV/TSV may use
  (`table_fields`), whether a header-less text/label table is allowed (`text_label_table`),
  and the training example a stored row becomes (`feedback_example`);
- routing to human review (`confidence`: a stage type without it is never reviewed);
- the dashboard: which stored outputs it recognises (`recognise`), the sample fields it
  shows (`sample`), whether its labels are charted (`charts_labels`) and the label whose
  rate it charts (`rate_label`);
- training and evaluation (`trainer`): the import path, `module:attribute`, of a
  `worker.training.task.StageTrainer`. It is a path, not an object, because training
  sits above the stages in the layers and pulls in the training stack only when used;
- the settings `Pipeline.from_pretrained` adds to a one-stage spec (`pretrained_stage`);
- extra `textworker` sub-commands (`add_commands`, `commands`).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.documents import StageResult


def clip(text: Any, limit: int) -> str:
    """`text` as a string of at most `limit` characters, with an ellipsis when cut (samples on the dashboard)."""
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + "…"


def show_label(result: StageResult) -> str:
    """Default display: the label and score."""
    score = f" ({result.score:.3f})" if result.score is not None else ""
    return f"{result.label}{score}"


def _no_labels(spec: Any) -> list[str] | None:
    return None


def _no_fields(spec: Any) -> set[str]:
    return set()


def _recognise_nothing(output: dict[str, Any]) -> bool:
    return False


def _no_sample(output: dict[str, Any]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class StagePlugin:
    """One stage type: its `type:` string, spec class, runtime class and what the lifecycle needs of it."""

    type: str
    spec: Any  # the pydantic spec class
    stage: Any  # the runtime class: built from a spec, with load() and run(docs, context)
    description: str = ""
    show: Callable[[StageResult], str] = show_label
    build_default: Callable[[Path, Callable[[str], None]], Path] | None = None
    # the engine's duplicate-text cache: the key of what the stage's output depends on (None: never cached)
    cache_key: Callable[[Any, Any], str | None] | None = None
    # labels, gate
    label_set: bool = False  # its outputs are labels from a fixed set (a feedback row carries a label)
    labels: Callable[[Any], list[str] | None] = _no_labels
    default_metric: Callable[[Any], str] | None = None
    # feedback
    feedback_row: Callable[[Any, dict[str, Any], Sequence[str] | None], dict[str, Any]] | None = None
    feedback_example: Callable[[Any, Any], Any] | None = None
    table_fields: Callable[[Any], set[str]] = _no_fields
    text_label_table: bool = False
    # review
    confidence: Callable[[Any, StageResult], tuple[float, float]] | None = None
    # dashboard
    recognise: Callable[[dict[str, Any]], bool] = _recognise_nothing
    sample: Callable[[dict[str, Any]], dict[str, Any]] = _no_sample
    charts_labels: bool = False
    rate_label: Callable[[Any], str] | None = None  # spec or None -> the label whose rate is charted
    # training and evaluation
    trainer: str | None = None
    # Python API: `Pipeline.from_pretrained(model, task=type)` fills in a one-stage spec with this
    pretrained_stage: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # commands
    add_commands: Callable[[Any, Callable[[argparse.ArgumentParser], None]], None] | None = None
    commands: Mapping[str, Callable[[argparse.Namespace], int]] = field(default_factory=dict)

    def load_trainer(self) -> Any:
        """The stage type's `StageTrainer`; a clear error for a type that cannot be trained."""
        from worker.errors import TextworkerError

        if self.trainer is None:
            raise TextworkerError(f"stage type `{self.type}` has no training or evaluation")
        module, _, attribute = self.trainer.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def metric(self, spec: Any) -> str:
        """The gate's default primary metric for a stage of this type."""
        from worker.errors import TextworkerError

        if self.default_metric is None:
            raise TextworkerError(f"stage type `{self.type}` has no evaluation metric")
        return self.default_metric(spec)
