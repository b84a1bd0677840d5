"""In-process executor: every stage loaded in this process.

Stage calls run on one background thread, so the caller's own work overlaps them:
while the stages work on chunk N+1, the engine's thread stores chunk N (the SQL
transaction), commits its offsets and polls or reads the next input. Calls run one
at a time, so the stages still have the cores to themselves; of the calls waiting,
a later stage's goes first (a chunk under way finishes before the next one starts),
then the order they came in. `overlap=False`, or `TEXTWORKER_OVERLAP=0`, runs each
call at once on the caller's thread instead.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from schemas.documents import Document
from schemas.pipeline import PipelineSpec
from worker.engine.core import Context, Outcome
from worker.engine.stage_call import run_stage
from worker.engine.swap import follow_champions
from worker.stages import Stage, build_stage

Done = tuple[int, list[Outcome], dict[str, float]]
IDLE_S = 1.0  # the stage thread ends after this long without a call


def overlap_default() -> bool:
    """`TEXTWORKER_OVERLAP` (default on): 0/false/no/off runs stage calls on the caller's thread."""
    return os.environ.get("TEXTWORKER_OVERLAP", "1").strip().lower() not in {"0", "false", "no", "off"}


class LocalExecutor:
    """Stages in this process. `stages` may be given already built (and loaded), e.g. by `bench`."""

    parallelism = 1

    def __init__(self, database_url: str | None = None, stages: list[Stage] | None = None, *, overlap: bool | None = None) -> None:
        self.database_url = database_url
        self.stages: list[Stage] = stages or []
        self.overlap = overlap_default() if overlap is None else overlap
        self.read_before_store = self.overlap  # the engine takes the next input, then stores, while the stages work
        self._tickets = itertools.count(1)
        self._calls: queue.PriorityQueue[tuple[int, int, Callable[[], Any]]] = queue.PriorityQueue()
        self._finished: dict[int, tuple[list[Outcome], dict[str, float]] | BaseException] = {}
        self._outstanding = 0
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self, spec: PipelineSpec) -> dict[str, str]:
        if not self.stages:
            self.stages = [build_stage(s) for s in spec.stages]
        follow_champions(self.stages, self.database_url)  # start on, and follow, the registry's champion
        for stage in self.stages:
            stage.load()
        return {stage.name: stage.model_version for stage in self.stages}

    def submit(self, index: int, docs: list[Document], context: Context) -> int:
        ticket = next(self._tickets)
        stage = self.stages[index]
        if not self.overlap:
            result = run_stage(stage, docs, context)
            with self._ready:
                self._outstanding += 1
                self._finished[ticket] = result
            return ticket
        with self._ready:
            self._outstanding += 1
            # later stages first: a chunk under way finishes before the next chunk's first stage starts
            self._calls.put((-index, ticket, lambda: run_stage(stage, docs, context)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="textworker-stages", daemon=True)
                self._thread.start()
        return ticket

    def done(self, timeout: float | None) -> list[Done]:
        """Finished calls in ticket order; waits up to `timeout` (None: until one finishes) when none has."""
        with self._ready:
            if not self._finished and self._outstanding and timeout != 0:
                self._ready.wait_for(lambda: bool(self._finished), timeout)
            finished = sorted(self._finished.items())
            self._finished.clear()
            self._outstanding -= len(finished)
        out: list[Done] = []
        for ticket, result in finished:
            if isinstance(result, BaseException):
                raise result
            out.append((ticket, *result))
        return out

    def close(self) -> None:
        """Nothing to release: the models go with the process, and the stage thread ends once idle.

        After a normal run no call is left. After an error (or a second Ctrl-C) a call still
        running finishes on its thread and its result is dropped: closing does not wait for it.
        """

    # ------------------------------------------------------------------ the stage thread

    def _work(self) -> None:
        """Run calls until none has come for IDLE_S; a later call starts a new thread (none outlives its executor long)."""
        while True:
            try:
                _, ticket, call = self._calls.get(timeout=IDLE_S)
            except queue.Empty:
                with self._ready:
                    if self._calls.empty():
                        self._thread = None
                        return
                continue
            try:
                result: tuple[list[Outcome], dict[str, float]] | BaseException = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the engine's thread, which raises it
                result = exc
            with self._ready:
                self._finished[ticket] = result
                self._ready.notify_all()
