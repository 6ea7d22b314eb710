"""LLM calls run like a production system: limits, retries, timeouts, cache and cost.

``LLMClient.call`` is one structured-output request through LangChain's
``ChatOpenAI``: it waits for the per-process request and token rate limits,
retries 429 (honouring ``Retry-After``), 5xx, timeouts, connection errors and any
error it does not know with exponential backoff and jitter, bounds every call in
time (``llm_timeout``), tokens (``max_completion_tokens`` and, for servers that
ignore it such as llama.cpp, ``max_tokens`` in the body) and answer size
(``llm_max_response_kb``, enforced while the body is read), and answers from the
``response_cache`` table when the same request was answered before, so an unchanged
re-run makes no call at all. Concurrency is the caller's (``LLMCoder`` runs a thread
pool); everything here is thread-safe.

One :class:`CircuitBreaker` per client is shared by all of a run's threads: a
``Retry-After`` pauses every thread, and after ``llm_circuit_breaker`` consecutive
rate-limit, server, timeout or connection errors (or at once on 401/403/404, which
no retry can fix) it opens: no further request is sent and every caller gets
:class:`CircuitOpen`, so the run stops instead of waiting out each passage's retries.

Logging: request counts, status codes and timings only; never passage text at
INFO, never the API key.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

# Imported here, never first inside worker threads: a first ``import httpx`` in the
# retry classifier, racing the openai client in other threads, left the module
# partially initialised and turned outages into permanent "needs_human" answers.
import httpx
import openai

from qualflow.models import Usage

try:  # openai>=3 talks through httpx2 (an httpx drop-in); older releases through httpx
    import httpx2 as _sdk_httpx
except ImportError:  # pragma: no cover - depends on the installed openai release
    _sdk_httpx = httpx

if TYPE_CHECKING:
    from pydantic import BaseModel

    from qualflow.settings import Settings
    from qualflow.store import Store

log = logging.getLogger(__name__)

_warned_models: set[str] = set()
_warn_lock = threading.Lock()


class LLMCallError(RuntimeError):
    """A call that failed for good; carries what is known for the record."""

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        usage: Usage | None = None,
        last_response: str | None = None,
        retryable: bool = False,
    ):
        super().__init__(message)
        self.attempts = attempts
        self.usage = usage or Usage()
        self.last_response = last_response
        self.retryable = retryable


class CircuitOpen(LLMCallError):
    """The run's endpoint is treated as down: no request is sent any more.

    Raised at once to every caller after the breaker opened. ``retryable`` is True:
    the passages it leaves unanswered get nothing stored, so the next run codes them.
    """

    def __init__(self, reason: str, *, attempts: int = 0, usage: Usage | None = None):
        super().__init__(f"circuit open: {reason}", attempts=attempts, usage=usage, retryable=True)
        self.reason = reason


class ResponseTooLarge(RuntimeError):
    """An answer body larger than ``llm_max_response_kb`` (reading stopped at the cap)."""

    def __init__(self, size: int | None, cap: int):
        self.size = size
        self.cap = cap
        told = f"{size} bytes" if size is not None else f"more than {cap} bytes"
        super().__init__(
            f"answer too large: {told}, over the cap of {cap} bytes "
            "(setting llm_max_response_kb); refused unread"
        )


# --------------------------------------------------------------------------- cost


def price_for(model: str, prices: dict[str, tuple[float, float]]) -> tuple[float, float] | None:
    """(prompt, completion) USD per million tokens for ``model``.

    Exact name first, then the longest configured name that ``model`` starts with
    followed by ``-``, ``:``, ``/`` or ``@`` (``gpt-4o-mini-2024-07-18`` ->
    ``gpt-4o-mini``, ``local:SmolLM2`` -> ``local``).
    """
    if model in prices:
        return prices[model]
    best = max(
        (k for k in prices if model.startswith(k) and model[len(k) : len(k) + 1] in "-:/@"),
        key=len,
        default=None,
    )
    return prices[best] if best is not None else None


def estimate_cost(
    model: str, prompt_tokens: int, completion_tokens: int, prices: dict[str, tuple[float, float]]
) -> float:
    """Estimated USD; an unknown model costs 0 with one warning per model."""
    price = price_for(model, prices)
    if price is None:
        with _warn_lock:
            if model not in _warned_models:
                _warned_models.add(model)
                log.warning(
                    "no price for model %r in prices_per_million: cost recorded as 0", model
                )
        return 0.0
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000


# --------------------------------------------------------------------------- rate limits


class RateLimiter:
    """Per-process request and token limits over a sliding 60-second window.

    ``acquire(tokens)`` blocks until one more request with ``tokens`` (an
    estimate) fits; ``settle(slot, actual)`` replaces the estimate by the real
    count once the answer is in. 0 means unlimited. A single request larger than
    the token limit is let through alone rather than blocking forever.

    O(1) per call: with no limit set it keeps nothing (``acquire`` returns None);
    with a limit, the requests of the window sit in a queue in time order with a
    running token sum, and each call drops only the entries that left the window.
    """

    WINDOW = 60.0

    def __init__(
        self,
        requests_per_minute: int = 0,
        tokens_per_minute: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._clock = clock
        self._events: deque[list[float]] = deque()  # [time, tokens, in window (1/0)]
        self._tokens = 0.0
        self._cond = threading.Condition()

    @property
    def unlimited(self) -> bool:
        return self.rpm <= 0 and self.tpm <= 0

    def acquire(self, tokens: int) -> list[float] | None:
        if self.unlimited:
            return None
        with self._cond:
            while True:
                now = self._clock()
                self._expire(now)
                fits_requests = self.rpm <= 0 or len(self._events) < self.rpm
                fits_tokens = self.tpm <= 0 or not self._events or self._tokens + tokens <= self.tpm
                if fits_requests and fits_tokens:
                    slot = [now, float(tokens), 1.0]
                    self._events.append(slot)
                    self._tokens += tokens
                    return slot
                wait = self._events[0][0] + self.WINDOW - now
                self._cond.wait(timeout=max(wait, 0.01))

    def _expire(self, now: float) -> None:
        """Drop the requests that left the window (oldest first)."""
        while self._events and now - self._events[0][0] >= self.WINDOW:
            gone = self._events.popleft()
            gone[2] = 0.0
            self._tokens -= gone[1]

    def settle(self, slot: list[float] | None, actual_tokens: int) -> None:
        if slot is None:
            return
        with self._cond:
            if slot[2]:  # still in the window: its tokens count in the sum
                self._tokens += actual_tokens - slot[1]
            slot[1] = float(actual_tokens)
            self._cond.notify_all()

    def __len__(self) -> int:
        """Requests held in the window (0 when unlimited)."""
        with self._cond:
            return len(self._events)


# --------------------------------------------------------------------------- retries


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None) or getattr(
        getattr(exc, "response", None), "status_code", None
    )


Verdict = Literal["retry", "final", "fatal"]
FATAL_STATUSES = frozenset({401, 403, 404})
"""Statuses no retry can fix for any request (key, permission, model or URL wrong)."""
RETRY_STATUSES = frozenset({408, 409, 429})


def classify(exc: BaseException) -> Verdict:
    """What a failed attempt means.

    ``final``: the server refused this request (a 4xx such as 400 or 422): asking
    again gets the same answer. ``fatal``: 401, 403 or 404, which fail every request
    of the run alike. ``retry``: 429, 408, 409, 5xx, timeouts, connection errors and
    every exception not known here, so an unexpected error becomes ``failed``
    (retried by the next run) and never a final answer.
    """
    status = _status(exc)
    if isinstance(status, int) and 400 <= status < 500 and status not in RETRY_STATUSES:
        return "fatal" if status in FATAL_STATUSES else "final"
    return "retry"


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx, timeouts, connection errors and unknown errors are worth another try."""
    return classify(exc) == "retry"


