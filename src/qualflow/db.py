"""The store's tables (SQLAlchemy 2) and how to open it.

One SQLite file per workspace (WAL mode) by default; any PostgreSQL URL works with
the same models (no SQLite-only SQL). The schema is created and changed only by the
Alembic migrations in ``qualflow/migrations``; ``open_store`` runs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from qualflow.models import utcnow


class Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return utcnow()


# --------------------------------------------------------------------------- ingest


class ParticipantRow(Base):
    __tablename__ = "participants"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TranscriptRow(Base):
    __tablename__ = "transcripts"
    __table_args__ = (UniqueConstraint("name", "content_hash", name="uq_transcript_version"),)
    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    source_path: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(40))
    text: Mapped[str] = mapped_column(Text)
    participant_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class TurnRow(Base):
    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("transcript_id", "index", name="uq_turn_index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transcript_id: Mapped[str] = mapped_column(
        ForeignKey("transcripts.id", ondelete="CASCADE"), index=True
    )
    index: Mapped[int] = mapped_column(Integer)
    speaker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    text: Mapped[str] = mapped_column(Text)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    end_time: Mapped[float | None] = mapped_column(Float, nullable=True)


class PassageRow(Base):
    __tablename__ = "passages"
    __table_args__ = (Index("ix_passage_order", "transcript_id", "segmentation", "index"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    transcript_id: Mapped[str] = mapped_column(
        ForeignKey("transcripts.id", ondelete="CASCADE"), index=True
    )
    segmentation: Mapped[str] = mapped_column(String(40))
    index: Mapped[int] = mapped_column(Integer)
    turn_index: Mapped[int] = mapped_column(Integer)
    speaker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    codable: Mapped[bool] = mapped_column(Boolean, default=True)
    # A chunk's last turn and its pieces ([turn_index, speaker, start, end, codable]);
    # NULL for a passage inside one turn.
    turn_end: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pieces: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)


class FailureRow(Base):
    """A recorded failure (bad transcript, passage that never validated, budget stop)."""

    __tablename__ = "failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True, index=True)
    stage: Mapped[str] = mapped_column(String(40))  # ingest | propose | budget | ...
    subject: Mapped[str] = mapped_column(Text)  # file path or passage id
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


# --------------------------------------------------------------------------- codebooks


class CodebookRow(Base):
    __tablename__ = "codebooks"
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class CodeRow(Base):
    __tablename__ = "codes"
    __table_args__ = (UniqueConstraint("codebook_version", "title", name="uq_code_title"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    codebook_version: Mapped[str] = mapped_column(
        ForeignKey("codebooks.version", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    inclusion: Mapped[str] = mapped_column(Text, default="")
    exclusion: Mapped[str] = mapped_column(Text, default="")
    examples: Mapped[list[Any]] = mapped_column(JSON, default=list)
    count: Mapped[int | None] = mapped_column(Integer, nullable=True)


# --------------------------------------------------------------------------- proposals


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    coder: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(255))
    prompt_version: Mapped[str] = mapped_column(String(64), default="")
    codebook_version: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(30), default="running")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    calls: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ProposalSetRow(Base):
    """One coder's answer for one passage. The unique key makes re-runs incremental."""

    __tablename__ = "proposal_sets"
    __table_args__ = (
        UniqueConstraint(
            "passage_id",
            "coder",
            "model",
            "prompt_version",
            "codebook_version",
            name="uq_proposal_set_key",
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True, index=True)
    passage_id: Mapped[str] = mapped_column(
        ForeignKey("passages.id", ondelete="CASCADE"), index=True
    )
    coder: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(255))
    prompt_version: Mapped[str] = mapped_column(String(64), default="")
    codebook_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="ok")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    raw_response: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # The unit of an earlier transcript version this set was copied from (its text
    # unchanged; offsets moved), so that nothing is coded twice; NULL for a coder's answer.
    carried_from: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ProposalRow(Base):
    """One proposed span: ``start``/``end`` (and the evidence offsets) are offsets into
    the transcript text; ``passage_id`` is the unit (chunk or passage) it was found in."""

    __tablename__ = "proposals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    set_id: Mapped[int] = mapped_column(
        ForeignKey("proposal_sets.id", ondelete="CASCADE"), index=True
    )
    passage_id: Mapped[str] = mapped_column(String(64), index=True)
    code: Mapped[str] = mapped_column(String(500))
    rationale: Mapped[str] = mapped_column(Text, default="")
    evidence: Mapped[str] = mapped_column(Text, default="")
    start: Mapped[int | None] = mapped_column("span_start", Integer, nullable=True)
    end: Mapped[int | None] = mapped_column("span_end", Integer, nullable=True)
    evidence_start: Mapped[int | None] = mapped_column(Integer, nullable=True)
    evidence_end: Mapped[int | None] = mapped_column(Integer, nullable=True)
    located: Mapped[str | None] = mapped_column(String(20), nullable=True)
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    in_candidates: Mapped[bool] = mapped_column(Boolean, default=True)
    valid: Mapped[bool] = mapped_column(Boolean, default=True)
    invalid_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class ResponseCacheRow(Base):
    """LLM responses keyed by (model, prompt version, passage, candidates, parameters)."""

    __tablename__ = "response_cache"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    response: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class UnitLeaseRow(Base):
    """A worker's claim on a coding unit under one proposal key (``qualflow.leases``):
    while it holds an unexpired lease, no other worker sends that unit. Deleted once
    the unit's answer is stored; an expired lease, or one whose holder process on
    this host is gone, is taken over."""

    __tablename__ = "unit_leases"
    passage_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255), index=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class PseudonymRow(Base):
    """Placeholder <-> original mapping; stays in the local store, never sent."""

    __tablename__ = "pseudonyms"
    placeholder: Mapped[str] = mapped_column(String(100), primary_key=True)
    original: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(30))


