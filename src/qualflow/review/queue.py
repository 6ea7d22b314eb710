"""The review queue: which units a user reviews, in which order, and how far along.

A unit (a chunk, or a sentence passage of an older store) is in the queue when it has a
machine proposal set with status ``ok`` or ``needs_human`` (``failed`` sets have nothing
to review) and belongs to the current version of its transcript. Reviewers see only the
units assigned to them; admins see every unit in the queue. Units assigned blind to the
machine show neither proposed codes nor confidence in the queue, never match a code
filter and sort as if the machine had proposed nothing. Done and flagged are those of
the coding track the user acts on (``decisions.choose_track``): their own on a
double-coded unit, the unit's shared coding otherwise.

Scale: the queue lives in the ``review_units`` table (one row per reviewable unit, with
its sort keys), kept in step by ``sync`` from what changed since the last request (new
proposal sets, assignments and decisions by id, transcript versions by a fingerprint).
Pages are keyset-paged in the database (``WHERE (keys) > (keys of the last row) ORDER BY
keys LIMIT n``), counts are aggregate queries, and previous / next / "done, next" are
single indexed queries: nothing loads the whole queue per request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    and_,
    case,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import aliased

from qualflow.db import (
    AssignmentRow,
    DecisionRow,
    PassageRow,
    ProposalRow,
    ProposalSetRow,
    ReviewStateRow,
    ReviewUnitCodeRow,
    ReviewUnitRow,
    TranscriptRow,
    UserRow,
)
from qualflow.review.assignment import plan_assignments
from qualflow.review.auth import User
from qualflow.review.codes import REVIEWABLE
from qualflow.store import Store

ORDERS = {
    "confidence": "Lowest confidence first",
    "transcript": "Transcript order",
    "random": "Random audit sample",
}
SHOW = {"pending": "To do", "done": "Done", "flagged": "Flagged", "all": "All"}
PAGE_SIZE = 100
SYNC_KEY = "review_queue_sync"
_PRIME = 2_147_483_629  # the seeded shuffle: (shuffle * multiplier) mod a prime
NO_PROPOSAL_RANK = 2.0
NEEDS_HUMAN_RANK = -1.0


@dataclass
class Filters:
    transcript: str | None = None
    participant: str | None = None
    code: str | None = None
    run: int | None = None
    coder: str | None = None
    order: str = "confidence"
    seed: int = 0
    show: str = "pending"
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order '{self.order}': must be one of {', '.join(ORDERS)}")
        if self.show not in SHOW:
            raise ValueError(f"show '{self.show}': must be one of {', '.join(SHOW)}")

    def query(self, **changes: object) -> dict[str, str]:
        """Non-empty fields as query parameters (for links that keep the filters)."""
        out: dict[str, str] = {}
        for key in ("transcript", "participant", "code", "run", "coder", "seed", "limit"):
            value = changes.get(key, getattr(self, key))
            if value not in (None, "") and not (key == "seed" and value == 0):
                out[key] = str(value)
        for key, default in (("order", "confidence"), ("show", "pending")):
            value = changes.get(key, getattr(self, key))
            if value != default:
                out[key] = str(value)
        return out


@dataclass
class Item:
    passage_id: str
    transcript: str
    participant: str | None
    index: int
    speaker: str | None
    text: str
    needs_human: bool = False
    confidence: float | None = None
    codes: list[str] = field(default_factory=list)  # proposed by the machine
    done: bool = False
    flagged: bool = False
    blind: bool = False
    double_coded: bool = False
    mine: list[str] = field(default_factory=list)  # the codes of the user's coding
    spans: int = 0  # how many spans the user's coding holds
    no_code: bool = False  # the user said that no code applies


@dataclass(frozen=True)
class Progress:
    done: int
    total: int

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0


@dataclass
class Page:
    rows: list[Item]
    next_after: str | None  # cursor of the next page (None: this is the last)
    shown: int  # rows matching the show filter (and the sample size)


# --------------------------------------------------------------------------- sync


def _fingerprint(s: Any) -> dict[str, Any]:
    transcripts = s.execute(
        select(
            TranscriptRow.id,
            TranscriptRow.is_current,
            TranscriptRow.name,
            TranscriptRow.participant_id,
        ).order_by(TranscriptRow.id)
    ).all()
    digest = hashlib.sha256(repr([tuple(r) for r in transcripts]).encode()).hexdigest()
    return {
        "sets": s.scalar(select(func.max(ProposalSetRow.id))) or 0,
        "assignments": s.scalar(select(func.max(AssignmentRow.id))) or 0,
        "decisions": s.scalar(select(func.max(DecisionRow.id))) or 0,
        "transcripts": digest,
    }


_SKIP_SYNC: ContextVar[bool] = ContextVar("qualflow_review_skip_sync", default=False)


@contextmanager
def _no_sync() -> Iterator[None]:
    """Inside (this thread or task only): ``sync`` does nothing (the caller synced
    already, or cannot)."""
    token = _SKIP_SYNC.set(True)
    try:
        yield
    finally:
        _SKIP_SYNC.reset(token)


@contextmanager
def synced(store: Store) -> Iterator[None]:
    """Sync once, then skip syncing inside (one request of the app)."""
    sync(store)
    with _no_sync():
        yield


def sync(store: Store) -> None:
    """Bring ``review_units`` in step with the store (a few small queries when nothing
    changed; the first call on a store fills it)."""
    if _SKIP_SYNC.get():
        return
    for attempt in range(3):
        try:
            _sync_once(store)
            return
        except (IntegrityError, OperationalError):
            if attempt == 2:  # another process keeps syncing: it brings the table along
                raise


def _sync_once(store: Store) -> None:
    with store.session() as s:
        now = _fingerprint(s)
    saved = store.meta(SYNC_KEY) or {}
    if saved == now:
        return
    with store.session() as s:
        fresh = not saved
        units = _changed_units(s, int(saved.get("sets", 0) or 0))
        _upsert_units(s, units)
        owners = set(units) | _assigned_since(s, int(saved.get("assignments", 0) or 0))
        owners |= _decided_since(s, int(saved.get("decisions", 0) or 0))
        _update_shared_owners(s, owners)
        if fresh or saved.get("transcripts") != now["transcripts"]:
            _update_transcripts(s)
    store.set_meta(SYNC_KEY, now)


def _changed_units(s: Any, after_set: int) -> list[str]:
    q = select(ProposalSetRow.passage_id).where(
        ProposalSetRow.id > after_set, ProposalSetRow.status.in_(REVIEWABLE)
    )
    return list(dict.fromkeys(s.scalars(q.order_by(ProposalSetRow.id))))


def _upsert_units(s: Any, ids: Sequence[str]) -> None:
    for i in range(0, len(ids), 500):
        part = list(ids[i : i + 500])
        sets = s.execute(
            select(ProposalSetRow.passage_id, ProposalSetRow.status).where(
                ProposalSetRow.passage_id.in_(part), ProposalSetRow.status.in_(REVIEWABLE)
            )
        ).all()
        needs = {pid for pid, status in sets if status == "needs_human"}
        props: dict[str, list[tuple[str, float]]] = {}
        for pid, code, conf in s.execute(
            select(ProposalRow.passage_id, ProposalRow.code, ProposalRow.confidence)
            .join(ProposalSetRow, ProposalSetRow.id == ProposalRow.set_id)
            .where(
                ProposalRow.passage_id.in_(part),
                ProposalRow.valid.is_(True),
                ProposalSetRow.status.in_(REVIEWABLE),
            )
        ):
            props.setdefault(pid, []).append((code, float(conf)))
        places = {
            p.id: (p, t)
            for p, t in s.execute(
                select(PassageRow, TranscriptRow)
                .join(TranscriptRow, TranscriptRow.id == PassageRow.transcript_id)
                .where(PassageRow.id.in_(part))
            )
        }
        known = {r.passage_id: r for r in s.scalars(
            select(ReviewUnitRow).where(ReviewUnitRow.passage_id.in_(part))
        )}  # fmt: skip
        for pid in part:
            if pid not in places:
                continue
            _put_unit(s, known.get(pid), places[pid], pid in needs, props.get(pid, []))


def _put_unit(s: Any, row: Any, place: tuple, needs_human: bool, props: list) -> None:
    p, t = place
    confidence = min((c for _, c in props), default=None)
    codes = sorted({code for code, _ in props})
    rank = NEEDS_HUMAN_RANK if needs_human else (
        NO_PROPOSAL_RANK if confidence is None else confidence
    )  # fmt: skip
    values = dict(
        transcript_id=t.id,
        transcript_name=t.name,
        participant_id=t.participant_id,
        position=p.index,
        current=bool(t.is_current),
        needs_human=needs_human,
        min_confidence=confidence,
        rank=rank,
        proposals=len(props),
        codes=codes,
    )
    if row is None:
        shuffle = int(hashlib.sha256(p.id.encode()).hexdigest()[:8], 16) % _PRIME
        s.add(ReviewUnitRow(passage_id=p.id, shuffle=shuffle, **values))
        s.flush()
        have: set[str] = set()
    else:
        for key, value in values.items():
            setattr(row, key, value)
        have = set(
            s.scalars(select(ReviewUnitCodeRow.code).where(ReviewUnitCodeRow.passage_id == p.id))
        )
    s.add_all(ReviewUnitCodeRow(passage_id=p.id, code=c) for c in codes if c not in have)


def _assigned_since(s: Any, after: int) -> set[str]:
    return set(s.scalars(select(AssignmentRow.passage_id).where(AssignmentRow.id > after)))


def _decided_since(s: Any, after: int) -> set[str]:
    return set(s.scalars(select(DecisionRow.passage_id).where(DecisionRow.id > after)))


def _update_shared_owners(s: Any, ids: Iterable[str]) -> None:
    """The owner of each unit's shared track: its primary assignee (first non-double
    assignment), else the owner of the first started track that is nobody's blind
    track (``decisions.choose_track``), else none yet."""
    wanted = list(ids)
    for i in range(0, len(wanted), 500):
        part = wanted[i : i + 500]
        assigned: dict[str, list[tuple[int, int, bool]]] = {}
        for pid, aid, uid, double in s.execute(
            select(
                AssignmentRow.passage_id,
                AssignmentRow.id,
                AssignmentRow.user_id,
                AssignmentRow.double_coded,
            ).where(AssignmentRow.passage_id.in_(part))
        ):
            assigned.setdefault(pid, []).append((aid, uid, bool(double)))
        track = func.coalesce(DecisionRow.track_user_id, DecisionRow.user_id)
        started: dict[str, list[tuple[int, int]]] = {}
        for pid, first, owner in s.execute(
            select(DecisionRow.passage_id, func.min(DecisionRow.id), track)
            .where(DecisionRow.passage_id.in_(part))
            .group_by(DecisionRow.passage_id, track)
        ):
            started.setdefault(pid, []).append((first, owner))
        for pid in part:
            owner = _shared_owner(assigned.get(pid, []), started.get(pid, []))
            s.execute(
                update(ReviewUnitRow)
                .where(ReviewUnitRow.passage_id == pid)
                .values(shared_owner=owner)
            )


def _shared_owner(
    assignments: Sequence[tuple[int, int, bool]], started: Sequence[tuple[int, int]]
) -> int | None:
    shared = sorted((aid, uid) for aid, uid, double in assignments if not double)
    if shared:
        return shared[0][1]
    blind = {uid for _, uid, double in assignments if double}
    open_tracks = sorted((first, owner) for first, owner in started if owner not in blind)
    return open_tracks[0][1] if open_tracks else None


def _update_transcripts(s: Any) -> None:
    for tid, current, name, participant in s.execute(
        select(
            TranscriptRow.id,
            TranscriptRow.is_current,
            TranscriptRow.name,
            TranscriptRow.participant_id,
        )
    ):
        s.execute(
            update(ReviewUnitRow)
            .where(ReviewUnitRow.transcript_id == tid)
            .where(
                or_(
                    ReviewUnitRow.current.is_not(bool(current)),
                    ReviewUnitRow.transcript_name != name,
                    _differs(ReviewUnitRow.participant_id, participant),
                )
            )
            .values(current=bool(current), transcript_name=name, participant_id=participant)
        )


def _differs(column: Any, value: str | None) -> Any:
    if value is None:
        return column.is_not(None)
    return or_(column.is_(None), column != value)


# --------------------------------------------------------------------------- the query


class _Query:
    """The SQL of one user's queue under some filters: joins, conditions, sort keys."""

    def __init__(self, user: User, filters: Filters, *, any_blind: bool = True):
        self.user, self.filters, self.any_blind = user, filters, any_blind
        self.u = ReviewUnitRow
        self.a = aliased(AssignmentRow)
        self.rs = aliased(ReviewStateRow)
        double = func.coalesce(self.a.double_coded, false())
        self.owner = case(
            (double.is_(True), literal(user.id)),
            else_=func.coalesce(self.u.shared_owner, literal(user.id)),
        )
        self.blind = func.coalesce(self.a.blind_to_machine, false())
        self.done = func.coalesce(self.rs.done, false())

    def keys(self) -> list[Any]:
        u = self.u
        order = self.filters.order
        if order == "transcript":
            return [u.transcript_name, u.position, u.passage_id]
        if order == "random":
            multiplier = self.filters.seed % (_PRIME - 1) + 1
            return [(u.shuffle * literal(multiplier)) % literal(_PRIME), u.passage_id]
        if not self.any_blind:  # the plain column: the index gives the order
            return [u.rank, u.transcript_name, u.position, u.passage_id]
        rank = case((self.blind.is_(True), literal(NO_PROPOSAL_RANK)), else_=u.rank)
        return [rank, u.transcript_name, u.position, u.passage_id]

    def select(self, *columns: Any, show: bool = True) -> Any:
        u, a, rs = self.u, self.a, self.rs
        on_a = and_(a.passage_id == u.passage_id, a.user_id == self.user.id)
        q = select(*columns).select_from(u)
        q = q.outerjoin(a, on_a) if self.user.is_admin else q.join(a, on_a)
        q = q.outerjoin(rs, and_(rs.passage_id == u.passage_id, rs.user_id == self.owner))
        q = q.where(u.current == true())
        for condition in self._conditions(show):
            q = q.where(condition)
        return q

    def _conditions(self, show: bool) -> list[Any]:
        f, u = self.filters, self.u
        out: list[Any] = []
        if f.transcript:
            out.append(u.transcript_name == f.transcript)
        if f.participant:
            out.append(u.participant_id == f.participant)
        if f.run is not None or f.coder:
            ps = select(ProposalSetRow.id).where(
                ProposalSetRow.passage_id == u.passage_id, ProposalSetRow.status.in_(REVIEWABLE)
            )
            if f.run is not None:
                ps = ps.where(ProposalSetRow.run_id == f.run)
            if f.coder:
                ps = ps.where(ProposalSetRow.coder == f.coder)
            out.append(exists(ps))
        if f.code:
            c = ReviewUnitCodeRow
            wanted = f.code
            prefix = func.substr(c.code, 1, len(wanted) + 1) == wanted + "."
            out.append(self.blind.is_(False))
            out.append(
                exists(
                    select(c.code).where(
                        c.passage_id == u.passage_id, or_(c.code == wanted, prefix)
                    )
                )
            )
        if show:
            out += self._show()
        return out

    def _show(self) -> list[Any]:
        show = self.filters.show
        if show == "pending":
            return [self.done.is_(False)]
        if show == "done":
            return [self.done.is_(True)]
        if show == "flagged":
            if self.user.is_admin:  # admins see every flag (the discussion list)
                other = aliased(ReviewStateRow)
                return [
                    exists(
                        select(other.user_id).where(
                            other.passage_id == self.u.passage_id, other.flagged.is_(True)
                        )
                    )
                ]
            return [func.coalesce(self.rs.flagged, false()).is_(True)]
        return []

    def row_columns(self) -> list[Any]:
        u, a, rs = self.u, self.a, self.rs
        return [
            u.passage_id,
            u.transcript_name,
            u.participant_id,
            u.position,
            u.needs_human,
            u.min_confidence,
            u.codes,
            self.done.label("done"),
            func.coalesce(rs.flagged, false()).label("flagged"),
            self.blind.label("blind"),
            func.coalesce(a.double_coded, false()).label("double_coded"),
            rs.codes.label("mine"),
            rs.spans.label("spans"),
            func.coalesce(rs.no_code, false()).label("no_code"),
        ]


