"""Reviewers' finished work as span codings: what the exports take from the review.

``review_work(store)`` is the one function the exports (``.qdpx``, paper tables) read
reviewer codings through. Each reviewer comes out as a ``SpanCoding`` with the dates
and memos that go with it; the writers know nothing about how the review stores its
decisions.

Today the review log is kept per unit (a sentence passage, or a chunk): a reviewer's
finished unit with codes becomes, for each code, a span over the unit's codable text,
and the unit's codable text joins the reviewer's scope (a finished unit without codes
is an explicit "no code applies"). When the review decides on spans, this function
returns those spans instead and the exports carry them unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from qualflow.exchange.spans import merge_ranges
from qualflow.models import Passage, Range, Span, SpanCoding
from qualflow.store import Store

Place = tuple[str, int, int]
"""A stretch of one transcript: (transcript id, start, end)."""


@dataclass
class ReviewMemo:
    """A reviewer's memo on a stretch of text; ``ref`` names what it is on (the unit id),
    so that the note a writer makes of it keeps its identity across exports."""

    text: str
    created_at: datetime | None
    ref: str


@dataclass
class ReviewerSpans:
    """One reviewer's finished work: spans and scope, ``coded_at[i]`` the time the code
    of ``coding.spans[i]`` was given, ``judged_at`` the time of the last decision on
    each stretch of the scope, ``memos`` the memos on stretches of text."""

    reviewer: str
    coding: SpanCoding
    coded_at: list[datetime | None] = field(default_factory=list)
    judged_at: dict[Place, datetime | None] = field(default_factory=dict)
    memos: dict[Place, ReviewMemo] = field(default_factory=dict)


@dataclass
class ReviewWork:
    """Every reviewer's finished work, and what the review holds beyond it: accounts
    that finished nothing, units in review but not finished, flags, log entries."""

    reviewers: list[ReviewerSpans] = field(default_factory=list)
    idle: list[str] = field(default_factory=list)
    unfinished: int = 0
    flagged: int = 0
    log_entries: int = 0


@dataclass
class _Track:
    """One reviewer's work on one unit, replayed from the review log."""

    codes: list[str]
    flagged: bool
    memo: str | None
    memo_at: datetime | None
    code_dates: dict[str, datetime]
    last_at: datetime | None


def review_work(store: Store) -> ReviewWork:
    """Each reviewer's finished units as spans (see the module docstring), from the
    review log (``qualflow.review.decisions``: finished = "Done" and not undone)."""
    from qualflow.db import UserRow
    from qualflow.highlights import passages_by_ids
    from qualflow.review.decisions import reviewer_codings

    codings = reviewer_codings(store)
    tracks, n_log = _tracks(store)
    units = {p.id: p for p in passages_by_ids(store, {u for c in codings.values() for u in c})}
    work = ReviewWork(log_entries=n_log)
    for username, coding in sorted(codings.items()):
        mine = ReviewerSpans(username, SpanCoding(coder=username))
        for unit_id, codes in sorted(coding.items()):
            unit = units.get(unit_id)
            if unit is not None:
                _add_unit(mine, unit, sorted(codes), tracks.get((username, unit_id)))
        mine.coding.scope = {tid: merge_ranges(r) for tid, r in mine.coding.scope.items()}
        work.reviewers.append(mine)
    finished = {(u, pid) for u, c in codings.items() for pid in c}
    work.unfinished = sum(
        1 for k, t in tracks.items() if k not in finished and t.last_at is not None
    )
    work.flagged = sum(1 for t in tracks.values() if t.flagged)
    with store.session() as s:
        accounts = s.scalars(select(UserRow.username).order_by(UserRow.username)).all()
    work.idle = [u for u in accounts if u not in codings]
    return work


def unit_ranges(unit: Passage) -> list[Range]:
    """The text of a unit a reviewer judges: a chunk's codable pieces, a passage whole."""
    pieces = unit.codable_pieces() if unit.is_chunk else unit.layout()
    return [(p.char_start, p.char_end) for p in pieces]


def _add_unit(mine: ReviewerSpans, unit: Passage, codes: list[str], track: _Track | None) -> None:
    tid = unit.transcript_id
    for i, (start, end) in enumerate(unit_ranges(unit)):
        place = (tid, start, end)
        mine.coding.scope.setdefault(tid, []).append((start, end))
        if track is not None:
            mine.judged_at[place] = track.last_at
            if track.memo and i == 0:  # one memo per unit, on its first stretch
                mine.memos[place] = ReviewMemo(track.memo, track.memo_at, unit.id)
        for code in codes:
            mine.coding.spans.append(Span(tid, start, end, code))
            mine.coded_at.append(track.code_dates.get(code, track.last_at) if track else None)


def _tracks(store: Store) -> tuple[dict[tuple[str, str], _Track], int]:
    """(username, unit id) -> replayed track, and how many log entries there are."""
    from qualflow.db import DecisionRow, UserRow
    from qualflow.review.decisions import LogEntry, derive

    grouped: dict[tuple[int, str], list[LogEntry]] = defaultdict(list)
    with store.session() as s:
        names = dict(s.execute(select(UserRow.id, UserRow.username)).tuples().all())
        rows = s.scalars(select(DecisionRow).order_by(DecisionRow.id)).all()
        for r in rows:
            track = r.track_user_id if r.track_user_id is not None else r.user_id
            grouped[(track, r.passage_id)].append(
                LogEntry(
                    id=r.id,
                    action=r.action,
                    proposal_id=r.proposal_id,
                    code=r.code,
                    before=list(r.before or []),
                    after=list(r.after or []),
                    memo=r.memo,
                    undoes_id=r.undoes_id,
                    state_version=r.state_version,
                    created_at=r.created_at,
                    user_id=r.user_id,
                )
            )
    out: dict[tuple[str, str], _Track] = {}
    for (owner, pid), entries in grouped.items():
        state = derive(pid, owner, entries)
        undone = {e.undoes_id for e in entries if e.action == "undo"}
        effective = [e for e in entries if e.action != "undo" and e.id not in undone]
        dates: dict[str, datetime] = {}
        memo_at = None
        for e in effective:
            for code in set(e.after) - set(e.before):
                dates[code] = e.created_at
            if e.memo is not None and e.action in ("memo", "done"):
                memo_at = e.created_at
        out[(names.get(owner, str(owner)), pid)] = _Track(
            codes=list(state.codes),
            flagged=state.flagged,
            memo=state.memo,
            memo_at=memo_at,
            code_dates=dates,
            last_at=effective[-1].created_at if effective else None,
        )
    return out, len(rows)
