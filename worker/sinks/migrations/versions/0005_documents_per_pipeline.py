"""`documents` keyed by (pipeline, doc_id) instead of doc_id alone; every existing row is kept.

Before this revision two pipelines that read the same document id shared one row, the
last writer's. Each existing row is given the pipeline that has results for it (the
lowest name when several do), else the pipeline of a dead letter naming it, else the
only pipeline of the `runs` table, else '' (unknown). Every other pipeline with results
for the same id gets its own copy of the row, so each pipeline keeps seeing its text.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COPY_COLUMNS = "doc_id, text, chars, sha256, meta, source_ref, created_at, updated_at"


def _doc_id_unique_name(bind: sa.engine.Connection) -> str | None:
    for constraint in sa.inspect(bind).get_unique_constraints("documents"):
        if constraint["column_names"] == ["doc_id"]:
            return constraint["name"]
    return None


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("documents", sa.Column("pipeline", sa.String(64), nullable=True))
    op.execute("UPDATE documents SET pipeline = (SELECT min(r.pipeline) FROM results r WHERE r.doc_id = documents.doc_id)")
    op.execute("UPDATE documents SET pipeline = (SELECT min(d.pipeline) FROM dead_letters d WHERE d.ref = documents.doc_id) "
               "WHERE pipeline IS NULL")
    only = bind.execute(sa.text("SELECT min(pipeline), count(DISTINCT pipeline) FROM runs")).one()
    fallback = only[0] if only[1] == 1 else ""
    bind.execute(sa.text("UPDATE documents SET pipeline = :p WHERE pipeline IS NULL"), {"p": fallback})
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table("documents", recreate="always",
                                  naming_convention={"uq": "uq_%(table_name)s_%(column_0_name)s"}) as batch:
            batch.drop_constraint("uq_documents_doc_id", type_="unique")
            batch.alter_column("pipeline", existing_type=sa.String(64), nullable=False)
            batch.create_unique_constraint("uq_documents_pipeline_doc", ["pipeline", "doc_id"])
    else:
        name = _doc_id_unique_name(bind)
        if name is not None:
            if bind.dialect.name in ("mysql", "mariadb"):
                op.drop_index(name, table_name="documents")
            else:
                op.drop_constraint(name, "documents", type_="unique")
        op.alter_column("documents", "pipeline", existing_type=sa.String(64), nullable=False)
        op.create_unique_constraint("uq_documents_pipeline_doc", "documents", ["pipeline", "doc_id"])
    columns = ", ".join("d." + c.strip() for c in COPY_COLUMNS.split(","))
    op.execute(
        f"INSERT INTO documents (pipeline, {COPY_COLUMNS}) SELECT p.pipeline, {columns} "
        "FROM documents d JOIN (SELECT DISTINCT pipeline, doc_id FROM results) p "
        "ON p.doc_id = d.doc_id AND p.pipeline <> d.pipeline"
    )


def downgrade() -> None:
    """Back to one row per doc_id: the newest row of each id is kept."""
    op.execute("DELETE FROM documents WHERE id NOT IN (SELECT keep FROM (SELECT max(id) AS keep FROM documents GROUP BY doc_id) k)")
    with op.batch_alter_table("documents") as batch:
        batch.drop_constraint("uq_documents_pipeline_doc", type_="unique")
        batch.create_unique_constraint("uq_documents_doc_id", ["doc_id"])
        batch.drop_column("pipeline")
