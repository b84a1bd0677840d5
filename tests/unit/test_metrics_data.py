"""Unit tests for worker.training.metrics and worker.training.data (labelled TSV files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import DataFileError
from worker.training.data import load_labelled
from worker.training.metrics import classification_metrics

# --------------------------------------------------------------------------- metrics

GOLDS = ["a", "a", "a", "b", "b", "c"]
PREDS = ["a", "a", "b", "b", "c", "c"]
# a: tp=2 fp=0 fn=1 -> P=1     R=2/3  F1=0.8
# b: tp=1 fp=1 fn=1 -> P=1/2   R=1/2  F1=0.5
# c: tp=1 fp=1 fn=0 -> P=1/2   R=1    F1=2/3
# accuracy 4/6; macro-F1 = (0.8 + 0.5 + 0.6667) / 3 = 0.65557 -> 0.6556


def test_hand_computed_example() -> None:
    m = classification_metrics(GOLDS, PREDS)
    assert m["n"] == 6
    assert m["accuracy"] == 0.6667
    assert m["macro_f1"] == 0.6556
    assert m["per_label"] == {
        "a": {"precision": 1.0, "recall": 0.6667, "f1": 0.8, "support": 3},
        "b": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
        "c": {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1},
    }
    assert list(m["per_label"]) == ["a", "b", "c"]


def test_explicit_labels_include_unseen_label_and_order() -> None:
    m = classification_metrics(GOLDS, PREDS, labels=["c", "b", "a", "d"])
    assert list(m["per_label"]) == ["c", "b", "a", "d"]
    assert m["per_label"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == round((0.8 + 0.5 + 0.6667 + 0.0) / 4, 4)
    assert m["accuracy"] == 0.6667


def test_label_only_in_predictions() -> None:
    m = classification_metrics(["x", "x"], ["x", "y"])
    assert m["per_label"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_label"]["x"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["accuracy"] == 0.5
    assert m["macro_f1"] == round(0.6667 / 2, 4)


def test_perfect_predictions() -> None:
    m = classification_metrics(["p", "n", "p"], ["p", "n", "p"])
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert all(v["f1"] == 1.0 for v in m["per_label"].values())


def test_empty_and_length_mismatch() -> None:
    m = classification_metrics([], [])
    assert m == {"accuracy": 0.0, "macro_f1": 0.0, "per_label": {}, "n": 0}
    with pytest.raises(ValueError):
        classification_metrics(["a"], ["a", "b"])


# --------------------------------------------------------------------------- load_labelled

ROWS = [
    ("positive", "I loved every minute of this film and would watch it again"),
    ("negative", "The plot made no sense and the acting was wooden throughout"),
    ("positive", "A warm, funny story with a great cast"),
    ("negative", "Two hours of my life I will never get back"),
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("labels", [None, ["negative", "positive"]])
def test_label_then_text(tmp_path: Path, labels: list[str] | None) -> None:
    path = write(tmp_path / "d.tsv", [f"{label}\t{text}" for label, text in ROWS])
    texts, golds = load_labelled(path, labels=labels)
    assert texts == [t for _, t in ROWS]
    assert golds == [label for label, _ in ROWS]


@pytest.mark.parametrize("labels", [None, ["negative", "positive"]])
def test_text_then_label(tmp_path: Path, labels: list[str] | None) -> None:
    path = write(tmp_path / "d.tsv", [f"{text}\t{label}" for label, text in ROWS])
    texts, golds = load_labelled(path, labels=labels)
    assert texts == [t for _, t in ROWS]
    assert golds == [label for label, _ in ROWS]


def test_known_labels_decide_when_texts_are_short(tmp_path: Path) -> None:
    # the text column is shorter on average than the labels: only the known labels tell them apart
    rows = [("ok", "acceptable"), ("bad", "unacceptable"), ("meh", "acceptable")]
    path = write(tmp_path / "d.tsv", [f"{text}\t{label}" for text, label in rows])
    texts, golds = load_labelled(path, labels=["acceptable", "unacceptable"])
    assert texts == ["ok", "bad", "meh"]
    assert golds == ["acceptable", "unacceptable", "acceptable"]


@pytest.mark.parametrize("header", ["text\tlabel", "label\ttext", "Label\tText"])
def test_header_row_skipped(tmp_path: Path, header: str) -> None:
    lines = [f"{label}\t{text}" for label, text in ROWS]
    path = write(tmp_path / "d.tsv", [header, *lines])
    texts, golds = load_labelled(path)
    assert len(texts) == len(ROWS)
    assert "text" not in golds and "label" not in golds and "Label" not in golds


def test_blank_lines_skipped_and_labels_stripped(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", [f"{ROWS[0][0]} \t{ROWS[0][1]}", "", f"{ROWS[1][0]}\t{ROWS[1][1]}"])
    texts, golds = load_labelled(path)
    assert golds == ["positive", "negative"] and len(texts) == 2


def test_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", [f"{label}\t{text}" for label, text in ROWS])
    texts, golds = load_labelled(path, limit=3)
    assert len(texts) == 3 and golds == ["positive", "negative", "positive"]


def test_wrong_column_count_reports_line(tmp_path: Path) -> None:
    lines = [f"{label}\t{text}" for label, text in ROWS[:2]] + ["positive\tone\textra column"]
    path = write(tmp_path / "d.tsv", lines)
    with pytest.raises(DataFileError) as info:
        load_labelled(path)
    assert f"{path}:3" in str(info.value) and "found 3" in str(info.value)


def test_single_column_row_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", [f"{ROWS[0][0]}\t{ROWS[0][1]}", "", "no tab here"])
    with pytest.raises(DataFileError) as info:
        load_labelled(path)
    assert f"{path}:3" in str(info.value)


def test_unknown_label_error(tmp_path: Path) -> None:
    lines = [f"{label}\t{text}" for label, text in ROWS] + ["neutral\tIt was a film, I suppose, with some scenes in it"]
    path = write(tmp_path / "d.tsv", lines)
    with pytest.raises(DataFileError) as info:
        load_labelled(path, labels=["negative", "positive"])
    assert "neutral" in str(info.value)
    # without known labels the same file loads
    assert load_labelled(path)[1][-1] == "neutral"


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataFileError):
        load_labelled(tmp_path / "absent.tsv")
    empty = write(tmp_path / "e.tsv", ["text\tlabel"])
    with pytest.raises(DataFileError) as info:
        load_labelled(empty)
    assert "no rows" in str(info.value)


def test_too_many_labels_means_wrong_file(tmp_path: Path) -> None:
    lines = [f"sentence number {i} here\tunique text label {i}" for i in range(150)]
    path = write(tmp_path / "d.tsv", lines)
    with pytest.raises(DataFileError) as info:
        load_labelled(path)
    assert "distinct labels" in str(info.value)


def test_empty_text_reports_line(tmp_path: Path) -> None:
    lines = [f"{label}\t{text}" for label, text in ROWS] + ["positive\t   "]
    path = write(tmp_path / "d.tsv", lines)
    with pytest.raises(DataFileError) as info:
        load_labelled(path, labels=["negative", "positive"])
    assert f"{path}:5" in str(info.value)
