"""What a stage type is: one registered object (`StagePlugin`) that reaches everything about it.

A stage type lives in one module that defines its spec class (pydantic, registered
into the pipeline schema with `register_stage_spec`), its runtime class (`load()`,
`run(docs, context)`) and a module-level `PLUGINS` tuple of `StagePlugin`s. Adding a
stage type is that module plus one line in `worker.stages.PLUGIN_MODULES`.

Optional parts a plug-in may bring:
- `build_default(models_dir, log_step)`: build its default model offline (`make models`);
- `show(result)`: how the dashboard and the CLI show one result in a line;
- `add_commands(subparsers, add_common)` and `commands`: extra `textworker` sub-commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.documents import StageResult


def show_label(result: StageResult) -> str:
    """Default display: the label and score."""
    score = f" ({result.score:.3f})" if result.score is not None else ""
    return f"{result.label}{score}"


@dataclass(frozen=True)
class StagePlugin:
    """One stage type: its `type:` string, spec class, runtime class and optional extras."""

    type: str
    spec: Any  # the pydantic spec class
    stage: Any  # the runtime class: built from a spec, with load() and run(docs, context)
    description: str = ""
    show: Callable[[StageResult], str] = show_label
    build_default: Callable[[Path, Callable[[str], None]], Path] | None = None
    add_commands: Callable[[Any, Callable[[argparse.ArgumentParser], None]], None] | None = None
    commands: Mapping[str, Callable[[argparse.Namespace], int]] = field(default_factory=dict)
