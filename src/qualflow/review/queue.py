"""The review queue: which passages a user reviews, in which order, and how far along.

A passage is in the queue when it has a machine proposal set with status ``ok`` or
``needs_human`` (``failed`` sets have nothing to review) and belongs to the current
version of its transcript. Reviewers see only the passages assigned to them; admins
see every passage in the queue. Passages assigned blind to the machine show neither
proposed codes nor confidence in the queue, and never match a code filter. Done and
flagged are those of the coding track the user acts on (``decisions.track_owners``):
their own on a double-coded passage, the passage's shared coding otherwise.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select

from qualflow.db import (
    AssignmentRow,
    PassageRow,
    ProposalRow,
    ProposalSetRow,
    ReviewStateRow,
    TranscriptRow,
    UserRow,
)
from qualflow.review.assignment import plan_assignments
from qualflow.review.auth import User
from qualflow.review.codes import REVIEWABLE
from qualflow.review.decisions import track_owners
from qualflow.store import Store

ORDERS = {
    "confidence": "Lowest confidence first",
    "transcript": "Transcript order",
    "random": "Random audit sample",
}
SHOW = {"pending": "To do", "done": "Done", "flagged": "Flagged", "all": "All"}


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
    codes: list[str] = field(default_factory=list)
    done: bool = False
    flagged: bool = False
    blind: bool = False
    double_coded: bool = False


@dataclass(frozen=True)
class Progress:
    done: int
    total: int

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0


def _base_rows(store: Store, filters: Filters, assigned_to: int | None = None) -> dict[str, Item]:
    """Every queue passage matching the set-level filters, with its proposals folded in
    (only the passages assigned to user ``assigned_to`` when given)."""
    with store.session() as s:
        q = (
            select(ProposalSetRow.id, ProposalSetRow.status, PassageRow, TranscriptRow)
            .join(PassageRow, PassageRow.id == ProposalSetRow.passage_id)
            .join(TranscriptRow, TranscriptRow.id == PassageRow.transcript_id)
            .where(ProposalSetRow.status.in_(REVIEWABLE), TranscriptRow.is_current.is_(True))
        )
        if assigned_to is not None:
            q = q.join(
                AssignmentRow,
                (AssignmentRow.passage_id == PassageRow.id)
                & (AssignmentRow.user_id == assigned_to),
            )
        if filters.run is not None:
            q = q.where(ProposalSetRow.run_id == filters.run)
        if filters.coder:
            q = q.where(ProposalSetRow.coder == filters.coder)
        if filters.transcript:
            q = q.where(TranscriptRow.name == filters.transcript)
        if filters.participant:
            q = q.where(TranscriptRow.participant_id == filters.participant)
        items: dict[str, Item] = {}
        set_to_passage: dict[int, str] = {}
        for set_id, status, p, t in s.execute(q):
            set_to_passage[set_id] = p.id
            item = items.get(p.id) or Item(
                p.id, t.name, t.participant_id, p.index, p.speaker, p.text
            )
            item.needs_human = item.needs_human or status == "needs_human"
            items[p.id] = item
        if set_to_passage:
            props = s.execute(
                select(ProposalRow.set_id, ProposalRow.code, ProposalRow.confidence).where(
                    ProposalRow.set_id.in_(list(set_to_passage)), ProposalRow.valid.is_(True)
                )
            )
            for set_id, code, conf in props:
                item = items[set_to_passage[set_id]]
                if code not in item.codes:
                    item.codes.append(code)
                if item.confidence is None or conf < item.confidence:
                    item.confidence = conf
    return items


def items(store: Store, user: User, filters: Filters | None = None) -> list[Item]:
    """The user's queue in the chosen order (before the show/limit cut)."""
    filters = filters or Filters()
    found = _base_rows(store, filters, assigned_to=None if user.is_admin else user.id)
    with store.session() as s:
        mine = {
            a.passage_id: a
            for a in s.scalars(select(AssignmentRow).where(AssignmentRow.user_id == user.id))
        }
    if not user.is_admin:
        found = {pid: it for pid, it in found.items() if pid in mine}
    owners = track_owners(store, user.id, found)
    with store.session() as s:
        states = {
            r.passage_id: r
            for r in s.scalars(
                select(ReviewStateRow).where(ReviewStateRow.user_id.in_(set(owners.values())))
            )
            if owners.get(r.passage_id) == r.user_id
        }
        # admins see every flag (the discussion list); reviewers only their own
        flagged_by_anyone = (
            set(
                s.scalars(select(ReviewStateRow.passage_id).where(ReviewStateRow.flagged.is_(True)))
            )
            if user.is_admin
            else set()
        )
    out = []
    for pid, it in found.items():
        a = mine.get(pid)
        if a is not None and a.blind_to_machine:
            it.blind, it.codes, it.confidence, it.needs_human = True, [], None, False
        it.double_coded = bool(a and a.double_coded)
        if filters.code and not any(_matches(c, filters.code) for c in it.codes):
            continue
        st = states.get(pid)
        it.done = bool(st and st.done)
        it.flagged = bool(st and st.flagged) or pid in flagged_by_anyone
        out.append(it)
    return order_items(out, filters.order, filters.seed)


def _matches(code: str, wanted: str) -> bool:
    return code == wanted or code.startswith(wanted + ".")


