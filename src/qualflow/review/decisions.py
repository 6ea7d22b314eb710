"""The review log: append decisions, derive the coding of each track from them.

Coding tracks. A passage has one *shared* coding that everybody who acts on it works
on (its assigned reviewer, a second reviewer it is also assigned to, an admin
adjudicating), except that each reviewer of a *double-coded* assignment codes on their
own blind track, so the two codings stay independent for human-human agreement. A track
is named by its owner's user id (``review_states.user_id``, ``decisions.track_user_id``):
a blind track by its reviewer; the shared track by the passage's primary assignee (the
first non-double-coded assignment), or, with no such assignee, by whoever started the
shared track (e.g. the admin who first acted on an unassigned passage). ``choose_track``
is that rule. ``decisions.user_id`` is always the user who acted (the audit log).

``decisions`` is append-only: nothing here updates or deletes a decision row. An undo
is one more row (``action="undo"``, ``undoes_id`` = the decision it cancels); it
cancels the track's latest decision on the passage that is still in effect (on a shared
track that may be somebody else's, shown in the page's history), so undoing repeatedly
walks back through the log. The state of a track (codes, done, flagged, memo, what
happened to each proposal) is derived by replaying the decisions still in effect;
``review_states`` is a cache of that derivation, kept in the same transaction as each
decision and rebuildable with ``rebuild_states``.

Optimistic concurrency: a track's state has a ``version`` equal to the number of
decisions in its log for the passage. Every change names the version it was made
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

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from qualflow.db import (
    AssignmentRow,
    DecisionRow,
    PassageRow,
    ProposalRow,
    ReviewStateRow,
    UserRow,
)
from qualflow.models import Coding, utcnow
from qualflow.review.codes import codebook_for
from qualflow.store import Store

ACTIONS = ("accept", "reject", "replace", "add", "remove", "no_code", "flag", "unflag")
ACTIONS += ("memo", "done", "undo")
PROPOSAL_ACTIONS = ("accept", "reject", "replace")


class DecisionError(ValueError):
    """A decision that cannot be made (unknown proposal, code not in the codebook...)."""


class Conflict(Exception):
    """The track changed since the version the user acted on; ``by`` names who changed
    it (user names, oldest change first; "you (in another window)" for the user)."""

    def __init__(self, seen: int, current: int, by: Sequence[str] = ()):
        who = f" by {', '.join(by)}" if by else ""
        super().__init__(
            f"This passage was changed{who} since you loaded it (you saw version {seen}, "
            f"it is now at version {current}), so your action was not saved."
        )
        self.seen = seen
        self.current = current
        self.by = list(by)


@dataclass
class ReviewState:
    """One track's current coding of one passage, derived from the log
    (``user_id`` is the track's owner, not necessarily who acted)."""

    passage_id: str
    user_id: int
    version: int = 0
    codes: list[str] = field(default_factory=list)
    done: bool = False
    flagged: bool = False
    memo: str | None = None
    proposal_status: dict[int, str] = field(default_factory=dict)
    last_effective_id: int | None = None
    no_code: bool = False  # "no code applies" said explicitly and still in effect


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


_STATUS = {"accept": "accepted", "reject": "rejected", "replace": "replaced"}


def derive(passage_id: str, user_id: int, log: Iterable[LogEntry]) -> ReviewState:
    """Replay a track's log (in id order) for one passage; ``user_id`` = track owner."""
    entries = sorted(log, key=lambda e: e.id)
    undone = {e.undoes_id for e in entries if e.action == "undo"}
    state = ReviewState(passage_id, user_id, version=len(entries))
    for e in entries:
        if e.action == "undo" or e.id in undone:
            continue
        state.codes = sorted(e.after)
        state.last_effective_id = e.id
        state.no_code = e.action == "no_code" or (state.no_code and not state.codes)
        if e.action in _STATUS and e.proposal_id is not None:
            state.proposal_status[e.proposal_id] = _STATUS[e.action]
        elif e.action in ("flag", "unflag"):
            state.flagged = e.action == "flag"
        elif e.action == "done":
            state.done = True
        if e.memo is not None and e.action in ("memo", "done"):
            state.memo = e.memo or None
    return state


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
    )


def _track():
    """The track of a decision row, in SQL (rows without track_user_id are the actor's)."""
    return func.coalesce(DecisionRow.track_user_id, DecisionRow.user_id)


