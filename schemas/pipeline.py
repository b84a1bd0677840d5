"""Pipeline file schema: a source, an ordered list of named stages, and a sink.

Every model forbids unknown keys so a typo in a pipeline file is an error with its
field path, never a silently ignored setting. Inner code receives these typed
objects and never re-parses dictionaries.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STAGE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- sources


class FileSource(StrictModel):
    """Documents from files: JSONL, CSV/TSV with a column mapping, or plain-text files.

    `path` may be a file, a directory (every matching file inside, sorted) or a glob.
    With `format: auto` the format follows each file's extension (.jsonl/.json/.ndjson,
    .csv, .tsv, anything else is plain text: one document per file).
    """

    type: Literal["file"] = "file"
    path: str = Field(min_length=1)
    format: Literal["auto", "jsonl", "csv", "tsv", "text"] = "auto"
    id_field: str = "id"
    text_field: str = "text"
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Extra document fields: name in the document -> column or key in the input.",
    )
    has_header: bool = True
    recursive: bool = False
    encoding: str = "utf-8"
    max_chars: int = Field(
        default=1_000_000, gt=0, description="Longer documents become dead letters (too_large)."
    )


class KafkaSecurity(StrictModel):
    """Client security settings passed through to kafka-python."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = Field(
        default=None, description="Name of the environment variable holding the SASL password."
    )
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _sasl_needs_a_sasl_protocol(self) -> KafkaSecurity:
        sasl = self.sasl_mechanism or self.sasl_username or self.sasl_password_env
        if sasl and not self.protocol.startswith("SASL_"):
            raise ValueError(
                f"SASL settings are set but `protocol` is {self.protocol}, which would connect without them: "
                "use SASL_SSL (or SASL_PLAINTEXT on a trusted network)"
            )
        if self.protocol.startswith("SASL_") and not self.sasl_mechanism:
            raise ValueError(f"`protocol: {self.protocol}` needs `sasl_mechanism` (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
        return self


# kafka-python settings that `security` owns; `client_options` may not set them, so a pipeline
# file cannot turn TLS, SASL or certificate checks off (or swap credentials) behind `security`'s back.
SECURITY_CLIENT_KEYS = frozenset({
    "bootstrap_servers", "security_protocol", "ssl_context", "ssl_check_hostname", "ssl_cafile", "ssl_certfile",
    "ssl_keyfile", "ssl_password", "ssl_crlfile", "ssl_ciphers", "sasl_mechanism", "sasl_plain_username",
    "sasl_plain_password", "sasl_kerberos_name", "sasl_kerberos_service_name", "sasl_kerberos_domain_name",
    "sasl_oauth_token_provider",
})


class KafkaSource(StrictModel):
    """Documents from Kafka topics, read in a consumer group.

    `format: json`: each value is a JSON object (`id_field`, `text_field`; without an id
    the record key is the id, without a key an id is generated from the text).
    `format: text`: the value is the text and the key the id. `headers` maps document
    fields to Kafka header names. See `worker.sources.kafka` and `worker.runtime.stream`.
    """

    type: Literal["kafka"] = "kafka"
    bootstrap_servers: str = Field(min_length=1)
    topics: list[str] = Field(default_factory=list)
    topic_pattern: str | None = None
    group: str = Field(min_length=1)
    start: Literal["earliest", "latest"] = "earliest"
    format: Literal["json", "text"] = "json"
    id_field: str = "id"
    text_field: str = "text"
    headers: dict[str, str] = Field(
        default_factory=dict, description="Document field -> Kafka header name."
    )
    max_batch: int = Field(default=256, gt=0)
    max_wait_ms: int = Field(default=500, ge=0)
    max_chars: int = Field(default=1_000_000, gt=0)
    max_value_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Larger values become dead letters (too_large) unparsed."
    )
    dead_letter_topic: str | None = Field(default=None, description="Dead letters are published here (at least once).")
    results_topic: str | None = Field(default=None, description="Each document's results are published here (at least once).")
    security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    api_version: tuple[int, int, int] | None = Field(
        default=(2, 5, 0),
        description="Broker protocol version kafka-python assumes; (2, 5, 0) is needed for consumer groups "
        "on Tansu. null probes the broker.",
    )
    session_timeout_ms: int = Field(default=10_000, ge=1000, description="A dead worker's partitions move after this.")
    max_poll_interval_ms: int = Field(default=600_000, ge=10_000, description="Longest gap between polls (a batch).")
    client_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Extra kafka-python consumer/producer settings, passed through."
    )

    @field_validator("dead_letter_topic", "results_topic", "topic_pattern", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("client_options")
    @classmethod
    def _no_security_overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(k for k in value if k.lower() in SECURITY_CLIENT_KEYS or k.lower().startswith(("ssl_", "sasl_")))
        if owned:
            raise ValueError(f"client_options may not set {', '.join(owned)}: set TLS and SASL under `security` "
                             "(and the servers in `bootstrap_servers`)")
        return value

    @model_validator(mode="after")
    def _topics_or_pattern(self) -> KafkaSource:
        if not self.topics and not self.topic_pattern:
            raise ValueError("set `topics` (a list) or `topic_pattern`")
        if self.topics and self.topic_pattern:
            raise ValueError("set either `topics` or `topic_pattern`, not both")
        return self


SourceSpec = Annotated[FileSource | KafkaSource, Field(discriminator="type")]

# Source spec classes by `type:` (the readers are registered in worker.sources.SOURCES).
# `register_source_spec` adds one and rebuilds the pipeline schema's union of sources.
SOURCE_SPECS: dict[str, type[StrictModel]] = {"file": FileSource, "kafka": KafkaSource}


# --------------------------------------------------------------------------- conditions


class Condition(StrictModel):
    """A test on an earlier stage's result, written as data (never evaluated as code).

    Exactly one of the combinators (`all`, `any`, `not`) or a leaf (`stage` + `op`) is set.
    A leaf reads `field` (label, score, or a key of the stage's output) of `stage`'s
    result for the same document; a document the stage skipped or failed has no result,
    and only `op: missing` is true for it.
    """

    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(default=None, alias="not")
    stage: str | None = None
    field: str = "label"
    op: Literal[
        "eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists", "missing"
    ] = "eq"
    value: Any = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_kind(self) -> Condition:
        kinds = [k for k in ("all", "any", "not_") if getattr(self, k) is not None]
        if self.stage is not None:
            kinds.append("stage")
        if len(kinds) != 1:
            raise ValueError("a condition has exactly one of: all, any, not, stage")
        if self.stage is not None:
            if self.op in ("in", "not_in") and not isinstance(self.value, list):
                raise ValueError(f"op `{self.op}` needs a list `value`")
            if self.op in ("gt", "gte", "lt", "lte") and not isinstance(self.value, int | float):
                raise ValueError(f"op `{self.op}` needs a number `value`")
            if self.op in ("eq", "ne") and self.value is None:
                raise ValueError(f"op `{self.op}` needs a `value`")
        return self

    def stages(self) -> set[str]:
        """Names of every stage this condition reads."""
        found: set[str] = set()
        if self.stage is not None:
            found.add(self.stage)
        for child in (self.all or []) + (self.any or []):
            found |= child.stages()
        if self.not_ is not None:
            found |= self.not_.stages()
        return found


# --------------------------------------------------------------------------- stages


class Resources(StrictModel):
    """Where a stage's model runs. GPUs may be fractional so small models share one."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus: float = Field(default=0, ge=0)
    cpus: float = Field(default=1, gt=0)
    replicas: int = Field(default=1, ge=1)
    min_replicas: int | None = Field(default=None, ge=1)
    max_replicas: int | None = Field(default=None, ge=1)
    threads: int | None = Field(default=None, ge=1, description="torch threads per actor")
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources each actor needs, e.g. {gpu_node: 1} to pin a stage to nodes started with --resources",
    )


class FinetuneGate(StrictModel):
    """When a fine-tuned candidate replaces the champion (see `worker.lifecycle.gate`).

    Both are scored on the same data: the frozen `eval_data` set plus the held-out
    slice of the new feedback. The candidate is promoted only if `metric` improves by
    at least `margin` and no label's recall drops by more than `max_recall_drop`.
    """

    metric: str | None = Field(
        default=None, pattern=r"^(macro_f1|accuracy|f1|exact_match|bleu|chrf|f1:.+)$",
        description="macro_f1 | accuracy | f1:<label> (classify/spam), f1 | exact_match (qa), bleu | chrf (translate); "
        "default: f1 of the spam label for spam, macro_f1, f1 (qa), bleu.",
    )
    margin: float | None = Field(
        default=None, ge=0, description="Least improvement, in the metric's units (default 0.01 on 0..1 metrics, 1.0 on 0..100 ones)."
    )
    max_recall_drop: float = Field(default=0.05, ge=0, le=1, description="Largest allowed drop of any label's recall.")
    max_regression: float | None = Field(
        default=None, ge=0, description="Largest allowed fall of the metric on each of the champion's reference sets, in the "
        "metric's units (default 0.02 on 0..1 metrics, 2.0 on 0..100 ones); the recall rule applies on each set too.",
    )
    references: bool = Field(
        default=True, description="Guard every reference set of the champion; false (explicit opt-out) judges the target only.",
    )


class FinetuneSchedule(StrictModel):
    """When `textworker schedule` fine-tunes: at each `cron` tick, once `min_new_labels` arrived, or both."""

    cron: str | None = None
    min_new_labels: int | None = Field(default=None, ge=1)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"`{value}` is not a cron expression (e.g. `0 3 * * *`: every day at 03:00 UTC)")
        return value

    @model_validator(mode="after")
    def _something_to_wait_for(self) -> FinetuneSchedule:
        if self.cron is None and self.min_new_labels is None:
            raise ValueError("a schedule needs `cron`, `min_new_labels`, or both")
        return self


class FinetuneSpec(StrictModel):
    """A stage's fine-tuning from labelled feedback (`textworker finetune`, `textworker schedule`)."""

    eval_data: str | None = Field(default=None, description="Frozen evaluation set (same format as `train --data`).")
    base_data: str | None = Field(
        default=None, description="Training data replayed against forgetting (default: the champion's recorded training data, "
        "or its snapshot when the file is gone).",
    )
    base_mix: float = Field(
        default=2.0, ge=0, le=100,
        description="Replay rows per feedback training row (default 2, chosen by measurement: docs/lifecycle.md); 0 turns replay off.",
    )
    retry: bool = Field(default=True, description="When a candidate fails only the reference guard, train once more with twice the replay.")
    move_pointer: bool = Field(
        default=False, description="On promotion also move the family's on-disk `current` file (what pipelines without this "
        "database load); by default only the registry changes.",
    )
    epochs: float = Field(default=2.0, gt=0, le=100)
    lr: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    max_length: int | None = Field(default=None, ge=8, le=8192, description="Training sequence length (default: the trainer's).")
    max_minutes: float | None = Field(default=None, gt=0)
    seed: int = 0
    holdout: float = Field(default=0.2, gt=0, lt=1, description="Share of feedback held out for the gate (by row hash).")
    min_rows: int = Field(default=10, ge=1, description="Fewest feedback training rows worth a fine-tune.")
    gate: FinetuneGate = Field(default_factory=FinetuneGate)
    schedule: FinetuneSchedule | None = None


class TrainSpec(StrictModel):
    """A stage's training recipe: what `textworker train PIPELINE --stage NAME` does with no other flags.

    Paths may use `${VAR:-default}` (e.g. `${TEXTWORKER_SHARED_DATA:-../shared/data}/sst2/train.tsv`).
    Command-line flags override each field."""

    data: str | list[str] = Field(min_length=1, description="Training data (TSV text/label, SQuAD JSONL or {src,tgt} JSONL); a list of files is read as one set.")
    eval_data: str | None = Field(default=None, description="Held-out data the new version is scored on (also `eval`'s default).")
    base: str | None = Field(default=None, description="Base model (default: the stage's model); `scratch` where the type can.")
    out: str | None = Field(default=None, description="Version directory (default: a new version beside the stage's model).")
    epochs: float | None = Field(default=None, gt=0, le=1000)
    lr: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    max_length: int | None = Field(default=None, ge=8, le=8192)
    max_minutes: float | None = Field(default=None, gt=0, description="Wall-clock budget; the schedule decays by wall time.")
    size: Literal["tiny", "small", "medium", "base"] | None = Field(default=None, description="Model size when training from scratch.")
    dropout: float | None = Field(
        default=None, ge=0, le=1, description="Residual and attention dropout while training (translate; default: the model's own, 0.1 from scratch).",
    )
    dropout_from_epoch: float | None = Field(
        default=None, ge=0, le=1000, description="Late dropout (translate): none for this many epochs, then `dropout`'s rate.",
    )
    curriculum_epochs: float | None = Field(
        default=None, ge=0, le=1000,
        description="Length curriculum (translate): this many epochs' worth of steps draw the shortest examples first.",
    )
    seed: int | None = None
    limit: int | None = Field(default=None, ge=1, description="Use only the first N training rows.")


class ReviewSpec(StrictModel):
    """Active learning: a stage's least confident predictions go to people (`textworker review`).

    A prediction is routed when its confidence (the probability of the predicted label)
    is below `below`, or the gap between the two most likely labels is below `margin`;
    with `labels`, only predictions of those labels. The budget caps the queue: never
    more than `max_open` open items for the stage, never more than `per_day` new items a
    UTC day; when a batch brings more candidates than the budget has room for, the least
    confident win.
    """

    below: float | None = Field(default=0.6, gt=0, le=1, description="Route predictions less confident than this.")
    margin: float | None = Field(default=None, gt=0, le=1, description="Route when top-1 minus top-2 probability is smaller.")
    max_open: int | None = Field(default=100, ge=1, description="Most open items the stage may have.")
    per_day: int | None = Field(default=None, ge=1, description="Most items queued per UTC day.")
    labels: list[str] | None = Field(default=None, description="Only route predictions of these labels.")

    @model_validator(mode="after")
    def _has_rule_and_budget(self) -> ReviewSpec:
        if self.below is None and self.margin is None:
            raise ValueError("a review block needs `below`, `margin`, or both")
        if self.max_open is None and self.per_day is None:
            raise ValueError("a review block needs a budget: `max_open`, `per_day`, or both")
        return self


class StageBase(StrictModel):
    name: str = Field(pattern=STAGE_NAME_PATTERN)
    model: str = Field(min_length=1, description="Local model directory or hub id.")
    revision: str | None = None
    when: Condition | None = None
    batch_size: int = Field(default=32, gt=0)
    max_tokens: int = Field(default=8192, gt=0, description="Token budget per batch.")
    max_length: int = Field(default=256, ge=8, le=8192)
    retries: int = Field(default=1, ge=0, le=10)
    precision: Literal["auto", "fp32", "int8", "bf16", "fp16"] = Field(
        default="auto",
        description="auto: int8 on CPU when the model version's int8 build passed its quality check, bf16 on CUDA, else fp32. "
        "int8 (ONNX Runtime, CPU) covers classify, spam and qa models; fp16 needs CUDA.",
    )
    resources: Resources = Field(default_factory=Resources)
    swap_check_seconds: float | None = Field(
        default=5.0, ge=0,
        description="When `model` is a model family: how often (at batch boundaries) to look for a newly promoted "
        "champion and switch to it; null turns hot swap off.",
    )
    finetune: FinetuneSpec | None = Field(default=None, description="Fine-tuning from labelled feedback.")
    train: TrainSpec | None = Field(default=None, description="The training recipe `textworker train` runs.")
    gate_metrics: ClassVar[tuple[str, ...]] = ()  # the metrics `finetune.gate.metric` may name (empty: any)

    def label_names(self) -> list[str]:
        """The labels the stage is configured with (empty: unknown, or a type without labels)."""
        return list(getattr(self, "labels", None) or [])

    @model_validator(mode="after")
    def _finetune_metric_fits(self) -> StageBase:
        metric = self.finetune.gate.metric if self.finetune is not None else None
        kind = getattr(self, "type", "")
        allowed = self.gate_metrics
        if metric is not None and allowed and metric not in allowed and not (metric.startswith("f1:") and "f1:<label>" in allowed):
            raise ValueError(f"`finetune.gate.metric: {metric}` does not fit a {kind} stage (use one of: {', '.join(allowed)})")
        labels = self.label_names()
        if metric is not None and metric.startswith("f1:") and labels and metric[3:] not in labels:
            raise ValueError(f"`finetune.gate.metric: {metric}` names a label the stage does not have (labels: {', '.join(labels)})")
        return self


class ClassifyStage(StageBase):
    """Sequence classification: one label and the scores of every label."""

    gate_metrics: ClassVar[tuple[str, ...]] = ("macro_f1", "accuracy", "f1:<label>")

    type: Literal["classify"] = "classify"
    labels: list[str] | None = Field(
        default=None, description="Expected labels; must match the model's id2label when set."
    )
    multi_label: bool = False
    threshold: float = Field(default=0.5, ge=0, le=1, description="multi_label cut-off")
    review: ReviewSpec | None = Field(default=None, description="Route low-confidence predictions to people.")

    @model_validator(mode="after")
    def _review_fits(self) -> ClassifyStage:
        if self.review is not None and self.multi_label:
            raise ValueError("`review` works on single-label stages; a multi_label stage has no single confidence")
        if self.review is not None and self.review.labels and self.labels and set(self.review.labels) - set(self.labels):
            raise ValueError(f"`review.labels` names labels the stage does not have (labels: {', '.join(self.labels)})")
        return self


class SpamStage(StageBase):
    """Binary spam detection: label `spam` when P(spam) >= threshold."""

    gate_metrics: ClassVar[tuple[str, ...]] = ("macro_f1", "accuracy", "f1:<label>")

    type: Literal["spam"] = "spam"
    spam_label: str = "spam"
    ham_label: str = "ham"
    threshold: float = Field(default=0.5, ge=0, le=1)
    review: ReviewSpec | None = Field(default=None, description="Route low-confidence predictions to people.")

    def label_names(self) -> list[str]:
        return [self.ham_label, self.spam_label]

    @model_validator(mode="after")
    def _review_labels_fit(self) -> SpamStage:
        if self.review is not None and self.review.labels and set(self.review.labels) - {self.spam_label, self.ham_label}:
            raise ValueError(f"`review.labels` may name only `{self.ham_label}` and `{self.spam_label}`")
        return self


class QaStage(StageBase):
    """Extractive question answering over long contexts in overlapping windows."""

    gate_metrics: ClassVar[tuple[str, ...]] = ("f1", "exact_match")

    type: Literal["qa"] = "qa"
    questions: list[str] = Field(default_factory=list)
    question_field: str | None = None
    max_length: int = Field(default=384, ge=32, le=8192)
    stride: int = Field(default=128, ge=0)
    max_answer_length: int = Field(default=30, gt=0)
    max_windows: int = Field(default=64, gt=0)
    no_answer_threshold: float | None = None

    @model_validator(mode="after")
    def _has_questions(self) -> QaStage:
        if not self.questions and not self.question_field:
            raise ValueError("a qa stage needs `questions` or `question_field`")
        if self.stride >= self.max_length // 2:
            raise ValueError("`stride` must be smaller than half of `max_length`")
        return self


class TranslateStage(StageBase):
    """Seq2seq translation with bounded output length."""

    gate_metrics: ClassVar[tuple[str, ...]] = ("bleu", "chrf")

    type: Literal["translate"] = "translate"
    source_lang: str = "en"
    target_lang: str = "de"
    prefix: str = Field(default="", description="Text put before each input, e.g. for T5.")
    max_length: int = Field(default=256, ge=8, le=8192)
    max_new_tokens: int = Field(default=128, gt=0, le=4096)
    num_beams: int = Field(default=1, ge=1, le=16)
    max_chars: int = Field(
        default=2000, gt=0, description="Longer inputs are translated sentence by sentence."
    )
    source_scripts: list[str] = Field(
        default_factory=lambda: ["LATIN"],
        description="Unicode scripts the model reads; other text is a dead letter.",
    )


StageSpec = Annotated[
    ClassifyStage | SpamStage | QaStage | TranslateStage, Field(discriminator="type")
]

# Stage spec classes by `type:`. A stage plug-in (worker.stages) brings its own spec
# class and adds it with `register_stage_spec`; the pipeline schema's union of stage
# specs is rebuilt from this table.
STAGE_SPECS: dict[str, type[StageBase]] = {
    "classify": ClassifyStage, "spam": SpamStage, "qa": QaStage, "translate": TranslateStage,
}


# --------------------------------------------------------------------------- sink


class SqlSink(StrictModel):
    """The SQL store of record (SQLite, PostgreSQL, MySQL/MariaDB through SQLAlchemy)."""

    type: Literal["sql"] = "sql"
    url: str = "sqlite:///textworker.db"
    store_text: bool = True


# Sink spec classes by `type:` (the writers are registered in worker.sinks.SINKS). A `sink:`
# block without a `type` is `sql`. `register_sink_spec` adds one and rebuilds the union.
SINK_SPECS: dict[str, type[StrictModel]] = {"sql": SqlSink}


class FeedbackTopic(StrictModel):
    """A Kafka topic of labelled feedback (JSON objects, one row each, with a `stage` field)
    that `textworker schedule` drains into the `feedback` table before it fine-tunes."""

    topic: str = Field(min_length=1)
    bootstrap_servers: str | None = Field(default=None, description="Default: the kafka source's.")
    group: str | None = Field(default=None, description="Consumer group (default: `<pipeline>-feedback`).")
    start: Literal["earliest", "latest"] = "earliest"
    idle_ms: int = Field(default=1500, ge=100, description="A drain ends after this long without new records.")
    api_version: tuple[int, int, int] | None = (2, 5, 0)


class CacheSpec(StrictModel):
    """The engine's duplicate-text cache (`worker.engine.dedupe`)."""

    max_entries: int = Field(default=4096, ge=0, description="Texts remembered per stage (LRU); 0 turns the cache off.")


class PipelineSpec(StrictModel):
    """A whole pipeline file."""

    version: Literal[1] = 1
    name: str = Field(pattern=STAGE_NAME_PATTERN)
    description: str = ""
    source: SourceSpec
    stages: list[StageSpec] = Field(min_length=1)
    sink: SqlSink = Field(default_factory=SqlSink)
    feedback: FeedbackTopic | None = Field(default=None, description="Kafka topic of labelled feedback.")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Identical texts computed once per stage and model version.")
    max_latency_ms: int | None = Field(
        default=None, ge=10, le=600_000,
        description="Latency budget of a stream (kafka source): the broker is asked to answer a fetch within a quarter of it, "
        "and while the backlog is small a poll takes only as many records as half of it can process; a large backlog "
        "gets full `max_batch` polls (throughput). None: polls of up to `max_batch`, fetches wait up to 500 ms.",
    )

    @field_validator("sink", mode="before")
    @classmethod
    def _sink_type_defaults_to_sql(cls, value: Any) -> Any:
        if isinstance(value, dict) and "type" not in value:
            return {"type": "sql", **value}
        return value

    @model_validator(mode="after")
    def _stage_references(self) -> PipelineSpec:
        seen: set[str] = set()
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"duplicate stage name `{stage.name}`")
            if stage.when is not None:
                unknown = stage.when.stages() - seen
                if unknown:
                    raise ValueError(
                        f"stage `{stage.name}`: `when` reads {sorted(unknown)}, "
                        "which is not an earlier stage"
                    )
            seen.add(stage.name)
        return self

    @model_validator(mode="after")
    def _feedback_servers(self) -> PipelineSpec:
        if self.feedback is not None and not self.feedback.bootstrap_servers and not isinstance(self.source, KafkaSource):
            raise ValueError("`feedback.bootstrap_servers` is needed when the source is not kafka")
        return self

    def stage(self, name: str) -> Any:
        for stage in self.stages:
            if stage.name == name:
                return stage
        names = ", ".join(s.name for s in self.stages)
        raise KeyError(f"no stage `{name}` in pipeline `{self.name}` (stages: {names})")


