"""The RoBERTa path: a locally built byte-level BPE RoBERTa works in every stage type."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import ClassifyStage, QaStage, SpamStage, TranslateStage
from worker.engine.stage_call import run_stage
from worker.lifecycle.defaults import SEED_DIR
from worker.models.roberta import build_roberta, build_roberta_seq2seq
from worker.stages import build_stage


@pytest.fixture(scope="module")
def roberta_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from worker.training.classify import train_classifier
    from worker.training.data import load_labelled
    from worker.training.qa import load_squad, train_qa
    from worker.training.translation import load_pairs, train_translation

    root = tmp_path_factory.mktemp("roberta")
    texts = [line.split("\t")[0] for line in (SEED_DIR / "sentiment.tsv").read_text(encoding="utf-8").splitlines()]
    pairs = load_pairs(SEED_DIR / "translation.jsonl")
    texts += [en for en, _ in pairs] + [de for _, de in pairs]
    base = build_roberta(texts, root / "base", size="tiny", vocab_size=3000, max_length=256)
    sentiment_texts, sentiment_labels = load_labelled(SEED_DIR / "sentiment.tsv")
    train_classifier(sentiment_texts, sentiment_labels, root / "sentiment", base=base, epochs=1, batch_size=32)
    spam_texts, spam_labels = load_labelled(SEED_DIR / "spam.tsv")
    train_classifier(spam_texts, spam_labels, root / "spam", base=base, epochs=1, batch_size=32)
    train_qa(load_squad(SEED_DIR / "qa.jsonl", limit=40), root / "qa", base=base, epochs=1, max_length=192, stride=48)
    build_roberta_seq2seq(base, root / "seq2seq", size="tiny")
    train_translation(pairs[:200], root / "translate", base=root / "seq2seq", epochs=1)
    return {"sentiment": root / "sentiment", "spam": root / "spam", "qa": root / "qa", "translate": root / "translate"}


def _docs() -> list[Document]:
    return [
        Document(id="a", text="The battery lasts all day and the screen is gorgeous.", meta={"question": "What lasts all day?"}),
        Document(id="b", text="WINNER! Claim your free prize now, text WIN to 80808.", meta={}),
        Document(id="c", text="A man is reading a book in the park. " * 60, meta={}),
    ]


def test_roberta_models_are_roberta(roberta_dirs: dict[str, Path]) -> None:
    import json

    for name in ("sentiment", "spam", "qa"):
        config = json.loads((roberta_dirs[name] / "config.json").read_text())
        assert config["model_type"] == "roberta", name
    assert json.loads((roberta_dirs["translate"] / "config.json").read_text())["encoder"]["model_type"] == "roberta"


@pytest.mark.parametrize("kind", ["sentiment", "spam", "qa", "translate"])
def test_roberta_in_every_stage_type(roberta_dirs: dict[str, Path], kind: str) -> None:
    model = str(roberta_dirs[kind])
    spec = {
        "sentiment": ClassifyStage(name="s", model=model, labels=["negative", "positive"]),
        "spam": SpamStage(name="s", model=model),
        "qa": QaStage(name="s", model=model, questions=["What is it?"], question_field="question", max_length=128, stride=32),
        "translate": TranslateStage(name="s", model=model, max_new_tokens=16),
    }[kind]
    stage = build_stage(spec)
    outcomes, _ = run_stage(stage, _docs(), {})
    assert [o.doc_id if isinstance(o, StageResult) else o.ref for o in outcomes] == ["a", "b", "c"]
    assert not [o for o in outcomes if isinstance(o, DeadLetter)]
    for outcome in outcomes:
        assert isinstance(outcome, StageResult)
        assert outcome.model_version
        if kind in ("sentiment", "spam"):
            assert outcome.label in (["negative", "positive"] if kind == "sentiment" else ["ham", "spam"])
            assert 0.0 <= (outcome.score or 0.0) <= 1.0
        if kind == "qa":
            answers = outcome.output["answers"]
            assert len(answers) == (2 if outcome.doc_id == "a" else 1)
            for answer in answers:
                text = next(d.text for d in _docs() if d.id == outcome.doc_id)
                assert answer["no_answer"] or text[answer["start"] : answer["end"]] == answer["answer"]
        if kind == "translate":
            assert isinstance(outcome.output["translation"], str)