def is_overload(exc: BaseException) -> bool:
    """Rate-limit, server, timeout or connection trouble: what the circuit breaker counts."""
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return True
    if isinstance(exc, httpx.TransportError | _sdk_httpx.TransportError):
        return True
    status = _status(exc)
    return isinstance(status, int) and (status == 429 or status >= 500)


def _too_large(exc: BaseException | None) -> ResponseTooLarge | None:
    """The ResponseTooLarge behind ``exc`` (the SDK wraps it in a connection error)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ResponseTooLarge):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``Retry-After``)."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(
    attempt: int, exc: BaseException | None, base: float = 0.5, cap: float = 30.0
) -> float:
    """Exponential backoff with jitter; at least what ``Retry-After`` asks (capped at 300 s)."""
    delay = min(cap, base * 2**attempt)
    delay = delay / 2 + random.uniform(0, delay / 2)
    asked = retry_after(exc) if exc is not None else None
    if asked is not None:
        delay = max(delay, min(asked, 300.0))
    return delay


# --------------------------------------------------------------------------- circuit breaker


class CircuitBreaker:
    """Shared by every thread of one client: a common pause, and a stop after a streak.

    ``failure()`` counts consecutive rate-limit, server, timeout and connection
    errors over all threads (``success()`` resets the streak); at ``threshold`` the
    breaker opens for good (0 = never). ``pause(seconds)`` holds every thread's next
    request until then (a server's ``Retry-After`` applies to all calls, not just to
    the one that got it). ``wait(seconds)`` sleeps but wakes at once when the breaker
    opens, so no thread sits out a long back-off for nothing.
    """

    def __init__(self, threshold: int, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self._clock = clock
        self._streak = 0
        self._reason: str | None = None
        self._resume_at = 0.0
        self._cond = threading.Condition()

    @property
    def is_open(self) -> bool:
        with self._cond:
            return self._reason is not None

    @property
    def reason(self) -> str | None:
        with self._cond:
            return self._reason

    @property
    def streak(self) -> int:
        with self._cond:
            return self._streak

    def check(self) -> None:
        """Raise :class:`CircuitOpen` when open; otherwise wait out a shared pause."""
        with self._cond:
            while True:
                if self._reason is not None:
                    raise CircuitOpen(self._reason)
                left = self._resume_at - self._clock()
                if left <= 0:
                    return
                self._cond.wait(timeout=left)

    def success(self) -> None:
        with self._cond:
            self._streak = 0

    def failure(self, what: str) -> None:
        with self._cond:
            self._streak += 1
            if self.threshold > 0 and self._streak >= self.threshold and self._reason is None:
                self._open(
                    f"{self._streak} consecutive endpoint errors over all calls "
                    f"(llm_circuit_breaker = {self.threshold}); last: {what}"
                )

    def trip(self, reason: str) -> None:
        """Open now (an error no retry can fix, or the caller stopping the run)."""
        with self._cond:
            if self._reason is None:
                self._open(reason)

    def pause(self, seconds: float) -> None:
        with self._cond:
            self._resume_at = max(self._resume_at, self._clock() + seconds)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` unless the breaker opens first (then raise CircuitOpen)."""
        deadline = self._clock() + seconds
        with self._cond:
            while self._reason is None:
                left = deadline - self._clock()
                if left <= 0:
                    return
                self._cond.wait(timeout=left)
            raise CircuitOpen(self._reason)

    def _open(self, reason: str) -> None:
        self._reason = reason
        log.warning("LLM endpoint circuit open: %s", reason)
        self._cond.notify_all()


