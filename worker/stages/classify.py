"""Sequence classification and spam detection stages (any Auto sequence-classification model)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from schemas.documents import Document, StageResult
from schemas.pipeline import ClassifyStage, SpamStage
from worker.errors import ModelFormatError
from worker.stages.base import Context, HFStage, Outcome, StageStats
from worker.stages.batching import BatchPlan, plan_batches
from worker.stages.plugin import StagePlugin
from worker.stages.rows import RowProblem, short_field, text_field

CHARS_PER_TOKEN_CAP = 12


def classify_texts(
    model: Any, tokenizer: Any, texts: list[str], *, max_length: int, max_tokens: int = 8192,
    max_batch: int = 64, multi_label: bool = False, stats: StageStats | None = None,
) -> tuple[list[list[float]], list[int]]:
    """Label probabilities per text (input order) and each text's token count.

    Texts are cut to a character budget before tokenising (a 5 MB document costs no
    more than a long one), truncated to `max_length` tokens, and run in
    length-sorted token-budget batches.
    """
    encoded = encode_texts(tokenizer, texts, max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    if getattr(model, "plans_calls", False):  # a runner that makes its own calls (the int8 builds: worker.models.int8*)
        probs, plan = _classify_planned(model, encoded, lengths, max_batch, multi_label)
    else:
        probs, plan = _classify_batched(model, tokenizer, encoded, lengths, max_tokens, max_batch, multi_label)
    if stats is not None:
        stats.batches += len(plan.batches)
        stats.real_tokens += plan.real_tokens
        stats.padded_tokens += plan.padded_tokens
    return probs, lengths


def encode_texts(tokenizer: Any, texts: list[str], max_length: int) -> Any:
    """The texts' token ids, unpadded: each cut to a character budget first, then truncated to `max_length` tokens."""
    return tokenizer([t[: max_length * CHARS_PER_TOKEN_CAP] for t in texts], truncation=True, max_length=max_length)


def _probabilities(logits: Any, multi_label: bool) -> Any:
    import torch

    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


