"""Extractive question answering over each document (long documents in windows)."""

from __future__ import annotations

from typing import Any

from schemas.documents import Document, StageResult
from schemas.pipeline import QaStage
from worker.stages.base import Context, HFStage, Outcome
from worker.stages.plugin import StagePlugin, clip
from worker.stages.rows import RowProblem, answer_field, text_field


class QuestionAnswerStage(HFStage):
    """Answers the stage's fixed questions plus the document's own question field.

    label = the first question's answer, score = its confidence; `output.answers`
    holds every question with its span (character offsets into the text).
    """

    auto_class = "AutoModelForQuestionAnswering"
    spec: QaStage

    def questions_for(self, doc: Document) -> list[str]:
        questions = list(self.spec.questions)
        if self.spec.question_field:
            value = doc.meta.get(self.spec.question_field)
            if isinstance(value, str) and value.strip():
                questions.append(value.strip())
            elif isinstance(value, list):
                questions.extend(str(q).strip() for q in value if str(q).strip())
        return questions

    def run(self, docs: list[Document], context: Context) -> list[Outcome]:
        from worker.stages.qa_windows import answer_questions

        items: list[tuple[str, str]] = []
        owners: list[int] = []
        for index, doc in enumerate(docs):
            for question in self.questions_for(doc):
                items.append((question, doc.text))
                owners.append(index)
        counts: dict[str, int] = {}
        spans = answer_questions(
            self.model, self.tokenizer, items, max_length=self.max_positions, stride=self.spec.stride,
            max_answer_length=self.spec.max_answer_length, batch_size=self.spec.batch_size,
            max_windows=self.spec.max_windows, no_answer_threshold=self.spec.no_answer_threshold,
            max_tokens=self.spec.max_tokens, stats=counts,
        )
        self.add_token_counts(counts)
        per_doc: list[list[dict[str, Any]]] = [[] for _ in docs]
        for (question, _), owner, span in zip(items, owners, spans, strict=True):
            per_doc[owner].append({"question": question, **span})
            self.stats.extra["windows"] = self.stats.extra.get("windows", 0) + int(span.get("windows", 0))
        outcomes: list[Outcome] = []
        for doc, answers in zip(docs, per_doc, strict=True):
            if not answers:
                outcomes.append(self.dead(doc, "missing_question", f"no `questions` in the stage and no `{self.spec.question_field}` field"))
                continue
            first = answers[0]
            label = None if first["no_answer"] else first["answer"][:256]
            outcomes.append(self.result(doc, label, float(first["score"]), {"answers": answers}))
        return outcomes


def _show_answer(result: StageResult) -> str:
    return f"{result.label!r} ({result.score:.3f})" if result.score is not None else repr(result.label)


def _feedback_row(spec: QaStage, raw: dict[str, Any], labels: Any) -> dict[str, Any]:
    """A QA feedback row: a context, a question and an answer found in the context."""
    context = text_field(raw, "context", "text", what="context")
    question = text_field(raw, "question", what="question", empty_reason="empty_question")
    answer = answer_field(raw)
    if answer not in context:
        raise RowProblem("answer_not_in_context", f"the answer `{answer[:80]}` does not occur in the context")
    return {"text": context, "question": question, "answer": answer}


def _feedback_example(spec: QaStage, row: Any) -> dict[str, Any]:
    """A stored row as a SQuAD example."""
    answer = row.answer or ""
    return {"id": row.fingerprint[:16], "context": row.text, "question": row.question,
            "answers": {"text": [answer], "answer_start": [row.text.find(answer)]}}


def _cache_key(spec: QaStage, doc: Document) -> str:
    """The text and the document's own question (the stage's fixed questions are the same for every document)."""
    question = doc.meta.get(spec.question_field) if spec.question_field else None
    return f"{question!r}\x00{doc.text}"


def _sample(output: dict[str, Any]) -> dict[str, Any]:
    answers = output.get("answers") or []
    first = answers[0] if answers and isinstance(answers[0], dict) else {}
    return {"question": clip(first.get("question"), 200), "answer": clip(first.get("answer"), 300), "no_answer": bool(first.get("no_answer"))}


PLUGINS = (StagePlugin("qa", QaStage, QuestionAnswerStage, "extractive question answering over windows", show=_show_answer,
                       default_metric=lambda spec: "f1", cache_key=_cache_key, feedback_row=_feedback_row, feedback_example=_feedback_example,
                       recognise=lambda output: "answers" in output, sample=_sample, trainer="worker.training.qa:TRAINER",
                       pretrained_stage=lambda stage: stage if stage.get("questions") else {"question_field": "question", **stage}),)
