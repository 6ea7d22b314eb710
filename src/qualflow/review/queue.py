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
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError

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
    progress: Progress  # done / total of the queue under the filters (any show state)


# --------------------------------------------------------------------------- sync


def _fingerprint(s: Any) -> dict[str, Any]:
    """What the queue table depends on, in a few index-only queries (transcripts by
    aggregates of columns stored before their text: a new version adds a row and
    changes which are current)."""
    count, current, versions = s.execute(
        select(
            func.count(),
            func.sum(case((TranscriptRow.is_current.is_(True), 1), else_=0)),
            func.sum(TranscriptRow.version),
        )
    ).one()
    return {
        "sets": s.scalar(select(func.max(ProposalSetRow.id))) or 0,
        "assignments": s.scalar(select(func.max(AssignmentRow.id))) or 0,
        "decisions": s.scalar(select(func.max(DecisionRow.id))) or 0,
        "transcripts": f"{count}/{current or 0}/{versions or 0}",
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
    _LAST[id(store)] = now
    saved = store.meta(SYNC_KEY) or {}
    if saved == now:
        return
    with store.session() as s:
        fresh = not saved
        units = _changed_units(s, int(saved.get("sets", 0) or 0))
        touched = _assigned_since(s, int(saved.get("assignments", 0) or 0))
        touched |= _decided_since(s, int(saved.get("decisions", 0) or 0))
        owners = _shared_owners(s, set(units) | touched)
        _upsert_units(s, units, owners)
        _set_owners(s, {pid: owners.get(pid) for pid in touched - set(units)})
        if fresh or saved.get("transcripts") != now["transcripts"]:
            _update_transcripts(s)
    store.set_meta(SYNC_KEY, now)
    _keep_statistics(store, now)


STATS_KEY = "review_queue_statistics"


def _keep_statistics(store: Store, now: dict[str, Any]) -> None:
    """SQLite plans joins from table statistics: without them it counts a reviewer's
    finished units by walking every unit assigned to them instead of the (few)
    finished states. Refresh the review tables' statistics whenever the decisions or
    the proposal sets have doubled since the last time (a few dozen times over a
    study). PostgreSQL keeps its statistics itself."""
    if store.engine.dialect.name != "sqlite":
        return
    last = store.meta(STATS_KEY) or {}
    grown = [
        k
        for k in ("sets", "decisions")
        if now[k] > 2 * int(last.get(k, -1)) or (now[k] > 0) != (int(last.get(k, 0)) > 0)
    ]
    if not grown:
        return
    with store.engine.begin() as conn:
        for table in ("review_units", "review_unit_codes", "review_states", "assignments"):
            conn.exec_driver_sql(f"ANALYZE {table}")
    store.set_meta(STATS_KEY, {"sets": now["sets"], "decisions": now["decisions"]})


def _changed_units(s: Any, after_set: int) -> list[str]:
    q = select(ProposalSetRow.passage_id).where(
        ProposalSetRow.id > after_set, ProposalSetRow.status.in_(REVIEWABLE)
    )
    return list(dict.fromkeys(s.scalars(q.order_by(ProposalSetRow.id))))


_BATCH = 5000
_LAST: dict[int, dict[str, Any]] = {}  # store -> its fingerprint at the last sync


def _generation(store: Store) -> tuple:
    """What queue membership depends on (not the decisions): caches key on it."""
    fp = _LAST.get(id(store)) or {}
    return (fp.get("sets"), fp.get("assignments"), fp.get("transcripts"))


def _upsert_units(s: Any, ids: Sequence[str], owners: dict[str, int | None]) -> None:
    """Insert (bulk) or update the queue rows of these units from their proposal sets."""
    for i in range(0, len(ids), _BATCH):
        part = list(ids[i : i + _BATCH])
        rows = _unit_rows(s, part, owners)
        known = set(
            s.scalars(select(ReviewUnitRow.passage_id).where(ReviewUnitRow.passage_id.in_(part)))
        )
        new = [r for r in rows if r["passage_id"] not in known]
        if new:
            s.execute(insert(ReviewUnitRow), new)
            codes = [{"passage_id": r["passage_id"], "code": c} for r in new for c in r["codes"]]
            if codes:
                s.execute(insert(ReviewUnitCodeRow), codes)
        for r in rows:
            if r["passage_id"] in known:
                _update_unit(s, r)


def _unit_rows(s: Any, part: list[str], owners: dict[str, int | None]) -> list[dict[str, Any]]:
    """The queue rows of some units (only the columns needed; no unit text read)."""
    needs = set(
        s.scalars(
            select(ProposalSetRow.passage_id).where(
                ProposalSetRow.passage_id.in_(part), ProposalSetRow.status == "needs_human"
            )
        )
    )
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
    places = s.execute(
        select(
            PassageRow.id,
            PassageRow.index,
            TranscriptRow.id,
            TranscriptRow.name,
            TranscriptRow.is_current,
        )
        .join(TranscriptRow, TranscriptRow.id == PassageRow.transcript_id)
        .where(PassageRow.id.in_(part))
    ).all()
    out = []
    for pid, position, tid, name, current in places:
        found = props.get(pid, [])
        confidence = min((c for _, c in found), default=None)
        if pid in needs:
            rank = NEEDS_HUMAN_RANK
        else:
            rank = NO_PROPOSAL_RANK if confidence is None else confidence
        out.append(
            {
                "passage_id": pid,
                "transcript_id": tid,
                "transcript_name": name,
                "position": position,
                "current": bool(current),
                "needs_human": pid in needs,
                "min_confidence": confidence,
                "rank": rank,
                "shuffle": int(hashlib.sha256(pid.encode()).hexdigest()[:8], 16) % _PRIME,
                "proposals": len(found),
                "codes": sorted({code for code, _ in found}),
                "shared_owner": owners.get(pid),
            }
        )
    return out


def _update_unit(s: Any, values: dict[str, Any]) -> None:
    pid = values["passage_id"]
    changes = {k: v for k, v in values.items() if k not in ("passage_id", "shuffle")}
    s.execute(update(ReviewUnitRow).where(ReviewUnitRow.passage_id == pid).values(**changes))
    have = set(s.scalars(select(ReviewUnitCodeRow.code).where(ReviewUnitCodeRow.passage_id == pid)))
    s.add_all(ReviewUnitCodeRow(passage_id=pid, code=c) for c in values["codes"] if c not in have)


def _assigned_since(s: Any, after: int) -> set[str]:
    return set(s.scalars(select(AssignmentRow.passage_id).where(AssignmentRow.id > after)))


def _decided_since(s: Any, after: int) -> set[str]:
    return set(s.scalars(select(DecisionRow.passage_id).where(DecisionRow.id > after)))


def _shared_owners(s: Any, ids: Iterable[str]) -> dict[str, int | None]:
    """The owner of each unit's shared track: its primary assignee (first non-double
    assignment), else the owner of the first started track that is nobody's blind
    track (``decisions.choose_track``), else none yet."""
    wanted = list(ids)
    out: dict[str, int | None] = {}
    track = func.coalesce(DecisionRow.track_user_id, DecisionRow.user_id)
    for i in range(0, len(wanted), _BATCH):
        part = wanted[i : i + _BATCH]
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
        started: dict[str, list[tuple[int, int]]] = {}
        for pid, first, owner in s.execute(
            select(DecisionRow.passage_id, func.min(DecisionRow.id), track)
            .where(DecisionRow.passage_id.in_(part))
            .group_by(DecisionRow.passage_id, track)
        ):
            started.setdefault(pid, []).append((first, owner))
        for pid in part:
            out[pid] = _shared_owner(assigned.get(pid, []), started.get(pid, []))
    return out


def _set_owners(s: Any, owners: dict[str, int | None]) -> None:
    if not owners:
        return
    stmt = (
        update(ReviewUnitRow.__table__)
        .where(ReviewUnitRow.__table__.c.passage_id == bindparam("unit"))
        .values(shared_owner=bindparam("owner"))
    )
    rows = [{"unit": pid, "owner": owner} for pid, owner in owners.items()]
    s.connection().execute(stmt, rows)


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
    for tid, current, name in s.execute(
        select(TranscriptRow.id, TranscriptRow.is_current, TranscriptRow.name)
    ):
        s.execute(
            update(ReviewUnitRow)
            .where(ReviewUnitRow.transcript_id == tid)
            .where(
                or_(
                    ReviewUnitRow.current.is_not(bool(current)),
                    ReviewUnitRow.transcript_name != name,
                )
            )
            .values(current=bool(current), transcript_name=name)
        )


# --------------------------------------------------------------------------- the query


# Core tables (cheaper to build per request than ORM entities and aliases)
_U = ReviewUnitRow.__table__.c
_UNITS = ReviewUnitRow.__table__
_A = AssignmentRow.__table__.alias("a")
_RS = ReviewStateRow.__table__.alias("rs")
_FLAGS = ReviewStateRow.__table__.alias("flags")
_CODES = ReviewUnitCodeRow.__table__
_SETS = ProposalSetRow.__table__
_TRANSCRIPTS = TranscriptRow.__table__


class _Query:
    """The SQL of one user's queue under some filters: joins, conditions, sort keys."""

    def __init__(self, user: User, filters: Filters, *, any_blind: bool = True):
        self.user, self.filters, self.any_blind = user, filters, any_blind
        self.u, self.a, self.rs = _U, _A.c, _RS.c
        me = literal(user.id)
        double = func.coalesce(self.a.double_coded, false())
        self.owner = case((double.is_(True), me), else_=func.coalesce(_U.shared_owner, me))
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

    def select(self, *columns: Any, show: bool = True, states: str = "outer") -> Any:
        """``states``: how the track's state joins: ``outer`` (every unit), ``inner``
        (units with a state only), ``none`` (not at all: no show filter then)."""
        u, a, rs = self.u, self.a, self.rs
        on_a = and_(a.passage_id == u.passage_id, a.user_id == self.user.id)
        joined = _UNITS.outerjoin(_A, on_a) if self.user.is_admin else _UNITS.join(_A, on_a)
        on_rs = and_(rs.passage_id == u.passage_id, rs.user_id == self.owner)
        if states == "outer":
            joined = joined.outerjoin(_RS, on_rs)
        elif states == "inner":
            joined = joined.join(_RS, on_rs)
        else:
            show = False
        q = select(*columns).select_from(joined).where(u.current == true())
        for condition in self._conditions(show):
            q = q.where(condition)
        return q

    def _conditions(self, show: bool) -> list[Any]:
        f, u = self.filters, self.u
        out: list[Any] = []
        if f.transcript:
            out.append(u.transcript_name == f.transcript)
        if f.participant:
            t = _TRANSCRIPTS.c
            out.append(u.transcript_id.in_(select(t.id).where(t.participant_id == f.participant)))
        if f.run is not None or f.coder:
            ps = _SETS.c
            found = select(ps.id).where(ps.passage_id == u.passage_id, ps.status.in_(REVIEWABLE))
            if f.run is not None:
                found = found.where(ps.run_id == f.run)
            if f.coder:
                found = found.where(ps.coder == f.coder)
            out.append(exists(found))
        if f.code:
            c = _CODES.c
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
                other = _FLAGS.c
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
            u.transcript_id,
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


_BLIND: dict[tuple, bool] = {}


def _query(store: Store, user: User, filters: Filters | None) -> _Query:
    """The user's queue query (synced first); blind assignments change the sort key."""
    sync(store)
    key = (id(store), _generation(store), user.id)
    any_blind = _BLIND.get(key) if None not in key[1] else None
    if any_blind is None:
        a = AssignmentRow.__table__.c
        with store.engine.connect() as conn:
            found = conn.execute(
                select(a.id).where(a.user_id == user.id, a.blind_to_machine.is_(True)).limit(1)
            ).first()
        any_blind = found is not None
        if len(_BLIND) > 1024:
            _BLIND.clear()
        _BLIND[key] = any_blind
    return _Query(user, filters or Filters(), any_blind=any_blind)


def _key_of(s: Any, q: _Query, passage_id: str) -> tuple | None:
    """The sort key of one unit of this queue (None when it is not in it)."""
    row = s.execute(q.select(*q.keys(), show=False).where(_U.passage_id == passage_id)).first()
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
    starting after the unit ``after`` (a keyset cursor), with the queue's counts."""
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
        counts = _progress(store, s, q, end)
        shown = {"all": counts.total, "done": counts.done, "pending": counts.total - counts.done}
        if q.filters.show == "flagged":
            flagged = q.select(func.count())
            for condition in _within(q, end):
                flagged = flagged.where(condition)
            shown["flagged"] = s.scalar(flagged) or 0
        items = _items(s, rows[:size])
    more = len(rows) > size
    next_after = items[-1].passage_id if more and items else None
    return Page(items, next_after, shown[q.filters.show], counts)


_TOTALS: OrderedDict[tuple, int] = OrderedDict()
_TOTALS_KEPT = 512


def _progress(store: Store, s: Any, q: _Query, end: tuple | None) -> Progress:
    """Done / total of a queue. The total depends only on which units are in it (proposal
    sets, assignments, transcript versions), so it is counted once per change of those;
    the done count is a join driven by the tracks' states."""
    key = (id(store), _generation(store), q.user.id, q.user.is_admin, repr(q.filters), end)
    total = _TOTALS.get(key)
    if total is None or None in key[1]:
        stmt = q.select(func.count(), states="none")
        for condition in _within(q, end):
            stmt = stmt.where(condition)
        total = s.scalar(stmt) or 0
        _TOTALS[key] = total
        while len(_TOTALS) > _TOTALS_KEPT:
            _TOTALS.popitem(last=False)
    _TOTALS.move_to_end(key)
    if (
        s.scalar(select(ReviewStateRow.user_id).where(ReviewStateRow.done.is_(True)).limit(1))
        is None
    ):
        return Progress(0, int(total))  # nothing finished anywhere yet
    stmt = q.select(func.count(), show=False, states="inner").where(q.rs.done.is_(True))
    for condition in _within(q, end):
        stmt = stmt.where(condition)
    return Progress(int(s.scalar(stmt) or 0), int(total))


def _items(s: Any, rows: Sequence[Any]) -> list[Item]:
    ids = [r.passage_id for r in rows]
    p, t = PassageRow.__table__.c, _TRANSCRIPTS.c
    passages = {
        pid: (speaker, _codable_text(text, start, pieces))
        for pid, speaker, text, start, pieces in s.execute(
            select(p.id, p.speaker, p.text, p.char_start, p.pieces).where(p.id.in_(ids or [""]))
        )
    }
    tids = sorted({r.transcript_id for r in rows})
    participants = dict(
        s.execute(select(t.id, t.participant_id).where(t.id.in_(tids or [""]))).all()
    )
    out = []
    for r in rows:
        speaker, text = passages.get(r.passage_id, (None, ""))
        blind = bool(r.blind)
        out.append(
            Item(
                passage_id=r.passage_id,
                transcript=r.transcript_name,
                participant=participants.get(r.transcript_id),
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


def _codable_text(text: str, start: int, pieces: list | None) -> str:
    """What a unit's row shows: its codable text (a chunk's answers, not the question)."""
    if not pieces:
        return text
    parts = [text[a - start : b - start] for _, _, a, b, codable in pieces if codable]
    return " … ".join(p.strip() for p in parts) or text


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
        return _progress(store, s, q, _sample_end(s, q))


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
            stmt = q.select(_U.passage_id, show=False).where(op)
            for condition in _within(q, end):
                stmt = stmt.where(condition)
            order = [k.desc() for k in keys] if desc else keys
            out.append(s.scalar(stmt.order_by(*order).limit(1)))
    return out[0], out[1]


def _first(s: Any, q: _Query, end: tuple | None, *, pending: bool) -> str | None:
    stmt = q.select(_U.passage_id, show=False)
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
            stmt = q.select(_U.passage_id, show=False).where(
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
        key = (id(store), _generation(store), "study")
        total = _TOTALS.get(key)
        if total is None:
            total = s.scalar(select(func.count()).select_from(u).where(u.current == true())) or 0
            _TOTALS[key] = total
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


_FACETS: dict[tuple, dict[str, list[str]]] = {}


def facets(store: Store) -> dict[str, list[str]]:
    """Values offered by the queue's filter menus (read again when proposal sets or
    transcript versions change)."""
    key = (id(store), _generation(store))
    if None not in key[1] and key in _FACETS:
        return _FACETS[key]
    found = _read_facets(store)
    _FACETS.clear()
    _FACETS[key] = found
    return found


def _read_facets(store: Store) -> dict[str, list[str]]:
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
