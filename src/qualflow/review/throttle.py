"""Login throttling: exponential backoff per account and per address.

Counted from the audit log (``audit_events``), so every server process and worker sees
the same counts and a restart forgets nothing:

- **per account** (the typed name's ``account_key``, so unknown names are throttled the
  same way and the throttle does not reveal which names exist): failed logins in a row,
  since the last successful login, unlock or password change, within a day;
- **per address**: failed logins from the client address within the last hour, whatever
  the account (one address trying many names); a successful login does not clear it.

Up to ``free`` failures cost nothing. From then on each attempt must wait
``first_delay * 2 ** (failures - free)`` seconds after the newest failure, capped at
``max_delay`` (the lockout window). A refused attempt is answered at once with HTTP 429
and ``Retry-After``: the request thread never sleeps, no password is checked (no argon2
work for a throttled guess) and refused attempts do not extend the wait.

``PasswordGate`` bounds the argon2 work itself: a few checks at once per process, one at
a time per name and per address; a login beyond that is answered 429 ("busy") at once.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from qualflow.review.audit import ACCOUNT_RESETS, AuditLog


@dataclass(frozen=True)
class ThrottlePolicy:
    account_free: int = 5
    address_free: int = 20
    first_delay: float = 2.0  # seconds, doubling with every further failure
    max_delay: float = 900.0  # the longest wait: 15 minutes
    account_window: float = 86400.0  # failures older than a day are forgotten
    address_window: float = 3600.0


@dataclass(frozen=True)
class Verdict:
    retry_after: int  # whole seconds to wait; 0 = go ahead
    scope: str | None = None  # "account" or "address" when refused
    failures: int = 0

    @property
    def allowed(self) -> bool:
        return self.retry_after <= 0


def delay_after(failures: int, free: int, policy: ThrottlePolicy) -> float:
    """Seconds an attempt must wait after the newest of ``failures`` failures."""
    if failures < free:
        return 0.0
    return min(policy.first_delay * 2 ** min(failures - free, 40), policy.max_delay)


def wait_left(failures: int, newest: datetime | None, free: int, policy, now: datetime) -> int:
    """Whole seconds still to wait (0 when the attempt may go ahead)."""
    if newest is None:
        return 0
    remaining = delay_after(failures, free, policy) - (now - newest).total_seconds()
    return max(0, math.ceil(remaining))


class LoginThrottle:
    def __init__(self, audit: AuditLog, policy: ThrottlePolicy | None = None):
        self.audit = audit
        self.policy = policy or ThrottlePolicy()

    def check(self, typed_name: str, address: str | None) -> Verdict:
        """Whether a login attempt on this name from this address may be checked now."""
        p, now = self.policy, self.audit.now()
        key = self.audit.account_key(typed_name)
        n, newest = self.audit.failures_in_a_row(key, now - timedelta(seconds=p.account_window))
        account = Verdict(wait_left(n, newest, p.account_free, p, now), "account", n)
        address_verdict = Verdict(0)
        if address:
            since = now - timedelta(seconds=p.address_window)
            m, newest_here = self.audit.address_failures(address, since)
            address_verdict = Verdict(
                wait_left(m, newest_here, p.address_free, p, now), "address", m
            )
        worst = max((account, address_verdict), key=lambda v: v.retry_after)
        return worst if not worst.allowed else Verdict(0)

    def first_refusal(self, verdict: Verdict, typed_name: str, address: str | None) -> bool:
        """True when no refusal was logged since the failure that caused this wait (the
        audit log gets one ``login_throttled`` per lockout, not one per refused guess)."""
        if verdict.scope == "account":
            latest = self.audit.latest_event(
                account_key=self.audit.account_key(typed_name),
                events=("login_failed", "login_throttled", *ACCOUNT_RESETS),
            )
        else:
            latest = self.audit.latest_event(
                address=address, events=("login_failed", "login_throttled")
            )
        return latest != "login_throttled"


def default_checks_at_once() -> int:
    """Password checks allowed at once in one server process: two, or one per four
    usable cores on bigger machines. An argon2id check (argon2-cffi defaults) takes
    64 MiB and runs 4 lanes in parallel for a fraction of a second, so this keeps
    guessing from many addresses from taking the whole CPU from reviewers at work."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(2, cores // 4)


class PasswordGate:
    """Admits a password check when fewer than ``at_once`` run in this process and none
    runs for the same typed name or the same address; otherwise the caller answers 429
    at once (nothing waits in a server thread).

    One check at a time per name and per address also makes the throttle exact for one
    attacker: a guess starts only after the previous one from that address (or on that
    name) has been counted.
    """

    def __init__(self, at_once: int | None = None):
        self.at_once = at_once or default_checks_at_once()
        self._lock = threading.Lock()
        self._running = 0
        self._names: set[str] = set()
        self._addresses: set[str] = set()

    @contextmanager
    def admit(self, typed_name: str, address: str | None) -> Iterator[bool]:
        """``with gate.admit(name, address) as admitted:`` check only when admitted."""
        with self._lock:
            admitted = (
                self._running < self.at_once
                and typed_name not in self._names
                and (address is None or address not in self._addresses)
            )
            if admitted:
                self._running += 1
                self._names.add(typed_name)
                if address is not None:
                    self._addresses.add(address)
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    self._running -= 1
                    self._names.discard(typed_name)
                    if address is not None:
                        self._addresses.discard(address)