def _query(store: Store, user: User, filters: Filters | None) -> _Query:
    """The user's queue query (synced first); blind assignments change the sort key."""
    sync(store)
    with store.session() as s:
        any_blind = s.scalar(
            select(AssignmentRow.id)
            .where(AssignmentRow.user_id == user.id, AssignmentRow.blind_to_machine.is_(True))
            .limit(1)
        )
    return _Query(user, filters or Filters(), any_blind=any_blind is not None)


def _key_of(s: Any, q: _Query, passage_id: str) -> tuple | None:
    """The sort key of one unit of this queue (None when it is not in it)."""
    row = s.execute(
        q.select(*q.keys(), show=False).where(ReviewUnitRow.passage_id == passage_id)
    ).first()
    return tuple(row) if row is not None else None


def _sample_end(s: Any, q: _Query) -> tuple | None:
    """The key of the last unit of the audit sample (None: no sample size set)."""
    if not q.filters.limit:
        return None
    keys = q.keys()
    row = s.execute(
        q.select(*keys, show=False).order_by(*keys).offset(q.filters.limit - 1).limit(1)
    ).first()
    return tuple(row) if row is not None else None


def _within(q: _Query, end: tuple | None) -> list[Any]:
    return [] if end is None else [tuple_(*q.keys()) <= tuple_(*end)]


