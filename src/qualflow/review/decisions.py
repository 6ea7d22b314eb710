"""The review log: append decisions, derive the coding of each track from them.

A track's coding of a unit (a chunk, or a sentence passage of an older store) is a set
of spans (code, start, end in the transcript text, and where each came from: an
``accepted`` machine proposal, an ``adjusted`` one, or ``added`` by the reviewer; see
``units.py``), plus done, flagged, memo and "no code applies".

Actions: ``accept`` / ``reject`` a proposed span, ``adjust`` the boundaries of a
proposal or of a span, ``add`` a span (code + range inside a codable stretch of the
unit), ``remove`` a span, ``replace`` a proposal's code, ``no_code`` (no code applies to
the unit: an explicit judgement), ``flag`` / ``unflag``, ``memo`` (an empty memo clears
it), ``done`` and ``undo``. ``carry`` brings a finished review over to the unchanged unit
of a new transcript version (``carry.py``). ``done`` is refused while machine proposals
are undecided (unless the reviewer codes blind to the machine or said that no code
applies) and on a unit with no span and no "no code applies": leaving proposals
undecided is never a judgement.

Coding tracks. A unit has one *shared* coding that everybody who acts on it works on
(its assigned reviewer, a second reviewer it is also assigned to, an admin
adjudicating), except that each reviewer of a *double-coded* assignment codes on their
own blind track, so the two codings stay independent for human-human agreement. A track
is named by its owner's user id (``review_states.user_id``, ``decisions.track_user_id``):
a blind track by its reviewer; the shared track by the unit's primary assignee (the
first non-double-coded assignment), or, with no such assignee, by whoever started the
shared track (e.g. the admin who first acted on an unassigned unit). ``choose_track``
is that rule. ``decisions.user_id`` is always the user who acted (the audit log).

``decisions`` is append-only: nothing here updates or deletes a decision row. An undo
is one more row (``action="undo"``, ``undoes_id`` = the decision it cancels); it
cancels the track's latest decision on the unit that is still in effect (on a shared
track that may be somebody else's, shown in the page's history), so undoing repeatedly
walks back through the log. Each row stores the track's spans after it (``spans``) and
its codes before and after (``before``/``after``); the state of a track is derived by
replaying the decisions still in effect; ``review_states`` is a cache of that
derivation, kept in the same transaction as each decision and rebuildable with
``rebuild_states``.

Optimistic concurrency: a track's state has a ``version`` equal to the number of
decisions in its log for the unit. Every change names the version it was made
against; the write is ``UPDATE review_states ... WHERE version = :seen`` (or an INSERT
for the first decision, guarded by the primary key), so of two concurrent changes made
against the same version exactly one lands and the other raises ``Conflict`` naming who
made the changes the loser did not see. No SQLite-only SQL: the same code runs on
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from qualflow.db import (
    AssignmentRow,
    DecisionRow,
    PassageRow,
    ProposalRow,
    ProposalSetRow,
    ReviewStateRow,
    ReviewUnitRow,
    TranscriptRow,
    UserRow,
)
from qualflow.models import Coding, Passage, Span, SpanCoding, utcnow
from qualflow.review.codes import REVIEWABLE, codebook_for
from qualflow.review.units import (
    ReviewSpan,
    SpanError,
    codable_ranges,
    codes_of,
    place,
    spans_from_json,
    spans_to_json,
)
from qualflow.store import Store

ACTIONS = ("accept", "reject", "replace", "adjust", "add", "remove", "no_code", "flag")
ACTIONS += ("unflag", "memo", "done", "undo", "carry")
USER_ACTIONS = tuple(a for a in ACTIONS if a != "carry")
PROPOSAL_ACTIONS = ("accept", "reject", "replace")


class DecisionError(ValueError):
    """A decision that cannot be made (unknown proposal, code not in the codebook...)."""


class Conflict(Exception):
    """The track changed since the version the user acted on; ``by`` names who changed
    it (user names, oldest change first; "you (in another window)" for the user)."""

    def __init__(self, seen: int, current: int, by: Sequence[str] = ()):
        who = f" by {', '.join(by)}" if by else ""
        super().__init__(
            f"This unit was changed{who} since you loaded it (you saw version {seen}, "
            f"it is now at version {current}), so your action was not saved."
        )
        self.seen = seen
        self.current = current
        self.by = list(by)


@dataclass
class ReviewState:
    """One track's current coding of one unit, derived from the log
    (``user_id`` is the track's owner, not necessarily who acted)."""

    passage_id: str
    user_id: int
    version: int = 0
    spans: list[ReviewSpan] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    done: bool = False
    flagged: bool = False
    memo: str | None = None
    proposal_status: dict[int, str] = field(default_factory=dict)
    last_effective_id: int | None = None
    no_code: bool = False  # "no code applies" said explicitly and still in effect
    carried_from: str | None = None  # the earlier version's unit, when carried over


@dataclass(frozen=True)
class LogEntry:
    id: int
    action: str
    proposal_id: int | None
    code: str | None
    before: list[str]
    after: list[str]
    memo: str | None
    undoes_id: int | None
    state_version: int
    created_at: datetime
    user_id: int = 0  # who acted
    spans: list[ReviewSpan] | None = None  # the track's spans after (None: codes only)
    span_start: int | None = None
    span_end: int | None = None
    new_start: int | None = None
    new_end: int | None = None
    carry: dict[str, Any] | None = None


_STATUS = {"accept": "accepted", "reject": "rejected", "replace": "replaced"}
_STATUS |= {"adjust": "adjusted", "remove": "removed"}
_PROPOSAL_FIELD = (*PROPOSAL_ACTIONS, "adjust", "remove")  # rows that name a proposal


def derive(passage_id: str, user_id: int, log: Iterable[LogEntry]) -> ReviewState:
    """Replay a track's log (in id order) for one unit; ``user_id`` = track owner."""
    entries = sorted(log, key=lambda e: e.id)
    undone = {e.undoes_id for e in entries if e.action == "undo"}
    state = ReviewState(passage_id, user_id, version=len(entries))
    for e in entries:
        if e.action == "undo" or e.id in undone:
            continue
        state.spans = sorted(e.spans) if e.spans is not None else []
        state.codes = codes_of(state.spans) if e.spans is not None else sorted(e.after)
        state.last_effective_id = e.id
        state.no_code = e.action == "no_code" or (state.no_code and not state.codes)
        if e.action == "carry":
            _apply_carry(state, e.carry or {})
            continue
        if e.action in _STATUS and e.proposal_id is not None:
            state.proposal_status[e.proposal_id] = _STATUS[e.action]
        elif e.action in ("flag", "unflag"):
            state.flagged = e.action == "flag"
        elif e.action == "done":
            state.done = True
        if e.memo is not None and e.action in ("memo", "done"):
            state.memo = e.memo or None
    return state


def _apply_carry(state: ReviewState, carry: dict[str, Any]) -> None:
    state.done = bool(carry.get("done"))
    state.flagged = bool(carry.get("flagged"))
    state.no_code = bool(carry.get("no_code"))
    state.memo = carry.get("memo") or None
    state.carried_from = carry.get("from")
    state.proposal_status = {int(k): str(v) for k, v in (carry.get("proposals") or {}).items()}


def _entry(r: DecisionRow) -> LogEntry:
    return LogEntry(
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
        spans=spans_from_json(r.spans) if r.spans is not None else None,
        span_start=r.span_start,
        span_end=r.span_end,
        new_start=r.new_start,
        new_end=r.new_end,
        carry=r.carry,
    )


def entry_of(row: DecisionRow) -> LogEntry:
    """A stored decision row as a log entry (for readers of the whole log)."""
    return _entry(row)


def _track():
    """The track of a decision row, in SQL (rows without track_user_id are the actor's)."""
    return func.coalesce(DecisionRow.track_user_id, DecisionRow.user_id)


def choose_track(
    user_id: int,
    assignments: Sequence[tuple[int, int, bool]],
    started: Sequence[tuple[int, int]] = (),
) -> int:
    """The owner of the track ``user_id`` acts on, for one unit.

    ``assignments``: the unit's (assignment id, user id, double_coded);
    ``started``: its tracks so far as (first decision id, owner). A double-coded
    assignee has their own blind track; everybody else shares one: the first
    non-double assignee's, else the first started track that is nobody's blind track,
    else a new one owned by ``user_id``.
    """
    if any(uid == user_id and double for _, uid, double in assignments):
        return user_id
    shared = sorted((aid, uid) for aid, uid, double in assignments if not double)
    if shared:
        return shared[0][1]
    blind = {uid for _, uid, double in assignments if double}
    open_tracks = sorted((first, owner) for first, owner in started if owner not in blind)
    return open_tracks[0][1] if open_tracks else user_id


def track_owners(store: Store, user_id: int, passage_ids: Iterable[str]) -> dict[str, int]:
    """``choose_track`` for many units at once: unit id -> track owner."""
    wanted = list(dict.fromkeys(passage_ids))
    if not wanted:
        return {}
    assigned: dict[str, list[tuple[int, int, bool]]] = {}
    started: dict[str, list[tuple[int, int]]] = {}
    with store.session() as s:
        for i in range(0, len(wanted), 500):
            part = wanted[i : i + 500]
            q = select(
                AssignmentRow.passage_id,
                AssignmentRow.id,
                AssignmentRow.user_id,
                AssignmentRow.double_coded,
            ).where(AssignmentRow.passage_id.in_(part))
            for pid, aid, uid, double in s.execute(q):
                assigned.setdefault(pid, []).append((aid, uid, bool(double)))
            # only units with no shared assignee need to know which tracks were started
            open_ids = [
                pid
                for pid in part
                if not any(not d or uid == user_id for _, uid, d in assigned.get(pid, []))
            ]
            if open_ids:
                q = (
                    select(DecisionRow.passage_id, func.min(DecisionRow.id), _track())
                    .where(DecisionRow.passage_id.in_(open_ids))
                    .group_by(DecisionRow.passage_id, _track())
                )
                for pid, first, owner in s.execute(q):
                    started.setdefault(pid, []).append((first, owner))
    return {
        pid: choose_track(user_id, assigned.get(pid, []), started.get(pid, [])) for pid in wanted
    }


def track_owner(store: Store, user_id: int, passage_id: str) -> int:
    """The owner of the track ``user_id`` acts on for this unit."""
    return track_owners(store, user_id, [passage_id])[passage_id]


def track_log(store: Store, owner_id: int, passage_id: str) -> list[LogEntry]:
    """The decisions of one track on this unit, oldest first."""
    with store.session() as s:
        rows = s.scalars(
            select(DecisionRow)
            .where(_track() == owner_id, DecisionRow.passage_id == passage_id)
            .order_by(DecisionRow.id)
        )
        return [_entry(r) for r in rows]


def track_state(store: Store, owner_id: int, passage_id: str) -> ReviewState:
    return derive(passage_id, owner_id, track_log(store, owner_id, passage_id))


def log(store: Store, user_id: int, passage_id: str) -> list[LogEntry]:
    """The decisions of the track this user acts on for this unit, oldest first."""
    return track_log(store, track_owner(store, user_id, passage_id), passage_id)


def state(store: Store, user_id: int, passage_id: str) -> ReviewState:
    """The state of the track this user acts on for this unit."""
    return track_state(store, track_owner(store, user_id, passage_id), passage_id)


def tracks(store: Store, passage_id: str) -> list[int]:
    """Owners of the tracks with decisions on this unit, in the order they started."""
    with store.session() as s:
        rows = s.execute(
            select(_track(), func.min(DecisionRow.id))
            .where(DecisionRow.passage_id == passage_id)
            .group_by(_track())
        ).all()
    return [owner for owner, _ in sorted(rows, key=lambda r: r[1])]


# --------------------------------------------------------------------------- proposals


@dataclass(frozen=True)
class Proposed:
    """A valid machine proposal of a unit, as the review sees it."""

    id: int
    code: str
    start: int | None
    end: int | None


def unit_proposals(store: Store, passage_id: str) -> list[Proposed]:
    """The valid proposals of the unit's reviewable proposal sets."""
    with store.session() as s:
        rows = s.execute(
            select(ProposalRow.id, ProposalRow.code, ProposalRow.start, ProposalRow.end)
            .join(ProposalSetRow, ProposalSetRow.id == ProposalRow.set_id)
            .where(
                ProposalRow.passage_id == passage_id,
                ProposalRow.valid.is_(True),
                ProposalSetRow.status.in_(REVIEWABLE),
            )
            .order_by(ProposalRow.id)
        ).all()
    return [Proposed(i, c, a, b) for i, c, a, b in rows]


def pending_proposals(state: ReviewState, proposals: Sequence[Proposed]) -> list[Proposed]:
    """The proposals this track has not decided yet."""
    return [p for p in proposals if p.id not in state.proposal_status]


# --------------------------------------------------------------------------- deciding


@dataclass
class Request:
    """What a decision asks for (the fields an action uses)."""

    action: str
    proposal_id: int | None = None
    code: str | None = None
    memo: str | None = None
    start: int | None = None
    end: int | None = None
    new_start: int | None = None
    new_end: int | None = None


def decide(
    store: Store,
    user_id: int,
    passage_id: str,
    action: str,
    *,
    version: int,
    proposal_id: int | None = None,
    code: str | None = None,
    memo: str | None = None,
    start: int | None = None,
    end: int | None = None,
    new_start: int | None = None,
    new_end: int | None = None,
) -> ReviewState:
    """User ``user_id`` appends one decision, made against ``version``, to the track
    they act on (``track_owner``); returns the track's new state.

    Spans are named by ``code`` + ``start``/``end`` (transcript offsets); ``adjust``
    takes the span (or ``proposal_id``) and ``new_start``/``new_end``. ``add`` without a
    range codes all of the unit's codable text, one span per codable stretch (what a
    passage-level code was); ``remove`` with a code and no range removes that code's
    spans. Raises ``Conflict`` when the track moved on since ``version`` (whoever moved
    it) and ``DecisionError`` for a decision that makes no sense, with the reason.
    """
    if action not in USER_ACTIONS:
        raise DecisionError(f"action '{action}': must be one of {', '.join(USER_ACTIONS)}")
    unit = store.passage(passage_id)
    if unit is None:
        raise DecisionError(f"no unit '{passage_id}'")
    with store.session() as s:
        if s.get(UserRow, user_id) is None:
            raise DecisionError(f"no user with id {user_id}")
    owner = track_owner(store, user_id, passage_id)
    entries = track_log(store, owner, passage_id)
    current = derive(passage_id, owner, entries)
    if version != current.version:
        raise _conflict(store, user_id, current, version, entries)
    req = Request(action, proposal_id, code, memo, start, end, new_start, new_end)
    row = _Planner(store, unit, current, entries, user_id).plan(req)
    row.user_id, row.track_user_id = user_id, owner
    new = derive(passage_id, owner, [*entries, _as_entry(row)])
    _write(store, current, new, row)
    return track_state(store, owner, passage_id)


class _Planner:
    """Validates one decision against the unit, the codebook and the track's state and
    builds the decision row (with the spans after it)."""

    def __init__(
        self,
        store: Store,
        unit: Passage,
        current: ReviewState,
        entries: list[LogEntry],
        actor: int,
    ):
        self.store, self.unit, self.current = store, unit, current
        self.entries, self.actor = entries, actor
        self.spans: dict[tuple[str, int, int], ReviewSpan] = {s.key: s for s in current.spans}
        self.acted: tuple[int | None, int | None] = (None, None)

    def plan(self, req: Request) -> DecisionRow:
        handler = getattr(self, f"_{req.action}", self._state_only)
        code = handler(req)
        if req.action == "memo" and req.memo is None:
            req.memo = ""  # an empty memo clears it
        spans = sorted(self.spans.values())
        return DecisionRow(
            passage_id=self.unit.id,
            user_id=self.current.user_id,
            action=req.action,
            proposal_id=req.proposal_id if req.action in _PROPOSAL_FIELD else None,
            code=code,
            before=list(self.current.codes),
            after=codes_of(spans),
            spans=spans_to_json(spans),
            span_start=self.acted[0],
            span_end=self.acted[1],
            new_start=req.new_start if req.action == "adjust" else None,
            new_end=req.new_end if req.action == "adjust" else None,
            memo=_memo(req) if req.action in ("memo", "done") else None,
            undoes_id=self.undoes_id if req.action == "undo" else None,
            state_version=self.current.version + 1,
            created_at=utcnow(),
        )

    # ---------------------------------------------------------------- proposals

    def _proposal(self, proposal_id: int | None) -> ProposalRow:
        if proposal_id is None:
            raise DecisionError("proposal_id missing")
        with self.store.session() as s:
            row = s.get(ProposalRow, proposal_id)
            ok = row is not None and row.passage_id == self.unit.id and row.valid
            if ok:
                status = s.scalar(
                    select(ProposalSetRow.status).where(ProposalSetRow.id == row.set_id)
                )
                ok = status in REVIEWABLE
        if not ok:
            raise DecisionError(f"proposal {proposal_id} is not a valid proposal of this unit")
        return row

    def _proposal_range(self, p: ProposalRow) -> tuple[int, int]:
        if p.start is None or p.end is None:
            raise DecisionError(f"proposal {p.id} has no span to accept")
        return p.start, p.end

    def _drop_proposal(self, proposal_id: int) -> None:
        for key, span in list(self.spans.items()):
            if span.proposal_id == proposal_id:
                del self.spans[key]

    def _accept(self, req: Request) -> str:
        p = self._proposal(req.proposal_id)
        start, end = self._proposal_range(p)
        if not any(s.proposal_id == p.id for s in self.spans.values()):
            self._put(ReviewSpan(p.code, start, end, "accepted", p.id))
        self.acted = (start, end)
        return p.code

    def _reject(self, req: Request) -> str:
        p = self._proposal(req.proposal_id)
        self._drop_proposal(p.id)
        self.acted = (p.start, p.end)
        return p.code

    def _replace(self, req: Request) -> str:
        p = self._proposal(req.proposal_id)
        start, end = self._proposal_range(p)
        code = self._known_code(req.code)
        self._drop_proposal(p.id)
        self._put(ReviewSpan(code, start, end, "adjusted", p.id))
        self.acted = (start, end)
        return code

    def _adjust(self, req: Request) -> str:
        if req.new_start is None or req.new_end is None:
            raise DecisionError("adjust: new_start and new_end are needed")
        new_start, new_end = self._place(req.new_start, req.new_end)
        if req.proposal_id is not None:
            p = self._proposal(req.proposal_id)
            held = [s for s in self.spans.values() if s.proposal_id == p.id]
            old = held[0] if held else None
            code, before = (old.code, (old.start, old.end)) if old else (p.code, (p.start, p.end))
            self._drop_proposal(p.id)
            self._put(ReviewSpan(code, new_start, new_end, "adjusted", p.id))
        else:
            old = self._held(req)
            del self.spans[old.key]
            origin = "adjusted" if old.proposal_id is not None else old.origin
            code, before = old.code, (old.start, old.end)
            self._put(ReviewSpan(old.code, new_start, new_end, origin, old.proposal_id))
        req.new_start, req.new_end = new_start, new_end
        self.acted = before
        return code

    # ---------------------------------------------------------------- spans

    def _add(self, req: Request) -> str:
        code = self._known_code(req.code)
        if req.start is None and req.end is None:
            ranges = codable_ranges(self.unit)
            if not ranges:
                raise DecisionError("this unit has no codable text")
        elif req.start is None or req.end is None:
            raise DecisionError("add: give both start and end of the span (or neither)")
        else:
            ranges = [self._place(req.start, req.end)]
        for a, b in ranges:
            self._put(ReviewSpan(code, a, b, "added", None))
        self.acted = (ranges[0][0], ranges[-1][1])
        return code

    def _remove(self, req: Request) -> str:
        if req.start is None and req.end is None:
            gone = [s for s in self.spans.values() if s.code == req.code]
            if not req.code or not gone:
                raise DecisionError(f"code '{req.code}' is not in this unit's coding")
            for s in gone:
                del self.spans[s.key]
            self.acted = (min(s.start for s in gone), max(s.end for s in gone))
            return req.code
        span = self._held(req)
        del self.spans[span.key]
        if span.proposal_id is not None:
            req.proposal_id = span.proposal_id
        self.acted = (span.start, span.end)
        return span.code

    def _no_code(self, req: Request) -> None:
        self.spans.clear()
        return None

    def _undo(self, req: Request) -> None:
        if self.current.last_effective_id is None:
            raise DecisionError("nothing to undo")
        self.undoes_id = self.current.last_effective_id
        rest = [e for e in self.entries if e.id != self.undoes_id]
        self.spans = {s.key: s for s in derive(self.unit.id, self.current.user_id, rest).spans}
        return None

    def _done(self, req: Request) -> None:
        state = self.current
        if not state.no_code and not self._blind():
            pending = pending_proposals(state, unit_proposals(self.store, self.unit.id))
            if pending:
                n = len(pending)
                raise DecisionError(
                    f"{n} machine proposal{'s are' if n != 1 else ' is'} still undecided: "
                    "accept, adjust or reject each (or say that no code applies) before "
                    "Done; to move on without a judgement, skip to the next unit"
                )
        if not self.spans and not state.no_code:
            raise DecisionError(
                "nothing is coded here yet: add or accept a span, or say that no code "
                "applies, before Done; to move on without a judgement, skip"
            )
        return None

    def _state_only(self, req: Request) -> None:  # flag, unflag, memo
        return None

    # ---------------------------------------------------------------- helpers

    def _put(self, span: ReviewSpan) -> None:
        existing = self.spans.get(span.key)
        if existing is None or (existing.proposal_id is None and span.proposal_id is not None):
            self.spans[span.key] = span

    def _held(self, req: Request) -> ReviewSpan:
        """The span of the track named by code + start/end."""
        if req.start is None or req.end is None or not req.code:
            raise DecisionError("name the span: code, start and end")
        span = self.spans.get((req.code, req.start, req.end))
        if span is None:
            raise DecisionError(
                f"no span '{req.code}' at {req.start}-{req.end} in this unit's coding"
            )
        return span

    def _place(self, start: int, end: int) -> tuple[int, int]:
        try:
            return place(self.unit, start, end)
        except SpanError as exc:
            raise DecisionError(str(exc)) from None

    def _known_code(self, code: str | None) -> str:
        code = (code or "").strip()
        if not code:
            raise DecisionError("code missing")
        codebook = codebook_for(self.store, self.unit.id)
        if codebook is None:
            raise DecisionError("no codebook is stored, so no code can be added")
        if codebook.get(code) is None:
            raise DecisionError(f"code '{code}' is not in codebook '{codebook.name}'")
        return code

    def _blind(self) -> bool:
        """Does the actor code this unit blind to the machine's proposals?"""
        with self.store.session() as s:
            return bool(
                s.scalar(
                    select(AssignmentRow.blind_to_machine).where(
                        AssignmentRow.passage_id == self.unit.id,
                        AssignmentRow.user_id == self.actor,
                    )
                )
            )


def _memo(req: Request) -> str | None:
    if req.memo is None:
        return None
    return req.memo.strip()


def _conflict(
    store: Store,
    actor: int,
    current: ReviewState,
    seen: int,
    entries: list[LogEntry] | None = None,
) -> Conflict:
    """A Conflict naming who made the decisions after version ``seen``."""
    if entries is None:
        entries = track_log(store, current.user_id, current.passage_id)
    later = [e.user_id for e in entries if e.state_version > seen]
    with store.session() as s:
        names = dict(s.execute(select(UserRow.id, UserRow.username)).all())
    by = [
        "you (in another window)" if uid == actor else names.get(uid, f"user {uid}")
        for uid in dict.fromkeys(later)
    ]
    return Conflict(seen, len(entries), by)


def describe_conflict(store: Store, user_id: int, passage_id: str, seen: int) -> str | None:
    """The conflict message for a user who acted on version ``seen`` of this unit's
    track (None when the track is at that version: nothing was missed)."""
    owner = track_owner(store, user_id, passage_id)
    entries = track_log(store, owner, passage_id)
    current = derive(passage_id, owner, entries)
    if seen >= current.version:
        return None
    return str(_conflict(store, user_id, current, seen, entries))


def _as_entry(row: DecisionRow) -> LogEntry:
    """The not-yet-stored row as the newest log entry (an id above any real one)."""
    return LogEntry(
        id=2**62,
        action=row.action,
        proposal_id=row.proposal_id,
        code=row.code,
        before=list(row.before),
        after=list(row.after),
        memo=row.memo,
        undoes_id=row.undoes_id,
        state_version=row.state_version,
        created_at=row.created_at,
        spans=spans_from_json(row.spans) if row.spans is not None else None,
        carry=row.carry,
    )


def _state_values(st: ReviewState) -> dict[str, Any]:
    """The review_states columns of a derived state."""
    return {
        "version": st.version,
        "codes": st.codes,
        "spans": spans_to_json(st.spans),
        "done": st.done,
        "flagged": st.flagged,
        "memo": st.memo,
        "no_code": st.no_code,
        "proposal_status": {str(k): v for k, v in sorted(st.proposal_status.items())},
        "updated_at": utcnow(),
    }


def _write(store: Store, current: ReviewState, new: ReviewState, row: DecisionRow) -> None:
    """The conditional write: the state version moves from seen to seen+1, or Conflict.

    The first statement of the transaction is the write, so SQLite takes its write lock
    before reading anything (no stale-snapshot upgrade failures under WAL).
    """
    seen = current.version
    values = _state_values(new)
    values["version"] = seen + 1
    try:
        with store.session() as s:
            if seen == 0:
                s.add(
                    ReviewStateRow(passage_id=current.passage_id, user_id=current.user_id, **values)
                )
                s.flush()
            else:
                result = s.execute(
                    update(ReviewStateRow)
                    .where(
                        ReviewStateRow.passage_id == current.passage_id,
                        ReviewStateRow.user_id == current.user_id,
                        ReviewStateRow.version == seen,
                    )
                    .values(**values)
                )
                if result.rowcount != 1:
                    raise _Lost
            s.add(row)
            if seen == 0:
                _note_shared_track(s, current.passage_id, current.user_id)
    except (IntegrityError, _Lost):
        raise _conflict(store, row.user_id, current, seen) from None


def _note_shared_track(s: Any, passage_id: str, owner: int) -> None:
    """A track started on a unit with no shared owner yet: if it is not a blind track,
    it is the unit's shared track (the queue reads the owner from ``review_units``)."""
    blind = s.scalar(
        select(func.count())
        .select_from(AssignmentRow)
        .where(
            AssignmentRow.passage_id == passage_id,
            AssignmentRow.user_id == owner,
            AssignmentRow.double_coded.is_(True),
        )
    )
    if not blind:
        s.execute(
            update(ReviewUnitRow)
            .where(ReviewUnitRow.passage_id == passage_id, ReviewUnitRow.shared_owner.is_(None))
            .values(shared_owner=owner)
        )


class _Lost(Exception):
    """The conditional write matched no row: another change landed first."""


def write_carried(
    store: Store,
    owner: int,
    actor: int,
    passage_id: str,
    spans: Sequence[ReviewSpan],
    carry: dict[str, Any],
) -> ReviewState:
    """Start a track on a unit with a ``carry`` decision (the finished review of the
    unchanged unit of an earlier transcript version). The track must be new: a unit
    with a decision on it already is never overwritten (Conflict)."""
    entries = track_log(store, owner, passage_id)
    current = derive(passage_id, owner, entries)
    if current.version != 0:
        raise _conflict(store, actor, current, 0, entries)
    ordered = sorted(spans)
    row = DecisionRow(
        passage_id=passage_id,
        user_id=actor,
        track_user_id=owner,
        action="carry",
        code=None,
        before=[],
        after=codes_of(ordered),
        spans=spans_to_json(ordered),
        memo=carry.get("memo"),
        carry=carry,
        state_version=1,
        created_at=utcnow(),
    )
    new = derive(passage_id, owner, [_as_entry(row)])
    _write(store, current, new, row)
    return track_state(store, owner, passage_id)


# --------------------------------------------------------------------------- whole-log views


def _all_states(store: Store) -> dict[tuple[int, str], ReviewState]:
    """(track owner, unit id) -> derived state, for every track in the log."""
    grouped: dict[tuple[int, str], list[LogEntry]] = {}
    with store.session() as s:
        for r in s.scalars(select(DecisionRow).order_by(DecisionRow.id)):
            track = r.track_user_id if r.track_user_id is not None else r.user_id
            grouped.setdefault((track, r.passage_id), []).append(_entry(r))
    return {(uid, pid): derive(pid, uid, entries) for (uid, pid), entries in grouped.items()}


def rebuild_states(store: Store) -> int:
    """Recompute the ``review_states`` cache from the log; returns rows written."""
    states = _all_states(store)
    with store.session() as s:
        s.execute(delete(ReviewStateRow))
        s.add_all(
            ReviewStateRow(passage_id=st.passage_id, user_id=st.user_id, **_state_values(st))
            for st in states.values()
        )
    return len(states)


def _finished(store: Store, include_unfinished: bool) -> list[tuple[str, str, ReviewState]]:
    """(username, unit id, state) of every track counted as a reviewer's coding."""
    with store.session() as s:
        names = dict(s.execute(select(UserRow.id, UserRow.username)).all())
        live = set(
            s.scalars(
                select(PassageRow.id)
                .join(TranscriptRow, TranscriptRow.id == PassageRow.transcript_id)
                .where(TranscriptRow.is_current.is_(True))
            )
        )
    out = []
    for (uid, pid), st in sorted(_all_states(store).items()):
        if pid not in live:
            continue
        if st.done or (include_unfinished and st.last_effective_id is not None):
            out.append((names[uid], pid, st))
    return out


def reviewer_codings(store: Store, *, include_unfinished: bool = False) -> dict[str, Coding]:
    """Each track's current codes per unit, for the agreement library: username ->
    Coding (unit id -> the codes of its spans).

    Whose coding: a track's coding is attributed to the track's owner. A double-coded
    unit yields each of its two reviewers' own (blind, independent) codings, so
    human-human agreement compares independent work. Every other unit has one shared
    coding, attributed to its owner (the primary assignee, or the admin who started it
    on an unassigned unit) whoever made the individual decisions; it is never counted
    as a second coder's. Who did what stays in the log (``decisions.user_id``).

    Exactly which units: those of current transcript versions (a review carried over
    to a new version counts there, once) whose derived state is *done* ("Done" pressed
    and not undone). A unit touched but not finished is work in progress and is left out
    unless ``include_unfinished`` (then every unit with at least one decision still in
    effect counts). An empty code set means that no code applies. Derived from the
    decision log, not the cache. ``reviewer_span_codings`` gives the spans themselves.
    """
    out: dict[str, Coding] = {}
    for name, pid, st in _finished(store, include_unfinished):
        out.setdefault(name, {})[pid] = frozenset(st.codes)
    return out


def reviewer_span_codings(
    store: Store,
    *,
    reviewers: Iterable[str] | None = None,
    include_unfinished: bool = False,
) -> dict[str, SpanCoding]:
    """Each reviewer's coding as spans: username -> ``SpanCoding``.

    The spans are the track's spans on the transcript text; the scope is the codable
    text of the units the reviewer finished (what they answered for: text in scope that
    no span covers carries no code; context and unfinished units are outside it).
    Attribution and which units count are those of ``reviewer_codings``: a blind
    double-coded unit gives its two reviewers two independent codings.
    """
    wanted = set(reviewers) if reviewers is not None else None
    rows = [r for r in _finished(store, include_unfinished) if wanted is None or r[0] in wanted]
    units = _units(store, [pid for _, pid, _ in rows])
    out: dict[str, SpanCoding] = {}
    for name, pid, st in rows:
        unit = units.get(pid)
        if unit is None:
            continue
        coding = out.setdefault(name, SpanCoding(coder=name))
        coding.scope.setdefault(unit.transcript_id, []).extend(codable_ranges(unit))
        coding.spans += [Span(unit.transcript_id, s.start, s.end, s.code) for s in st.spans]
    for coding in out.values():
        coding.scope = {tid: _merged(r) for tid, r in sorted(coding.scope.items())}
        coding.spans.sort()
    return out


def _units(store: Store, ids: Sequence[str]) -> dict[str, Passage]:
    wanted = list(dict.fromkeys(ids))
    out: dict[str, Passage] = {}
    for i in range(0, len(wanted), 500):
        out.update({p.id: p for p in store.passages(ids=wanted[i : i + 500])})
    return out


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
