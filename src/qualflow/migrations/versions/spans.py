"""spans: chunks, span proposals and span gold

The unit of coding becomes a span (a code on offsets of the transcript text) found in
a chunk of consecutive turns (docs/spans.md). Carried over, with nothing lost:

- ``passages`` gains ``turn_end`` and ``pieces`` (a chunk's layout); existing passages
  keep NULL (a passage inside one turn);
- ``proposals`` gains ``span_start``/``span_end`` (the span, in the transcript text) and
  ``located``; a passage-level proposal becomes a span over its passage, and its
  evidence offsets, relative to the passage before, become transcript offsets;
- ``gold_codings`` (passage -> codes) becomes ``gold_spans`` (one span over the passage
  per code) plus ``gold_scopes`` (the passage: what the coder coded, so a passage coded
  with no code stays a judgement); ``gold_codings`` is dropped once copied.

Revision ID: spans
Revises: review_track
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "spans"
down_revision = "review_track"
branch_labels = None
depends_on = None

_OF_PASSAGE = "FROM passages WHERE passages.id = proposals.passage_id)"
_PASSAGE_START = f"(SELECT passages.char_start {_OF_PASSAGE}"
_PASSAGE_END = f"(SELECT passages.char_end {_OF_PASSAGE}"


def upgrade() -> None:
    with op.batch_alter_table("passages") as batch:
        batch.add_column(sa.Column("turn_end", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("pieces", sa.JSON(), nullable=True))
    with op.batch_alter_table("proposals") as batch:
        batch.add_column(sa.Column("span_start", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("span_end", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("located", sa.String(length=20), nullable=True))
    op.execute(
        f"UPDATE proposals SET span_start = {_PASSAGE_START}, span_end = {_PASSAGE_END}, "
        f"evidence_start = evidence_start + {_PASSAGE_START}, "
        f"evidence_end = evidence_end + {_PASSAGE_START}"
    )
    _create_gold_tables()
    _copy_gold_codings()
    op.drop_table("gold_codings")


def _create_gold_tables() -> None:
    for name in ("gold_spans", "gold_scopes"):
        columns = [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("gold_set", sa.String(length=200), nullable=False),
            sa.Column("coder", sa.String(length=200), nullable=False),
            sa.Column("transcript_id", sa.String(length=300), nullable=False),
            sa.Column("char_start", sa.Integer(), nullable=False),
            sa.Column("char_end", sa.Integer(), nullable=False),
        ]
        if name == "gold_spans":
            columns += [
                sa.Column("code", sa.String(length=500), nullable=False),
                sa.Column("codebook_version", sa.String(length=64), nullable=True),
                sa.Column("external_id", sa.String(length=200), nullable=True),
                sa.Column("memo", sa.Text(), nullable=True),
            ]
        else:
            columns.append(sa.Column("codebook_version", sa.String(length=64), nullable=True))
        op.create_table(
            name,
            *columns,
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(["transcript_id"], ["transcripts.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("id"),
        )
        singular = name[:-1]
        op.create_index(f"ix_{name}_gold_set", name, ["gold_set"])
        op.create_index(f"ix_{name}_transcript_id", name, ["transcript_id"])
        op.create_index(f"ix_{singular}_lookup", name, ["gold_set", "coder", "transcript_id"])


def _copy_gold_codings() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT g.gold_set, g.coder, g.codes, g.codebook_version, g.created_at, "
            "p.transcript_id, p.char_start, p.char_end "
            "FROM gold_codings g JOIN passages p ON p.id = g.passage_id ORDER BY g.id"
        )
    ).all()
    scopes, spans = [], []
    for gold_set, coder, codes, version, created, transcript, start, end in rows:
        place = {
            "gold_set": gold_set,
            "coder": coder,
            "transcript_id": transcript,
            "char_start": start,
            "char_end": end,
            "codebook_version": version,
            "created_at": created,
        }
        scopes.append(place)
        codes = json.loads(codes) if isinstance(codes, str) else codes
        spans += [{**place, "code": code} for code in codes or []]
    # Untyped table constructs: values go through as the database returned them (SQLite
    # hands back datetimes as text, which a typed DateTime column would refuse).
    if scopes:
        op.bulk_insert(_untyped("gold_scopes", scopes[0]), scopes)
    if spans:
        op.bulk_insert(_untyped("gold_spans", spans[0]), spans)


def _untyped(name: str, row: dict) -> sa.TableClause:
    return sa.table(name, *(sa.column(key) for key in row))


def downgrade() -> None:
    """Back to passage-level gold and proposals: scopes that are exactly a passage of the
    transcript become gold codings again (span gold that is not passage-shaped, e.g. an
    imported highlight, has no passage-level form and is dropped)."""
    op.create_table(
        "gold_codings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("gold_set", sa.String(length=200), nullable=False),
        sa.Column("coder", sa.String(length=200), nullable=False),
        sa.Column("passage_id", sa.String(length=64), nullable=False),
        sa.Column("codes", sa.JSON(), nullable=False),
        sa.Column("codebook_version", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["passage_id"], ["passages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("gold_set", "coder", "passage_id", name="uq_gold_coding"),
    )
    op.create_index("ix_gold_codings_gold_set", "gold_codings", ["gold_set"])
    op.create_index("ix_gold_codings_passage_id", "gold_codings", ["passage_id"])
    bind = op.get_bind()
    scopes = bind.execute(
        sa.text(
            "SELECT s.gold_set, s.coder, s.codebook_version, s.created_at, p.id, "
            "s.transcript_id, s.char_start, s.char_end FROM gold_scopes s JOIN passages p "
            "ON p.transcript_id = s.transcript_id AND p.char_start = s.char_start "
            "AND p.char_end = s.char_end AND p.pieces IS NULL"
        )
    ).all()
    spans = bind.execute(
        sa.text("SELECT gold_set, coder, transcript_id, char_start, char_end, code FROM gold_spans")
    ).all()
    codes: dict[tuple, set[str]] = {}
    for g, c, t, a, b, code in spans:
        codes.setdefault((g, c, t, a, b), set()).add(code)
    seen, rows = set(), []
    for g, c, version, created, pid, t, a, b in scopes:
        if (g, c, pid) in seen:
            continue
        seen.add((g, c, pid))
        rows.append(
            {
                "gold_set": g,
                "coder": c,
                "passage_id": pid,
                "codes": json.dumps(sorted(codes.get((g, c, t, a, b), set()))),
                "codebook_version": version,
                "created_at": created,
            }
        )
    if rows:
        op.bulk_insert(_untyped("gold_codings", rows[0]), rows)
    op.drop_table("gold_spans")
    op.drop_table("gold_scopes")
    op.execute(
        f"UPDATE proposals SET evidence_start = evidence_start - {_PASSAGE_START}, "
        f"evidence_end = evidence_end - {_PASSAGE_START}"
    )
    with op.batch_alter_table("proposals") as batch:
        batch.drop_column("located")
        batch.drop_column("span_end")
        batch.drop_column("span_start")
    with op.batch_alter_table("passages") as batch:
        batch.drop_column("pieces")
        batch.drop_column("turn_end")