def choose_track(
    user_id: int,
    assignments: Sequence[tuple[int, int, bool]],
    started: Sequence[tuple[int, int]] = (),
) -> int:
    """The owner of the track ``user_id`` acts on, for one passage.

    ``assignments``: the passage's (assignment id, user id, double_coded);
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
    """``choose_track`` for many passages at once: passage id -> track owner."""
    wanted = set(passage_ids)
    if not wanted:
        return {}
    with store.session() as s:
        q = select(
            AssignmentRow.passage_id,
            AssignmentRow.id,
            AssignmentRow.user_id,
            AssignmentRow.double_coded,
        )
        if len(wanted) == 1:
            q = q.where(AssignmentRow.passage_id.in_(list(wanted)))
        assigned: dict[str, list[tuple[int, int, bool]]] = {}
        for pid, aid, uid, double in s.execute(q):
            if pid in wanted:
                assigned.setdefault(pid, []).append((aid, uid, bool(double)))
        # only passages with no shared assignee need to know which tracks were started
        open_ids = [
            pid
            for pid in wanted
            if not any(not d or uid == user_id for _, uid, d in assigned.get(pid, []))
        ]
        started: dict[str, list[tuple[int, int]]] = {}
        if open_ids:
            q = select(DecisionRow.passage_id, func.min(DecisionRow.id), _track()).group_by(
                DecisionRow.passage_id, _track()
            )
            if len(open_ids) <= 500:
                q = q.where(DecisionRow.passage_id.in_(open_ids))
            for pid, first, owner in s.execute(q):
                started.setdefault(pid, []).append((first, owner))
    return {
        pid: choose_track(user_id, assigned.get(pid, []), started.get(pid, [])) for pid in wanted
    }


def track_owner(store: Store, user_id: int, passage_id: str) -> int:
    """The owner of the track ``user_id`` acts on for this passage."""
    return track_owners(store, user_id, [passage_id])[passage_id]


def track_log(store: Store, owner_id: int, passage_id: str) -> list[LogEntry]:
    """The decisions of one track on this passage, oldest first."""
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
    """The decisions of the track this user acts on for this passage, oldest first."""
    return track_log(store, track_owner(store, user_id, passage_id), passage_id)


def state(store: Store, user_id: int, passage_id: str) -> ReviewState:
    """The state of the track this user acts on for this passage."""
    return track_state(store, track_owner(store, user_id, passage_id), passage_id)


def tracks(store: Store, passage_id: str) -> list[int]:
    """Owners of the tracks with decisions on this passage, in the order they started."""
    with store.session() as s:
        rows = s.execute(
            select(_track(), func.min(DecisionRow.id))
            .where(DecisionRow.passage_id == passage_id)
            .group_by(_track())
        ).all()
    return [owner for owner, _ in sorted(rows, key=lambda r: r[1])]


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
) -> ReviewState:
    """User ``user_id`` appends one decision, made against ``version``, to the track
    they act on (``track_owner``); returns the track's new state.

    Raises ``Conflict`` when the track moved on since ``version`` (whoever moved it)
    and ``DecisionError`` for a decision that makes no sense.
    """
    if action not in ACTIONS:
        raise DecisionError(f"action '{action}': must be one of {', '.join(ACTIONS)}")
    with store.session() as s:
        if s.get(PassageRow, passage_id) is None:
            raise DecisionError(f"no passage '{passage_id}'")
        if s.get(UserRow, user_id) is None:
            raise DecisionError(f"no user with id {user_id}")
    owner = track_owner(store, user_id, passage_id)
    entries = track_log(store, owner, passage_id)
    current = derive(passage_id, owner, entries)
    if version != current.version:
        raise _conflict(store, user_id, current, version, entries)
    row = _plan(store, current, entries, action, proposal_id, code, memo)
    row.user_id, row.track_user_id = user_id, owner
    new = derive(passage_id, owner, [*entries, _as_entry(row)])
    _write(store, current, new, row)
    return track_state(store, owner, passage_id)


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


def _plan(
    store: Store,
    current: ReviewState,
    entries: list[LogEntry],
    action: str,
    proposal_id: int | None,
    code: str | None,
    memo: str | None,
) -> DecisionRow:
    """The decision row to append (validated, with before/after codes)."""
    codes = set(current.codes)
    undoes_id = None
    if action in PROPOSAL_ACTIONS:
        proposed = _proposal_code(store, current.passage_id, proposal_id)
        if action == "accept":
            code, after = proposed, codes | {proposed}
        elif action == "reject":
            code, after = proposed, codes - {proposed}
        else:
            code = _known_code(store, current.passage_id, code)
            after = (codes - {proposed}) | {code}
    elif action == "add":
        code = _known_code(store, current.passage_id, code)
        after = codes | {code}
    elif action == "remove":
        if not code or code not in codes:
            raise DecisionError(f"code '{code}' is not in this passage's coding")
        after = codes - {code}
    elif action == "no_code":
        after = set()
    elif action == "undo":
        if current.last_effective_id is None:
            raise DecisionError("nothing to undo")
        undoes_id = current.last_effective_id
        rest = [e for e in entries if e.id != undoes_id]
        after = set(derive(current.passage_id, current.user_id, rest).codes)
    else:  # flag, unflag, memo, done
        after = codes
    if action == "memo" and memo is None:
        raise DecisionError("memo: text missing")
    return DecisionRow(
        passage_id=current.passage_id,
        user_id=current.user_id,
        action=action,
        proposal_id=proposal_id if action in PROPOSAL_ACTIONS else None,
        code=code,
        before=sorted(codes),
        after=sorted(after),
        memo=(memo.strip() if memo is not None else None) if action in ("memo", "done") else None,
        undoes_id=undoes_id,
        state_version=current.version + 1,
        created_at=utcnow(),
    )


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
    )


def _write(store: Store, current: ReviewState, new: ReviewState, row: DecisionRow) -> None:
    """The conditional write: the state version moves from seen to seen+1, or Conflict.

    The first statement of the transaction is the write, so SQLite takes its write lock
    before reading anything (no stale-snapshot upgrade failures under WAL).
    """
    seen = current.version
    values = {
        "version": seen + 1,
        "codes": new.codes,
        "done": new.done,
        "flagged": new.flagged,
        "updated_at": utcnow(),
    }
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
    except (IntegrityError, _Lost):
        raise _conflict(store, row.user_id, current, seen) from None


class _Lost(Exception):
    """The conditional write matched no row: another change landed first."""


def _proposal_code(store: Store, passage_id: str, proposal_id: int | None) -> str:
    if proposal_id is None:
        raise DecisionError("proposal_id missing")
    with store.session() as s:
        row = s.get(ProposalRow, proposal_id)
        if row is None or row.passage_id != passage_id or not row.valid:
            raise DecisionError(f"proposal {proposal_id} is not a valid proposal of this passage")
        return row.code


def _known_code(store: Store, passage_id: str, code: str | None) -> str:
    code = (code or "").strip()
    if not code:
        raise DecisionError("code missing")
    codebook = codebook_for(store, passage_id)
    if codebook is None:
        raise DecisionError("no codebook is stored, so no code can be added")
    if codebook.get(code) is None:
        raise DecisionError(f"code '{code}' is not in codebook '{codebook.name}'")
    return code


# --------------------------------------------------------------------------- whole-log views


def _all_states(store: Store) -> dict[tuple[int, str], ReviewState]:
    """(track owner, passage id) -> derived state, for every track in the log."""
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
            ReviewStateRow(
                passage_id=st.passage_id,
                user_id=st.user_id,
                version=st.version,
                codes=st.codes,
                done=st.done,
                flagged=st.flagged,
                updated_at=utcnow(),
            )
            for st in states.values()
        )
    return len(states)


def reviewer_codings(store: Store, *, include_unfinished: bool = False) -> dict[str, Coding]:
    """Each track's current codings, for the agreement library: username -> Coding.

    Whose coding: a track's coding is attributed to the track's owner. A double-coded
    passage yields each of its two reviewers' own (blind, independent) codings, so
    human-human agreement compares independent work. Every other passage has one shared
    coding, attributed to its owner (the primary assignee, or the admin who started it
    on an unassigned passage) whoever made the individual decisions; it is never counted
    as a second coder's. Who did what stays in the log (``decisions.user_id``).

    Exactly which passages: those whose derived state is *done* ("Done" pressed and not
    undone). A passage touched but not finished is work in progress and is left out
    unless ``include_unfinished`` (then every passage with at least one decision still
    in effect counts). An empty code set means that no code applies. Derived from the
    decision log, not the cache.
    """
    with store.session() as s:
        names = dict(s.execute(select(UserRow.id, UserRow.username)).all())
        live = set(s.scalars(select(PassageRow.id)))
    out: dict[str, Coding] = {}
    for (uid, pid), st in sorted(_all_states(store).items()):
        if pid not in live:
            continue
        if st.done or (include_unfinished and st.last_effective_id is not None):
            out.setdefault(names[uid], {})[pid] = frozenset(st.codes)
    return out