def page(
    store: Store,
    user: User,
    filters: Filters | None = None,
    *,
    after: str | None = None,
    size: int = PAGE_SIZE,
) -> Page:
    """One page of the user's queue (the show filter and the sample size applied),
    starting after the unit ``after`` (a keyset cursor)."""
    q = _query(store, user, filters)
    keys = q.keys()
    with store.session() as s:
        end = _sample_end(s, q)
        base = q.select(*q.row_columns())
        for condition in _within(q, end):
            base = base.where(condition)
        if after:
            start = _key_of(s, q, after)
            if start is not None:
                base = base.where(tuple_(*keys) > tuple_(*start))
        rows = s.execute(base.order_by(*keys).limit(size + 1)).all()
        shown_q = q.select(func.count())
        for condition in _within(q, end):
            shown_q = shown_q.where(condition)
        shown = s.scalar(shown_q) or 0
        items = _items(s, rows[:size])
    more = len(rows) > size
    return Page(items, items[-1].passage_id if more and items else None, shown)


def _items(s: Any, rows: Sequence[Any]) -> list[Item]:
    ids = [r.passage_id for r in rows]
    passages = {
        pid: (speaker, text)
        for pid, speaker, text in s.execute(
            select(PassageRow.id, PassageRow.speaker, PassageRow.text).where(
                PassageRow.id.in_(ids or [""])
            )
        )
    }
    out = []
    for r in rows:
        speaker, text = passages.get(r.passage_id, (None, ""))
        blind = bool(r.blind)
        out.append(
            Item(
                passage_id=r.passage_id,
                transcript=r.transcript_name,
                participant=r.participant_id,
                index=r.position,
                speaker=speaker,
                text=text,
                needs_human=bool(r.needs_human) and not blind,
                confidence=None if blind else r.min_confidence,
                codes=[] if blind else list(r.codes or []),
                done=bool(r.done),
                flagged=bool(r.flagged),
                blind=blind,
                double_coded=bool(r.double_coded),
                mine=list(r.mine or []),
                spans=len(r.spans or []),
                no_code=bool(r.no_code),
            )
        )
    return out


