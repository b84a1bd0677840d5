"""The stage protocol and the Hugging Face base class the four stage types share.

Contract: construct from the validated spec (cheap, picklable); `load()` once in the
process or actor that runs it (idempotent); `run(docs, context)` returns, per document
in order, a `StageResult` or a `DeadLetter`, and may raise for the batch as a whole.
`context[doc_id][stage_name]` holds earlier stages' results for the same document.
Hot swap, retries, out-of-memory splitting and per-document isolation are not the
stage's business: `worker.engine.stage_call.run_stage` wraps every call.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.documents import DeadLetter, Document, StageResult
from worker.models import loading, precision

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

    def run(self, docs: list[Document], context: Context) -> list[Outcome]: ...


class HFStage:
    """Shared machinery: model loading, device, hot-swap support, result and dead-letter helpers.

    Subclasses set `auto_class` and implement `run(docs, context) -> list[Outcome]`.
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
        self.precision = "fp32"
        self.precision_reason = ""
        self.ref: loading.ModelRef | None = None
        self.swapper: Any = None  # a worker.engine.swap.ModelSwapper, set by follow_champions

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
        log.info("stage loaded", extra={"stage": self.name, "model_version": self.model_version, "device": self.device,
                                        "precision": self.precision, "why": self.precision_reason})

    def prepared(self, ref: loading.ModelRef, version: str | None = None) -> HFStage:
        """A copy of this stage with `ref`'s model loaded and checked (`after_load`); any thread may call it."""
        import transformers

        candidate = copy.copy(self)
        candidate.tokenizer = loading.load_pretrained(transformers.AutoTokenizer, ref, self.spec.revision)
        choice = precision.choose(self.spec.precision, self.device, precision.local_dir(ref), self.auto_class)
        candidate.model = precision.load(getattr(transformers, self.auto_class), self.auto_class, ref, self.spec.revision,
                                         self.device, choice, threads=self.spec.resources.threads,
                                         max_tokens=getattr(self.spec, "max_length", None))
        candidate.precision, candidate.precision_reason = choice.precision, choice.reason
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

    # ------------------------------------------------------------------ running (called by worker.engine.stage_call)

    def run(self, docs: list[Document], context: Context) -> list[Outcome]:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers

    def result(self, doc: Document, label: str | None, score: float | None, output: dict[str, Any]) -> StageResult:
        return StageResult(doc_id=doc.id, stage=self.name, label=label, score=score, output=output, model_version=self.model_version)

    def dead(self, doc: Document, reason: str, detail: str) -> DeadLetter:
        return DeadLetter(ref=doc.id, stage=self.name, reason=reason, detail=detail, payload=doc.text[:2000])
