"""The review log: append decisions, derive each reviewer's coding from them.

``decisions`` is append-only: nothing here updates or deletes a decision row. An undo
is one more row (``action="undo"``, ``undoes_id`` = the decision it cancels); it
cancels the reviewer's latest decision on the passage that is still in effect, so
undoing repeatedly walks back through the log. The state of a passage for a reviewer
(codes, done, flagged, memo, what happened to each proposal) is derived by replaying
the decisions still in effect; ``review_states`` is a cache of that derivation, kept in
the same transaction as each decision and rebuildable with ``rebuild_states``.

Optimistic concurrency: a reviewer's state has a ``version`` equal to the number of
decisions in their log for the passage. Every change names the version it was made
against; the write is ``UPDATE review_states ... WHERE version = :seen`` (or an INSERT
for the first decision, guarded by the primary key), so of two concurrent changes made
against the same version exactly one lands and the other raises ``Conflict``. No
SQLite-only SQL: the same code runs on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from qualflow.db import DecisionRow, PassageRow, ProposalRow, ReviewStateRow, UserRow
from qualflow.models import Coding, utcnow
from qualflow.review.codes import codebook_for
from qualflow.store import Store

ACTIONS = ("accept", "reject", "replace", "add", "remove", "no_code", "flag", "unflag")
ACTIONS += ("memo", "done", "undo")
PROPOSAL_ACTIONS = ("accept", "reject", "replace")


class DecisionError(ValueError):
    """A decision that cannot be made (unknown proposal, code not in the codebook...)."""


class Conflict(Exception):
    """The state changed since the version the reviewer acted on."""

    def __init__(self, seen: int, current: int):
        super().__init__(
            f"This passage changed since you loaded it (you saw version {seen}, "
            f"it is now at version {current}), so your action was not saved."
        )
        self.seen = seen
        self.current = current


@dataclass
class ReviewState:
    """One reviewer's current coding of one passage, derived from the log."""

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


_STATUS = {"accept": "accepted", "reject": "rejected", "replace": "replaced"}


def derive(passage_id: str, user_id: int, log: Iterable[LogEntry]) -> ReviewState:
    """Replay a reviewer's log (in id order) for one passage."""
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
    )


def log(store: Store, user_id: int, passage_id: str) -> list[LogEntry]:
    """This reviewer's decisions on this passage, oldest first."""
    with store.session() as s:
        rows = s.scalars(
            select(DecisionRow)
            .where(DecisionRow.user_id == user_id, DecisionRow.passage_id == passage_id)
            .order_by(DecisionRow.id)
        )
        return [_entry(r) for r in rows]


def state(store: Store, user_id: int, passage_id: str) -> ReviewState:
    return derive(passage_id, user_id, log(store, user_id, passage_id))


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
    """Append one decision made against ``version``; returns the new state.

    Raises ``Conflict`` when the state moved on since ``version`` and
    ``DecisionError`` for a decision that makes no sense.
    """
    if action not in ACTIONS:
        raise DecisionError(f"action '{action}': must be one of {', '.join(ACTIONS)}")
    with store.session() as s:
        if s.get(PassageRow, passage_id) is None:
            raise DecisionError(f"no passage '{passage_id}'")
        if s.get(UserRow, user_id) is None:
            raise DecisionError(f"no user with id {user_id}")
    entries = log(store, user_id, passage_id)
    current = derive(passage_id, user_id, entries)
    if version != current.version:
        raise Conflict(version, current.version)
    row = _plan(store, current, entries, action, proposal_id, code, memo)
    new = derive(passage_id, user_id, [*entries, _as_entry(row)])
    _write(store, current, new, row)
    return state(store, user_id, passage_id)


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
                    raise Conflict(seen, _cached_version(s, current))
            s.add(row)
    except IntegrityError:
        with store.session() as s:
            raise Conflict(seen, _cached_version(s, current)) from None


def _cached_version(s, current: ReviewState) -> int:
    v = s.scalar(
        select(ReviewStateRow.version).where(
            ReviewStateRow.passage_id == current.passage_id,
            ReviewStateRow.user_id == current.user_id,
        )
    )
    return int(v or 0)


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
    grouped: dict[tuple[int, str], list[LogEntry]] = {}
    with store.session() as s:
        for r in s.scalars(select(DecisionRow).order_by(DecisionRow.id)):
            grouped.setdefault((r.user_id, r.passage_id), []).append(_entry(r))
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
    """Each reviewer's current codings, for the agreement library: username -> Coding.

    Exactly which passages: those whose derived state is *done* (the reviewer pressed
    "Done" and has not undone it). A passage the reviewer touched but did not finish is
    work in progress and is left out unless ``include_unfinished`` (then every passage
    with at least one decision still in effect counts). An empty code set means the
    reviewer decided that no code applies. Derived from the decision log, not the cache.
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
