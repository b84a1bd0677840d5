"""Score a model directory for a stage on named evaluation sets, predicting each row once.

The gate compares candidate and champion on exactly the same rows, so both go through
`score_model` with the same `sets` (the frozen set from the pipeline file, the
held-out feedback slice and the champion's reference sets, named `ref:<set>`). The
result has one metric dictionary per set plus `all` (every set but the `ref:` ones
together: the target the gate's margin applies to), each in the shape the `worker.training` evaluation code returns:
accuracy / macro-F1 / per-label P/R/F1 (0..1) for classify and spam stages (spam with
the stage's threshold, as the running stage decides), SQuAD EM/F1 (0..100) for QA,
sacrebleu BLEU/chrF for translation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from schemas.pipeline import ClassifyStage, QaStage, SpamStage, TranslateStage

StageSpec = ClassifyStage | SpamStage | QaStage | TranslateStage
Example = Any  # (text, label) | SQuAD dict | (source, reference)


def _slices(sets: Mapping[str, Sequence[Example]]) -> tuple[list[Example], dict[str, slice]]:
    """Rows of every set, target sets first; `all` spans the target sets (none: every set)."""
    rows: list[Example] = []
    where: dict[str, slice] = {}
    ordered = sorted(sets.items(), key=lambda item: item[0].startswith("ref:"))
    for name, examples in ordered:
        where[name] = slice(len(rows), len(rows) + len(examples))
        rows.extend(examples)
    target = sum(len(examples) for name, examples in ordered if not name.startswith("ref:"))
    where["all"] = slice(0, target or len(rows))
    return rows, where


def _load(stage: StageSpec, model_dir: str) -> tuple[Any, Any]:
    import transformers

    from worker.models import loading

    auto = {"classify": "AutoModelForSequenceClassification", "spam": "AutoModelForSequenceClassification",
            "qa": "AutoModelForQuestionAnswering", "translate": "AutoModelForSeq2SeqLM"}[stage.type]
    ref = loading.resolve(model_dir)
    tokenizer = loading.load_pretrained(transformers.AutoTokenizer, ref)
    model = loading.load_pretrained(getattr(transformers, auto), ref).eval()
    return model.to(loading.pick_device(stage.resources.device)), tokenizer


def classify_predictions(stage: ClassifyStage | SpamStage, model: Any, tokenizer: Any, texts: list[str]) -> list[str]:
    """Predicted labels; a spam stage says `spam` when P(spam) >= its threshold, as it does when it runs."""
    from worker.stages.classify import model_labels
    from worker.training.classify import predict_labels

    preds, probs = predict_labels(model, tokenizer, texts, max_length=stage.max_length)
    names = model_labels(model)
    if isinstance(stage, SpamStage) and stage.spam_label in names and len(names) == 2:
        index = names.index(stage.spam_label)
        other = names[1 - index]
        preds = [stage.spam_label if p[index] >= stage.threshold else other for p in probs]
    return preds


def score_model(stage: StageSpec, model_dir: str, sets: Mapping[str, Sequence[Example]],
                labels: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Metrics per set name and for `all`; empty sets are left out."""
    sets = {name: rows for name, rows in sets.items() if rows}
    rows, where = _slices(sets)
    if not rows:
        return {}
    model, tokenizer = _load(stage, model_dir)
    if isinstance(stage, ClassifyStage | SpamStage):
        from worker.training.metrics import classification_metrics

        preds = classify_predictions(stage, model, tokenizer, [t for t, _ in rows])
        golds = [g for _, g in rows]
        return {name: classification_metrics(golds[s], preds[s], labels) for name, s in where.items()}
    if isinstance(stage, QaStage):
        return _score_qa(stage, model, tokenizer, rows, where)
    return _score_translation(stage, model, tokenizer, rows, where)


def _score_qa(stage: QaStage, model: Any, tokenizer: Any, rows: list[dict[str, Any]], where: dict[str, slice]) -> dict[str, dict[str, Any]]:
    from worker.training.qa import answer_questions, squad_em_f1

    answers = answer_questions(model, tokenizer, [(r["question"], r["context"]) for r in rows],
                               max_length=stage.max_length, stride=stage.stride, max_answer_length=stage.max_answer_length)
    scores = [squad_em_f1(a["answer"], list(r["answers"]["text"])) for a, r in zip(answers, rows)]
    out: dict[str, dict[str, Any]] = {}
    for name, s in where.items():
        part = scores[s]
        out[name] = {"exact_match": round(100 * sum(e for e, _ in part) / len(part), 2),
                     "f1": round(100 * sum(f for _, f in part) / len(part), 2), "n": len(part)}
    return out


def _score_translation(stage: TranslateStage, model: Any, tokenizer: Any, rows: list[tuple[str, str]],
                       where: dict[str, slice]) -> dict[str, dict[str, Any]]:
    import sacrebleu

    from worker.training.translation import translate_texts

    hyps = translate_texts(model, tokenizer, [src for src, _ in rows], num_beams=stage.num_beams,
                           max_new_tokens=stage.max_new_tokens, prefix=stage.prefix)
    refs = [ref for _, ref in rows]
    return {name: {"bleu": round(sacrebleu.corpus_bleu(hyps[s], [refs[s]]).score, 2),
                   "chrf": round(sacrebleu.corpus_chrf(hyps[s], [refs[s]]).score, 2), "n": len(hyps[s])}
            for name, s in where.items()}
