"""Seq2seq translation with bounded output; long texts go sentence chunk by chunk."""

from __future__ import annotations

import re
from typing import Any, cast

from schemas.documents import Document, StageResult
from schemas.pipeline import TranslateStage
from worker.stages.base import Context, HFStage, Outcome
from worker.stages.language import language_problem
from worker.stages.plugin import StagePlugin, clip
from worker.stages.rows import text_field

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_CHUNKS = 64
LOW_QUALITY = "low_quality"


def quality_problems(source: str, translation: str) -> list[str]:
    """Why a translation looks degenerate: `empty`, `copy` (the source back), `repetition` (a loop).

    Cheap checks on the text alone, so a broken or off-domain model shows up as flagged
    results on the dashboard instead of fluent-looking garbage.
    """
    words = [w.lower() for w in _WORD.findall(translation)]
    if not words:
        return ["empty"] if source.strip() else []
    problems = []
    source_words = [w.lower() for w in _WORD.findall(source)]
    if len(source_words) >= 4 and words == source_words:
        problems.append("copy")
    if _repeats(words):
        problems.append("repetition")
    return problems


def _repeats(words: list[str]) -> bool:
    """An n-gram (n = 1..4) said four or more times in a row, or few distinct words in a long output."""
    for n in range(1, 5):
        for start in range(0, max(0, len(words) - 4 * n + 1)):
            gram = words[start:start + n]
            if all(words[start + k * n:start + (k + 1) * n] == gram for k in range(1, 4)):
                return True
    return len(words) >= 16 and len(set(words)) / len(words) < 0.3


def split_chunks(text: str, max_chars: int) -> list[str]:
    """Sentences packed into chunks of at most `max_chars` (a longer sentence is cut)."""
    chunks: list[str] = []
    current = ""
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        if not sentence:
            continue
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            if current:
                chunks.append(current)
                current = ""
            chunks.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > max_chars:
            chunks.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
    if current:
        chunks.append(current)
    return chunks


def _max_source_len(model: Any, tokenizer: Any) -> int:
    limit = getattr(model.config, "max_position_embeddings", None) or 512
    tok_limit = getattr(tokenizer, "model_max_length", None)
    return min(limit, tok_limit) if isinstance(tok_limit, int) and tok_limit > 0 else limit


def translate_texts(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    max_new_tokens: int = 128,
    num_beams: int = 1,
    prefix: str = "",
    batch_size: int = 32,
    forced_bos_token_id: int | None = None,
    max_tokens: int | None = None,
    stats: dict[str, int] | None = None,
) -> list[str]:
    """Translate ``texts`` (results in input order, always ``str``) in token-budget batches.

    Sources are grouped by length under a budget of ``max_tokens`` source positions per batch (at most
    ``batch_size`` texts), so padding stays small. Inputs longer than the model's positions are truncated.
    ``max_new_tokens`` is capped by the model's positions and by ``2 * longest source in the batch + 10``
    tokens; other decoding settings come from ``model.generation_config``. ``stats`` (when given)
    accumulates source ``real_tokens``/``padded_tokens``, ``generated_tokens`` and ``batches``.
    """
    import torch

    from worker.stages.batching import plan_batches

    if not texts:
        return []
    max_src = _max_source_len(model, tokenizer)
    max_new = max(1, min(max_new_tokens, getattr(model.config, "max_position_embeddings", 10**9) - 1))
    sources = [prefix + t for t in texts]
    lengths = [len(ids) for ids in tokenizer(sources, truncation=True, max_length=max_src)["input_ids"]]
    plan = plan_batches(lengths, max_tokens or batch_size * max(lengths), batch_size)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    results = [""] * len(texts)
    generated = 0
    extra = {"forced_bos_token_id": forced_bos_token_id} if forced_bos_token_id is not None else {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for idx in plan.batches:
                enc = tokenizer([sources[i] for i in idx], return_tensors="pt", padding=True,
                                truncation=True, max_length=max_src).to(model.device)
                bound = min(max_new, 2 * max(lengths[i] for i in idx) + 10)
                out = cast(Any, model).generate(**enc, max_new_tokens=bound, num_beams=num_beams, do_sample=False, **extra)
                generated += int((out != pad_id).sum()) if pad_id is not None else int(out.numel())
                for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True), strict=True):
                    results[i] = text.strip()
    finally:
        model.train(was_training)
    if stats is not None:
        stats["real_tokens"] = stats.get("real_tokens", 0) + plan.real_tokens
        stats["padded_tokens"] = stats.get("padded_tokens", 0) + plan.padded_tokens
        stats["generated_tokens"] = stats.get("generated_tokens", 0) + generated
        stats["batches"] = stats.get("batches", 0) + len(plan.batches)
    return results


