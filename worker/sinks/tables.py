"""The SQL schema as SQLAlchemy Core tables (the Alembic migrations create the same).

`results` holds one row per (pipeline, document, stage); `dead_letters` one row per
(pipeline, input reference, stage). Both keys make re-running the same input a no-op
for row counts. `stream_offsets` holds the next offset to read per consumer group and
partition, written in the same transaction as the results it covers.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("doc_id", sa.String(512), nullable=False, unique=True),
    sa.Column("text", sa.Text(), nullable=True),
    sa.Column("chars", sa.Integer(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("meta", JSONType, nullable=False),
    sa.Column("source_ref", sa.String(1024), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
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
    sa.Index("ix_dead_letters_pipeline_reason", "pipeline", "reason"),
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
