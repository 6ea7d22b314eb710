"""exchange: what an imported project holds beyond codes and codings (exchange_imports)

One row per import target (the gold set it filled, or ``codebook:<version>``): the
REFI-QDA or Taguette project's GUIDs of codes, folders, sources, users and selections,
code colours, folder descriptions, memos, sets, dates and creating users, as JSON. An
export reads it back so that a project goes back into the tool it came from with its
GUIDs (merged, not duplicated) and what qualflow does not model itself.

Revision ID: exchange_imports
Revises: review_track
"""

import sqlalchemy as sa
from alembic import op

revision = "exchange_imports"
down_revision = "review_track"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exchange_imports",
        sa.Column("target", sa.String(200), primary_key=True),
        sa.Column("format", sa.String(40), nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("exchange_imports")
