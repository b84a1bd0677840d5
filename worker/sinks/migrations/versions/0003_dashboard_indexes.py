"""Indexes the dashboard's aggregate queries need (they stay fast with millions of results).

- results (pipeline, stage, updated_at, label): throughput and spam rate per time bucket,
  as index-only range scans;
- results (pipeline, stage, id): newest-first samples per stage, paged by id;
- dead_letters (pipeline, reason, id) replaces (pipeline, reason): counts by reason and
  newest-first pages per reason; dead_letters (pipeline, requeued_at): the requeue path;
- runs (pipeline, started_at): run history and per-run latency.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_results_pipeline_stage_updated", "results", ["pipeline", "stage", "updated_at", "label"])
    op.create_index("ix_results_pipeline_stage_id", "results", ["pipeline", "stage", "id"])
    op.drop_index("ix_dead_letters_pipeline_reason", table_name="dead_letters")
    op.create_index("ix_dead_letters_pipeline_reason_id", "dead_letters", ["pipeline", "reason", "id"])
    op.create_index("ix_dead_letters_pipeline_requeued", "dead_letters", ["pipeline", "requeued_at"])
    op.create_index("ix_runs_pipeline_started", "runs", ["pipeline", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_pipeline_started", table_name="runs")
    op.drop_index("ix_dead_letters_pipeline_requeued", table_name="dead_letters")
    op.drop_index("ix_dead_letters_pipeline_reason_id", table_name="dead_letters")
    op.create_index("ix_dead_letters_pipeline_reason", "dead_letters", ["pipeline", "reason"])
    op.drop_index("ix_results_pipeline_stage_id", table_name="results")
    op.drop_index("ix_results_pipeline_stage_updated", table_name="results")
