"""Production call behaviour: retries, Retry-After, timeouts, rate limits, prices."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import pytest

from qualflow.llm_calls import (
    RateLimiter,
    backoff_delay,
    cache_key,
    estimate_cost,
    price_for,
    retry_after,
)
from tests.fake_openai import Fault, Hang, answer, proposal
from tests.llm_helpers import CODEBOOK, make_coder, request

TEXT = "I check MMLU every day."
GOOD = answer(proposal("01.use.daily", "every day"))


@pytest.fixture
def fast(settings):
    return settings.model_copy(
        update={"llm_max_retries": 2, "llm_timeout": 5.0, "llm_concurrency": 1}
    )


def test_429_retry_after_is_honoured(fake_openai, fast):
    fake_openai.script(Fault(429, headers={"Retry-After": "1"}), GOOD)
    [ps] = make_coder(fake_openai, fast).propose([request(TEXT)], CODEBOOK)
    assert ps.status == "ok" and ps.codes == {"01.use.daily"}
    assert fake_openai.chat_count == 2
    times = [r["time"] for r in fake_openai.requests]
    assert times[1] - times[0] >= 0.95  # waited what the server asked
    assert ps.usage.calls == 2


def test_5xx_is_retried(fake_openai, fast):
    fake_openai.script(Fault(500), Fault(503), GOOD)
    [ps] = make_coder(fake_openai, fast).propose([request(TEXT)], CODEBOOK)
    assert ps.status == "ok" and fake_openai.chat_count == 3


def test_5xx_exhausted_is_failed_for_a_later_retry_not_raised(fake_openai, fast):
    fake_openai.script(Fault(500), Fault(502), Fault(500), GOOD)
    [ps] = make_coder(fake_openai, fast).propose([request(TEXT)], CODEBOOK)
    # an outage is not a bad answer: the pipeline records it and retries next run
    assert ps.status == "failed" and ps.reason.startswith("endpoint unavailable")
    assert "after 3 attempts" in ps.reason and "status 500" in ps.reason
    assert fake_openai.chat_count == 3  # 1 + llm_max_retries


def test_400_is_not_retried(fake_openai, fast):
    fake_openai.script(Fault(400, body={"error": {"message": "bad request"}}), GOOD)
    [ps] = make_coder(fake_openai, fast).propose([request(TEXT)], CODEBOOK)
    assert ps.status == "needs_human" and "status 400" in ps.reason
    assert fake_openai.chat_count == 1
    assert "bad request" in ps.raw_response  # the server's error body is kept


def test_timeout_is_retried_then_recorded(fake_openai, fast):
    settings = fast.model_copy(update={"llm_timeout": 0.5, "llm_max_retries": 1})
    fake_openai.script(Hang(3.0), Hang(3.0))
    [ps] = make_coder(fake_openai, settings).propose([request(TEXT)], CODEBOOK)
    assert ps.status == "failed" and "Timeout" in ps.reason
    assert fake_openai.chat_count == 2


def test_timeout_then_success(fake_openai, fast):
    settings = fast.model_copy(update={"llm_timeout": 0.5})
    fake_openai.script(Hang(2.0), GOOD)
    [ps] = make_coder(fake_openai, settings).propose([request(TEXT)], CODEBOOK)
    assert ps.status == "ok" and ps.codes == {"01.use.daily"}


def test_connection_error_is_retried_then_recorded(fast):
    from qualflow.local_llm import free_port

    dead = SimpleNamespace(base_url=f"http://127.0.0.1:{free_port()}/v1")
    settings = fast.model_copy(update={"llm_max_retries": 1})
    [ps] = make_coder(dead, settings).propose([request(TEXT)], CODEBOOK)
    assert ps.status == "failed" and "ConnectionError" in ps.reason
    assert "after 2 attempts" in ps.reason and ps.usage.calls == 2


def test_retry_after_header_forms():
    def exc(headers):
        return SimpleNamespace(response=SimpleNamespace(headers=headers))

    assert retry_after(exc({"retry-after": "3"})) == 3.0
    assert retry_after(exc({"retry-after-ms": "250"})) == 0.25
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after(exc({"retry-after": when})) <= 30
    assert retry_after(exc({})) is None
    assert backoff_delay(0, exc({"retry-after": "7"})) >= 7.0
    delays = [backoff_delay(3, None) for _ in range(50)]
    assert all(2.0 <= d <= 4.0 for d in delays) and len(set(delays)) > 1  # jittered
    assert backoff_delay(20, None) <= 30.0


def test_request_rate_limit_waits_for_the_window():
    limiter = RateLimiter(requests_per_minute=2)
    limiter.WINDOW = 0.4
    started = time.monotonic()
    for _ in range(3):
        limiter.acquire(10)
    assert time.monotonic() - started >= 0.35


def test_token_rate_limit_counts_actual_tokens():
    limiter = RateLimiter(tokens_per_minute=1000)
    limiter.WINDOW = 0.4
    slot = limiter.acquire(900)
    limiter.settle(slot, 100)  # the answer used far fewer tokens than estimated
    started = time.monotonic()
    limiter.acquire(800)
    assert time.monotonic() - started < 0.2
    limiter.acquire(800)  # 100 + 800 + 800 > 1000: must wait for the window
    assert time.monotonic() - started >= 0.3
    big = RateLimiter(tokens_per_minute=10)
    big.acquire(50)  # larger than the limit alone: let through, not blocked forever


def test_price_lookup_and_cost():
    prices = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.5, 10.0), "local": (0.0, 0.0)}
    assert price_for("gpt-4o-mini-2024-07-18", prices) == (0.15, 0.60)
    assert price_for("gpt-4o-2024-08-06", prices) == (2.5, 10.0)
    assert price_for("local:SmolLM2-135M-Instruct.Q4_1", prices) == (0.0, 0.0)
    assert price_for("gpt-4", prices) is None
    assert estimate_cost("gpt-4o", 2_000_000, 1_000_000, prices) == pytest.approx(15.0)
    assert estimate_cost("unknown-thing", 10, 10, prices) == 0.0


def test_cache_key_depends_on_every_part():
    base = {"model": "m", "prompt_version": "v1", "messages": [["human", "text"]]}
    assert cache_key(**base) == cache_key(**dict(reversed(base.items())))
    assert cache_key(**base) != cache_key(**{**base, "model": "m2"})
    assert cache_key(**base) != cache_key(**{**base, "messages": [["human", "text!"]]})
