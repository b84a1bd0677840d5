"""Model lifecycle: feedback, model_registry, model_events, review_queue.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("doc_id", sa.String(512), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("question", sa.Text(), nullable=True),
        sa.Column("label", sa.String(256), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("who", sa.String(256), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_feedback_pipeline_stage_created", "feedback", ["pipeline", "stage", "created_at"])
    op.create_table(
        "model_registry",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("pipeline", sa.String(64), nullable=True),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("base_model", sa.String(1024), nullable=True),
        sa.Column("parent_version", sa.String(128), nullable=True),
        sa.Column("artifact_path", sa.String(1024), nullable=False),
        sa.Column("data_fingerprint", sa.String(64), nullable=True),
        sa.Column("train_config", JSONType, nullable=False),
        sa.Column("metrics", JSONType, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_model_registry_name_version"),
    )
    op.create_index("ix_model_registry_name_status", "model_registry", ["name", "status"])
    op.create_table(
        "model_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", JSONType, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_model_events_name_created", "model_events", ["name", "created_at"])
    op.create_table(
        "review_queue",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("doc_id", sa.String(512), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("predicted", sa.String(256), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("label", sa.String(256), nullable=True),
        sa.Column("who", sa.String(256), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("labelled_at", Timestamp, nullable=True),
        sa.UniqueConstraint("pipeline", "stage", "doc_id", name="uq_review_queue_pipeline_stage_doc"),
    )
    op.create_index("ix_review_queue_status", "review_queue", ["pipeline", "stage", "status"])


def downgrade() -> None:
    for table in ("review_queue", "model_events", "model_registry", "feedback"):
        op.drop_table(table)
