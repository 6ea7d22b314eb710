"""Accounts, passwords and login sessions of the review app.

Passwords are hashed with argon2id (argon2-cffi, its current default parameters).

Sessions live on the server (table ``review_sessions``). The cookie carries only a
random token, signed with itsdangerous so garbage is refused without a database read;
the table keeps the token's SHA-256, the user, the session's CSRF token, its expiry
(``settings.session_hours`` after login) and, once ended, when and why. Every request
reads the session row and the user: logout ends that session, and deactivation, a
password change, a role change or ``qualflow users logout`` end all of the user's
sessions, so a copied cookie stops working at once and stays dead after the account is
re-activated.

Account changes go through this module so that each one ends the sessions it must and
lands in the audit log (``review/audit.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select, update

from qualflow.db import ReviewSessionRow, UserRow
from qualflow.review.audit import AuditLog, as_utc
from qualflow.store import Store

ROLES = ("admin", "reviewer")
SESSION_COOKIE = "qf_session"
LOGIN_CSRF_COOKIE = "qf_login_csrf"
USERNAME_MAX_CHARS = 100
PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_CHARS = 1024  # longer input is refused before any hashing


class AuthError(ValueError):
    """Bad account input (unknown user, bad role, empty password, duplicate name)."""


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    active: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _user(row: UserRow) -> User:
    return User(id=row.id, username=row.username, role=row.role, active=row.active)


def _check_password(password: str) -> None:
    if len(password) < PASSWORD_MIN_CHARS:
        raise AuthError(f"password: at least {PASSWORD_MIN_CHARS} characters")
    if len(password) > PASSWORD_MAX_CHARS:
        raise AuthError(f"password: at most {PASSWORD_MAX_CHARS} characters")


def add_user(
    store: Store,
    username: str,
    password: str,
    role: str = "reviewer",
    *,
    audit: AuditLog | None = None,
    actor: str | None = None,
) -> User:
    username = username.strip()
    if not username or len(username) > USERNAME_MAX_CHARS or any(c.isspace() for c in username):
        raise AuthError(f"username '{username}': 1-{USERNAME_MAX_CHARS} characters without spaces")
    if role not in ROLES:
        raise AuthError(f"role '{role}': must be one of {', '.join(ROLES)}")
    _check_password(password)
    with store.session() as s:
        if s.scalar(select(UserRow).where(UserRow.username == username)) is not None:
            raise AuthError(f"user '{username}' already exists")
        row = UserRow(username=username, password_hash=hash_password(password), role=role)
        s.add(row)
        s.flush()
        user = _user(row)
    if audit is not None:
        audit.record(
            "user_added",
            username=user.username,
            user_id=user.id,
            actor=actor,
            detail=f"role {role}",
        )
    return user


def users(store: Store) -> list[User]:
    with store.session() as s:
        return [_user(r) for r in s.scalars(select(UserRow).order_by(UserRow.username))]


def get_user(store: Store, user_id: int) -> User | None:
    with store.session() as s:
        row = s.get(UserRow, user_id)
        return _user(row) if row else None


def user_by_name(store: Store, username: str) -> User | None:
    with store.session() as s:
        row = s.scalar(select(UserRow).where(UserRow.username == username))
        return _user(row) if row else None


def _existing(store: Store, username: str) -> User:
    user = user_by_name(store, username)
    if user is None:
        raise AuthError(f"no user '{username}'")
    return user


def set_active(
    store: Store, username: str, active: bool, *, audit: AuditLog, actor: str | None
) -> User:
    """Activate or deactivate an account; deactivation ends all of its sessions (and a
    later re-activation does not bring them back)."""
    user = _existing(store, username)
    with store.session() as s:
        s.execute(update(UserRow).where(UserRow.id == user.id).values(active=active))
    event = "activated" if active else "deactivated"
    audit.record(event, username=user.username, user_id=user.id, actor=actor)
    if not active:
        end_sessions(store, user, "deactivated", audit=audit, actor=actor)
    return get_user(store, user.id) or user


def set_role(store: Store, username: str, role: str, *, audit: AuditLog, actor: str | None) -> User:
    """Change an account's role; its sessions end, so it logs in again under the new one."""
    if role not in ROLES:
        raise AuthError(f"role '{role}': must be one of {', '.join(ROLES)}")
    user = _existing(store, username)
    with store.session() as s:
        s.execute(update(UserRow).where(UserRow.id == user.id).values(role=role))
    audit.record(
        "role_changed",
        username=user.username,
        user_id=user.id,
        actor=actor,
        detail=f"{user.role} -> {role}",
    )
    end_sessions(store, user, "role changed", audit=audit, actor=actor)
    return get_user(store, user.id) or user


