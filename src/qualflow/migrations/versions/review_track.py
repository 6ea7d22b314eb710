"""review: coding track of each decision (decisions.track_user_id)

A decision row keeps ``user_id`` = the user who acted (the audit log) and gains
``track_user_id`` = the owner of the coding track it changed (``review_states.user_id``):
the actor's own blind track on a double-coded passage, else the passage's one shared
track. Existing rows are backfilled with their ``user_id`` (before this revision every
track was its actor's own).

SQLite: Alembic's batch mode would copy-and-move the ``decisions`` table, and dropping
the old table fails under ``PRAGMA foreign_keys=ON`` (``undoes_id`` references it). SQLite
accepts a ``REFERENCES`` clause on ``ADD COLUMN`` of a column that defaults to NULL, so
the column and its foreign key are added in place there; other databases use the usual
``ADD COLUMN`` + ``ADD CONSTRAINT``.

Revision ID: review_track
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "review_track"
down_revision = "0001"
branch_labels = None
depends_on = None

FK = "fk_decisions_track_user_id_users"
INDEX = "ix_decisions_track_user_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE decisions ADD COLUMN track_user_id INTEGER REFERENCES users (id)")
    else:
        op.add_column("decisions", sa.Column("track_user_id", sa.Integer(), nullable=True))
        op.create_foreign_key(FK, "decisions", "users", ["track_user_id"], ["id"])
    op.create_index(INDEX, "decisions", ["track_user_id"], unique=False)
    op.execute("UPDATE decisions SET track_user_id = user_id WHERE track_user_id IS NULL")


def downgrade() -> None:
    op.drop_index(INDEX, table_name="decisions")
    if op.get_bind().dialect.name == "sqlite":
        # A column in a foreign key cannot be dropped in place on SQLite, so this copies
        # the table; under PRAGMA foreign_keys=ON that fails once an undo row references
        # another decision (SQLite counts the copy's implicit DELETE as a violation), so
        # downgrade such a store on a connection with foreign keys off.
        with op.batch_alter_table("decisions", recreate="always") as batch:
            batch.drop_column("track_user_id")
    else:
        op.drop_constraint(FK, "decisions", type_="foreignkey")
        op.drop_column("decisions", "track_user_id")