def _admin_flags(s: Any, user: User, items: list[Item]) -> None:
    """Admins see a unit flagged by anyone as flagged."""
    if not user.is_admin or not items:
        return
    flagged = set(
        s.scalars(
            select(ReviewStateRow.passage_id).where(
                ReviewStateRow.passage_id.in_([i.passage_id for i in items]),
                ReviewStateRow.flagged.is_(True),
            )
        )
    )
    for i in items:
        i.flagged = i.flagged or i.passage_id in flagged


def rows(store: Store, user: User, filters: Filters | None = None, **kw: Any) -> Page:
    """``page`` with admins' flags folded in (what the queue page lists)."""
    found = page(store, user, filters, **kw)
    with store.session() as s:
        _admin_flags(s, user, found.rows)
    return found


def items(store: Store, user: User, filters: Filters | None = None) -> list[Item]:
    """The user's whole queue in the chosen order, every show state, no sample cut
    (for scripts and tests; the app pages instead)."""
    filters = filters or Filters()
    everything = Filters(**{**filters.__dict__, "show": "all", "limit": None})
    out: list[Item] = []
    after = None
    while True:
        found = rows(store, user, everything, after=after, size=1000)
        out += found.rows
        if found.next_after is None:
            return out
        after = found.next_after


def progress(store: Store, user: User, filters: Filters | None = None) -> Progress:
    """Done / total of the user's queue under the filters (within the sample when a
    sample size is set); the show filter does not apply."""
    q = _query(store, user, filters)
    with store.session() as s:
        end = _sample_end(s, q)
        stmt = q.select(func.count(), func.sum(case((q.done.is_(True), 1), else_=0)), show=False)
        for condition in _within(q, end):
            stmt = stmt.where(condition)
        total, done = s.execute(stmt).one()
    return Progress(int(done or 0), int(total or 0))