def stage_union() -> Any:
    """The discriminated union of every registered stage spec (what a `stages:` entry validates against)."""
    from typing import Union

    return Annotated[Union[tuple(STAGE_SPECS.values())], Field(discriminator="type")]  # noqa: UP007 - built at run time


def _union(specs: dict[str, Any]) -> Any:
    from typing import Union

    return Annotated[Union[tuple(specs.values())], Field(discriminator="type")]  # noqa: UP007 - built at run time


def _register_union_member(field: str, registry: dict[str, Any], spec_class: type[StrictModel]) -> type[StrictModel]:
    """Add `spec_class` to `registry` under its `type` literal and rebuild the pipeline schema's `field` union."""
    from pydantic.fields import FieldInfo

    kind = spec_class.model_fields["type"].default
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{spec_class.__name__} needs a `type: Literal[...]` field with a default")
    registry[kind] = spec_class
    PipelineSpec.model_fields[field] = FieldInfo.merge_field_infos(  # type: ignore[misc]
        PipelineSpec.model_fields[field], FieldInfo.from_annotation(_union(registry)))
    PipelineSpec.model_rebuild(force=True)
    return spec_class


def register_source_spec(spec_class: type[StrictModel]) -> type[StrictModel]:
    """Add a source type's spec class (its `type` literal is the key) and rebuild the pipeline schema."""
    return _register_union_member("source", SOURCE_SPECS, spec_class)


def register_sink_spec(spec_class: type[StrictModel]) -> type[StrictModel]:
    """Add a sink type's spec class (its `type` literal is the key) and rebuild the pipeline schema."""
    return _register_union_member("sink", SINK_SPECS, spec_class)


def register_stage_spec(spec_class: type[StageBase]) -> type[StageBase]:
    """Add a stage type's spec class (its `type` field's literal is the key) and rebuild the pipeline schema."""
    from pydantic.fields import FieldInfo

    kind = spec_class.model_fields["type"].default
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{spec_class.__name__} needs a `type: Literal[...]` field with a default")
    if STAGE_SPECS.get(kind) is spec_class:
        return spec_class
    STAGE_SPECS[kind] = spec_class
    stages = PipelineSpec.model_fields["stages"]
    PipelineSpec.model_fields["stages"] = FieldInfo.merge_field_infos(stages, FieldInfo.from_annotation(list[stage_union()]))  # type: ignore[misc,arg-type]
    PipelineSpec.model_rebuild(force=True)
    return spec_class
