"""Identical inputs are computed once per stage and model version.

Spam floods, retweets and re-sent messages repeat texts. Before a stage call the engine
looks each admitted document up by the stage type's cache key (its plug-in's
`cache_key`: the text, plus the question for QA; a type without one, like `embed`
whose near-duplicate label depends on what came before, is never cached):

- documents of one call that share a key are sent once, and the others get copies of
  its outcome (every result of a call comes from one model version);
- on a stage that cannot swap models (hot swap off, or a model that is not a family of
  versions), a document whose key was computed before gets a copy of that result;
- everything else goes to the executor as before.

Results of earlier calls are not reused on a stage that can swap: the stage looks for a
new champion at each batch boundary, inside its executor (an actor, perhaps), so a
remembered result might come from the version it has just replaced, and one chunk would
then hold results of two versions. Only results are kept (a dead letter is computed
again). The cache is a bounded LRU per stage (`cache.max_entries` keys, sha256 digests,
not texts); a result of another model version empties it. Documents answered without a
stage call (hits and twins) are counted per stage: `cache_hits` in the run summary,
`textworker_stage_cache_hits_total`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.documents import Document, StageResult
from schemas.pipeline import PipelineSpec
from worker.engine.chunks import Outcome


@dataclass
class Plan:
    """One stage call after the cache: what to send, what is already known, which documents share a key."""

    send: list[Document]
    hits: list[StageResult] = field(default_factory=list)
    twins: dict[str, list[Document]] = field(default_factory=dict)  # sent doc id -> the documents with its key
    keys: dict[str, bytes] = field(default_factory=dict)  # sent doc id -> its key

    def outcomes(self, computed: list[Outcome], store: Callable[[bytes, StageResult], None]) -> list[Outcome]:
        """The computed outcomes, a copy of each for the sent document's twins (a result, or the same dead
        letter: the input was the same), and the cache hits; new results are stored."""
        out: list[Outcome] = list(computed)
        for outcome in computed:
            if isinstance(outcome, StageResult):
                sent = outcome.doc_id
                if sent in self.keys:
                    store(self.keys[sent], outcome)
                out.extend(outcome.model_copy(update={"doc_id": twin.id}) for twin in self.twins.get(sent, ()))
            else:
                out.extend(outcome.model_copy(update={"ref": twin.id}) for twin in self.twins.get(outcome.ref, ()))
        return out + list(self.hits)

    @property
    def saved(self) -> int:
        """Documents not sent to the stage: hits plus twins."""
        return len(self.hits) + sum(len(twins) for twins in self.twins.values())


def _fixed_model(stage: Any) -> bool:
    """A stage that never swaps its model: hot swap off, or a model that is not a family of versions."""
    from worker.engine.swap import model_family

    return stage.swap_check_seconds is None or model_family(str(stage.model)) is None


class ResultCache:
    """The per-stage LRU of the module docstring."""

    def __init__(self, spec: PipelineSpec, key_of: Callable[[Any, Document], str | None] | None = None,
                 *, max_entries: int = 4096) -> None:
        from worker.stages import plugin_for

        self.spec = spec
        self.max_entries = max_entries
        self._key_of = [key_of if key_of is not None else plugin_for(s.type).cache_key for s in spec.stages]
        self._entries: list[OrderedDict[bytes, StageResult]] = [OrderedDict() for _ in spec.stages]
        self._versions: list[str | None] = [None for _ in spec.stages]
        self._remember = [_fixed_model(stage) for stage in spec.stages]

    def plan(self, index: int, docs: list[Document]) -> Plan:
        """Split a call's documents into hits, documents to send and their twins."""
        key_of = self._key_of[index]
        if key_of is None or self.max_entries <= 0:
            return Plan(send=list(docs))
        stage, entries = self.spec.stages[index], self._entries[index]
        plan = Plan(send=[])
        first: dict[bytes, str] = {}
        for doc in docs:
            text = key_of(stage, doc)
            key = None if text is None else hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
            if key is None:
                plan.send.append(doc)
                continue
            cached = entries.get(key) if self._remember[index] else None
            if cached is not None:
                entries.move_to_end(key)
                plan.hits.append(cached.model_copy(update={"doc_id": doc.id}))
                continue
            if key in first:
                plan.twins.setdefault(first[key], []).append(doc)
                continue
            first[key] = doc.id
            plan.keys[doc.id] = key
            plan.send.append(doc)
        return plan

    def store(self, index: int) -> Callable[[bytes, StageResult], None]:
        """The function `Plan.outcomes` stores stage `index`'s new results with (a no-op where results are not reused)."""
        entries = self._entries[index]

        def put(key: bytes, result: StageResult) -> None:
            if not self._remember[index]:
                return
            if self._versions[index] is not None and result.model_version != self._versions[index]:
                entries.clear()
            self._versions[index] = result.model_version
            entries[key] = result
            entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)

        return put

    def size(self, index: int) -> int:
        return len(self._entries[index])