def circuit_reason(coder: Any) -> str | None:
    """Why the coder's LLM client stopped sending (its breaker is open), or None.

    Works on any coder: only an LLM coder has a ``client`` with a breaker.
    """
    breaker = getattr(getattr(coder, "client", None), "breaker", None)
    return breaker.reason if isinstance(breaker, CircuitBreaker) else None


def stop_calls(coder: Any, reason: str) -> None:
    """Stop an LLM coder's pending calls and retries (open its breaker); no-op otherwise."""
    breaker = getattr(getattr(coder, "client", None), "breaker", None)
    if isinstance(breaker, CircuitBreaker):
        breaker.trip(reason)


# --------------------------------------------------------------------------- answer size


class _CappedStream(_sdk_httpx.SyncByteStream):
    """A response body that raises ResponseTooLarge once more than ``cap`` bytes came."""

    def __init__(self, inner: Any, cap: int):
        self._inner = inner
        self._cap = cap

    def __iter__(self):
        seen = 0
        for chunk in self._inner:
            seen += len(chunk)
            if seen > self._cap:
                raise ResponseTooLarge(None, self._cap)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class CappedTransport(_sdk_httpx.HTTPTransport):
    """The SDK's HTTP transport with a cap on response bodies.

    A ``Content-Length`` over the cap is refused before a byte of the body is read;
    a body without one (chunked) is cut off as soon as it passes the cap.
    """

    def __init__(self, cap: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.cap = cap

    def handle_request(self, request: Any) -> Any:
        response = super().handle_request(request)
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.cap:
            response.close()
            raise ResponseTooLarge(int(length), self.cap)
        response.stream = _CappedStream(response.stream, self.cap)
        return response


def capped_http_client(cap: int) -> Any:
    """The SDK's default HTTP client (timeouts, pool limits) over a CappedTransport."""
    limits = getattr(openai, "DEFAULT_CONNECTION_LIMITS", None)
    transport = CappedTransport(cap, limits=limits) if limits else CappedTransport(cap)
    return openai.DefaultHttpxClient(transport=transport)


# --------------------------------------------------------------------------- cache


def cache_key(**parts: Any) -> str:
    """sha256 over the canonical JSON of everything that determines the answer."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    text: str
    prompt_tokens: int
    completion_tokens: int


class ResponseCache:
    """Answers by request key in the store's ``response_cache`` table."""

    def __init__(self, store: Store):
        self.store = store
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedResponse | None:
        from qualflow.db import ResponseCacheRow

        with self.store.session() as s:
            row = s.get(ResponseCacheRow, key)
            hit = (
                CachedResponse(row.response, row.prompt_tokens, row.completion_tokens)
                if row
                else None
            )
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1
        return hit

    def put(self, key: str, text: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Store an answer; a failure to cache is logged, never fatal to the call."""
        from sqlalchemy.exc import SQLAlchemyError

        from qualflow.db import ResponseCacheRow

        try:
            with self.store.session() as s:
                if s.get(ResponseCacheRow, key) is None:
                    s.add(
                        ResponseCacheRow(
                            key=key,
                            response=text,
                            prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens,
                        )
                    )
        except SQLAlchemyError as exc:  # e.g. another worker stored the same key first
            log.warning("response cache: could not store an answer (%s)", type(exc).__name__)


# --------------------------------------------------------------------------- the call


@dataclass
class CallResult:
    """One answered request: the answer text and its parsed form (or the parse error)."""

    text: str
    parsed: Any | None
    parse_error: str | None
    usage: Usage
    cached: bool = False
    attempts: int = 1
    elapsed: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def answer_text(message: Any) -> str:
    """The model's answer from an AIMessage: tool-call arguments, else the content."""
    calls = getattr(message, "tool_calls", None) or []
    if calls:
        return json.dumps(calls[0].get("args", {}), ensure_ascii=False)
    bad = getattr(message, "invalid_tool_calls", None) or []
    if bad:
        return str(bad[0].get("args") or "")
    content = getattr(message, "content", "")
    if isinstance(content, list):
        content = "".join(c.get("text", "") if isinstance(c, dict) else str(c) for c in content)
    return str(content or "")


_JSON_BLOCK = re.compile(r"\{.*\}", re.DOTALL)


def parse_answer(text: str, schema: type[BaseModel]) -> tuple[Any | None, str | None]:
    """Parse answer text into ``schema``; tolerates prose or code fences around JSON."""
    from pydantic import ValidationError

    if not text.strip():
        return None, "empty answer (no tool call and no content)"
    candidates = [text]
    match = _JSON_BLOCK.search(text)
    if match and match.group(0) != text:
        candidates.append(match.group(0))
    error = ""
    for candidate in candidates:
        try:
            return schema.model_validate_json(candidate), None
        except ValidationError as exc:
            error = _short_validation_error(exc)
    return None, error


def _short_validation_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for e in errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()))
            parts.append(f"{loc or 'answer'}: {e.get('msg')}")
        return "answer does not match the schema: " + "; ".join(parts)
    return f"answer does not match the schema: {exc}"


