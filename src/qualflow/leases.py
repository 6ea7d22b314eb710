"""Leases on coding units: two workers coding the same store never send a unit twice.

A worker (a ``qualflow code`` process, or a ``qualflow run`` / flow-run process) claims
a batch of units before it builds their requests: one ``unit_leases`` row per unit
and proposal key, naming the holder (``host:pid:nonce``) and when the lease runs out.
A unit another worker holds is skipped; a lease that ran out (its worker was killed
on another machine, or hangs), or whose holder is a process of this host that no
longer exists, is taken over. While a worker works it renews its leases every third
of ``lease_seconds`` (one UPDATE for all of them); once a unit's answer is stored its
lease is deleted, so the table holds only the units in flight.

The store's unique proposal-set key stays the last guard (a second set is never
written); leases make sure the second *request* is never sent either. Claims are
plain SQL on both SQLite and PostgreSQL: an insert that skips existing rows, then,
for the rows that were there, an update that only takes a lease from the holder it
was judged stale for (so of two workers taking over the same stale lease, one wins).
Times are the workers' clocks in UTC: keep machines in time sync and ``lease_seconds``
well above any clock skew.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from qualflow.db import UnitLeaseRow
from qualflow.models import short_hash, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from qualflow.store import ProposalKey, Store

log = logging.getLogger(__name__)

CHUNK = 500
"""Ids per SQL statement (SQLite limits the number of bound variables)."""


def lease_key(key: ProposalKey) -> str:
    """The ``unit_leases.key`` of a proposal key (coder, model, prompt, codebook)."""
    return short_hash(key.coder, key.model, key.prompt_version, key.codebook_version, length=32)


def new_holder() -> str:
    """A holder name unique to this process and object: ``host:pid:nonce``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_gone(holder: str) -> bool:
    """Whether ``holder`` names a process of this host that no longer exists.

    Only this host's processes can be checked; a holder elsewhere is waited out until
    its lease expires. A pid of this host taken by another process since counts as
    alive (the lease then runs out normally), never the other way round.
    """
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back: they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Leases:
    """The leases one worker holds on one proposal key's units.

    Use as a context manager (or call :meth:`close`): on exit the renewal thread stops
    and every lease still held is released, so the units go back to the pool.
    """

    def __init__(
        self,
        store: Store,
        key: ProposalKey,
        *,
        seconds: float = 120.0,
        holder: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.store = store
        self.key = lease_key(key)
        self.seconds = max(1.0, float(seconds))
        self.holder = holder or new_holder()
        self._clock = clock
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ claims

    def claim(self, unit_ids: Sequence[str]) -> list[str]:
        """Take the leases on ``unit_ids`` that nobody else holds; the units this worker
        now holds, in the given order (those it held already included)."""
        if not unit_ids:
            return []
        self._start_renewing()
        held: set[str] = set()
        for i in range(0, len(unit_ids), CHUNK):
            # sorted: workers claiming overlapping batches lock rows in the same order
            part = sorted(set(unit_ids[i : i + CHUNK]))
            with self.store.session() as s:
                held |= self._claim(s, part)
        return [u for u in unit_ids if u in held]

    def _claim(self, s: Session, ids: list[str]) -> set[str]:
        now = self._clock()
        expires = now + timedelta(seconds=self.seconds)
        s.execute(self._insert_missing(s, ids, now, expires))  # first: takes the write lock
        rows = s.execute(
            select(UnitLeaseRow.passage_id, UnitLeaseRow.holder, UnitLeaseRow.expires_at).where(
                UnitLeaseRow.key == self.key, UnitLeaseRow.passage_id.in_(ids)
            )
        ).all()
        mine = {pid for pid, holder, _ in rows if holder == self.holder}
        gone: dict[str, bool] = {}
        for pid, holder, until in rows:
            if holder == self.holder:
                continue
            stale = _aware(until) <= now
            if not stale:
                if holder not in gone:
                    gone[holder] = holder_is_gone(holder)
                stale = gone[holder]
            if stale and self._take_over(s, pid, holder, expires):
                log.info("took over the lease of a unit from %s (expired or gone)", holder)
                mine.add(pid)
        return mine

    def _insert_missing(self, s: Session, ids: list[str], now: datetime, expires: datetime):
        """INSERT of a lease for every id, skipping ids that have one (both dialects)."""
        if s.get_bind().dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        values = [
            {
                "passage_id": pid,
                "key": self.key,
                "holder": self.holder,
                "expires_at": expires,
                "acquired_at": now,
            }
            for pid in ids
        ]
        return insert(UnitLeaseRow).values(values).on_conflict_do_nothing()

    def _take_over(self, s: Session, unit: str, stale_holder: str, expires: datetime) -> bool:
        """Take one stale lease, only from the holder it was judged stale for."""
        taken = s.execute(
            update(UnitLeaseRow)
            .where(
                UnitLeaseRow.key == self.key,
                UnitLeaseRow.passage_id == unit,
                UnitLeaseRow.holder == stale_holder,
            )
            .values(holder=self.holder, expires_at=expires, acquired_at=self._clock())
        )
        return bool(taken.rowcount)

    def release(self, unit_ids: Iterable[str]) -> None:
        """Give up the leases on these units (their answers are stored, or they were
        not sent); a failure to release is logged: the lease then runs out."""
        ids = list(unit_ids)
        try:
            for i in range(0, len(ids), CHUNK):
                with self.store.session() as s:
                    s.execute(
                        delete(UnitLeaseRow).where(
                            UnitLeaseRow.key == self.key,
                            UnitLeaseRow.holder == self.holder,
                            UnitLeaseRow.passage_id.in_(ids[i : i + CHUNK]),
                        )
                    )
        except SQLAlchemyError as exc:
            log.warning("could not release %d unit lease(s): %s", len(ids), type(exc).__name__)

    def release_all(self) -> None:
        try:
            with self.store.session() as s:
                s.execute(delete(UnitLeaseRow).where(UnitLeaseRow.holder == self.holder))
        except SQLAlchemyError as exc:
            log.warning("could not release this worker's leases: %s", type(exc).__name__)

    def held_elsewhere(self, unit_ids: Sequence[str]) -> set[str]:
        """Units another live worker holds an unexpired lease on (it is coding them)."""
        now = self._clock()
        out: set[str] = set()
        for i in range(0, len(unit_ids), CHUNK):
            with self.store.session() as s:
                rows = s.execute(
                    select(UnitLeaseRow.passage_id, UnitLeaseRow.holder, UnitLeaseRow.expires_at)
                    .where(UnitLeaseRow.key == self.key)
                    .where(UnitLeaseRow.passage_id.in_(list(unit_ids[i : i + CHUNK])))
                    .where(UnitLeaseRow.holder != self.holder)
                ).all()
            out |= {
                pid
                for pid, holder, until in rows
                if _aware(until) > now and not holder_is_gone(holder)
            }
        return out

    # ------------------------------------------------------------------ renewal

    def renew(self) -> int:
        """Push every lease this worker holds ``seconds`` ahead; the number renewed."""
        with self.store.session() as s:
            done = s.execute(
                update(UnitLeaseRow)
                .where(UnitLeaseRow.holder == self.holder)
                .values(expires_at=self._clock() + timedelta(seconds=self.seconds))
            )
            return int(done.rowcount or 0)

    def _start_renewing(self) -> None:
        with self._lock:
            if self._renewer is not None or self._stop.is_set():
                return
            self._renewer = threading.Thread(
                target=self._renew_loop, name="qualflow-leases", daemon=True
            )
            self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except SQLAlchemyError as exc:  # next round tries again; leases last 3 rounds
                log.warning("could not renew unit leases: %s", type(exc).__name__)

    def close(self) -> None:
        """Stop renewing and release every lease still held."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        self.release_all()

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
