"""Checks on a CUDA GPU: training, every stage type and the engine, against the same models on the CPU.

Skipped where torch sees no GPU (CI has none). `benchmarks/gpu_device.sh` runs them on a lent
GPU machine, beside `benchmarks/gpu_check.sh`. `TEXTWORKER_GPU_TESTS_DEVICE=cpu` runs them on
the CPU instead, to check the checks themselves before GPU time is spent (bf16 on the CPU then
stands in for the bf16 a GPU runs at `precision: auto`).

The models are small RoBERTas built and trained here from the seed data, so nothing is read
from `../shared/data` (which a GPU machine does not have) or from `models/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import ClassifyStage, QaStage, SpamStage, StageSpec, TranslateStage
from worker.lifecycle.defaults import SEED_DIR
from worker.stages import build_stage

DEVICE = os.environ.get("TEXTWORKER_GPU_TESTS_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU; benchmarks/gpu_device.sh runs these on one")
# what `precision: auto` picks on a GPU; the CPU dry run asks for it explicitly
LOW = "auto" if DEVICE == "cuda" else "bf16"


def _lines(name: str) -> list[str]:
    """The texts of a labelled seed file."""
    from worker.training.data import load_labelled

    return list(load_labelled(SEED_DIR / name)[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny RoBERTa models trained on the seed data where training goes (a GPU when there is one), and what each
    trainer reported."""
    from worker.models.roberta import build_roberta, build_roberta_seq2seq
    from worker.training.classify import train_classifier
    from worker.training.data import load_labelled
    from worker.training.qa import load_squad, train_qa
    from worker.training.translation import load_pairs, train_translation

    os.environ["TEXTWORKER_TRAIN_DEVICE"] = DEVICE
    try:
        root = tmp_path_factory.mktemp("gpu")
        pairs = load_pairs(SEED_DIR / "translation.jsonl")
        texts = _lines("sentiment.tsv") + _lines("spam.tsv") + [en for en, _ in pairs] + [de for _, de in pairs]
        base = build_roberta(texts, root / "base", size="tiny", vocab_size=3000, max_length=256)
        info = {}
        for name in ("sentiment", "spam"):
            x, y = load_labelled(SEED_DIR / f"{name}.tsv")
            info[name] = train_classifier(x, y, root / name, base=base, epochs=6, lr=5e-4, batch_size=32)
        info["qa"] = train_qa(load_squad(SEED_DIR / "qa.jsonl"), root / "qa", base=base, epochs=1, max_length=192, stride=48)
        build_roberta_seq2seq(base, root / "seq2seq", size="tiny")
        info["translate"] = train_translation(pairs, root / "translate", base=root / "seq2seq", epochs=1)
    finally:
        os.environ.pop("TEXTWORKER_TRAIN_DEVICE", None)
    return {"dirs": {name: root / name for name in info}, "info": info}


def _spec(kind: str, model: Path, device: str, precision: str) -> StageSpec:
    common: dict[str, Any] = {"name": kind, "model": str(model), "precision": precision, "resources": {"device": device}}
    if kind == "sentiment":
        return ClassifyStage(labels=["negative", "positive"], **common)
    if kind == "spam":
        return SpamStage(**common)
    if kind == "qa":
        return QaStage(question_field="question", max_length=192, stride=48, **common)
    if kind == "embed":
        from worker.stages.embed import EmbedStage

        return EmbedStage(**common)
    return TranslateStage(max_new_tokens=24, **common)


def _run(kind: str, model: Path, device: str, precision: str, docs: list[Document]) -> tuple[Any, list[StageResult]]:
    stage = build_stage(_spec(kind, model, device, precision))
    stage.load()
    outcomes = list(stage.run(docs, {}))
    assert not [o for o in outcomes if isinstance(o, DeadLetter)], [o for o in outcomes if isinstance(o, DeadLetter)][:3]
    return stage, [o for o in outcomes if isinstance(o, StageResult)]


def _three_runs(kind: str, model: Path, docs: list[Document]) -> tuple[list[StageResult], list[StageResult], list[StageResult]]:
    """The stage's results on the CPU in fp32, on the device in fp32, and on the device at `precision: auto` (bf16)."""
    _, cpu = _run(kind, model, "cpu", "fp32", docs)
    stage, same = _run(kind, model, DEVICE, "fp32", docs)
    assert str(stage.device).startswith(DEVICE) and stage.precision == "fp32"
    low_stage, low = _run(kind, model, DEVICE, LOW, docs)
    assert str(low_stage.device).startswith(DEVICE) and low_stage.precision == "bf16", low_stage.precision_reason
    assert [r.doc_id for r in cpu] == [r.doc_id for r in same] == [r.doc_id for r in low] == [d.id for d in docs]
    return cpu, same, low


