"""One pipeline stage as a Ray Serve deployment, and the executor that calls them.

Each replica builds the stage and loads its model once, in its constructor (the same
`StageActor` the Ray executor uses, so device, threads and GPU placement follow the
stage's `resources` the same way, and every call goes through the engine's
`run_stage`). Calls from concurrent HTTP requests are
gathered by `@serve.batch` (up to `batch_calls` calls, waiting at most
`batch_wait_s` for more) and run as one `stage.process` call, inside which the stage
batches by token budget as it always does. Each call's documents are re-keyed while
they share a batch, so two requests may use the same document ids.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ray import serve

from schemas.documents import DeadLetter, Document, StageResult
from worker.engine.executors.ray import StageActor

Context = dict[str, dict[str, StageResult]]
Outcome = StageResult | DeadLetter


@dataclass
class StageCall:
    """One request's documents for this stage, with their earlier results."""

    docs: list[Document]
    context: Context


def merge_calls(calls: list[StageCall]) -> tuple[list[Document], Context, dict[str, tuple[int, str]]]:
    """One document list for the whole batch; keys map back to (call index, original id)."""
    docs: list[Document] = []
    context: Context = {}
    owners: dict[str, tuple[int, str]] = {}
    for index, call in enumerate(calls):
        for doc in call.docs:
            key = f"{index}/{doc.id}"
            owners[key] = (index, doc.id)
            docs.append(doc.model_copy(update={"id": key}))
            context[key] = call.context.get(doc.id, {})
    return docs, context, owners


def split_outcomes(outcomes: list[Outcome], owners: dict[str, tuple[int, str]], calls: int) -> list[list[Outcome]]:
    """Hand each call back its own outcomes, under its own document ids."""
    per_call: list[list[Outcome]] = [[] for _ in range(calls)]
    for outcome in outcomes:
        if isinstance(outcome, StageResult):
            index, doc_id = owners[outcome.doc_id]
            per_call[index].append(outcome.model_copy(update={"doc_id": doc_id}))
        else:
            index, doc_id = owners[outcome.ref]
            per_call[index].append(outcome.model_copy(update={"ref": doc_id}))
    return per_call


class StageServer:
    """A replica of one stage: the loaded model, and batched `process` calls."""

    def __init__(self, spec: Any, device: str, batch_calls: int = 16, batch_wait_s: float = 0.01, database_url: str | None = None) -> None:
        # With a database, the replica follows the model registry's champion (hot swap between batches).
        self.actor = StageActor(spec, device, database_url)
        self.name: str = spec.name
        self.device = device
        self.process.set_max_batch_size(batch_calls)  # type: ignore[attr-defined]
        self.process.set_batch_wait_timeout_s(batch_wait_s)  # type: ignore[attr-defined]
        self.calls = 0
        self.batches = 0
        self.largest_batch = 0

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def process(self, calls: list[StageCall]) -> list[tuple[list[Outcome], dict[str, float]]]:
        """Outcomes per call, with the batch's stats delta shared out by documents (seconds: the whole batch's)."""
        docs, context, owners = merge_calls(calls)
        self.calls += len(calls)
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(calls))
        outcomes, delta = await asyncio.to_thread(self.actor.process, docs, context)
        total = max(1, len(docs))
        shares = [{k: (v if k in ("seconds", "gpu_memory_bytes") else v * len(c.docs) / total) for k, v in delta.items()} for c in calls]
        return list(zip(split_outcomes(outcomes, owners, len(calls)), shares))

    async def info(self) -> dict[str, Any]:
        """Readiness and batching counters of this replica."""
        stage = self.actor.stage
        return {
            "stage": self.name, "loaded": getattr(stage, "model", None) is not None,
            "model_version": stage.model_version, "device": self.device,
            "calls": self.calls, "batches": self.batches, "largest_batch_calls": self.largest_batch,
        }


class ServeExecutor:
    """The engine's executor inside the ingress: each stage call goes to that stage's deployment handle."""

    parallelism = 1

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles

    def start(self, spec: Any) -> dict[str, str]:
        return {}  # the deployments load their models themselves; results carry their versions

    async def acall(self, index: int, docs: list[Document], context: Context) -> tuple[list[Outcome], dict[str, float]]:
        outcomes, delta = await self.handles[index].process.remote(StageCall(docs, context))
        return list(outcomes), dict(delta)

    def submit(self, index: int, docs: list[Document], context: Context) -> Any:
        raise TypeError("the serve executor runs one request at a time: use Engine.process_async")

    def done(self, timeout: float | None) -> list[Any]:
        return []

    def close(self) -> None:
        """The deployments live as long as the application."""
