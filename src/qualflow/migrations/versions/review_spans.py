"""review_spans: reviewers code spans; the review queue as a table

The review app moves from codes on a passage to spans in a unit (docs/review.md):

- ``decisions`` gains ``span_start``/``span_end`` (the span a decision acted on),
  ``new_start``/``new_end`` (an ``adjust``'s new boundaries), ``spans`` (the track's
  spans after the decision) and ``carry`` (a review brought over from an earlier
  transcript version); ``before``/``after`` keep the codes;
- ``review_states`` gains ``spans``, ``memo``, ``no_code`` and ``proposal_status``
  (what happened to each machine proposal), the cache of the derived state;
- ``proposal_sets`` gains ``carried_from`` (a set copied to an unchanged unit of a new
  transcript version);
- ``review_units`` / ``review_unit_codes``: the queue, one row per reviewable unit,
  filled by ``review.queue.sync`` on first use (a cache).

Carried over, with nothing lost: every existing decision keeps its row and columns; a
code on a passage becomes a span over the passage. Replaying each track's log in order
gives each span its origin: ``accepted`` (an accepted proposal, with its id),
``adjusted`` (a proposal replaced by another code) or ``added`` (by the reviewer); an
undo restores the spans in effect before the decision it cancels. The review states are
recomputed from the same replay (codes, done and flagged as before, plus spans, memo,
"no code applies" and the proposals' fate).

Revision ID: review_spans
Revises: spans
"""

import json
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "review_spans"
down_revision = "spans"
branch_labels = None
depends_on = None

_STATUS = {"accept": "accepted", "reject": "rejected", "replace": "replaced"}
_ORIGIN = {"accept": "accepted", "replace": "adjusted", "add": "added"}


