"""`textworker schedule`: fine-tune each stage when its `finetune.schedule` says so.

Every `poll_seconds` the loop drains the pipeline's Kafka feedback topic (when one is
configured) and then, for each stage with a schedule, counts the feedback rows that
arrived since the stage's last fine-tune (the newest candidate the registry holds for
it) and decides:

- `cron` only: due when a cron tick (UTC) passed since the last fine-tune and at least
  one new label arrived;
- `min_new_labels` only: due once that many new labels arrived;
- both: due when a tick passed AND that many new labels arrived.

A stage never fine-tuned counts every label and is due at once (cron). Due stages
are fine-tuned one at a time (`worker.lifecycle.finetune`); each decision is logged.
SIGTERM/SIGINT: the loop stops; a fine-tune in flight is cancelled (nothing is
registered) and the command exits 0.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from schemas.pipeline import PipelineSpec
from worker.errors import TextworkerError
from worker.lifecycle.feedback import count_since
from worker.lifecycle.finetune import FinetuneInterrupted, FinetuneOptions, finetune
from worker.lifecycle.registry import ModelRegistry, family_name
from worker.sinks import tables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Due:
    due: bool
    why: str


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def is_due(cron: str | None, min_new_labels: int | None, now: datetime, last: datetime | None, new_labels: int) -> Due:
    """The schedule rule of the module docstring, as a pure function."""
    from croniter import croniter

    tick_passed, tick = True, None
    if cron is not None:
        tick = croniter(cron, now).get_prev(datetime)
        tick_passed = last is None or tick > last
    enough = new_labels >= (min_new_labels or 1)
    if tick_passed and enough:
        parts = [f"cron tick {tick:%Y-%m-%d %H:%M} passed"] if tick is not None else []
        return Due(True, ", ".join([*parts, f"{new_labels} new labels"]))
    if not tick_passed:
        return Due(False, f"no cron tick since the last fine-tune (last tick {tick:%Y-%m-%d %H:%M})")
    return Due(False, f"{new_labels} new labels, waiting for {min_new_labels or 1}")


def last_finetune(registry: ModelRegistry, name: str, stage: str) -> datetime | None:
    """When the newest fine-tune of the family for `stage` started (feedback after that is new to it)."""
    t = tables.model_registry
    query = sa.select(t.c.train_config, t.c.created_at).where(t.c.name == name, t.c.stage == stage, t.c.parent_version.is_not(None))
    with registry.engine.connect() as conn:
        rows = conn.execute(query).all()
    times = []
    for config, created in rows:
        started = (config or {}).get("started_at")
        times.append(datetime.fromisoformat(started) if isinstance(started, str) else _aware(created))
    return max((moment for moment in times if moment is not None), default=None)


class Scheduler:
    """The loop; `check()` is one pass (what `--once` runs)."""

    def __init__(self, spec: PipelineSpec, registry: ModelRegistry, *, ray_address: str | None = None,
                 stop: threading.Event | None = None) -> None:
        self.spec, self.registry = spec, registry
        self.stop = stop or threading.Event()
        self.options = FinetuneOptions(ray_address=ray_address)
        self.stages = [s for s in spec.stages if s.finetune is not None and s.finetune.schedule is not None]
        self.topic: Any = None

    def drain_feedback(self) -> None:
        if self.spec.feedback is None:
            return
        if self.topic is None:
            from worker.lifecycle.feedback_topic import FeedbackTopicConsumer

            self.topic = FeedbackTopicConsumer(self.spec, self.registry.engine)
        self.topic.drain(self.stop)

    def check(self) -> list[dict[str, Any]]:
        """Drain, then fine-tune every due stage; one decision record per scheduled stage."""
        self.drain_feedback()
        decisions = []
        for stage in self.stages:
            if self.stop.is_set():
                break
            decisions.append(self._check_stage(stage))
        return decisions

    def _check_stage(self, stage: Any) -> dict[str, Any]:
        schedule = stage.finetune.schedule
        name = family_name(stage.model)
        last = last_finetune(self.registry, name, stage.name)
        new = count_since(self.registry.engine, self.spec.name, stage.name, last)
        due = is_due(schedule.cron, schedule.min_new_labels, datetime.now(UTC), last, new)
        record: dict[str, Any] = {"stage": stage.name, "model": name, "due": due.due, "why": due.why, "new_labels": new}
        if not due.due:
            log.info("fine-tune not due", extra=record)
            return record
        log.info("fine-tune due", extra=record)
        try:
            result = finetune(self.spec, stage.name, self.registry, self.options, self.stop)
        except FinetuneInterrupted:
            record["result"] = {"interrupted": True}
            return record
        except TextworkerError as exc:
            log.error("fine-tune failed", extra={**record, "error": str(exc)[:500]})
            record["error"] = str(exc)
            return record
        record["result"] = result.as_dict()
        log.warning("fine-tune decision", extra={"stage": stage.name, "candidate": result.candidate,
                                                 "promoted": result.promoted, "reason": result.reason})
        return record

    def run(self, *, once: bool, poll_seconds: float) -> list[dict[str, Any]]:
        """Loop until stopped (or one pass with `once`); returns every decision made."""
        decisions: list[dict[str, Any]] = []
        try:
            while not self.stop.is_set():
                decisions += self.check()
                if once:
                    break
                self.stop.wait(poll_seconds)
        finally:
            if self.topic is not None:
                self.topic.close()
        return decisions