def _classify_batched(model: Any, tokenizer: Any, encoded: Any, lengths: list[int], max_tokens: int, max_batch: int,
                      multi_label: bool) -> tuple[list[list[float]], BatchPlan]:
    """Probabilities from a model called on padded length-sorted token-budget batches (`plan_batches`)."""
    import torch

    plan = plan_batches(lengths, max_tokens, max_batch)
    probs: list[list[float]] = [[] for _ in lengths]
    device = next(model.parameters()).device
    with torch.inference_mode():
        for indices in plan.batches:
            features = [{k: encoded[k][i] for k in encoded.keys()} for i in indices]
            batch = tokenizer.pad(features, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            values = _probabilities(model(**batch).logits, multi_label)
            for row, index in zip(values.tolist(), indices, strict=True):
                probs[index] = row
    return probs, plan


def _classify_planned(model: Any, encoded: Any, lengths: list[int], max_batch: int,
                      multi_label: bool) -> tuple[list[list[float]], BatchPlan]:
    """Probabilities from a runner that takes every text at once, unpadded, and makes its own calls (`plans_calls`):
    no batch of the stage's plan waits on another, so its inference streams stay busy across the whole chunk."""
    import torch

    outputs, calls = model.run_encoded(encoded["input_ids"], encoded.get("token_type_ids"), max_rows=max_batch)
    plan = BatchPlan([members for members, _width in calls], sum(lengths), sum(len(members) * width for members, width in calls))
    return _probabilities(torch.from_numpy(outputs["logits"]), multi_label).tolist(), plan


def model_labels(model: Any) -> list[str]:
    id2label = model.config.id2label or {}
    return [str(id2label[i]) for i in range(len(id2label))]


class ClassifyTextStage(HFStage):
    """Label + score (probability of the label) and every label's score."""

    auto_class = "AutoModelForSequenceClassification"
    spec: ClassifyStage

    def after_load(self) -> None:
        labels = model_labels(self.model)
        wanted = self.spec.labels
        generic = all(label.startswith("LABEL_") for label in labels)
        if wanted and generic and len(wanted) == len(labels):
            self.labels = list(wanted)
        elif wanted and sorted(wanted) != sorted(labels):
            raise ModelFormatError(
                f"stage `{self.name}`: the model's labels {labels} differ from the stage's labels {wanted}",
                hint=f"fine-tune the model on these labels: textworker train PIPELINE --stage {self.name} --data FILE",
            )
        else:
            self.labels = labels

    def run(self, docs: list[Document], context: Context) -> list[Outcome]:
        probs, lengths = classify_texts(
            self.model, self.tokenizer, [d.text for d in docs], max_length=self.max_positions,
            max_tokens=self.spec.max_tokens, max_batch=self.spec.batch_size,
            multi_label=self.spec.multi_label, stats=self.stats,
        )
        return list(self._results(docs, probs, lengths))

    def _results(self, docs: list[Document], probs: list[list[float]], lengths: list[int]) -> Iterator[Outcome]:
        for doc, row, length in zip(docs, probs, lengths, strict=True):
            scores = {label: round(p, 6) for label, p in zip(self.labels, row, strict=True)}
            best = max(range(len(row)), key=row.__getitem__)
            output: dict[str, Any] = {"scores": scores, "tokens": length, "truncated": length >= self.max_positions}
            if self.spec.multi_label:
                output["labels"] = [lab for lab, p in scores.items() if p >= self.spec.threshold]
            yield self.result(doc, self.labels[best], float(row[best]), output)


class SpamDetectStage(HFStage):
    """Label `spam` when P(spam) >= threshold, else the ham label; score = P(spam)."""

    auto_class = "AutoModelForSequenceClassification"
    spec: SpamStage

    def after_load(self) -> None:
        labels = model_labels(self.model)
        if self.spec.spam_label not in labels:
            raise ModelFormatError(
                f"stage `{self.name}`: the model has no `{self.spec.spam_label}` label (it has {labels})",
                hint="set `spam_label` to the model's spam class, or train a spam model with `textworker train`",
            )
        self.spam_index = labels.index(self.spec.spam_label)

    def run(self, docs: list[Document], context: Context) -> list[Outcome]:
        probs, lengths = classify_texts(
            self.model, self.tokenizer, [d.text for d in docs], max_length=self.max_positions,
            max_tokens=self.spec.max_tokens, max_batch=self.spec.batch_size, stats=self.stats,
        )
        outcomes: list[Outcome] = []
        for doc, row, length in zip(docs, probs, lengths, strict=True):
            p_spam = float(row[self.spam_index])
            is_spam = p_spam >= self.spec.threshold
            label = self.spec.spam_label if is_spam else self.spec.ham_label
            output = {"spam_probability": round(p_spam, 6), "is_spam": is_spam, "threshold": self.spec.threshold,
                      "tokens": length, "truncated": length >= self.max_positions}
            outcomes.append(self.result(doc, label, p_spam, output))
        return outcomes


# --------------------------------------------------------------------------- lifecycle parts (see StagePlugin)


def classify_labels(spec: ClassifyStage) -> list[str] | None:
    """The configured labels (None: the model's own, which the lifecycle reads from its config)."""
    return list(spec.labels) if spec.labels else None


def spam_labels(spec: SpamStage) -> list[str]:
    return [spec.ham_label, spec.spam_label]


def labelled_row(spec: Any, raw: dict[str, Any], labels: Sequence[str] | None) -> dict[str, Any]:
    """A feedback row of a classify or spam stage: a text and one of the stage's labels."""
    text = text_field(raw, "text", what="text")
    label = short_field(raw, "label")
    if label is None:
        raise RowProblem("missing_field", "no `label` field")
    label = label.strip()
    if labels and label not in labels:
        raise RowProblem("unknown_label", f"label `{label}` is not one of the stage's labels: {', '.join(labels)}")
    return {"text": text, "label": label}


def labelled_example(spec: Any, row: Any) -> tuple[str, str]:
    return (row.text, row.label)


def classify_confidence(spec: ClassifyStage, result: StageResult) -> tuple[float, float]:
    """(probability of the predicted label, top-1 minus top-2 probability)."""
    probs = sorted((float(p) for p in (result.output.get("scores") or {}).values()), reverse=True)
    if not probs:
        return float(result.score or 0.0), 1.0
    return probs[0], probs[0] - (probs[1] if len(probs) > 1 else 0.0)


def spam_confidence(spec: SpamStage, result: StageResult) -> tuple[float, float]:
    """(probability of the decided label, |2 P(spam) - 1|)."""
    p_spam = float(result.output.get("spam_probability", result.score or 0.0))
    confidence = p_spam if result.label == spec.spam_label else 1.0 - p_spam
    return confidence, abs(2 * p_spam - 1)


def text_key(spec: Any, doc: Document) -> str:
    """The duplicate-text cache key of a stage whose output depends on the text alone."""
    return doc.text


_LABELLED: dict[str, Any] = {
    "cache_key": text_key, "label_set": True, "feedback_row": labelled_row, "feedback_example": labelled_example, "text_label_table": True,
    "charts_labels": True, "trainer": "worker.training.classify:TRAINER",
}
PLUGINS = (
    StagePlugin("classify", ClassifyStage, ClassifyTextStage, "sequence classification: a label and every label's score",
                labels=classify_labels, default_metric=lambda spec: "macro_f1", confidence=classify_confidence,
                recognise=lambda output: "scores" in output and "spam_probability" not in output, **_LABELLED),
    StagePlugin("spam", SpamStage, SpamDetectStage, "spam detection: spam/ham by P(spam) >= threshold",
                labels=spam_labels, default_metric=lambda spec: f"f1:{spec.spam_label}", confidence=spam_confidence,
                recognise=lambda output: "spam_probability" in output,
                rate_label=lambda spec: spec.spam_label if spec is not None else "spam", **_LABELLED),
)