def _usage_of(message: Any) -> tuple[int, int]:
    meta = getattr(message, "usage_metadata", None) or {}
    if meta:
        return int(meta.get("input_tokens", 0)), int(meta.get("output_tokens", 0))
    tu = (getattr(message, "response_metadata", None) or {}).get("token_usage") or {}
    return int(tu.get("prompt_tokens", 0) or 0), int(tu.get("completion_tokens", 0) or 0)


class LLMClient:
    """One endpoint and model; ``call()`` is thread-safe and never logs text or keys."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        model: str,
        settings: Settings,
        method: str = "function_calling",
        cache: ResponseCache | None = None,
        limiter: RateLimiter | None = None,
        sleep: Callable[[float], None] | None = None,
        breaker: CircuitBreaker | None = None,
    ):
        from langchain_openai import ChatOpenAI

        from qualflow.privacy import ensure_local, is_loopback

        ensure_local(base_url, "LLM endpoint", settings)
        self.base_url = base_url
        self.model = model
        self.settings = settings
        self.method = method
        self.cache = cache
        self.limiter = limiter or RateLimiter(
            settings.llm_requests_per_minute, settings.llm_tokens_per_minute
        )
        self.breaker = breaker or CircuitBreaker(settings.llm_circuit_breaker)
        # Back-off sleeps wake up when the breaker opens (a test may pass its own sleep).
        self.sleep = sleep or self.breaker.wait
        self.max_response_bytes = max(1, settings.llm_max_response_kb) * 1024
        self.loopback = base_url is not None and is_loopback(base_url)
        extra_body: dict[str, Any] = {}
        if base_url is not None and "api.openai.com" not in base_url:
            # llama.cpp and some other servers ignore max_completion_tokens.
            extra_body["max_tokens"] = settings.llm_max_tokens
        self.chat = ChatOpenAI(
            model=model,
            base_url=base_url,
            api_key=api_key or "no-key",
            temperature=settings.llm_temperature,
            max_tokens=settings.llm_max_tokens,
            timeout=settings.llm_timeout,
            max_retries=0,
            extra_body=extra_body or None,
            http_client=capped_http_client(self.max_response_bytes),
        )
        self.calls = 0
        self._lock = threading.Lock()
        self._runnables: dict[tuple, Any] = {}

    def params(self) -> dict[str, Any]:
        """The parameters that shape an answer (part of the cache key)."""
        return {
            "model": self.model,
            "method": self.method,
            "temperature": self.settings.llm_temperature,
            "max_tokens": self.settings.llm_max_tokens,
        }

    def call(
        self,
        messages: list[tuple[str, str]],
        schema: type[BaseModel],
        *,
        key: str | None = None,
        response_format: dict | None = None,
    ) -> CallResult:
        """Ask once (with retries); the result is cached under ``key`` when given."""
        if key and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                parsed, error = parse_answer(hit.text, schema)
                return CallResult(hit.text, parsed, error, Usage(), cached=True, attempts=0)
        structured = self._structured(schema, response_format)
        estimate = sum(len(m[1]) for m in messages) // 4 + self.settings.llm_max_tokens
        attempts = 0
        last: BaseException | None = None
        started = time.monotonic()
        while attempts <= self.settings.llm_max_retries:
            self._check_breaker(attempts)
            slot = self.limiter.acquire(estimate)
            attempts += 1
            try:
                message = structured[0].invoke(messages)
            except Exception as exc:
                self.limiter.settle(slot, 0)
                last = exc
                too_large = _too_large(exc)
                if too_large is not None:  # an answer, just an unusable one
                    self.breaker.success()
                    return self._refused(too_large, attempts, started)
                verdict = classify(exc)
                if verdict != "retry":
                    self._give_up(exc, verdict, attempts)
                if is_overload(exc):
                    self.breaker.failure(f"{type(exc).__name__} (status {_status(exc)})")
                if attempts > self.settings.llm_max_retries:
                    break
                delay = backoff_delay(attempts - 1, exc)
                asked = retry_after(exc)
                if asked is not None:  # the server's wait holds for every thread
                    self.breaker.pause(min(asked, 300.0))
                log.info(
                    "LLM call attempt %d failed (%s, status %s); retrying in %.2fs",
                    attempts,
                    type(exc).__name__,
                    _status(exc),
                    delay,
                )
                self._sleep(delay, attempts)
                continue
            self.breaker.success()
            return self._result(message, structured[1], schema, slot, attempts, started, key)
        raise LLMCallError(
            f"LLM call failed after {attempts} attempts: {type(last).__name__} "
            f"(status {_status(last) if last else None}): {_clip(str(last))}",
            attempts=attempts,
            usage=Usage(calls=attempts),
            last_response=_body(last) if last else None,
            retryable=True,
        ) from last

    def _check_breaker(self, attempts: int) -> None:
        try:
            self.breaker.check()
        except CircuitOpen as exc:
            raise CircuitOpen(exc.reason, attempts=attempts, usage=Usage(calls=attempts)) from None

    def _sleep(self, delay: float, attempts: int) -> None:
        try:
            self.sleep(delay)
        except CircuitOpen as exc:
            raise CircuitOpen(exc.reason, attempts=attempts, usage=Usage(calls=attempts)) from None

    def _give_up(self, exc: BaseException, verdict: Verdict, attempts: int) -> None:
        """Raise for an error that another try cannot fix (``final`` or ``fatal``)."""
        what = f"{type(exc).__name__}, status {_status(exc)}"
        if verdict == "fatal":
            self.breaker.trip(f"the endpoint refused the run ({what}): {_clip(str(exc))}")
            raise CircuitOpen(
                self.breaker.reason or what, attempts=attempts, usage=Usage(calls=attempts)
            ) from exc
        raise LLMCallError(
            f"LLM call failed ({what}): {_clip(str(exc))}",
            attempts=attempts,
            usage=Usage(calls=attempts),
            last_response=_body(exc),
        ) from exc

    def _refused(self, error: ResponseTooLarge, attempts: int, started: float) -> CallResult:
        """An over-size answer as an unparseable one: the coder re-asks, then a human."""
        with self._lock:
            self.calls += 1
        log.warning("LLM answer refused: %s", error)
        return CallResult(
            "",
            None,
            str(error),
            Usage(calls=attempts),
            attempts=attempts,
            elapsed=time.monotonic() - started,
        )

    def _structured(self, schema: type[BaseModel], response_format: dict | None):
        """The structured-output runnable for ``schema`` (built once, then reused)."""
        use_format = self.method == "json_mode" and response_format is not None
        key = (schema, json.dumps(response_format, sort_keys=True) if use_format else None)
        with self._lock:
            runnable = self._runnables.get(key)
            if runnable is None:
                kwargs: dict[str, Any] = {"response_format": response_format} if use_format else {}
                # ``llm | parser`` as LangChain builds it; invoked in two steps so the raw
                # message is kept. include_raw=True does the same through a
                # RunnableParallel that starts a thread pool on every call (measured:
                # most of the per-call CPU time), so the two steps are run here directly.
                sequence = self.chat.with_structured_output(
                    schema, method=self.method, include_raw=False, **kwargs
                )
                runnable = (_without_trace_schema(sequence.first), sequence.last)
                if len(self._runnables) >= 256:  # per-call schemas: keep the recent ones
                    self._runnables.pop(next(iter(self._runnables)))
                self._runnables[key] = runnable
        return runnable

    def _result(
        self, raw: Any, parser: Any, schema: type[BaseModel], slot, attempts: int, started, key
    ) -> CallResult:
        text = answer_text(raw)
        pt, ct = _usage_of(raw)
        self.limiter.settle(slot, pt + ct)
        with self._lock:
            self.calls += 1
        try:
            parsed, error = parser.invoke(raw), None
        except Exception:  # LangChain's parser refused: try the tolerant parse below
            parsed = None
        if parsed is None:
            parsed, error = parse_answer(text, schema)
        usage = Usage(
            prompt_tokens=pt,
            completion_tokens=ct,
            calls=attempts,
            cost_usd=estimate_cost(self.model, pt, ct, self.settings.prices_per_million),
        )
        if key and self.cache is not None:
            self.cache.put(key, text, pt, ct)
        elapsed = time.monotonic() - started
        log.debug("LLM call done in %.2fs, %d+%d tokens", elapsed, pt, ct)
        return CallResult(text, parsed, error, usage, attempts=attempts, elapsed=elapsed)


def _without_trace_schema(bound: Any) -> Any:
    """The bound model without ``ls_structured_output_format``: LangChain converts that
    schema to JSON schema on every call only for tracing metadata (~8 ms per call,
    measured); the tools / response_format sent to the server are unchanged."""
    kwargs = getattr(bound, "kwargs", None)
    if not kwargs or "ls_structured_output_format" not in kwargs:
        return bound
    rest = {k: v for k, v in kwargs.items() if k != "ls_structured_output_format"}
    return type(bound)(bound=bound.bound, kwargs=rest, config=bound.config)


def _body(exc: BaseException) -> str | None:
    """The HTTP body of a failed call (an error message, never our request), clipped."""
    response = getattr(exc, "response", None)
    try:
        return _clip(response.text, 2000) if response is not None else None
    except Exception:  # a streamed or closed response
        return None


def _clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
