"""The stage protocol and the Hugging Face base class the four stage types share.

Contract: construct from the validated spec (cheap, picklable); `load()` once in the
process or actor that runs it (idempotent); `process(docs, context)` returns, per
document, a `StageResult` or a `DeadLetter` -- never raises for a bad document.
`context[doc_id][stage_name]` holds earlier stages' results for the same document.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from schemas.documents import DeadLetter, Document, StageResult
from worker.errors import StageFailure
from worker.models import loading

if TYPE_CHECKING:
    from worker.models.swap import ModelSwapper

log = logging.getLogger(__name__)
Context = dict[str, dict[str, StageResult]]
Outcome = StageResult | DeadLetter


@dataclass
class StageStats:
    """Counters a stage keeps while it runs (read by the summary, metrics and bench)."""

    docs: int = 0
    failed: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    oom_splits: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def padding_waste(self) -> float:
        return 0.0 if not self.padded_tokens else 1 - self.real_tokens / self.padded_tokens

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / self.seconds if self.seconds else 0.0


class Stage(Protocol):
    name: str
    model_version: str
    stats: StageStats

    def load(self) -> None: ...

    def process(self, docs: Sequence[Document], context: Context) -> list[Outcome]: ...


def is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


class HFStage:
    """Shared machinery: model loading, device, per-document failure isolation.

    Subclasses set `auto_class` and implement `run(docs, context) -> list[Outcome]`
    for a list of documents; the base retries a failed call, then isolates the
    failing documents one by one so one bad document cannot sink its batch.
    """

    auto_class: str = "AutoModel"

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.name: str = spec.name
        self.model_version = ""
        self.stats = StageStats()
        self.model: Any = None
        self.tokenizer: Any = None
        self.device = "cpu"
        self.ref: loading.ModelRef | None = None
        self.swapper: ModelSwapper | None = None  # set by worker.models.swap.follow_champions

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        if self.model is not None:
            return
        import torch

        self.device = loading.pick_device(self.spec.resources.device)
        if self.spec.resources.threads:
            torch.set_num_threads(self.spec.resources.threads)
        if self.swapper is not None:
            ref, version = self.swapper.starting_model()
        else:
            ref, version = loading.resolve(self.spec.model, self.spec.revision), None
        self.adopt(self.prepared(ref, version))
        log.info("stage loaded", extra={"stage": self.name, "model_version": self.model_version, "device": self.device})

    def prepared(self, ref: loading.ModelRef, version: str | None = None) -> HFStage:
        """A copy of this stage with `ref`'s model loaded and checked (`after_load`); any thread may call it."""
        import transformers

        candidate = copy.copy(self)
        candidate.tokenizer = loading.load_pretrained(transformers.AutoTokenizer, ref, self.spec.revision)
        model = loading.load_pretrained(getattr(transformers, self.auto_class), ref, self.spec.revision)
        candidate.model = model.to(self.device).eval()
        candidate.ref, candidate.model_version = ref, version or ref.version
        candidate.after_load()
        return candidate

    def adopt(self, candidate: HFStage) -> None:
        """Take over a prepared copy's model and what `after_load` derived, in one step between batches."""
        self.__dict__.update({k: v for k, v in vars(candidate).items() if k not in ("stats", "swapper", "spec")})

    def after_load(self) -> None:
        """Checks a subclass makes once the model is loaded (labels, heads...)."""

    def add_token_counts(self, counts: dict[str, int]) -> None:
        """Fold a batch helper's token counters (real/padded tokens, batches, extras) into the stats."""
        self.stats.real_tokens += counts.get("real_tokens", 0)
        self.stats.padded_tokens += counts.get("padded_tokens", 0)
        self.stats.batches += counts.get("batches", 0)
        for key, value in counts.items():
            if key not in ("real_tokens", "padded_tokens", "batches"):
                self.stats.extra[key] = self.stats.extra.get(key, 0) + value

    @property
    def max_positions(self) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", None) or 512
        if getattr(self.model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2
        return int(min(self.spec.max_length, limit, getattr(self.tokenizer, "model_max_length", limit) or limit))

    # ------------------------------------------------------------------ running

    def process(self, docs: Sequence[Document], context: Context) -> list[Outcome]:
        if not docs:
            return []
        self.load()
        if self.swapper is not None:
            self.swapper.at_batch_boundary()  # a new champion takes over here, never inside a batch
        started = time.perf_counter()
        try:
            outcomes = self._with_retries(lambda: self.run(list(docs), context))
        except Exception as exc:  # noqa: BLE001 - isolate the failing documents
            log.warning("stage batch failed, isolating documents", extra={"stage": self.name, "error": str(exc)[:300]})
            outcomes = [self._one(doc, context) for doc in docs]
        self.stats.seconds += time.perf_counter() - started
        self.stats.docs += len(docs)
        self.stats.failed += sum(isinstance(o, DeadLetter) for o in outcomes)
        return outcomes

    def _with_retries(self, call: Callable[[], list[Outcome]]) -> list[Outcome]:
        for attempt in range(self.spec.retries + 1):
            try:
                return call()
            except StageFailure:
                raise
            except Exception:
                if attempt == self.spec.retries:
                    raise
        raise AssertionError("unreachable")

    def _one(self, doc: Document, context: Context) -> Outcome:
        try:
            return self._with_retries(lambda: self.run([doc], context))[0]
        except StageFailure as failure:
            return self.dead(doc, failure.reason, failure.detail)
        except Exception as exc:  # noqa: BLE001 - a document that breaks the model is data
            return self.dead(doc, "stage_error", f"{type(exc).__name__}: {str(exc)[:500]}")

    def run(self, docs: list[Document], context: Context) -> list[Outcome]:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers

    def result(self, doc: Document, label: str | None, score: float | None, output: dict[str, Any]) -> StageResult:
        return StageResult(doc_id=doc.id, stage=self.name, label=label, score=score, output=output, model_version=self.model_version)

    def dead(self, doc: Document, reason: str, detail: str) -> DeadLetter:
        return DeadLetter(ref=doc.id, stage=self.name, reason=reason, detail=detail, payload=doc.text[:2000])

    def forward_split(self, batch: dict[str, Any], forward: Callable[[dict[str, Any]], Any]) -> list[Any]:
        """Run `forward`; on out-of-memory split the batch in halves and retry each."""
        try:
            return [forward(batch)]
        except (RuntimeError, MemoryError) as exc:
            size = len(next(iter(batch.values())))
            if not is_oom(exc) or size <= 1:
                raise
            self.stats.oom_splits += 1
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = size // 2
            first = {k: v[:half] for k, v in batch.items()}
            second = {k: v[half:] for k, v in batch.items()}
            return self.forward_split(first, forward) + self.forward_split(second, forward)
