"""Validation of what the review app reads from requests: numbers, texts, body size.

Every numeric input is parsed here and must be a whole number inside bounds that fit a
64-bit signed integer (what SQLite and PostgreSQL store), positive where it is an id or
a count. Texts have length limits. A bad value raises ``BadInput`` naming the field and
the reason; the app answers it with HTTP 400 (413 for a too-large text or body) as an
HTML page, or JSON for a request that asks for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

INT64_MAX = 2**63 - 1
MEMO_MAX_CHARS = 20_000  # a memo of a few pages; a 900 KB paste is refused
SEARCH_MAX_CHARS = 200  # the codebook search box
TEXT_FIELD_MAX_CHARS = 300  # filters, code titles, passage ids, actions, messages
FORM_MAX_BYTES = 512 * 1024  # a POST body larger than this is refused before parsing


class BadInput(ValueError):
    """A request value the app refuses; ``status`` is 400 or 413."""

    def __init__(self, field: str, reason: str, status: int = 400):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.status = status


def whole_number(
    raw: str | None,
    field: str,
    *,
    minimum: int,
    maximum: int = INT64_MAX,
    default: int | None = None,
) -> int | None:
    """``raw`` as an int in [minimum, maximum]; ``default`` when empty."""
    text = (raw or "").strip()
    if not text:
        return default
    digits = text[1:] if text[0] in "+-" else text
    if not (digits.isascii() and digits.isdigit()):
        raise BadInput(field, f"'{_clip(text)}' is not a whole number")
    value = int(text) if len(digits) <= 20 else None  # longer cannot be in any bound
    if value is None or not minimum <= value <= maximum:
        raise BadInput(field, f"{_clip(text)} is outside the allowed range {minimum} to {maximum}")
    return value


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "…"


def share(raw: str | None, field: str, *, default: float = 0.0) -> float:
    """``raw`` as a number from 0 to 1 (a proportion); ``default`` when empty."""
    text = (raw or "").strip()
    if not text:
        return default
    try:
        value = float(text) if len(text) <= 25 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadInput(field, f"'{_clip(text)}' is not a number")
    if not 0.0 <= value <= 1.0:
        raise BadInput(field, f"{_clip(text)} is outside the allowed range 0 to 1")
    return value


def bounded_text(raw: str | None, field: str, max_chars: int, *, status: int = 400) -> str:
    """``raw`` (None as empty) when at most ``max_chars`` characters long."""
    text = raw or ""
    if len(text) > max_chars:
        raise BadInput(
            field, f"{len(text):,} characters; at most {max_chars:,} are accepted", status
        )
    return text


Respond = Callable[[dict[str, Any], int, str], Awaitable[Any]]


class LimitBody:
    """ASGI middleware: a request body above ``max_bytes`` gets HTTP 413 before the app
    parses it (by Content-Length, or by counting a body sent without one).

    ``respond(scope, status, message)`` builds the error response (an HTML page or JSON,
    as the app answers every error).
    """

    def __init__(self, app, max_bytes: int, respond: Respond):
        self.app = app
        self.max_bytes = max_bytes
        self.respond = respond

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send, declared)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True  # no Content-Length (chunked): read and count
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, size)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope, receive, send, size: int) -> None:
        message = (
            f"The request is too large ({size:,} bytes; at most {self.max_bytes:,} are "
            f"accepted). A memo holds at most {MEMO_MAX_CHARS:,} characters."
        )
        response = await self.respond(scope, 413, message)
        await response(scope, receive, send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