# --------------------------------------------------------------------------- review


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20), default="reviewer")  # admin | reviewer
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AssignmentRow(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("passage_id", "user_id", name="uq_assignment"),
        # review_count_indexes: answers the review queue's assignment lookups alone
        Index(
            "ix_assignments_unit_user_mode",
            "passage_id",
            "user_id",
            "double_coded",
            "blind_to_machine",
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    passage_id: Mapped[str] = mapped_column(
        ForeignKey("passages.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    double_coded: Mapped[bool] = mapped_column(Boolean, default=False)
    blind_to_machine: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ReviewStateRow(Base):
    """Current state of one coding track on one unit (derived from decisions; a cache).

    ``spans`` are the track's coded spans (``{"code", "start", "end", "origin",
    "proposal_id"}``, offsets into the transcript text; origin ``accepted``,
    ``adjusted`` or ``added``); ``codes`` the distinct codes among them. ``version`` is
    bumped on every decision: optimistic concurrency for the review app.
    """

    __tablename__ = "review_states"
    __table_args__ = (
        # passage_id last (review_count_indexes): a track owner's finished states and
        # their units, from the index alone
        Index("ix_review_states_user_done", "user_id", "done", "passage_id"),
    )
    passage_id: Mapped[str] = mapped_column(
        ForeignKey("passages.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, default=0)
    codes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    spans: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    memo: Mapped[str | None] = mapped_column(Text, nullable=True)
    no_code: Mapped[bool] = mapped_column(Boolean, default=False)
    proposal_status: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class DecisionRow(Base):
    """Append-only review log; never updated or deleted."""

    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    passage_id: Mapped[str] = mapped_column(
        ForeignKey("passages.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    action: Mapped[str] = mapped_column(String(20))
    proposal_id: Mapped[int | None] = mapped_column(ForeignKey("proposals.id"), nullable=True)
    code: Mapped[str | None] = mapped_column(String(500), nullable=True)
    before: Mapped[list[Any]] = mapped_column(JSON, default=list)
    after: Mapped[list[Any]] = mapped_column(JSON, default=list)
    memo: Mapped[str | None] = mapped_column(Text, nullable=True)
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"), nullable=True)
    state_version: Mapped[int] = mapped_column(Integer)
    # The coding track this decision belongs to (review_states.user_id of that track):
    # the actor's own blind track for a double-coded passage, else the passage's shared
    # track. ``user_id`` stays the acting user. NULL (rows written without it) = user_id.
    track_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # Spans (review_spans): the span the decision acted on (``span_start``/``span_end``
    # with ``code``; for ``adjust`` its boundaries before), the new boundaries of an
    # ``adjust`` (``new_start``/``new_end``), and the track's spans after the decision
    # (``spans``, as in ``review_states.spans``). ``before``/``after`` stay the codes.
    span_start: Mapped[int | None] = mapped_column(Integer, nullable=True)
    span_end: Mapped[int | None] = mapped_column(Integer, nullable=True)
    new_start: Mapped[int | None] = mapped_column(Integer, nullable=True)
    new_end: Mapped[int | None] = mapped_column(Integer, nullable=True)
    spans: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # A ``carry`` decision: the finished review of an unchanged unit of an earlier
    # transcript version, brought over (from, done, flagged, no_code, memo, proposals).
    carry: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ReviewUnitRow(Base):
    """The review queue, one row per reviewable unit, kept in step with the proposal sets,
    assignments and transcripts by ``review.queue.sync`` (a cache: rebuildable at any
    time). It lets the queue be paged, counted and walked by indexed queries instead of
    rebuilding the whole queue per request.

    ``rank`` orders "lowest confidence first" (-1 for a unit a coder handed to a human,
    else the lowest proposal confidence, 2 when the machine proposed no code);
    ``shuffle`` is a stable pseudo-random number for the seeded audit sample;
    ``shared_owner`` the owner of the unit's shared coding track when there is one.
    """

    __tablename__ = "review_units"
    __table_args__ = (
        # shared_owner last (review_count_indexes): the "to do" walk down either order
        # finds each unit's track owner in the index, not in the row
        Index(
            "ix_review_units_rank",
            "current",
            "rank",
            "transcript_name",
            "position",
            "passage_id",
            "shared_owner",
        ),
        Index(
            "ix_review_units_place",
            "current",
            "transcript_name",
            "position",
            "passage_id",
            "shared_owner",
        ),
        # review_count_indexes: is a unit in the queue, and who owns its shared track
        Index("ix_review_units_unit_owner", "passage_id", "current", "shared_owner"),
    )
    passage_id: Mapped[str] = mapped_column(
        ForeignKey("passages.id", ondelete="CASCADE"), primary_key=True
    )
    transcript_id: Mapped[str] = mapped_column(
        ForeignKey("transcripts.id", ondelete="CASCADE"), index=True
    )
    transcript_name: Mapped[str] = mapped_column(String(255))
    position: Mapped[int] = mapped_column(Integer)
    current: Mapped[bool] = mapped_column(Boolean, default=True)
    needs_human: Mapped[bool] = mapped_column(Boolean, default=False)
    min_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    rank: Mapped[float] = mapped_column(Float)
    shuffle: Mapped[int] = mapped_column(BigInteger)
    proposals: Mapped[int] = mapped_column(Integer, default=0)
    codes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    shared_owner: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )


class ReviewUnitCodeRow(Base):
    """A code proposed on a queue unit (the queue's code filter)."""

    __tablename__ = "review_unit_codes"
    passage_id: Mapped[str] = mapped_column(
        ForeignKey("review_units.passage_id", ondelete="CASCADE"), primary_key=True
    )
    code: Mapped[str] = mapped_column(String(500), primary_key=True, index=True)


class ReviewSessionRow(Base):
    """A review-app login session. The cookie carries a random token (signed); this row
    holds only its SHA-256, so a copy of the store cannot be replayed as a cookie. A
    session is valid until ``expires_at`` unless ``revoked_at`` is set (logout,
    deactivation, password or role change, ``qualflow users logout``)."""

    __tablename__ = "review_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)


class AuditEventRow(Base):
    """Security log of the review app (append-only): logins, failed and throttled logins,
    logouts, session revocations, account changes. Never a password, never passage text.

    ``username`` is set only for an existing account; a login attempt on an unknown name
    keeps just ``account_key``, a keyed hash of the typed name (which may be a password
    typed into the wrong field), so throttling works the same for every name.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_account_time", "account_key", "created_at"),
        Index("ix_audit_events_address_time", "address", "created_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    event: Mapped[str] = mapped_column(String(40), index=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    username: Mapped[str | None] = mapped_column(String(100), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(100), nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    account_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(String(500), default="")


# --------------------------------------------------------------------------- gold


class GoldSpanRow(Base):
    """A gold (human) coder's coded span of a transcript's text.

    ``external_id`` and ``memo`` are not written today: an imported highlight keeps its
    tool's id and memo in ``highlights`` (``qualflow.highlights``), which exports read.
    """

    __tablename__ = "gold_spans"
    __table_args__ = (Index("ix_gold_span_lookup", "gold_set", "coder", "transcript_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gold_set: Mapped[str] = mapped_column(String(200), index=True)
    coder: Mapped[str] = mapped_column(String(200))
    transcript_id: Mapped[str] = mapped_column(
        ForeignKey("transcripts.id", ondelete="CASCADE"), index=True
    )
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    code: Mapped[str] = mapped_column(String(500))
    codebook_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    memo: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class GoldScopeRow(Base):
    """Text a gold coder coded: inside it, text no gold span covers carries no code."""

    __tablename__ = "gold_scopes"
    __table_args__ = (Index("ix_gold_scope_lookup", "gold_set", "coder", "transcript_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gold_set: Mapped[str] = mapped_column(String(200), index=True)
    coder: Mapped[str] = mapped_column(String(200))
    transcript_id: Mapped[str] = mapped_column(
        ForeignKey("transcripts.id", ondelete="CASCADE"), index=True
    )
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    codebook_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class HighlightRow(Base):
    """An imported character-span coding (Taguette, REFI-QDA) on a transcript's text."""

    __tablename__ = "highlights"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(200), index=True)
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    coder: Mapped[str] = mapped_column(String(200))
    transcript_id: Mapped[str] = mapped_column(
        ForeignKey("transcripts.id", ondelete="CASCADE"), index=True
    )
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    code: Mapped[str | None] = mapped_column(String(500), nullable=True)
    snippet: Mapped[str] = mapped_column(Text, default="")
    memo: Mapped[str | None] = mapped_column(Text, nullable=True)


class ExchangeImportRow(Base):
    """What an imported project holds beyond codes, texts and codings (GUIDs, colours,
    memos, sets, users, dates), kept so that an export can give it back. One row per
    import target (the gold set it filled, or ``codebook:<version>`` for a codebook),
    replaced when the same target is imported again."""

    __tablename__ = "exchange_imports"
    target: Mapped[str] = mapped_column(String(200), primary_key=True)
    format: Mapped[str] = mapped_column(String(40))  # refi-qda | taguette
    name: Mapped[str] = mapped_column(String(500))
    path: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


# --------------------------------------------------------------------------- workspace


class WorkspaceMetaRow(Base):
    """A small fact about the workspace (key -> JSON value), e.g. the active codebook."""

    __tablename__ = "workspace_meta"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


# --------------------------------------------------------------------------- engine


def make_engine(url: str) -> Engine:
    """An engine for a store URL; SQLite gets WAL, foreign keys and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(parsed, pool_pre_ping=True)


MIGRATION_LOCK_ID = 0x7175_616C_666C_6F77 >> 1
"""PostgreSQL advisory lock key held while migrating (``b"qualflow"``, fits a bigint)."""


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (all heads, so areas can add
    migrations side by side; a merge revision joins them later).

    Serialised between processes: two processes opening a fresh store at once would
    both create the schema and collide on ``alembic_version``. On PostgreSQL the
    migration transaction holds an advisory lock; on SQLite a file lock beside the
    database file (``<file>.migrate.lock``) is held. The second process waits, then
    finds the schema current.
    """
    from alembic import command
    from alembic.config import Config

    here = Path(__file__).parent / "migrations"
    cfg = Config()
    # Config values go through configparser interpolation: a '%' (a percent-encoded
    # path such as 'ws 100%' or 'é') must be doubled.
    cfg.set_main_option("script_location", str(here).replace("%", "%%"))
    url = engine.url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    with _migration_file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_ID})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")


@contextmanager
def _migration_file_lock(engine: Engine) -> Iterator[None]:
    """An exclusive lock on ``<sqlite file>.migrate.lock`` (nothing for other databases,
    in-memory SQLite, or platforms without ``fcntl``)."""
    path = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    if not path or path == ":memory:" or fcntl is None:
        yield
        return
    with open(f"{path}.migrate.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False)
