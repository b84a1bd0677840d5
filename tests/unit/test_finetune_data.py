"""Fine-tuning data: the held-out split is fixed per row, base rows are mixed in by ratio, the fingerprint ignores order."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from schemas.pipeline import FinetuneSpec, QaStage, SpamStage
from worker.lifecycle.feedback import FeedbackRow, StoredFeedback
from worker.lifecycle.finetune import data_fingerprint, feedback_example, is_held_out, prepare_data

SPAM = SpamStage(name="spam", model="models/spam")


def _stored(stage: str, rows: list[FeedbackRow]) -> list[StoredFeedback]:
    now = datetime.now(UTC)
    return [StoredFeedback(r.fingerprint("p"), r.text, r.label, r.question, r.answer, r.reference, now) for r in rows]


def test_split_mix_and_fingerprint(tmp_path: Path) -> None:
    rows = _stored("spam", [FeedbackRow("spam", f"message number {i}", "spam" if i % 3 == 0 else "ham") for i in range(200)])
    base = tmp_path / "base.tsv"
    base.write_text("".join(f"ham\tbase text {i}\n" for i in range(500)), encoding="utf-8")
    cfg = FinetuneSpec(base_mix=0.5, holdout=0.2)
    data = prepare_data(SPAM, rows, cfg, ["ham", "spam"], str(base), seed=3)
    held = [r for r in rows if is_held_out(r.fingerprint, 0.2)]
    assert data.counts["heldout"] == len(held) and 20 < len(held) < 60
    assert data.counts["train_feedback"] == 200 - len(held)
    assert data.counts["base"] == round(0.5 * data.counts["train_feedback"])
    assert len(data.train) == data.counts["train_feedback"] + data.counts["base"]
    assert data.heldout == [feedback_example(SPAM, r) for r in held]
    again = prepare_data(SPAM, list(reversed(rows)), cfg, ["ham", "spam"], str(base), seed=3)
    assert again.fingerprint == data.fingerprint and sorted(again.heldout) == sorted(data.heldout)
    other_seed = prepare_data(SPAM, rows, cfg, ["ham", "spam"], str(base), seed=4)
    assert other_seed.counts == data.counts and other_seed.fingerprint != data.fingerprint
    no_base = prepare_data(SPAM, rows, cfg, ["ham", "spam"], None, seed=3)
    trained = sorted(r.fingerprint for r in rows if not is_held_out(r.fingerprint, 0.2))
    assert no_base.fingerprint == hashlib.sha256("\n".join(trained).encode()).hexdigest() == data_fingerprint(list(reversed(trained)))


def test_qa_rows_become_squad_examples() -> None:
    stage = QaStage(name="qa", model="m", questions=["q"])
    row = _stored("qa", [FeedbackRow("qa", "The cat sat on the mat.", question="Where did it sit?", answer="on the mat")])[0]
    example = feedback_example(stage, row)
    assert example["answers"] == {"text": ["on the mat"], "answer_start": [12]}
    assert example["context"][12:22] == "on the mat"
