"""In-process executor: every stage loaded in this process, calls run at once, in order."""

from __future__ import annotations

from collections import deque
from typing import Any

from schemas.documents import Document
from schemas.pipeline import PipelineSpec
from worker.engine.core import Context, Outcome
from worker.engine.stage_call import run_stage
from worker.engine.swap import follow_champions
from worker.stages import Stage, build_stage


class LocalExecutor:
    """Stages in this process. `stages` may be given already built (and loaded), e.g. by `bench`."""

    parallelism = 1

    def __init__(self, database_url: str | None = None, stages: list[Stage] | None = None) -> None:
        self.database_url = database_url
        self.stages: list[Stage] = stages or []
        self._done: deque[tuple[int, list[Outcome], dict[str, float]]] = deque()
        self._tickets = 0

    def start(self, spec: PipelineSpec) -> dict[str, str]:
        if not self.stages:
            self.stages = [build_stage(s) for s in spec.stages]
        follow_champions(self.stages, self.database_url)  # start on, and follow, the registry's champion
        for stage in self.stages:
            stage.load()
        return {stage.name: stage.model_version for stage in self.stages}

    def submit(self, index: int, docs: list[Document], context: Context) -> int:
        outcomes, delta = run_stage(self.stages[index], docs, context)
        self._tickets += 1
        self._done.append((self._tickets, outcomes, delta))
        return self._tickets

    def done(self, timeout: float | None) -> list[tuple[Any, list[Outcome], dict[str, float]]]:
        out = list(self._done)
        self._done.clear()
        return out

    def close(self) -> None:
        """Nothing to release: the models go with the process."""