def set_password(
    store: Store, username: str, password: str, *, audit: AuditLog, actor: str | None
) -> User:
    """Set a new password; every session of the account ends and its login throttle is
    cleared (the audit log records the change, never the password)."""
    _check_password(password)
    user = _existing(store, username)
    new_hash = hash_password(password)
    with store.session() as s:
        s.execute(update(UserRow).where(UserRow.id == user.id).values(password_hash=new_hash))
    audit.record("password_changed", username=user.username, user_id=user.id, actor=actor)
    end_sessions(store, user, "password changed", audit=audit, actor=actor)
    return user


def unlock(store: Store, username: str, *, audit: AuditLog, actor: str | None) -> User:
    """Clear the per-account login throttle (failures in a row start again from zero)."""
    user = _existing(store, username)
    audit.record("unlocked", username=user.username, user_id=user.id, actor=actor)
    return user


def count_admins(store: Store) -> int:
    with store.session() as s:
        q = select(func.count()).select_from(UserRow)
        return s.scalar(q.where(UserRow.role == "admin", UserRow.active.is_(True))) or 0


@dataclass(frozen=True)
class LoginCheck:
    """The outcome of checking a name and password: ``user`` when they are right and the
    account is active; otherwise ``reason`` (for the audit log, never shown to the
    visitor) and, when the name is an account, that account."""

    user: User | None
    reason: str = ""
    account: User | None = None


def check_login(store: Store, username: str, password: str) -> LoginCheck:
    """Check a login; unknown names cost the same argon2 time as wrong passwords."""
    with store.session() as s:
        row = s.scalar(select(UserRow).where(UserRow.username == username))
        account = _user(row) if row else None
        stored = row.password_hash if row else _dummy_hash()
    if len(password) > PASSWORD_MAX_CHARS:
        return LoginCheck(None, "password longer than any allowed", account)
    if not verify_password(stored, password):
        return LoginCheck(None, "wrong password" if account else "unknown user name", account)
    if account is None:  # cannot happen with a random dummy hash; kept explicit
        return LoginCheck(None, "unknown user name")
    if not account.active:
        return LoginCheck(None, "account inactive", account)
    return LoginCheck(account, account=account)


def authenticate(store: Store, username: str, password: str) -> User | None:
    """The active user with this name and password, else None (same cost either way)."""
    return check_login(store, username, password).user


_dummy: list[str] = []


def _dummy_hash() -> str:
    if not _dummy:
        _dummy.append(hash_password(secrets.token_hex(16)))
    return _dummy[0]


# --------------------------------------------------------------------------- sessions


def load_secret(secret: str | None, data_dir: Path) -> str:
    """The configured secret, else a random one kept in data/session.key (mode 600)."""
    if secret:
        return secret
    path = data_dir / "session.key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another server process wrote it first
        time.sleep(0.2)
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def end_sessions(
    store: Store,
    user: User,
    reason: str,
    *,
    audit: AuditLog,
    actor: str | None,
) -> int:
    """End every open session of ``user``; returns how many were open (the audit log
    records the revocation with that count)."""
    now = audit.now()
    with store.session() as s:
        result = s.execute(
            update(ReviewSessionRow)
            .where(ReviewSessionRow.user_id == user.id, ReviewSessionRow.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason[:40])
        )
        ended = int(result.rowcount or 0)
    audit.record(
        "sessions_revoked",
        username=user.username,
        user_id=user.id,
        actor=actor,
        detail=f"{ended} session(s) ended: {reason}",
    )
    return ended


