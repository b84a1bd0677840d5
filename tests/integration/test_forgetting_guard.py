"""The forgetting scenario of issue 14, rebuilt from ../shared/data, through the real CLI.

A spam champion learns from 200 SMS messages (`textworker train --eval-data`, which records
300 SMS test messages as its `eval` reference set and the training file as its `train` set).
Feedback then arrives from a shifted distribution: spam from one narrow slice of SMS
messages (prize/claim/win wording) and "ham" that is not SMS at all (AG News business and
science headlines with figures in them, as a new source would send). Fine-tuned on that feedback alone, the
candidate improves on the held-out feedback but forgets SMS: the gate refuses it with the
per-set reason. The default fine-tune replays the champion's recorded training data; it is
promoted, improves the target and stays within 0.02 on every reference set. Finally
`textworker eval --references` scores the new champion on the sets it inherited and added.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.integration.lifecycle_helpers import sms_rows, write_tsv
from worker.cli import main
from worker.lifecycle.registry import CANDIDATE, CHAMPION, ModelRegistry
from worker.models import loading

CHAMPION_ROWS = 200
REFERENCE_ROWS = 300
PRIZE_SPAM, NEWS_HAM = 50, 100
PRIZE = re.compile(r"(?i)\b(won|win|prize|claim|award)")


def shifted_feedback(shared_data: Path) -> list[tuple[str, str]]:
    """(label, text): distinct prize-slice SMS spam the champion never saw, plus AG News business and science
    headlines with figures in them (prices, percentages, phone-like numbers), labelled ham."""
    texts = [text for label, text in sms_rows(shared_data, "train")[CHAMPION_ROWS:] if label == "spam" and PRIZE.search(text)]
    prize = [("spam", text) for text in dict.fromkeys(texts)][:PRIZE_SPAM]
    news: dict[str, None] = {}
    for line in (shared_data / "ag_news" / "train.tsv").read_text(encoding="utf-8").splitlines():
        topic, _, text = line.partition("\t")
        if topic in ("Business", "Sci/Tech") and re.search(r"\d", text):
            news[text] = None
        if len(news) == NEWS_HAM:
            break
    return prize + [("ham", text) for text in news]


def pipeline(path: Path, family: Path, url: str, **finetune: object) -> Path:
    spec = {"version": 1, "name": "shift", "source": {"type": "file", "path": "unused.jsonl"},
            "stages": [{"name": "spam", "type": "spam", "model": str(family), "max_length": 48,
                        "finetune": {"epochs": 2, "max_length": 48, "batch_size": 16, **finetune}}],
            "sink": {"url": url}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    start = next(i for i, line in enumerate(out.splitlines(keepends=True)) if line.rstrip() == "{")
    found = json.JSONDecoder().raw_decode("".join(out.splitlines(keepends=True)[start:]))[0]
    assert isinstance(found, dict)
    return found


def _spam_f1(scores: dict, part: str) -> float:
    return float(scores[part]["per_label"]["spam"]["f1"])


@pytest.mark.slow
def test_no_replay_candidate_is_refused_for_forgetting_and_the_default_fine_tune_is_promoted(
    ray_session: None, shared_data: Path, tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    family = tmp_path / "models" / "spam"
    champ_data = write_tsv(tmp_path / "sms_train.tsv", sms_rows(shared_data, "train")[:CHAMPION_ROWS])
    reference = write_tsv(tmp_path / "sms_reference.tsv", sms_rows(shared_data, "test")[:REFERENCE_ROWS])
    default = pipeline(tmp_path / "default.yaml", family, sqlite_url)
    trained = cli_json(capsys, "train", str(default), "--stage", "spam", "--data", str(champ_data), "--eval-data", str(reference),
                       "--out", str(family / "v0-sms"), "--base", "builtin:minilm", "--epochs", "2", "--lr", "3e-4", "--max-length", "48",
                       "--batch-size", "16", "--promote")
    assert trained["version"] == "v0-sms"
    sets = {s["name"]: s for s in loading.read_metadata(family / "v0-sms")["references"]}
    assert {(n, s["role"], s["rows"]) for n, s in sets.items()} == {("v0-sms.eval", "eval", REFERENCE_ROWS),
                                                                     ("v0-sms.train", "train", CHAMPION_ROWS)}

    feedback = shifted_feedback(shared_data)
    report = cli_json(capsys, "feedback", "import", str(write_tsv(tmp_path / "shifted.tsv", feedback)),
                      "--pipeline", str(default), "--stage", "spam")
    assert report["inserted"] == len(feedback) == PRIZE_SPAM + NEWS_HAM

    no_replay = pipeline(tmp_path / "no_replay.yaml", family, sqlite_url, base_mix=0)
    refused = cli_json(capsys, "finetune", str(no_replay), "--stage", "spam")
    gate = refused["metrics"]["gate"]
    assert refused["promoted"] is False and len(refused["attempts"]) == 1  # no replay, so no retry with more of it
    assert gate["target_ok"] is True and gate["guard_ok"] is False, refused["reason"]
    lines = {line["set"]: line for line in gate["sets"]}
    assert set(lines) == {"v0-sms.eval", "v0-sms.train"}
    forgot = lines["v0-sms.eval"]
    assert forgot["ok"] is False and forgot["delta"] < -0.02, forgot
    assert f"reference set v0-sms.eval ({REFERENCE_ROWS} rows): f1:spam falls by" in refused["reason"]
    assert "more than max_regression 0.02" in forgot["reason"]
    assert refused["train"]["replay"]["rows"] == 0

    promoted = cli_json(capsys, "finetune", str(default), "--stage", "spam")
    gate = promoted["metrics"]["gate"]
    assert promoted["promoted"] is True, promoted["reason"]
    replay = promoted["train"]["replay"]
    assert replay["rows"] > 0 and replay["from"] == f"path:{champ_data.resolve()}"
    metrics = promoted["metrics"]
    assert _spam_f1(metrics["candidate"], "all") >= _spam_f1(metrics["champion"], "all") + 0.01  # the target improved
    assert {line["set"] for line in gate["sets"]} == {"v0-sms.eval", "v0-sms.train"}
    assert all(line["ok"] and line["delta"] >= -0.02 for line in gate["sets"]), gate["sets"]

    with capsys.disabled():
        for name, result in (("no replay", refused), ("default", promoted)):
            target = (_spam_f1(result["metrics"]["champion"], "all"), _spam_f1(result["metrics"]["candidate"], "all"))
            print(f"\n{name}: replay {result['train']['replay']}; target F1(spam) {target[0]:.4f} -> {target[1]:.4f}; "
                  + "; ".join(f"{line['set']} {line['champion']:.4f} -> {line['candidate']:.4f}" for line in result["metrics"]["gate"]["sets"]))
    registry = ModelRegistry.open(sqlite_url)
    try:
        assert registry.require("spam", refused["candidate"]).status == CANDIDATE
        assert registry.require("spam", promoted["candidate"]).status == CHAMPION
        stored = registry.references("spam", promoted["candidate"])
        assert {s["name"] for s in stored} == {"v0-sms.eval", "v0-sms.train", f"{promoted['candidate']}.heldout"}
    finally:
        registry.close()
    assert (family / "current").read_text(encoding="utf-8").strip() == "v0-sms"  # promotion moved the registry only

    scored = cli_json(capsys, "eval", str(default), "--stage", "spam", "--references", "--database-url", sqlite_url)
    assert scored["model_version"] == f"spam@{promoted['candidate']}"
    by_set = {s["name"]: s for s in scored["sets"]}
    assert set(by_set) == {"v0-sms.eval", "v0-sms.train", f"{promoted['candidate']}.heldout"}
    candidate_eval = metrics["candidate"]["ref:v0-sms.eval"]["per_label"]["spam"]["f1"]
    assert by_set["v0-sms.eval"]["value"] == pytest.approx(candidate_eval, abs=1e-4)