def upgrade() -> None:
    for name in ("span_start", "span_end", "new_start", "new_end"):
        op.add_column("decisions", sa.Column(name, sa.Integer(), nullable=True))
    op.add_column("decisions", sa.Column("spans", sa.JSON(), nullable=True))
    op.add_column("decisions", sa.Column("carry", sa.JSON(), nullable=True))
    op.add_column("review_states", sa.Column("spans", sa.JSON(), nullable=True))
    op.add_column("review_states", sa.Column("memo", sa.Text(), nullable=True))
    op.add_column(
        "review_states",
        sa.Column("no_code", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("review_states", sa.Column("proposal_status", sa.JSON(), nullable=True))
    op.create_index("ix_review_states_user_done", "review_states", ["user_id", "done"])
    op.add_column("proposal_sets", sa.Column("carried_from", sa.String(length=64), nullable=True))
    _create_queue_tables()
    _carry_decisions_over()


def _create_queue_tables() -> None:
    op.create_table(
        "review_units",
        sa.Column("passage_id", sa.String(length=64), nullable=False),
        sa.Column("transcript_id", sa.String(length=300), nullable=False),
        sa.Column("transcript_name", sa.String(length=255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("current", sa.Boolean(), nullable=False),
        sa.Column("needs_human", sa.Boolean(), nullable=False),
        sa.Column("min_confidence", sa.Float(), nullable=True),
        sa.Column("rank", sa.Float(), nullable=False),
        sa.Column("shuffle", sa.BigInteger(), nullable=False),
        sa.Column("proposals", sa.Integer(), nullable=False),
        sa.Column("codes", sa.JSON(), nullable=False),
        sa.Column("shared_owner", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["passage_id"], ["passages.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["transcript_id"], ["transcripts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["shared_owner"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("passage_id"),
    )
    op.create_index("ix_review_units_transcript_id", "review_units", ["transcript_id"])
    op.create_index(
        "ix_review_units_rank",
        "review_units",
        ["current", "rank", "transcript_name", "position", "passage_id"],
    )
    op.create_index(
        "ix_review_units_place",
        "review_units",
        ["current", "transcript_name", "position", "passage_id"],
    )
    op.create_table(
        "review_unit_codes",
        sa.Column("passage_id", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(["passage_id"], ["review_units.passage_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("passage_id", "code"),
    )
    op.create_index("ix_review_unit_codes_code", "review_unit_codes", ["code"])


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _carry_decisions_over() -> None:
    """Replay every track's log: spans per decision and the derived state per track."""
    bind = op.get_bind()
    places = {
        pid: (start, end)
        for pid, start, end in bind.execute(
            sa.text("SELECT id, char_start, char_end FROM passages")
        )
    }
    rows = bind.execute(
        sa.text(
            "SELECT id, passage_id, COALESCE(track_user_id, user_id), action, proposal_id, "
            "code, before, after, memo, undoes_id FROM decisions ORDER BY id"
        )
    ).all()
    tracks: dict[tuple[int, str], list] = defaultdict(list)
    for row in rows:
        tracks[(row[2], row[1])].append(row)
    update = sa.text(
        "UPDATE decisions SET spans = :spans, span_start = :start, span_end = :end WHERE id = :id"
    ).bindparams(sa.bindparam("spans", type_=sa.JSON))
    states = []
    for (owner, pid), log in tracks.items():
        start, end = places.get(pid, (None, None))
        if start is None:
            continue
        written, state = _replay(log, start, end)
        for decision_id, spans, acted in written:
            bind.execute(
                update,
                {
                    "spans": spans,
                    "start": start if acted else None,
                    "end": end if acted else None,
                    "id": decision_id,
                },
            )
        states.append((owner, pid, state))
    state_update = sa.text(
        "UPDATE review_states SET spans = :spans, memo = :memo, no_code = :no_code, "
        "proposal_status = :status WHERE passage_id = :pid AND user_id = :owner"
    ).bindparams(sa.bindparam("spans", type_=sa.JSON), sa.bindparam("status", type_=sa.JSON))
    for owner, pid, state in states:
        bind.execute(
            state_update,
            {
                "spans": state["spans"],
                "memo": state["memo"],
                "no_code": state["no_code"],
                "status": state["proposal_status"],
                "pid": pid,
                "owner": owner,
            },
        )


def _replay(log: list, start: int, end: int) -> tuple[list, dict]:
    """Spans after each decision of one track (codes on the passage -> spans over it)
    and the final derived state, following ``review.decisions.derive``."""
    effective: list[tuple[int, dict[str, dict]]] = []  # (decision id, code -> span)
    written = []
    for did, _pid, _owner, action, proposal_id, code, _before, after, _memo, undoes in log:
        after = _json(after) or []
        if action == "undo":
            effective = [e for e in effective if e[0] != undoes]
            spans = dict(effective[-1][1]) if effective else {}
            written.append((did, _ordered(spans), False))
            continue
        previous = effective[-1][1] if effective else {}
        spans = {}
        for c in after:
            if c in previous:
                spans[c] = previous[c]
            elif action in _ORIGIN and c == code:
                pid = proposal_id if action in ("accept", "replace") else None
                spans[c] = _span(c, start, end, _ORIGIN[action], pid)
            else:  # not expected from the old log; keep the code as the reviewer's
                spans[c] = _span(c, start, end, "added", None)
        effective.append((did, spans))
        acted = bool(code) and action in ("accept", "reject", "replace", "add", "remove")
        written.append((did, _ordered(spans), acted))
    return written, _state(log, effective)


def _span(code: str, start: int, end: int, origin: str, proposal_id) -> dict:
    return {"code": code, "start": start, "end": end, "origin": origin, "proposal_id": proposal_id}


def _ordered(spans: dict[str, dict]) -> list[dict]:
    return [spans[c] for c in sorted(spans)]


def _state(log: list, effective: list) -> dict:
    """memo, no_code and the proposals' fate from the decisions still in effect."""
    keep = {e[0] for e in effective}
    memo, no_code, status, spans = None, False, {}, {}
    for did, _pid, _owner, action, proposal_id, _code, _b, after, text, _u in log:
        if did not in keep:
            continue
        spans = next(s for i, s in effective if i == did)
        no_code = action == "no_code" or (no_code and not (_json(after) or []))
        if action in _STATUS and proposal_id is not None:
            status[str(proposal_id)] = _STATUS[action]
        if text is not None and action in ("memo", "done"):
            memo = text or None
    return {"spans": _ordered(spans), "memo": memo, "no_code": no_code, "proposal_status": status}


def downgrade() -> None:
    """Drop what this revision added (the decisions and states keep their codes)."""
    op.drop_index("ix_review_unit_codes_code", table_name="review_unit_codes")
    op.drop_table("review_unit_codes")
    for index in ("ix_review_units_place", "ix_review_units_rank", "ix_review_units_transcript_id"):
        op.drop_index(index, table_name="review_units")
    op.drop_table("review_units")
    op.drop_index("ix_review_states_user_done", table_name="review_states")
    drops = {
        "proposal_sets": ["carried_from"],
        "review_states": ["proposal_status", "no_code", "memo", "spans"],
        "decisions": ["carry", "spans", "new_end", "new_start", "span_end", "span_start"],
    }
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, columns in drops.items():
        for column in columns:
            if sqlite:  # in place (SQLite >= 3.35): copying these tables would cascade
                op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
            else:
                op.drop_column(table, column)