def neighbours(
    store: Store, user: User, filters: Filters, passage_id: str
) -> tuple[str | None, str | None]:
    """The units before and after this one in queue order (any state; within the
    sample when a sample size is set)."""
    q = _query(store, user, filters)
    keys = q.keys()
    with store.session() as s:
        end = _sample_end(s, q)
        here = _key_of(s, q, passage_id)
        if here is None:
            first = _first(s, q, end, pending=False)
            return None, first
        out = []
        for op, desc in (
            (tuple_(*keys) < tuple_(*here), True),
            (tuple_(*keys) > tuple_(*here), False),
        ):
            stmt = q.select(ReviewUnitRow.passage_id, show=False).where(op)
            for condition in _within(q, end):
                stmt = stmt.where(condition)
            order = [k.desc() for k in keys] if desc else keys
            out.append(s.scalar(stmt.order_by(*order).limit(1)))
    return out[0], out[1]


def _first(s: Any, q: _Query, end: tuple | None, *, pending: bool) -> str | None:
    stmt = q.select(ReviewUnitRow.passage_id, show=False)
    if pending:
        stmt = stmt.where(q.done.is_(False))
    for condition in _within(q, end):
        stmt = stmt.where(condition)
    return s.scalar(stmt.order_by(*q.keys()).limit(1))