def _docs(kind: str) -> list[Document]:
    if kind == "qa":
        rows = [json.loads(line) for line in (SEED_DIR / "qa.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        return [Document(id=r["id"], text=r["context"], meta={"question": r["question"]}) for r in rows[:120]]
    if kind == "translate":
        rows = [json.loads(line) for line in (SEED_DIR / "translation.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        return [Document(id=f"t{i}", text=r["en"]) for i, r in enumerate(rows[:64])]
    texts = _lines(f"{kind}.tsv")
    # lengths from 1 to ~200 tokens, so batches pad and the attention mask matters
    texts += [" ".join(texts[i : i + 6]) for i in range(0, 60, 3)]
    return [Document(id=f"d{i}", text=t) for i, t in enumerate(texts)]


def test_every_trainer_ran_on_the_device(trained: dict[str, Any]) -> None:
    for name, info in trained["info"].items():
        assert info["device"] == DEVICE, (name, info)
        assert info["steps"] > 0, name
    if DEVICE == "cuda":  # bf16 autocast is the default on a GPU
        assert trained["info"]["sentiment"]["bf16_autocast"] is True
        assert trained["info"]["qa"]["params"]["bf16"] is True
        assert trained["info"]["translate"]["params"]["bf16_autocast"] is True


@pytest.mark.parametrize("kind", ["sentiment", "spam"])
def test_classifier_scores_on_the_device_match_the_cpu(trained: dict[str, Any], kind: str) -> None:
    cpu, same, low = _three_runs(kind, trained["dirs"][kind], _docs(kind))

    def probs(r: StageResult) -> list[float]:
        return [r.output["spam_probability"]] if kind == "spam" else list(r.output["scores"].values())

    fp32_gap = max(abs(a - b) for x, y in zip(cpu, same) for a, b in zip(probs(x), probs(y)))
    assert fp32_gap <= 1e-3, f"fp32 on {DEVICE} differs from the CPU by {fp32_gap}"
    bf16_gap = max(abs(a - b) for x, y in zip(cpu, low) for a, b in zip(probs(x), probs(y)))
    assert bf16_gap <= 0.06, f"bf16 differs from fp32 by {bf16_gap}"
    # a confident fp32 decision keeps its label in bf16
    for x, y in zip(cpu, low):
        p = probs(x)
        margin = abs(2 * p[0] - 1) if len(p) == 1 else abs(p[0] - p[1])
        if margin >= 0.2:
            assert x.label == y.label, (x.doc_id, p, probs(y))
    assert len({r.label for r in cpu}) == 2, "the trained classifier should tell the two labels apart"


def test_qa_on_the_device_answers_like_the_cpu(trained: dict[str, Any]) -> None:
    docs = _docs("qa")
    cpu, same, low = _three_runs("qa", trained["dirs"]["qa"], docs)
    text = {d.id: d.text for d in docs}
    for result in same + low:
        for answer in result.output["answers"]:
            assert answer["no_answer"] or text[result.doc_id][answer["start"] : answer["end"]] == answer["answer"]
    spans = [[(a["start"], a["end"]) for a in r.output["answers"]] for r in cpu]
    agree = sum(s == [(a["start"], a["end"]) for a in r.output["answers"]] for s, r in zip(spans, same))
    assert agree >= 0.9 * len(docs), f"fp32 on {DEVICE} picked the CPU's spans for {agree} of {len(docs)}"


def test_translation_on_the_device_decodes_like_the_cpu(trained: dict[str, Any]) -> None:
    docs = _docs("translate")
    cpu, same, low = _three_runs("translate", trained["dirs"]["translate"], docs)
    assert all(isinstance(r.output["translation"], str) for r in low)
    agree = sum(x.output["translation"] == y.output["translation"] for x, y in zip(cpu, same))
    assert agree >= 0.8 * len(docs), f"greedy fp32 decoding on {DEVICE} matched the CPU for {agree} of {len(docs)}"


def test_embeddings_on_the_device_point_where_the_cpu_s_do(trained: dict[str, Any]) -> None:
    docs = _docs("sentiment")
    cpu, same, low = _three_runs("embed", trained["dirs"]["sentiment"], docs)

    def cosines(a: list[StageResult], b: list[StageResult]) -> torch.Tensor:
        x = torch.tensor([r.output["embedding"] for r in a])
        y = torch.tensor([r.output["embedding"] for r in b])
        return torch.nn.functional.cosine_similarity(x, y, dim=-1)

    assert all(r.output["dim"] == len(r.output["embedding"]) > 0 for r in same + low)
    assert float(cosines(cpu, same).min()) >= 0.9999
    assert float(cosines(cpu, low).min()) >= 0.98


def test_the_engine_runs_every_stage_on_the_device_into_sql(trained: dict[str, Any], tmp_path: Path) -> None:
    import sqlalchemy as sa

    from worker import Pipeline

    dirs = trained["dirs"]
    stages = [{"name": kind, **_spec(kind, dirs[kind], DEVICE, LOW).model_dump(exclude_defaults=True),
               "type": {"sentiment": "classify"}.get(kind, kind)} for kind in ("sentiment", "spam", "qa", "translate")]
    url = f"sqlite:///{tmp_path / 'gpu.db'}"
    pairs = [json.loads(line) for line in (SEED_DIR / "translation.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [{"id": f"e{i}", "text": p["en"], "question": "Who is there?"} for i, p in enumerate(pairs[:150])]
    with Pipeline.from_dict({"name": "gpu", "stages": stages}, sink=url) as pipeline:
        devices = {s.name: (str(s.device), s.precision) for s in pipeline.engine.executor.stages}
        out = list(pipeline.pipe(texts, batch_size=64))
    assert devices == {kind: (DEVICE, "bf16") for kind in ("sentiment", "spam", "qa", "translate")}
    assert [r.status for r in out] == ["ok"] * len(texts), [e for r in out for e in r.errors][:3]
    with sa.create_engine(url).connect() as conn:
        counts = dict(conn.execute(sa.text("SELECT stage, COUNT(*) FROM results GROUP BY stage")).fetchall())
        letters = conn.execute(sa.text("SELECT COUNT(*) FROM dead_letters")).scalar()
    assert counts == {kind: len(texts) for kind in ("sentiment", "spam", "qa", "translate")}
    assert letters == 0
