"""Reviewers' finished work as span codings: what the exports take from the review.

``review_work(store)`` is the one function the exports (``.qdpx``, paper tables) read
reviewer codings through. Each reviewer comes out as a ``SpanCoding`` with the dates
and memos that go with it; the writers know nothing about how the review stores its
decisions.

The review decides on spans (``qualflow.review.decisions.reviewer_span_codings``): a
reviewer's finished unit contributes the spans the reviewer kept, adjusted or added,
unchanged, and the unit's codable text joins the reviewer's scope (a finished unit
without spans is an explicit "no code applies"). Dates and memos come from the review
log: a span's date is when its code was given on that unit, a memo sits on the unit's
first stretch of codable text.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

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
    """Each reviewer's finished spans (see the module docstring), from the review log
    (``qualflow.review.decisions``: finished = "Done" and not undone)."""
    from qualflow.db import UserRow
    from qualflow.highlights import passages_by_ids
    from qualflow.review.decisions import reviewer_codings, reviewer_span_codings

    finished_units = reviewer_codings(store)
    spans = reviewer_span_codings(store)
    tracks, n_log = _tracks(store)
    units = {
        p.id: p for p in passages_by_ids(store, {u for c in finished_units.values() for u in c})
    }
    work = ReviewWork(log_entries=n_log)
    for username, unit_codes in sorted(finished_units.items()):
        coding = spans.get(username, SpanCoding(coder=username))
        mine = ReviewerSpans(username, coding)
        placed: list[tuple[str, int, int, _Track | None]] = []
        for unit_id in sorted(unit_codes):
            unit = units.get(unit_id)
            if unit is not None:
                track = tracks.get((username, unit_id))
                _add_unit(mine, unit, track)
                placed.append((unit.transcript_id, unit.char_start, unit.char_end, track))
        mine.coded_at = [_coded_at(span, placed) for span in coding.spans]
        work.reviewers.append(mine)
    finished = {(u, pid) for u, c in finished_units.items() for pid in c}
    work.unfinished = sum(
        1 for k, t in tracks.items() if k not in finished and t.last_at is not None
    )
    work.flagged = sum(1 for t in tracks.values() if t.flagged)
    with store.session() as s:
        accounts = s.scalars(select(UserRow.username).order_by(UserRow.username)).all()
    work.idle = [u for u in accounts if u not in finished_units]
    return work


def unit_ranges(unit: Passage) -> list[Range]:
    """The text of a unit a reviewer judges: a chunk's codable pieces, a passage whole."""
    pieces = unit.codable_pieces() if unit.is_chunk else unit.layout()
    return [(p.char_start, p.char_end) for p in pieces]


def _add_unit(mine: ReviewerSpans, unit: Passage, track: _Track | None) -> None:
    """The dates and memo of a finished unit, on its stretches of codable text."""
    tid = unit.transcript_id
    for i, (start, end) in enumerate(unit_ranges(unit)):
        place = (tid, start, end)
        if track is not None:
            mine.judged_at[place] = track.last_at
            if track.memo and i == 0:  # one memo per unit, on its first stretch
                mine.memos[place] = ReviewMemo(track.memo, track.memo_at, unit.id)


def _coded_at(span: Span, units: list[tuple[str, int, int, _Track | None]]) -> datetime | None:
    """When the span's code was given on the finished unit the span lies in."""
    for tid, start, end, track in units:
        if tid == span.transcript_id and start <= span.start < end and track is not None:
            return track.code_dates.get(span.code, track.last_at)
    return None


def _tracks(store: Store) -> tuple[dict[tuple[str, str], _Track], int]:
    """(username, unit id) -> replayed track, and how many log entries there are."""
    from qualflow.db import DecisionRow, UserRow
    from qualflow.review.decisions import LogEntry, derive, entry_of

    grouped: dict[tuple[int, str], list[LogEntry]] = defaultdict(list)
    with store.session() as s:
        names = dict(s.execute(select(UserRow.id, UserRow.username)).tuples().all())
        rows = s.scalars(select(DecisionRow).order_by(DecisionRow.id)).all()
        for r in rows:
            track = r.track_user_id if r.track_user_id is not None else r.user_id
            grouped[(track, r.passage_id)].append(entry_of(r))
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
