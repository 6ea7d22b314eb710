"""unit_leases: coding units claimed by a worker, so that two never send the same unit

One row per (unit, proposal key) while a worker holds it: the holder
(``host:pid:nonce``) and when the lease runs out. A worker claims a batch of units
before it builds their requests, renews its leases while it works, and deletes each
lease once the unit's answer is stored; an expired lease, or one held by a process on
the same host that no longer exists, is taken over.

Joins the heads before it (the areas' revisions after ``review_track``, with
``review_spans`` after ``spans``) into one head; ``db.migrate`` upgrades to every
head, so revisions added beside it keep working.

Revision ID: unit_leases
Revises: exchange_imports, review_sessions, review_spans, workspace_meta
"""

import sqlalchemy as sa
from alembic import op

revision = "unit_leases"
down_revision = ("exchange_imports", "review_sessions", "review_spans", "workspace_meta")
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unit_leases",
        sa.Column("passage_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("passage_id", "key"),
    )
    op.create_index("ix_unit_leases_holder", "unit_leases", ["holder"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_unit_leases_holder", table_name="unit_leases")
    op.drop_table("unit_leases")
