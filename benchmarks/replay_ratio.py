"""Replay ratio against forgetting: how far a fine-tuned spam model falls on its reference set, per replay ratio.

The scenario of docs/lifecycle.md ("What was tried"): a champion trained on the first
CHAMPION_ROWS SMS training messages; feedback from a shifted distribution (distinct
prize/claim/win SMS spam the champion never saw, plus AG News business and science
headlines labelled ham), split 80/20 by row hash like `textworker finetune`; for each
ratio, a candidate fine-tuned from the champion on the feedback plus ratio x as many
replayed champion training rows. Printed per ratio: F1(spam) on the reference set (SMS
test messages) and on the held-out feedback, and the wall time. Prints the date and CPU.

    .venv/bin/python benchmarks/replay_ratio.py --ratios 0,0.5,1,2 [--shared-data ../shared/data]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import re
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

PRIZE = re.compile(r"(?i)\b(won|win|prize|claim|award)")


def sms(data: Path, name: str) -> list[tuple[str, str]]:
    rows = []
    for line in (data / "sms_spam" / f"{name}.tsv").read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        if text.strip():
            rows.append((text, label))
    return rows


def news(data: Path, limit: int, digits: bool) -> list[tuple[str, str]]:
    found: dict[str, None] = {}
    for line in (data / "ag_news" / "train.tsv").read_text(encoding="utf-8").splitlines():
        topic, _, text = line.partition("\t")
        if topic in ("Business", "Sci/Tech") and (not digits or re.search(r"\d", text)):
            found[text] = None
        if len(found) == limit:
            break
    return [(text, "ham") for text in found]


def f1_spam(model_dir: Path, rows: list[tuple[str, str]], max_length: int) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from worker.models import loading
    from worker.training.classify import predict_labels
    from worker.training.metrics import classification_metrics

    ref = loading.resolve(str(model_dir))
    tokenizer = loading.load_pretrained(AutoTokenizer, ref)
    model = loading.load_pretrained(AutoModelForSequenceClassification, ref).eval()
    preds, _ = predict_labels(model, tokenizer, [t for t, _ in rows], max_length=max_length)
    return float(classification_metrics([g for _, g in rows], preds, ["ham", "spam"])["per_label"]["spam"]["f1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--ratios", default="0,0.5,1,2")
    parser.add_argument("--champion-rows", type=int, default=200)
    parser.add_argument("--reference-rows", type=int, default=300)
    parser.add_argument("--prize-spam", type=int, default=50)
    parser.add_argument("--news-ham", type=int, default=100)
    parser.add_argument("--news-with-digits", action="store_true", help="only headlines with figures (the test's shift)")
    parser.add_argument("--lr", type=float, default=1e-4, help="fine-tune learning rate (the trainer's default)")
    parser.add_argument("--max-length", type=int, default=48)
    args = parser.parse_args()

    from worker.models import loading
    from worker.training.classify import train_classifier

    data = Path(args.shared_data)
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                if line.startswith("Model name")), platform.processor())
    print(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu}))
    train, test = sms(data, "train"), sms(data, "test")
    champ_rows, reference = train[: args.champion_rows], test[: args.reference_rows]
    prize = list(dict.fromkeys(t for t, g in train[args.champion_rows:] if g == "spam" and PRIZE.search(t)))[: args.prize_spam]
    feedback = [(t, "spam") for t in prize] + news(data, args.news_ham, args.news_with_digits)
    held = [r for r in feedback if int(hashlib.sha256(r[0].encode()).hexdigest()[:8], 16) / 16**8 < 0.2]
    fb_train = [r for r in feedback if r not in held]
    with tempfile.TemporaryDirectory() as tmp:
        champ = Path(tmp) / "champion"
        started = time.perf_counter()
        train_classifier([t for t, _ in champ_rows], [g for _, g in champ_rows], champ, base=str(loading.builtin_dir("minilm")),
                         labels=["ham", "spam"], epochs=2, lr=3e-4, batch_size=16, max_length=args.max_length)
        print(json.dumps({"champion_seconds": round(time.perf_counter() - started, 1),
                          "reference_f1_spam": f1_spam(champ, reference, args.max_length),
                          "target_f1_spam": f1_spam(champ, held, args.max_length), "target_rows": len(held)}), flush=True)
        for ratio in (float(r) for r in args.ratios.split(",")):
            replay = random.Random(0).sample(champ_rows, min(len(champ_rows), round(ratio * len(fb_train))))
            rows = fb_train + replay
            random.Random(0).shuffle(rows)
            out = Path(tmp) / f"ratio-{ratio}"
            started = time.perf_counter()
            train_classifier([t for t, _ in rows], [g for _, g in rows], out, base=str(champ), labels=["ham", "spam"], epochs=2,
                             lr=args.lr, batch_size=16, max_length=args.max_length)
            print(json.dumps({"ratio": ratio, "rows": len(rows), "seconds": round(time.perf_counter() - started, 1),
                              "reference_f1_spam": f1_spam(out, reference, args.max_length),
                              "target_f1_spam": f1_spam(out, held, args.max_length)}), flush=True)


if __name__ == "__main__":
    main()
