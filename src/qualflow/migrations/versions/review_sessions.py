"""review: server-side login sessions and the security audit log

``review_sessions`` holds one row per login (the SHA-256 of the cookie's random token,
the user, the CSRF token, expiry and revocation), so logout, deactivation, password and
role changes end sessions on the server: a copied cookie stops working at once.
``audit_events`` is the append-only security log (logins, failures, throttled logins,
logouts, session revocations, account changes) that login throttling also reads.

Both are new tables, so the upgrade is plain ``CREATE TABLE`` on SQLite and PostgreSQL.

Revision ID: review_sessions
Revises: review_track
"""

import sqlalchemy as sa
from alembic import op

revision = "review_sessions"
down_revision = "review_track"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_review_sessions_user_id", "review_sessions", ["user_id"])
    op.create_index("ix_review_sessions_expires_at", "review_sessions", ["expires_at"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(length=100), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("account_key", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_events_created_at", "audit_events", ["created_at"])
    op.create_index("ix_audit_events_event", "audit_events", ["event"])
    op.create_index("ix_audit_events_user_id", "audit_events", ["user_id"])
    op.create_index("ix_audit_events_account_time", "audit_events", ["account_key", "created_at"])
    op.create_index("ix_audit_events_address_time", "audit_events", ["address", "created_at"])


def downgrade() -> None:
    op.drop_table("audit_events")  # drops its indexes too
    op.drop_table("review_sessions")
