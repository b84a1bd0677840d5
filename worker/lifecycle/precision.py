"""The int8 quality guard: a version's int8 build is scored against its fp32 weights.

Run for a stage with `precision: int8` or `auto` (classify, spam and qa) when a version is
made (`textworker train`, `make models`) and before a fine-tuned candidate is promoted,
and for any stage by `textworker models quantize`. The evaluation data is the
version's own reference sets (`worker.lifecycle.references`): its `eval` and `heldout`
sets when it has them, else its `train` snapshot; a file can be named instead (`make models`
names the shared data sets' held-out files for the default models when they are on the
machine, `worker.lifecycle.defaults`). The verdict says whether it was scored on held-out
rows (`held_out`): a check on training rows only is weak evidence, because a model is
surest of the rows it learnt from, and `auto` says so when it relies on one. Both
precisions predict the same rows; the stage type's primary metric (its plug-in's
`default_metric`) may fall by at most `TOLERANCE` (0.01 on the 0..1 scale: one point for
metrics reported 0..100). The verdict is written into the int8 build's record, where
`precision: auto` reads it (`worker.models.precision`): a failed check keeps the version
on fp32 and the stage's load log says why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.lifecycle import references
from worker.lifecycle.evaluation import score_model
from worker.lifecycle.gate import HUNDRED_SCALE, default_metric, metric_value
from worker.models import int8
from worker.stages import plugin_for

log = logging.getLogger(__name__)
TOLERANCE = 0.01
TARGET_ROLES = ("eval", "heldout")


def applies(stage: Any) -> bool:
    """Whether the stage may run at int8 (`precision: int8`, or `auto`, which picks a build that passed this
    check, see `worker.models.precision`), its type has an int8 version and onnxruntime is installed."""
    return (getattr(stage, "precision", "auto") in ("int8", "auto") and int8.available()
            and int8.supports(getattr(plugin_for(stage.type).stage, "auto_class", "")))


def reference_rows(model_dir: str | Path) -> tuple[dict[str, list[Any]], str, bool]:
    """The version's evaluation rows by set name (eval/heldout sets, else its train snapshot), what they are, and
    whether they are held out from its training."""
    sets = references.manifest(model_dir)
    held_out = [s for s in sets if s.role in TARGET_ROLES]
    chosen = held_out or [s for s in sets if s.role == "train"]
    rows = {s.name: references.load_rows(model_dir, s) for s in chosen}
    return rows, ", ".join(f"{s.name} ({s.role}, {s.rows} rows)" for s in chosen), bool(held_out)


def check(stage: Any, model_dir: str | Path, *, sets: dict[str, Sequence[Any]] | None = None, what: str | None = None,
          labels: Sequence[str] | None = None, tolerance: float = TOLERANCE, force: bool = False,
          held_out: bool = True) -> dict[str, Any]:
    """Build (or reuse) the version's int8 build, score it against fp32 and record the verdict; returns it.
    `held_out` says whether named `sets` are held out from the version's training (a named file is taken to be)."""
    auto_class = plugin_for(stage.type).stage.auto_class
    build = int8.build(model_dir, auto_class, force=force)
    rows: dict[str, Sequence[Any]]
    if sets is None:
        found, what, held_out = reference_rows(model_dir)
        rows = dict(found)
    else:
        rows = dict(sets)
    if not any(rows.values()):
        raise ValueError(f"no evaluation rows for the int8 check of {model_dir}: the version records no reference sets; name a data file")
    metric = default_metric(stage)
    scores = {precision: score_model(stage.model_copy(update={"precision": precision}), str(model_dir), rows, labels)
              for precision in ("fp32", "int8")}
    fp32, quantised = (metric_value(scores[p].get("all", {}), metric) for p in ("fp32", "int8"))
    if fp32 is None or quantised is None:
        raise ValueError(f"metric `{metric}` is missing from the scores of {model_dir}")
    scale = 100.0 if metric in HUNDRED_SCALE else 1.0
    allowed = tolerance * scale
    drop = fp32 - quantised
    verdict = {
        "metric": metric, "fp32": round(fp32, 4), "int8": round(quantised, 4), "drop": round(drop, 4), "tolerance": allowed,
        "passed": drop <= allowed + 1e-9, "rows": sum(len(v) for v in rows.values()), "data": what or ", ".join(rows), "held_out": held_out,
        "kernels": int8.kernels(),
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    int8.write_info(model_dir, {**build, "quality": verdict})
    log.info("int8 quality check", extra={"model": str(model_dir), **verdict})
    return verdict


def check_quietly(stage: Any, model_dir: str | Path, **kwargs: Any) -> dict[str, Any] | None:
    """`check` where a version is made: never fails the caller (the version stays on fp32 and the log says why)."""
    if not applies(stage):
        return None
    try:
        return check(stage, model_dir, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- an int8 build problem must not lose a trained version
        log.warning("int8 build or check failed; the version runs at fp32", extra={"model": str(model_dir), "error": str(exc)[:500]})
        return {"passed": False, "error": str(exc)[:500]}


def describe(verdict: dict[str, Any]) -> str:
    """One line for a person: the check's outcome."""
    if verdict.get("error"):
        return f"int8: not built ({verdict['error'][:200]}); the version runs at fp32"
    outcome = "passed" if verdict["passed"] else "failed: the version stays on fp32 unless a stage asks for int8"
    rows = f"{verdict['rows']} rows" if verdict.get("held_out", True) else f"{verdict['rows']} of its training rows"
    return (f"int8 check {outcome} ({verdict['metric']} {verdict['fp32']} at fp32, {verdict['int8']} at int8, "
            f"drop {verdict['drop']} against a tolerance of {verdict['tolerance']}, {rows}; {verdict.get('data', '')})")
