"""The review app's security audit log (table ``audit_events``, append-only).

What is recorded: logins, failed logins (with the reason: wrong password, unknown user
name, inactive account), logins refused by throttling (once per lockout, so a flood of
refused guesses does not flood the log), logouts, session revocations, accounts added,
role changes, deactivation and activation, password changes and unlocks.

What never is: a password, passage or transcript text, a session token. A login attempt
on a name that is no account keeps no name at all, only ``account_key``: an HMAC of the
typed name under the app's secret (people type passwords into the user-name field), which
is also what per-account throttling counts, so an unknown name is throttled exactly like
a real one and the throttle does not reveal which names exist.

``qualflow users audit`` prints the log.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select

from qualflow.db import AuditEventRow
from qualflow.store import Store

EVENTS = {
    "login": "logged in",
    "login_failed": "login failed",
    "login_throttled": "login refused: too many failures",
    "logout": "logged out",
    "sessions_revoked": "sessions ended",
    "user_added": "account added",
    "role_changed": "role changed",
    "deactivated": "account deactivated",
    "activated": "account activated",
    "password_changed": "password changed",
    "unlocked": "login throttling cleared",
}
# Events after which an account's failures in a row start counting from zero again.
ACCOUNT_RESETS = ("login", "unlocked", "password_changed")


def as_utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands back naive UTC values)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class AuditEvent:
    id: int
    time: datetime
    event: str
    username: str | None
    actor: str | None
    address: str | None
    detail: str


class AuditLog:
    """Writes and queries ``audit_events`` for one store; ``clock`` (epoch seconds) is
    the time every event is stamped with and throttling compares against."""

    def __init__(self, store: Store, secret: str, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        self._key = hmac.new(secret.encode(), b"qualflow-login-account", hashlib.sha256).digest()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def account_key(self, name: str) -> str:
        """The keyed hash a typed login name is counted under (never stored in clear
        unless it is an existing account's name)."""
        return hmac.new(self._key, name.strip().encode(), hashlib.sha256).hexdigest()

    def record(
        self,
        event: str,
        *,
        username: str | None = None,
        user_id: int | None = None,
        actor: str | None = None,
        address: str | None = None,
        typed_name: str | None = None,
        detail: str = "",
    ) -> None:
        """Append one event. ``typed_name`` is the name a login form carried (hashed
        into ``account_key``); for an account's own events pass ``username``."""
        if event not in EVENTS:
            raise ValueError(f"audit event '{event}': must be one of {', '.join(EVENTS)}")
        name = typed_name if typed_name is not None else username
        with self.store.session() as s:
            s.add(
                AuditEventRow(
                    created_at=self.now(),
                    event=event,
                    user_id=user_id,
                    username=username,
                    actor=(actor or "")[:100] or None,
                    address=(address or "")[:64] or None,
                    account_key=self.account_key(name) if name is not None else None,
                    detail=detail[:500],
                )
            )

    # ------------------------------------------------------------- throttling reads

    def failures_in_a_row(self, account_key: str, since: datetime) -> tuple[int, datetime | None]:
        """Failed logins on this key since ``since`` and since its last success, unlock
        or password change (at most 64 counted), and the time of the newest one."""
        q = (
            select(AuditEventRow.event, AuditEventRow.created_at)
            .where(
                AuditEventRow.account_key == account_key,
                AuditEventRow.created_at >= since,
                AuditEventRow.event.in_(("login_failed", *ACCOUNT_RESETS)),
            )
            .order_by(AuditEventRow.id.desc())
            .limit(64)
        )
        with self.store.session() as s:
            rows = s.execute(q).all()
        count = 0
        for event, _ in rows:
            if event != "login_failed":
                break
            count += 1
        return count, (as_utc(rows[0][1]) if count else None)

    def address_failures(self, address: str, since: datetime) -> tuple[int, datetime | None]:
        """Failed logins from this address since ``since`` (successes do not reset it:
        an attacker with one account of their own could otherwise clear the count)."""
        q = select(func.count(), func.max(AuditEventRow.created_at)).where(
            AuditEventRow.address == address,
            AuditEventRow.created_at >= since,
            AuditEventRow.event == "login_failed",
        )
        with self.store.session() as s:
            count, newest = s.execute(q).one()
        return int(count or 0), (as_utc(newest) if newest is not None else None)

    def latest_event(
        self, *, account_key: str | None = None, address: str | None = None, events: Iterable[str]
    ) -> str | None:
        """The newest of ``events`` recorded for this key or address."""
        q = select(AuditEventRow.event).where(AuditEventRow.event.in_(tuple(events)))
        if account_key is not None:
            q = q.where(AuditEventRow.account_key == account_key)
        if address is not None:
            q = q.where(AuditEventRow.address == address)
        with self.store.session() as s:
            return s.scalar(q.order_by(AuditEventRow.id.desc()).limit(1))


def read_events(
    store: Store,
    *,
    username: str | None = None,
    event: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[AuditEvent]:
    """The newest ``limit`` events (filtered), oldest first."""
    if event is not None and event not in EVENTS:
        raise ValueError(f"event '{event}': must be one of {', '.join(EVENTS)}")
    q = select(AuditEventRow)
    if username is not None:
        q = q.where(AuditEventRow.username == username)
    if event is not None:
        q = q.where(AuditEventRow.event == event)
    if since is not None:
        q = q.where(AuditEventRow.created_at >= since)
    with store.session() as s:
        rows = s.scalars(q.order_by(AuditEventRow.id.desc()).limit(limit)).all()
    return [
        AuditEvent(
            id=r.id,
            time=as_utc(r.created_at),
            event=r.event,
            username=r.username,
            actor=r.actor,
            address=r.address,
            detail=r.detail,
        )
        for r in reversed(rows)
    ]
