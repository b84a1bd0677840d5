"""The duplicate-text cache: identical texts computed once per stage and model version, on the real spam model."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import PipelineSpec
from worker.assembly import build_engine
from worker.engine.dedupe import ResultCache

TEXTS = ["WIN a FREE prize, text 80086 now to claim your cash award", "Lunch at noon? I'll bring the sandwiches.",
         "Your parcel is waiting, reply YES to confirm the delivery fee"]


def _spec(models_dir: Path, **extra: object) -> PipelineSpec:
    return PipelineSpec.model_validate({
        "name": "dedupe", "source": {"type": "file", "path": "-"},
        "stages": [{"name": "spam", "type": "spam", "model": str(models_dir / "spam"), "swap_check_seconds": None}], **extra})


def _docs(prefix: str, n: int) -> list[Document]:
    return [Document(id=f"{prefix}{i}", text=TEXTS[i % len(TEXTS)]) for i in range(n)]


def test_identical_texts_are_computed_once_and_answered_alike(models_dir: Path) -> None:
    engine = build_engine(_spec(models_dir), "local", hooks=[]).start()
    cold = build_engine(_spec(models_dir, cache={"max_entries": 0}), "local", hooks=[]).start()
    try:
        first = engine.process(_docs("a", 10))
        assert sorted(r.doc_id for r in first.results) == sorted(f"a{i}" for i in range(10)) and not first.letters
        summary = engine.stage_summary()["spam"]
        assert summary["cache_hits"] == 7 and summary["results"] == 10  # 3 distinct texts sent, 7 copies
        baseline = {r.doc_id: r for r in cold.process(_docs("a", 10)).results}
        assert "cache_hits" not in cold.stage_summary()["spam"]
        for result in first.results:  # the same label, score and output as computing each document
            same = baseline[result.doc_id]
            assert (result.label, result.model_version, result.output["tokens"]) == (same.label, same.model_version, same.output["tokens"])
            assert result.score == pytest.approx(same.score, abs=1e-4)
        second = engine.process(_docs("b", 6))  # every text seen: no stage call at all
        assert len(second.results) == 6 and engine.stage_summary()["spam"]["cache_hits"] == 13
        assert engine.stage_summary()["spam"]["batches"] == summary["batches"]
    finally:
        engine.close()
        cold.close()


def test_a_stage_that_can_swap_reuses_only_within_a_call_and_failures_reach_every_twin(models_dir: Path) -> None:
    fixed = _spec(models_dir)  # hot swap off: results of earlier calls are reused
    swapping = _spec(models_dir)
    swapping = swapping.model_copy(update={"stages": [swapping.stages[0].model_copy(update={"swap_check_seconds": 5.0})]})
    docs = [Document(id=str(i), text=text) for i, text in enumerate(["x", "y", "x"])]
    for spec in (fixed, swapping):
        cache = ResultCache(spec, max_entries=2)
        plan = cache.plan(0, docs)
        assert [d.id for d in plan.send] == ["0", "1"] and [d.id for d in plan.twins["0"]] == ["2"]
        out = plan.outcomes([StageResult(doc_id="0", stage="spam", label="ham", model_version="v1"),
                             DeadLetter(ref="1", stage="spam", reason="stage_error")], cache.store(0))
        assert sorted(getattr(o, "doc_id", None) or o.ref for o in out) == ["0", "1", "2"]  # the twin of "0" got its result
        later = cache.plan(0, [Document(id="9", text="x"), Document(id="8", text="y")])
        if spec is fixed:
            assert [d.id for d in later.send] == ["8"] and later.hits[0].doc_id == "9"  # dead letters are not kept
        else:
            assert [d.id for d in later.send] == ["9", "8"] and not later.hits  # models/spam is a family with hot swap on
    cache = ResultCache(fixed, max_entries=2)
    store = cache.store(0)
    store(b"k1", StageResult(doc_id="a", stage="spam", model_version="v1"))
    store(b"k2", StageResult(doc_id="b", stage="spam", model_version="v2"))  # another version: v1's entries go
    assert cache.size(0) == 1
    store(b"k3", StageResult(doc_id="c", stage="spam", model_version="v2"))
    store(b"k4", StageResult(doc_id="d", stage="spam", model_version="v2"))
    assert cache.size(0) == 2  # bounded


def test_qa_keys_hold_the_question_and_embed_is_never_cached(models_dir: Path) -> None:
    spec = PipelineSpec.model_validate({"name": "k", "source": {"type": "file", "path": "-"}, "stages": [
        {"name": "qa", "type": "qa", "model": "m", "question_field": "question"}, {"name": "e", "type": "embed", "model": "m"}]})
    cache = ResultCache(spec)
    docs = [Document(id="1", text="t", meta={"question": "who?"}), Document(id="2", text="t", meta={"question": "when?"}),
            Document(id="3", text="t", meta={"question": "who?"})]
    plan = cache.plan(0, docs)
    assert [d.id for d in plan.send] == ["1", "2"] and [d.id for d in plan.twins["1"]] == ["3"]
    assert [d.id for d in cache.plan(1, docs).send] == ["1", "2", "3"]