def next_pending(store: Store, user: User, filters: Filters, current: str | None) -> str | None:
    """The first unit after ``current`` (wrapping round) that is not done, in queue
    order and within the sample; None when every unit is done."""
    q = _query(store, user, filters)
    keys = q.keys()
    with store.session() as s:
        end = _sample_end(s, q)
        here = _key_of(s, q, current) if current else None
        if here is not None:
            stmt = q.select(ReviewUnitRow.passage_id, show=False).where(
                q.done.is_(False), tuple_(*keys) > tuple_(*here)
            )
            for condition in _within(q, end):
                stmt = stmt.where(condition)
            found = s.scalar(stmt.order_by(*keys).limit(1))
            if found is not None:
                return found
        first = _first(s, q, end, pending=True)
    return first if first != current else None


def study_progress(store: Store) -> Progress:
    """Queue units finished by at least one reviewer / all queue units (current
    transcript versions)."""
    sync(store)
    u = ReviewUnitRow
    with store.session() as s:
        total = s.scalar(select(func.count()).select_from(u).where(u.current == true())) or 0
        finished = s.scalar(
            select(func.count(func.distinct(ReviewStateRow.passage_id)))
            .join(u, u.passage_id == ReviewStateRow.passage_id)
            .where((u.current == true()), ReviewStateRow.done.is_(True))
        )
    return Progress(int(finished or 0), int(total))


# --------------------------------------------------------------------------- admin views


@dataclass(frozen=True)
class ReviewerLoad:
    username: str
    role: str
    active: bool
    assigned: int
    double_coded: int
    done: int
    flagged: int


def reviewer_loads(store: Store) -> list[ReviewerLoad]:
    """Per user, over the queue's units (current transcript versions): assigned units,
    of which double-coded; coding tracks they own that are done, and flagged."""
    sync(store)
    u = ReviewUnitRow
    current = u.current == true()
    with store.session() as s:

        def per_user(column: Any, *conditions: Any, states: bool = False) -> dict[int, int]:
            table = ReviewStateRow if states else AssignmentRow
            q = (
                select(column, func.count())
                .select_from(table)
                .join(u, u.passage_id == table.passage_id)
                .where(current, *conditions)
                .group_by(column)
            )
            return dict(s.execute(q).all())

        assigned = per_user(AssignmentRow.user_id)
        doubles = per_user(AssignmentRow.user_id, AssignmentRow.double_coded.is_(True))
        done = per_user(ReviewStateRow.user_id, ReviewStateRow.done.is_(True), states=True)
        flagged = per_user(ReviewStateRow.user_id, ReviewStateRow.flagged.is_(True), states=True)
        users = s.scalars(select(UserRow).order_by(UserRow.username)).all()
        return [
            ReviewerLoad(
                u_.username,
                u_.role,
                u_.active,
                assigned.get(u_.id, 0),
                doubles.get(u_.id, 0),
                done.get(u_.id, 0),
                flagged.get(u_.id, 0),
            )
            for u_ in users
        ]


