"""Run one request's documents through the stages in pipeline order.

The same rules as the batch runtimes: a stage sees only the documents its `when`
admits (evaluated on the results of earlier stages for the same document); a
document a stage fails on gets a dead letter for that stage and goes on to the next
stages, where it simply has no result for the failed one. A stage call that raises
(a replica lost mid-call) turns that call's documents into `stage_error` dead letters
rather than failing the whole request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import PipelineSpec
from worker.runtime.conditions import holds

log = logging.getLogger(__name__)
Context = dict[str, dict[str, StageResult]]
Outcome = StageResult | DeadLetter
StageCaller = Callable[[int, list[Document], Context], Awaitable[list[Outcome]]]


@dataclass
class ChainOutcome:
    """Per document id: results in stage order, stage errors, and the stages skipped."""

    results: dict[str, list[StageResult]] = field(default_factory=dict)
    letters: dict[str, list[DeadLetter]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)


async def run_chain(spec: PipelineSpec, docs: list[Document], call_stage: StageCaller) -> ChainOutcome:
    """Send the documents through every stage; `call_stage(index, docs, context)` runs stage `index`."""
    outcome = ChainOutcome(
        results={d.id: [] for d in docs}, letters={d.id: [] for d in docs}, skipped={d.id: [] for d in docs}
    )
    context: Context = {d.id: {} for d in docs}
    for index, stage in enumerate(spec.stages):
        eligible = [d for d in docs if holds(stage.when, context[d.id])]
        admitted = {d.id for d in eligible}
        for doc in docs:
            if doc.id not in admitted:
                outcome.skipped[doc.id].append(stage.name)
        if not eligible:
            continue
        try:
            returned = await call_stage(index, eligible, {d.id: context[d.id] for d in eligible})
        except Exception as exc:  # noqa: BLE001 - a failed call is data for its documents, not a crash
            log.warning("stage call failed", extra={"stage": stage.name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            detail = f"{type(exc).__name__}: {str(exc)[:400]}"
            returned = [DeadLetter(ref=d.id, stage=stage.name, reason="stage_error", detail=detail, payload=d.text[:2000]) for d in eligible]
        for item in returned:
            if isinstance(item, StageResult):
                context[item.doc_id][stage.name] = item
                outcome.results[item.doc_id].append(item)
            else:
                outcome.letters[item.ref].append(item)
    return outcome