class TranslateTextStage(HFStage):
    """label = target language, output.translation = the translated text."""

    auto_class = "AutoModelForSeq2SeqLM"
    spec: TranslateStage

    def after_load(self) -> None:
        self.forced_bos: int | None = None
        lang_ids = getattr(self.tokenizer, "lang_code_to_id", None)
        if lang_ids and self.spec.target_lang in lang_ids:
            self.forced_bos = lang_ids[self.spec.target_lang]

    def run(self, docs: list[Document], context: Context) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(docs)
        chunks: list[str] = []
        owners: list[int] = []
        truncated: dict[int, bool] = {}
        for index, doc in enumerate(docs):
            problem = language_problem(doc.text, self.spec.source_lang, self.spec.source_scripts)
            if problem:
                outcomes[index] = self.dead(doc, "unsupported_language", problem)
                continue
            parts = split_chunks(doc.text, self.spec.max_chars)
            truncated[index] = len(parts) > MAX_CHUNKS
            for part in parts[:MAX_CHUNKS]:
                chunks.append(part)
                owners.append(index)
        counts: dict[str, int] = {}
        translated = translate_texts(
            self.model, self.tokenizer, chunks, max_new_tokens=self.spec.max_new_tokens,
            num_beams=self.spec.num_beams, prefix=self.spec.prefix, batch_size=self.spec.batch_size,
            forced_bos_token_id=self.forced_bos, max_tokens=self.spec.max_tokens, stats=counts,
        ) if chunks else []
        self.add_token_counts(counts)
        joined: dict[int, list[str]] = {}
        for owner, text in zip(owners, translated, strict=True):
            joined.setdefault(owner, []).append(text)
        for index, doc in enumerate(docs):
            if outcomes[index] is None:
                parts = joined.get(index, [])
                output = {"translation": " ".join(parts), "source_lang": self.spec.source_lang,
                          "target_lang": self.spec.target_lang, "chunks": len(parts), "truncated": truncated.get(index, False)}
                problems = sorted({p for i in range(len(parts)) for p in quality_problems(_chunk_of(chunks, owners, index, i), parts[i])})
                if problems:
                    output[LOW_QUALITY] = problems
                label = LOW_QUALITY if problems else self.spec.target_lang
                outcomes[index] = self.result(doc, label, None, output)
        return [o for o in outcomes if o is not None]


def _chunk_of(chunks: list[str], owners: list[int], owner: int, nth: int) -> str:
    """The `nth` source chunk of document `owner`."""
    return [c for c, o in zip(chunks, owners, strict=True) if o == owner][nth]


def _show(result: StageResult) -> str:
    flag = f" [{', '.join(result.output[LOW_QUALITY])}]" if result.output.get(LOW_QUALITY) else ""
    return f"{str(result.output.get('translation', ''))[:120]}{flag}"


def _feedback_row(spec: TranslateStage, raw: dict[str, Any], labels: Any) -> dict[str, Any]:
    """A translation feedback row: a source text and its reference translation (by language code or name)."""
    source = text_field(raw, spec.source_lang, "source", "text", what="source text")
    reference = text_field(raw, spec.target_lang, "reference", what="reference translation", empty_reason="empty_reference")
    return {"text": source, "reference": reference}


def _sample(output: dict[str, Any]) -> dict[str, Any]:
    return {"translation": clip(output.get("translation") or "", 400), "target_lang": output.get("target_lang"),
            LOW_QUALITY: output.get(LOW_QUALITY) or []}


PLUGINS = (StagePlugin("translate", TranslateStage, TranslateTextStage, "machine translation, sentence by sentence when long",
                       show=_show, default_metric=lambda spec: "bleu", cache_key=lambda spec, doc: doc.text, feedback_row=_feedback_row,
                       feedback_example=lambda spec, row: (row.text, row.reference),
                       table_fields=lambda spec: {spec.source_lang, spec.target_lang},
                       recognise=lambda output: "translation" in output, sample=_sample,
                       trainer="worker.training.translation:TRAINER"),)