@dataclass(frozen=True)
class Reconciliation:
    """How the reviewers' done counts add up to the study's progress."""

    study: Progress
    tracks_done: int  # done coding tracks on queue units (the per-person table's sum)
    extra_blind: int  # done tracks beyond the first on a double-coded unit
    outside: int  # done tracks on units no longer in the queue (older versions)
    unassigned_done: int  # units finished by an admin without an assignment
    assigned_units: int
    unassigned_units: int

    def lines(self) -> list[str]:
        """Plain sentences saying why the two figures differ, if they do."""
        s = self.study
        out = [
            f"{s.done} of {s.total} queue units are done by at least one reviewer ({s.percent}%)."
        ]
        if self.tracks_done != s.done:
            parts = [f"the per-person table counts {self.tracks_done} finished codings"]
            if self.extra_blind:
                parts.append(
                    f"{self.extra_blind} of them are second blind codings of double-coded "
                    "units (one unit, two codings)"
                )
            out.append("; ".join(parts) + ".")
        if self.outside:
            out.append(
                f"{self.outside} finished codings are on units of older transcript "
                "versions and count in neither figure."
            )
        if self.unassigned_units:
            finished = (
                f" ({self.unassigned_done} of them finished by an admin)"
                if self.unassigned_done
                else ""
            )
            out.append(f"{self.unassigned_units} queue units are assigned to nobody{finished}.")
        return out


def reconcile(store: Store) -> Reconciliation:
    """The study's progress and the per-person figures, with what separates them."""
    study = study_progress(store)
    u = ReviewUnitRow
    with store.session() as s:
        per_unit = s.execute(
            select(ReviewStateRow.passage_id, func.count())
            .join(u, u.passage_id == ReviewStateRow.passage_id)
            .where((u.current == true()), ReviewStateRow.done.is_(True))
            .group_by(ReviewStateRow.passage_id)
        ).all()
        outside = s.scalar(
            select(func.count())
            .select_from(ReviewStateRow)
            .outerjoin(u, u.passage_id == ReviewStateRow.passage_id)
            .where(
                ReviewStateRow.done.is_(True), or_(u.passage_id.is_(None), (u.current == false()))
            )
        )
        assigned_ids = select(AssignmentRow.passage_id)
        unassigned = (u.current == true()) & u.passage_id.not_in(assigned_ids)
        unassigned_units = s.scalar(select(func.count()).select_from(u).where(unassigned)) or 0
        unassigned_done = s.scalar(
            select(func.count(func.distinct(ReviewStateRow.passage_id)))
            .join(u, u.passage_id == ReviewStateRow.passage_id)
            .where(unassigned, ReviewStateRow.done.is_(True))
        )
    tracks = sum(n for _, n in per_unit)
    return Reconciliation(
        study=study,
        tracks_done=int(tracks),
        extra_blind=int(tracks - len(per_unit)),
        outside=int(outside or 0),
        unassigned_done=int(unassigned_done or 0),
        assigned_units=int(study.total - unassigned_units),
        unassigned_units=int(unassigned_units),
    )


def status_lines(store: Store) -> list[str]:
    """Review progress for ``qualflow status`` (read from the queue table as it stands
    when the store cannot be written, e.g. a read-only workspace)."""
    note = []
    try:
        sync(store)
    except OperationalError:
        note = ["  (the review queue could not be brought up to date: the store is read-only)"]
    with _no_sync():
        loads = [load for load in reviewer_loads(store) if load.assigned or load.done]
        rec = reconcile(store)
    if not rec.study.total:
        return ["review:      no unit in the review queue yet (code transcripts first)"]
    out = [f"review:      {rec.study.done} / {rec.study.total} queue units done "
           f"({rec.study.percent}%)"]  # fmt: skip
    for load in loads:
        extra = f", {load.double_coded} double-coded" if load.double_coded else ""
        flags = f", {load.flagged} flagged" if load.flagged else ""
        out.append(f"  {load.username}: {load.done} done of {load.assigned} assigned{extra}{flags}")
    out += [f"  {line}" for line in rec.lines()[1:]]
    from qualflow.review.carry import carry_reports

    for report in carry_reports(store):
        out += [f"  {line}" for line in report.lines()]
    return out + note


