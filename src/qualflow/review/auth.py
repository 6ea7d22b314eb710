"""Accounts, passwords and login sessions of the review app.

Passwords are hashed with argon2id (argon2-cffi, its current default parameters).
A login session is a cookie signed with itsdangerous (HMAC, timestamped): it carries
the user id, a random CSRF token and a fingerprint of the password hash, so changing
a password ends every session; it expires after ``settings.session_hours`` and is
refused at once when the account is deactivated (the user is re-read on every request).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from qualflow.db import UserRow
from qualflow.store import Store

ROLES = ("admin", "reviewer")
SESSION_COOKIE = "qf_session"
LOGIN_CSRF_COOKIE = "qf_login_csrf"


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


def add_user(store: Store, username: str, password: str, role: str = "reviewer") -> User:
    username = username.strip()
    if not username or len(username) > 100 or any(c.isspace() for c in username):
        raise AuthError(f"username '{username}': 1-100 characters without spaces")
    if role not in ROLES:
        raise AuthError(f"role '{role}': must be one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise AuthError("password: at least 8 characters")
    with store.session() as s:
        if s.scalar(select(UserRow).where(UserRow.username == username)) is not None:
            raise AuthError(f"user '{username}' already exists")
        row = UserRow(username=username, password_hash=hash_password(password), role=role)
        s.add(row)
        s.flush()
        return _user(row)


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


def set_active(store: Store, username: str, active: bool) -> User:
    with store.session() as s:
        row = s.scalar(select(UserRow).where(UserRow.username == username))
        if row is None:
            raise AuthError(f"no user '{username}'")
        row.active = active
        return _user(row)


def count_admins(store: Store) -> int:
    with store.session() as s:
        q = select(func.count()).select_from(UserRow)
        return s.scalar(q.where(UserRow.role == "admin", UserRow.active.is_(True))) or 0


def authenticate(store: Store, username: str, password: str) -> User | None:
    """The active user with this name and password, else None (same cost either way)."""
    with store.session() as s:
        row = s.scalar(select(UserRow).where(UserRow.username == username))
        user = _user(row) if row else None
        stored = row.password_hash if row else _dummy_hash()  # flat timing for unknown names
    if not verify_password(stored, password) or user is None or not user.active:
        return None
    return user


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


def _password_fingerprint(store: Store, user_id: int) -> str | None:
    with store.session() as s:
        row = s.get(UserRow, user_id)
        if row is None:
            return None
        return hashlib.sha256(row.password_hash.encode()).hexdigest()[:16]


class Sessions:
    """Signs and reads the session cookie."""

    def __init__(self, secret: str, max_age_seconds: int):
        from itsdangerous import URLSafeTimedSerializer

        self.max_age = max_age_seconds
        self._signer = URLSafeTimedSerializer(secret, salt="qualflow-review-session")
        self._login = URLSafeTimedSerializer(secret, salt="qualflow-review-login")

    def issue(self, store: Store, user: User) -> tuple[str, str]:
        """A new cookie value and its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        payload = {"uid": user.id, "csrf": csrf, "pw": _password_fingerprint(store, user.id)}
        return self._signer.dumps(payload), csrf

    def read(self, store: Store, cookie: str | None) -> tuple[User, str] | None:
        """(user, csrf token) for a valid, unexpired cookie of an active user."""
        from itsdangerous import BadSignature

        if not cookie:
            return None
        try:
            payload: dict[str, Any] = self._signer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # also covers SignatureExpired
            return None
        user = get_user(store, int(payload.get("uid", 0)))
        if user is None or not user.active:
            return None
        if payload.get("pw") != _password_fingerprint(store, user.id):
            return None
        return user, str(payload.get("csrf", ""))

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
