"""Stage types, keyed by the `type:` string of a pipeline file's stage.

Each module in PLUGIN_MODULES defines `PLUGINS`, a tuple of `StagePlugin`s (see
`worker.stages.plugin`). Adding a stage type is one module plus one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from worker.stages.base import HFStage, Stage
from worker.stages.plugin import StagePlugin

PLUGIN_MODULES: tuple[str, ...] = (
    "worker.stages.classify",  # classify, spam
    "worker.stages.qa",
    "worker.stages.translate",
    "worker.stages.embed",
)

STAGE_TYPES: dict[str, StagePlugin] = {}
for _module in PLUGIN_MODULES:
    for _plugin in importlib.import_module(_module).PLUGINS:
        STAGE_TYPES[_plugin.type] = _plugin


def plugin_for(kind: str) -> StagePlugin:
    """The plug-in of stage type `kind`."""
    try:
        return STAGE_TYPES[kind]
    except KeyError:
        raise KeyError(f"unknown stage type `{kind}` (known: {', '.join(sorted(STAGE_TYPES))})") from None


def build_stage(spec: Any) -> Stage:
    """The stage object for a validated stage spec (model not loaded yet)."""
    stage: Stage = plugin_for(spec.type).stage(spec)
    return stage


__all__ = ["STAGE_TYPES", "HFStage", "Stage", "StagePlugin", "build_stage", "plugin_for"]