def facets(store: Store) -> dict[str, list[str]]:
    """Values offered by the queue's filter menus."""
    with store.session() as s:
        current = TranscriptRow.is_current.is_(True)
        return {
            "transcripts": list(
                s.scalars(select(TranscriptRow.name).where(current).distinct().order_by("name"))
            ),
            "participants": [
                p
                for p in s.scalars(
                    select(TranscriptRow.participant_id)
                    .where(current)
                    .distinct()
                    .order_by("participant_id")
                )
                if p
            ],
            "coders": list(s.scalars(select(ProposalSetRow.coder).distinct().order_by("coder"))),
            "runs": [
                str(r)
                for r in s.scalars(
                    select(ProposalSetRow.run_id)
                    .where(ProposalSetRow.run_id.is_not(None))
                    .distinct()
                    .order_by("run_id")
                )
            ],
        }


def assignment_for(store: Store, user_id: int, passage_id: str) -> AssignmentRow | None:
    with store.session() as s:
        return s.scalar(
            select(AssignmentRow).where(
                AssignmentRow.user_id == user_id, AssignmentRow.passage_id == passage_id
            )
        )


def in_queue(store: Store, passage_id: str) -> bool:
    """Is the unit in the review queue (a reviewable set, current transcript)?"""
    with store.session() as s:
        found = s.scalar(
            select(func.count())
            .select_from(ProposalSetRow)
            .join(PassageRow, PassageRow.id == ProposalSetRow.passage_id)
            .join(TranscriptRow, TranscriptRow.id == PassageRow.transcript_id)
            .where(
                ProposalSetRow.passage_id == passage_id,
                ProposalSetRow.status.in_(REVIEWABLE),
                TranscriptRow.is_current.is_(True),
            )
        )
    return bool(found)


# --------------------------------------------------------------------------- assignments


@dataclass(frozen=True)
class AssignReport:
    passages: int
    assignments: int
    double_coded: int
    per_reviewer: dict[str, int]


def unassigned_units(store: Store) -> list[str]:
    """Queue units nobody is assigned yet, in transcript order."""
    sync(store)
    u = ReviewUnitRow
    with store.session() as s:
        return list(
            s.scalars(
                select(u.passage_id)
                .where((u.current == true()), u.passage_id.not_in(select(AssignmentRow.passage_id)))
                .order_by(u.transcript_name, u.position, u.passage_id)
            )
        )


def assign(
    store: Store,
    reviewers: Sequence[str],
    *,
    strategy: str = "balanced",
    double_share: float = 0.0,
    seed: int = 0,
    blind_machine: bool = False,
) -> AssignReport:
    """Hand out the queue units nobody is assigned yet (so a new run's units can be
    assigned later without touching earlier work) and store the assignments."""
    with store.session() as s:
        found = s.scalars(select(UserRow).where(UserRow.username.in_(list(reviewers)))).all()
        by_name = {u.username: u for u in found}
        missing = [r for r in reviewers if r not in by_name or not by_name[r].active]
        if missing:
            raise ValueError(f"unknown or inactive reviewers: {', '.join(missing)}")
        load = dict(
            s.execute(
                select(AssignmentRow.user_id, func.count()).group_by(AssignmentRow.user_id)
            ).all()
        )
    free = unassigned_units(store)
    plan = plan_assignments(
        free,
        list(reviewers),
        strategy=strategy,
        double_share=double_share,
        seed=seed,
        blind_machine=blind_machine,
        load={name: load.get(u.id, 0) for name, u in by_name.items()},
    )
    per: dict[str, int] = {r: 0 for r in reviewers}
    with store.session() as s:
        for a in plan:
            s.add(
                AssignmentRow(
                    passage_id=a.passage_id,
                    user_id=by_name[a.reviewer].id,
                    double_coded=a.double_coded,
                    blind_to_machine=a.blind_to_machine,
                )
            )
            per[a.reviewer] += 1
    doubles = len({a.passage_id for a in plan if a.double_coded})
    sync(store)
    return AssignReport(len(free), len(plan), doubles, per)