def open_sessions(store: Store, user_id: int, now: datetime) -> int:
    """How many unexpired, unrevoked sessions the user has."""
    with store.session() as s:
        q = select(func.count()).select_from(ReviewSessionRow)
        q = q.where(
            ReviewSessionRow.user_id == user_id,
            ReviewSessionRow.revoked_at.is_(None),
            ReviewSessionRow.expires_at > now,
        )
        return int(s.scalar(q) or 0)


@dataclass(frozen=True)
class Session:
    id: str  # SHA-256 of the cookie token
    user: User
    csrf: str


class Sessions:
    """Issues, reads and ends server-side sessions; signs the cookie."""

    def __init__(
        self,
        store: Store,
        secret: str,
        max_age_seconds: int,
        clock: Callable[[], float] = time.time,
    ):
        from itsdangerous import URLSafeTimedSerializer

        self.store = store
        self.max_age = max_age_seconds
        self.clock = clock
        self._signer = URLSafeTimedSerializer(secret, salt="qualflow-review-session")
        self._login = URLSafeTimedSerializer(secret, salt="qualflow-review-login")

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def issue(self, user: User, address: str | None = None) -> tuple[str, str]:
        """A new session: (cookie value, CSRF token). Expired rows are pruned here."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = self._now()
        with self.store.session() as s:
            s.execute(delete(ReviewSessionRow).where(ReviewSessionRow.expires_at < now))
            s.add(
                ReviewSessionRow(
                    id=_token_id(token),
                    user_id=user.id,
                    csrf=csrf,
                    address=(address or "")[:64] or None,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.max_age),
                )
            )
        return self._signer.dumps(token), csrf

    def _token(self, cookie: str | None) -> str | None:
        from itsdangerous import BadSignature

        if not cookie:
            return None
        try:
            token = self._signer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # also covers SignatureExpired
            return None
        return token if isinstance(token, str) else None

    def read(self, cookie: str | None) -> Session | None:
        """The session of a cookie: signed, on record, not ended, not expired, and of an
        active user (re-read on every request)."""
        token = self._token(cookie)
        if token is None:
            return None
        with self.store.session() as s:
            found = s.execute(
                select(ReviewSessionRow, UserRow)
                .join(UserRow, UserRow.id == ReviewSessionRow.user_id)
                .where(ReviewSessionRow.id == _token_id(token))
            ).first()
            if found is None:
                return None
            row, user_row = found
            if row.revoked_at is not None or as_utc(row.expires_at) <= self._now():
                return None
            if not user_row.active:
                return None
            return Session(id=row.id, user=_user(user_row), csrf=row.csrf)

    def end(self, session: Session, reason: str) -> None:
        """End one session (logout)."""
        with self.store.session() as s:
            s.execute(
                update(ReviewSessionRow)
                .where(ReviewSessionRow.id == session.id, ReviewSessionRow.revoked_at.is_(None))
                .values(revoked_at=self._now(), revoked_reason=reason[:40])
            )

    def login_token(self) -> tuple[str, str]:
        """A pre-login CSRF token and its signed cookie (double submit)."""
        token = secrets.token_urlsafe(24)
        return token, self._login.dumps(token)

    def check_login_token(self, cookie: str | None, token: str) -> bool:
        from itsdangerous import BadSignature

        if not cookie or not token:
            return False
        try:
            expected = self._login.loads(cookie, max_age=3600)
        except BadSignature:
            return False
        return hmac.compare_digest(str(expected), token)


def same_token(expected: str, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(expected, given or "")
