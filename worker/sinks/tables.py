"""The SQL schema as SQLAlchemy Core tables (the Alembic migrations create the same).

`documents` holds one row per (pipeline, document); `results` one row per (pipeline,
document, stage); `dead_letters` one row per (pipeline, input reference, stage). These
keys make re-running the same input a no-op for row counts. `stream_offsets` holds the
next offset to read per consumer group and partition, written in the same transaction
as the results it covers.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)

# `documents`: one row per (pipeline, document), so two pipelines that read the same id
# keep their own text and fields (migration 0005; before it, doc_id alone was the key).
documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("doc_id", sa.String(512), nullable=False),
    sa.Column("text", sa.Text(), nullable=True),
    sa.Column("chars", sa.Integer(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("meta", JSONType, nullable=False),
    sa.Column("source_ref", sa.String(1024), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint("pipeline", "doc_id", name="uq_documents_pipeline_doc"),
)

results = sa.Table(
    "results",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("doc_id", sa.String(512), nullable=False),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("label", sa.String(256), nullable=True),
    sa.Column("score", sa.Float(), nullable=True),
    sa.Column("output", JSONType, nullable=False),
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint("pipeline", "doc_id", "stage", name="uq_results_pipeline_doc_stage"),
    sa.Index("ix_results_pipeline_stage_created", "pipeline", "stage", "created_at"),
    sa.Index("ix_results_pipeline_stage_label", "pipeline", "stage", "label"),
    sa.Index("ix_results_pipeline_stage_updated", "pipeline", "stage", "updated_at", "label"),  # 0003: dashboard time buckets
    sa.Index("ix_results_pipeline_stage_id", "pipeline", "stage", "id"),  # 0003: dashboard samples, newest first
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("ref", sa.String(1024), nullable=False),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("requeued_at", Timestamp, nullable=True),
    sa.UniqueConstraint("pipeline", "ref", "stage", name="uq_dead_letters_pipeline_ref_stage"),
    sa.Index("ix_dead_letters_pipeline_reason_id", "pipeline", "reason", "id"),  # 0003 (was pipeline, reason)
    sa.Index("ix_dead_letters_pipeline_requeued", "pipeline", "requeued_at"),  # 0003: the requeue path
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp, nullable=True),
    sa.Column("stats", JSONType, nullable=False),
    sa.Index("ix_runs_pipeline_started", "pipeline", "started_at"),  # 0003
)

stream_offsets = sa.Table(
    "stream_offsets",
    metadata,
    sa.Column("consumer_group", sa.String(256), primary_key=True),
    sa.Column("topic", sa.String(256), primary_key=True),
    sa.Column("partition", sa.Integer(), primary_key=True),
    sa.Column("next_offset", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)

# --- model lifecycle (feedback, registry, review queue) ---------------------------------
# `feedback` holds one row per label a person (or a system) gave: a class label for
# classify/spam stages, an answer for QA, a reference translation for translate. `text`
# (and `question` for QA) is copied in so a row can train a model even when the document
# never went through the pipeline. `fingerprint` (sha256 of the row's content) makes
# re-importing the same file a no-op.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("doc_id", sa.String(512), nullable=True),
    sa.Column("text", sa.Text(), nullable=False),
    sa.Column("question", sa.Text(), nullable=True),
    sa.Column("label", sa.String(256), nullable=True),
    sa.Column("answer", sa.Text(), nullable=True),
    sa.Column("reference", sa.Text(), nullable=True),
    sa.Column("source", sa.String(32), nullable=False),  # import | api | kafka | review
    sa.Column("who", sa.String(256), nullable=True),
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_feedback_pipeline_stage_created", "pipeline", "stage", "created_at"),
)

# `model_registry`: one row per model version. `name` is the model family (a stage's
# model directory name), `status` candidate | champion | retired; at most one champion
# per name. `reason` says why the last status change happened.
model_registry = sa.Table(
    "model_registry",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.String(128), nullable=False),
    sa.Column("pipeline", sa.String(64), nullable=True),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("task", sa.String(16), nullable=False),  # classify | spam | qa | translate
    sa.Column("base_model", sa.String(1024), nullable=True),
    sa.Column("parent_version", sa.String(128), nullable=True),
    sa.Column("artifact_path", sa.String(1024), nullable=False),
    sa.Column("data_fingerprint", sa.String(64), nullable=True),
    sa.Column("train_config", JSONType, nullable=False),  # seeds, epochs, rows, split sizes
    sa.Column("metrics", JSONType, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.UniqueConstraint("name", "version", name="uq_model_registry_name_version"),
    sa.Index("ix_model_registry_name_status", "name", "status"),
)

# `model_events`: the promotion history — every register, promote, reject, rollback and
# retire, with its reason and the metrics it was decided on.
model_events = sa.Table(
    "model_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.String(128), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # register | promote | reject | rollback | retire
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("details", JSONType, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_model_events_name_created", "name", "created_at"),
)

# `model_reference_sets`: the reference sets recorded with each model version (see
# worker/lifecycle/references.py): fingerprint, role, origin and the rows themselves, so a
# set outlives its version directory.
model_reference_sets = sa.Table(
    "model_reference_sets",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.String(128), nullable=False),
    sa.Column("set_name", sa.String(256), nullable=False),
    sa.Column("task", sa.String(16), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # eval | heldout | train
    sa.Column("origin_version", sa.String(128), nullable=False),
    sa.Column("n_rows", sa.Integer(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("manifest", JSONType, nullable=False),
    sa.Column("rows", JSONType, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("name", "version", "set_name", name="uq_model_reference_sets_version_set"),
)

# `review_queue`: low-confidence predictions routed to people, within a budget.
review_queue = sa.Table(
    "review_queue",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("doc_id", sa.String(512), nullable=False),
    sa.Column("text", sa.Text(), nullable=False),
    sa.Column("predicted", sa.String(256), nullable=True),
    sa.Column("score", sa.Float(), nullable=True),
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open | labelled | skipped
    sa.Column("label", sa.String(256), nullable=True),
    sa.Column("who", sa.String(256), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("labelled_at", Timestamp, nullable=True),
    sa.UniqueConstraint("pipeline", "stage", "doc_id", name="uq_review_queue_pipeline_stage_doc"),
    sa.Index("ix_review_queue_status", "pipeline", "stage", "status"),
)
