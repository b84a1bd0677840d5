"""The int8 build's calibration texts and its switch (the smoothing itself runs on real models in
tests/integration/test_int8.py)."""

from __future__ import annotations

from pathlib import Path

from worker.models import smoothing


def test_calibration_takes_every_seed_file_in_turn() -> None:
    texts = smoothing.calibration_texts(limit=9)
    assert len(texts) == 9 and all(isinstance(t, str) and t.strip() for t in texts)
    seed = smoothing.SEED_DIR
    first_review = (seed / "sentiment.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")[0]
    first_message = (seed / "spam.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t", 1)[1]
    assert texts[0] == first_review and texts[1] == first_message
    assert not any(t in ("ham", "spam", "negative", "positive") for t in smoothing.calibration_texts())
    assert len(smoothing.calibration_texts()) == smoothing.CALIBRATION_LIMIT


def test_calibration_skips_missing_files_and_broken_lines(tmp_path: Path) -> None:
    assert smoothing.calibration_texts(seed_dir=tmp_path) == []
    (tmp_path / "sample_docs.jsonl").write_text('{"text": "kept"}\nnot json\n{"text": 3}\n["a list"]\n{"text": "  "}\n', encoding="utf-8")
    assert smoothing.calibration_texts(seed_dir=tmp_path) == ["kept"]


def test_switch() -> None:
    assert smoothing.enabled({})
    assert smoothing.enabled({"TEXTWORKER_INT8_SMOOTHING": "1"})
    for off in ("0", "false", "OFF", " no "):
        assert not smoothing.enabled({"TEXTWORKER_INT8_SMOOTHING": off})