def order_items(found: Sequence[Item], order: str, seed: int = 0) -> list[Item]:
    by_place = sorted(found, key=lambda i: (i.transcript, i.index, i.passage_id))
    if order == "transcript":
        return by_place
    if order == "random":
        random.Random(seed).shuffle(by_place)
        return by_place
    return sorted(
        by_place,
        key=lambda i: (
            not i.needs_human,
            i.confidence is None,
            i.confidence if i.confidence is not None else 0.0,
        ),
    )


def visible(found: Sequence[Item], filters: Filters) -> list[Item]:
    """The rows the queue page lists: the show filter, then the limit."""
    keep = {
        "pending": lambda i: not i.done,
        "done": lambda i: i.done,
        "flagged": lambda i: i.flagged,
        "all": lambda i: True,
    }[filters.show]
    rows = [i for i in found if keep(i)]
    return rows[: filters.limit] if filters.limit else rows


def walk(found: Sequence[Item], filters: Filters) -> list[Item]:
    """What prev/next and "Done -> next" move through: the queue, cut to the sample
    size when one is set (an audit sample ends where the sample ends)."""
    return list(found[: filters.limit] if filters.limit else found)


def next_pending(found: Sequence[Item], current: str | None) -> str | None:
    """The first passage after ``current`` (wrapping round) that is not done."""
    ids = [i.passage_id for i in found]
    start = ids.index(current) + 1 if current in ids else 0
    for it in [*found[start:], *found[:start]]:
        if not it.done and it.passage_id != current:
            return it.passage_id
    return None


def neighbour(found: Sequence[Item], current: str, step: int) -> str | None:
    """The passage ``step`` places from ``current`` in queue order (no wrapping)."""
    ids = [i.passage_id for i in found]
    if current not in ids:
        return ids[0] if ids else None
    k = ids.index(current) + step
    return ids[k] if 0 <= k < len(ids) else None


def progress(found: Sequence[Item]) -> Progress:
    return Progress(sum(i.done for i in found), len(found))


def study_progress(store: Store) -> Progress:
    """Queue passages finished by at least one reviewer / all queue passages."""
    ids = set(_base_rows(store, Filters()))
    with store.session() as s:
        finished = set(
            s.scalars(select(ReviewStateRow.passage_id).where(ReviewStateRow.done.is_(True)))
        )
    return Progress(len(ids & finished), len(ids))


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
    """Per user: assigned passages, of which double-coded, done and flagged."""
    with store.session() as s:
        assigned = dict(
            s.execute(
                select(AssignmentRow.user_id, func.count()).group_by(AssignmentRow.user_id)
            ).all()
        )
        doubles = dict(
            s.execute(
                select(AssignmentRow.user_id, func.count())
                .where(AssignmentRow.double_coded.is_(True))
                .group_by(AssignmentRow.user_id)
            ).all()
        )
        done = dict(
            s.execute(
                select(ReviewStateRow.user_id, func.count())
                .where(ReviewStateRow.done.is_(True))
                .group_by(ReviewStateRow.user_id)
            ).all()
        )
        flagged = dict(
            s.execute(
                select(ReviewStateRow.user_id, func.count())
                .where(ReviewStateRow.flagged.is_(True))
                .group_by(ReviewStateRow.user_id)
            ).all()
        )
        users = s.scalars(select(UserRow).order_by(UserRow.username)).all()
        return [
            ReviewerLoad(
                u.username,
                u.role,
                u.active,
                assigned.get(u.id, 0),
                doubles.get(u.id, 0),
                done.get(u.id, 0),
                flagged.get(u.id, 0),
            )
            for u in users
        ]


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
    with store.session() as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(ProposalSetRow)
                .where(
                    ProposalSetRow.passage_id == passage_id,
                    ProposalSetRow.status.in_(REVIEWABLE),
                )
            )
            or 0
        ) > 0


# --------------------------------------------------------------------------- assignments


@dataclass(frozen=True)
class AssignReport:
    passages: int
    assignments: int
    double_coded: int
    per_reviewer: dict[str, int]


def assign(
    store: Store,
    reviewers: Sequence[str],
    *,
    strategy: str = "balanced",
    double_share: float = 0.0,
    seed: int = 0,
    blind_machine: bool = False,
) -> AssignReport:
    """Hand out the queue passages nobody is assigned yet (so a new run's passages can
    be assigned later without touching earlier work) and store the assignments."""
    with store.session() as s:
        rows = s.scalars(select(UserRow).where(UserRow.username.in_(list(reviewers)))).all()
        by_name = {u.username: u for u in rows}
        missing = [r for r in reviewers if r not in by_name or not by_name[r].active]
        if missing:
            raise ValueError(f"unknown or inactive reviewers: {', '.join(missing)}")
        taken = set(s.scalars(select(AssignmentRow.passage_id).distinct()))
        load = dict(
            s.execute(
                select(AssignmentRow.user_id, func.count()).group_by(AssignmentRow.user_id)
            ).all()
        )
    free = [
        it.passage_id
        for it in order_items(list(_base_rows(store, Filters()).values()), "transcript")
    ]
    free = [pid for pid in free if pid not in taken]
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
    return AssignReport(len(free), len(plan), doubles, per)
