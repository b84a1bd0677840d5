"""The in-process executor: stage calls on their own thread, so storing one chunk overlaps the stages of the next."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from schemas.documents import Document, StageResult
from schemas.pipeline import PipelineSpec
from worker.engine import Engine
from worker.engine.chunks import ChunkInput
from worker.engine.executors.local import LocalExecutor, overlap_default
from worker.stages.base import StageStats

WAIT_S = 30.0  # a generous bound on waits for the other thread: a hang fails, a slow machine does not


class Recording:
    """A stage (the `worker.stages.base.Stage` protocol) that notes which thread ran which documents."""

    def __init__(self, name: str, log: list[tuple[str, str, list[str]]], gate: dict[str, threading.Event] | None = None) -> None:
        self.name, self.model_version, self.stats = name, f"{name}@v1", StageStats()
        self.spec = _spec(name).stages[0]  # retries and the like come from the stage's spec
        self.log, self.gate = log, gate or {}
        self.started: dict[str, threading.Event] = {}

    def load(self) -> None:
        """Nothing to load."""

    def run(self, docs: list[Document], context: Any) -> list[StageResult]:
        first = docs[0].id
        self.started.setdefault(first, threading.Event()).set()
        if first in self.gate:  # hold this call until the test lets it go
            assert self.gate[first].wait(WAIT_S)
        self.log.append((self.name, threading.current_thread().name, [d.id for d in docs]))
        return [StageResult(doc_id=d.id, stage=self.name, label="x", model_version=self.model_version) for d in docs]


def _spec(*names: str) -> PipelineSpec:
    return PipelineSpec.model_validate({"name": "overlap", "source": {"type": "file", "path": "-"},
                                        "stages": [{"name": n, "type": "classify", "model": "m"} for n in names]})


def _chunks(n: int, size: int) -> list[ChunkInput]:
    return [ChunkInput([Document(id=f"c{c}d{i}", text=f"text {c} {i}") for i in range(size)], []) for c in range(n)]


def test_the_stages_run_on_their_own_thread_and_chunks_come_back_whole_in_order() -> None:
    log: list[tuple[str, str, list[str]]] = []
    stages = [Recording("a", log), Recording("b", log)]
    engine = Engine(_spec("a", "b"), LocalExecutor(stages=stages, overlap=True)).start()
    done: list[list[str]] = []
    engine.run(_chunks(5, 3), lambda chunk: done.append(sorted(r.doc_id + r.stage for r in chunk.results)))
    engine.close()
    assert done == [sorted(f"c{c}d{i}{s}" for i in range(3) for s in "ab") for c in range(5)]
    assert {thread for _, thread, _ in log} == {"textworker-stages"}
    assert engine.inflight == 0 and engine.peak_inflight == 2
    for c in range(5):  # a chunk's stages in pipeline order
        assert log.index(("a", "textworker-stages", [f"c{c}d{i}" for i in range(3)])) < \
            log.index(("b", "textworker-stages", [f"c{c}d{i}" for i in range(3)]))


def test_storing_a_chunk_overlaps_the_stages_of_the_next() -> None:
    """on_complete(chunk 0) waits until the stages have started chunk 1: only possible when they are off this thread."""
    log: list[tuple[str, str, list[str]]] = []
    stage = Recording("a", log)
    engine = Engine(_spec("a"), LocalExecutor(stages=[stage], overlap=True)).start()
    seen: list[bool] = []

    def store(chunk: Any) -> None:
        if chunk.seq == 0:
            seen.append(stage.started.setdefault("c1d0", threading.Event()).wait(WAIT_S))

    engine.run(_chunks(3, 2), store)
    engine.close()
    assert seen == [True]


def test_a_later_stage_goes_before_an_earlier_one_when_both_wait() -> None:
    """A chunk under way finishes first: while the thread is busy, a second stage's call overtakes a first stage's."""
    log: list[tuple[str, str, list[str]]] = []
    gate = {"hold": threading.Event()}
    first, second = Recording("a", log, gate), Recording("b", log)
    executor = LocalExecutor(stages=[first, second], overlap=True)
    executor.submit(0, [Document(id="hold", text="t")], {})
    assert first.started.setdefault("hold", threading.Event()).wait(WAIT_S)  # the thread is inside the held call
    executor.submit(0, [Document(id="new", text="t")], {})  # the next chunk's first stage, queued first ...
    executor.submit(1, [Document(id="old", text="t")], {})  # ... then the chunk under way's second stage
    gate["hold"].set()
    got: list[Any] = []
    while len(got) < 3:
        got += executor.done(None)
    executor.close()
    assert [(name, ids) for name, _, ids in log] == [("a", ["hold"]), ("b", ["old"]), ("a", ["new"])]
    assert sorted(ticket for ticket, *_ in got) == [1, 2, 3]


def test_an_error_escaping_a_call_is_raised_on_the_engines_thread() -> None:
    class Broken(Recording):
        def run(self, docs: list[Document], context: Any) -> list[StageResult]:
            raise SystemExit("the stage thread must not swallow this")

    executor = LocalExecutor(stages=[Broken("a", [])], overlap=True)
    engine = Engine(_spec("a"), executor).start()
    with pytest.raises(SystemExit, match="must not swallow"):
        engine.run(_chunks(1, 1), lambda chunk: None)


def test_without_overlap_calls_run_on_the_callers_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTWORKER_OVERLAP", "0")
    assert overlap_default() is False
    log: list[tuple[str, str, list[str]]] = []
    engine = Engine(_spec("a"), LocalExecutor(stages=[Recording("a", log)])).start()
    engine.run(_chunks(2, 2), lambda chunk: None)
    assert {thread for _, thread, _ in log} == {threading.current_thread().name}
    monkeypatch.setenv("TEXTWORKER_OVERLAP", "yes")
    assert overlap_default() is True


def test_the_stage_thread_ends_when_idle_and_a_later_call_starts_another() -> None:
    log: list[tuple[str, str, list[str]]] = []
    executor = LocalExecutor(stages=[Recording("a", log)], overlap=True)
    engine = Engine(_spec("a"), executor).start()
    engine.run(_chunks(1, 1), lambda chunk: None)
    engine.close()
    thread = executor._thread
    if thread is not None:
        thread.join(WAIT_S)
    assert executor._thread is None
    engine.run([ChunkInput([Document(id="again", text="another text")], [])], lambda chunk: None)  # the same engine again
    engine.close()
    assert len(log) == 2


def test_real_models_give_the_same_results_with_and_without_overlap(models_dir: Path) -> None:
    spec = PipelineSpec.model_validate({"name": "parity", "source": {"type": "file", "path": "-"}, "stages": [
        {"name": "sentiment", "type": "classify", "model": str(models_dir / "sentiment"), "labels": ["negative", "positive"],
         "swap_check_seconds": None},
        {"name": "spam", "type": "spam", "model": str(models_dir / "spam"), "swap_check_seconds": None,
         "when": {"stage": "sentiment", "op": "eq", "value": "negative"}}]})
    texts = ["WIN a FREE prize, text 80086 now", "The staff were lovely.", "Terrible service, never again.",
             "Call now to claim your cash award!!!", "Lunch at noon?"] * 4
    outputs = {}
    for overlap in (False, True):
        engine = Engine(spec, LocalExecutor(overlap=overlap))
        got: list[Any] = []
        engine.run([ChunkInput([Document(id=f"{c}-{i}", text=t) for i, t in enumerate(texts[c::3])], []) for c in range(3)],
                   got.append)
        engine.close()
        outputs[overlap] = [(chunk.seq, sorted((r.doc_id, r.stage, r.label, round(r.score or 0, 4)) for r in chunk.results),
                             sorted((d.ref, d.stage, d.reason) for d in chunk.letters), dict(chunk.skipped)) for chunk in got]
    assert outputs[True] == outputs[False]
    assert any(stages for *_, skipped in outputs[True] for stages in skipped.values())  # the condition held some back


def test_closing_does_not_wait_for_a_call_left_running_after_an_error() -> None:
    """A second Ctrl-C must not wait for a long stage call: close returns while the call is still held."""
    gate = {"held": threading.Event()}
    stage = Recording("a", [], gate)
    executor = LocalExecutor(stages=[stage], overlap=True)
    executor.submit(0, [Document(id="held", text="t")], {})
    assert stage.started.setdefault("held", threading.Event()).wait(WAIT_S)
    closer = threading.Thread(target=executor.close)
    closer.start()
    closer.join(WAIT_S)
    try:
        assert not closer.is_alive()
    finally:
        gate["held"].set()
