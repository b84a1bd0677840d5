"""The Python API: a pipeline as a callable, the way NLP libraries are used.

    from worker import Pipeline
    nlp = Pipeline.from_file("pipelines/demo.yaml")
    doc = nlp("WIN a FREE prize, text 80086 now")          # one text -> DocumentResult
    doc.results["spam"].label, doc.results["spam"].score
    for d in nlp.pipe(texts, batch_size=64): ...          # lazy, bounded memory, input order

It runs the same engine as `textworker run` (in this process by default, on Ray actor
pools with `runtime="ray"`), needs no database, and with `sink="postgresql://..."`
also stores every document, result and dead letter there, as `textworker run` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, overload

from schemas.documents import DeadLetter, Document
from schemas.pipeline import PipelineSpec
from schemas.results import DocumentResult
from worker.assembly import build_engine
from worker.config import load_pipeline, parse_pipeline
from worker.engine import Chunk, Engine
from worker.errors import TextworkerError
from worker.stages import STAGE_TYPES

TextLike = str | Mapping[str, Any] | Document


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` deep-merged over `base`; a mapping with another `type` (a file source for a kafka one) replaces."""
    out = dict(base)
    for key, value in overrides.items():
        current = out.get(key)
        same_kind = isinstance(current, dict) and value.get("type", current.get("type")) == current.get("type") if isinstance(value, Mapping) else False
        out[key] = _merge(current, value) if same_kind and isinstance(current, dict) else value
    return out


class Pipeline:
    """A loaded pipeline: call it on texts, or stream texts through `pipe`.

    Build one with `from_file`, `from_dict` or `from_pretrained`. Models load on
    construction, so errors (a missing model, no hub) surface at once. Use it as a
    context manager, or call `close()`, to release a Ray cluster or a database.
    """

    def __init__(self, spec: PipelineSpec, *, runtime: str = "local", sink: str | None = None, address: str | None = None) -> None:
        self.spec = spec
        self.runtime = runtime
        self.engine: Engine = build_engine(spec, runtime, database_url=sink, address=address).start()
        self._counter = itertools.count()
        self._book: Any = None
        self._sink: Any = None
        if sink is not None:
            from worker.engine.runs import RunBook, new_run_id
            from worker.sinks import build_sink

            self._sink = build_sink(spec.sink, spec.name, new_run_id(), url=sink).open()
            self._book = RunBook(spec, self._sink, self.engine, {"runtime": runtime, "source": "python"}, bind_log=False).start()

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_file(cls, path: str | Path, *, overrides: Mapping[str, Any] | None = None, **options: Any) -> Pipeline:
        """A pipeline file (`${VAR:-default}` expanded); `overrides` are merged over its content first."""
        if overrides:
            import yaml

            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            return cls.from_dict(_merge(data, overrides), filename=str(path), **options)
        return cls(load_pipeline(str(path)), **options)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None, filename: str = "<dict>",
                  **options: Any) -> Pipeline:
        """A pipeline from a mapping shaped like a pipeline file; `source` and `sink` may be left out."""
        import yaml

        full = {"version": 1, "name": "python", "source": {"type": "file", "path": "-"}, **dict(data)}
        if overrides:
            full = _merge(full, overrides)
        return cls(parse_pipeline(yaml.safe_dump(full, allow_unicode=True), filename), **options)

    @classmethod
    def from_pretrained(cls, model: str, *, task: str = "classify", name: str | None = None, **options: Any) -> Pipeline:
        """A one-stage pipeline around `model` (a local directory, a model family or a hub id) for `task`.

        Tasks: classify, spam, qa (questions from each document's `question` field
        unless `questions=[...]` is given), translate, embed. Stage settings go in
        `stage={...}`. A hub id needs a reachable hub; offline it fails at once with a
        message saying so.
        """
        if task not in STAGE_TYPES:
            raise TextworkerError(f"unknown task `{task}`", hint=f"one of: {', '.join(STAGE_TYPES)}")
        stage: dict[str, Any] = {"name": name or task, "type": task, "model": str(model), **options.pop("stage", {})}
        fill = STAGE_TYPES[task].pretrained_stage
        if fill is not None:
            stage = fill(stage)
        return cls.from_dict({"name": "pretrained", "stages": [stage]}, **options)

    # ------------------------------------------------------------------ running

    @overload
    def __call__(self, texts: TextLike) -> DocumentResult: ...

    @overload
    def __call__(self, texts: list[TextLike]) -> list[DocumentResult]: ...

    def __call__(self, texts: TextLike | list[TextLike]) -> DocumentResult | list[DocumentResult]:
        """One text (or `{"id", "text", ...}` mapping, or `Document`) -> its result; a list -> a list, in order."""
        if isinstance(texts, list):
            return list(self.pipe(texts, batch_size=max(1, len(texts))))
        return next(iter(self.pipe([texts], batch_size=1)))

    def pipe(self, texts: Iterable[TextLike], batch_size: int = 64) -> Iterator[DocumentResult]:
        """Results for every input, lazily, in input order; at most `batch_size` inputs are held at a time."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        iterator = iter(texts)
        while batch := list(itertools.islice(iterator, batch_size)):
            yield from self._run(batch)

    def _run(self, batch: list[TextLike]) -> list[DocumentResult]:
        items = [self._document(item) for item in batch]
        docs = [i for i in items if isinstance(i, Document)]
        chunk: Chunk = self.engine.process(docs, [i for i in items if isinstance(i, DeadLetter)])
        if self._book is not None:
            self._book.store(chunk)
        results: dict[str, dict[str, Any]] = {d.id: {} for d in docs}
        errors: dict[str, list[DeadLetter]] = {d.id: [] for d in docs}
        for result in chunk.results:
            results[result.doc_id][result.stage] = result
        for letter in chunk.letters:
            if letter.stage != "source" and letter.ref in errors:
                errors[letter.ref].append(letter)
        out = []
        for item in items:
            if isinstance(item, DeadLetter):
                out.append(DocumentResult(id=item.ref, status="rejected", errors=[item]))
            else:
                out.append(DocumentResult(id=item.id, status="partial" if errors[item.id] else "ok", results=results[item.id],
                                          skipped=chunk.skipped.get(item.id, []), errors=errors[item.id]))
        return out

    def _document(self, item: TextLike) -> Document | DeadLetter:
        from worker.sources.validation import to_document

        position = next(self._counter)
        if isinstance(item, Document):
            return item
        record: Any = {"id": f"doc-{position}", "text": item} if isinstance(item, str) else item
        if isinstance(record, Mapping) and "id" not in record:
            record = {**record, "id": f"doc-{position}"}
        return to_document(record, f"input:{position}", max_chars=self.spec.source.max_chars)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Release the executor (Ray actors) and the database, storing the run's summary."""
        if self._book is not None:
            self._book.finish("finished")
            self._sink.close()
            self._book = None
        self.engine.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Pipeline({self.spec.name!r}, stages={[s.name for s in self.spec.stages]}, runtime={self.runtime!r})"
