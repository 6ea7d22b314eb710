"""workspace_meta: small key/value facts about the workspace (the active codebook, ...)

One row per key with a JSON value. Holds what is a property of the workspace rather
than of any one transcript, run or gold set: the active codebook version (set by
``qualflow codebook load`` and by imports, read by every command) and the origin of
gold coders whose data says they are constructed examples, not human coding.

Revision ID: workspace_meta
Revises: review_track
"""

import sqlalchemy as sa
from alembic import op

revision = "workspace_meta"
down_revision = "review_track"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workspace_meta",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("workspace_meta")
