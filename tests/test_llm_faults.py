"""LLM calls under endpoint faults: outages end as ``failed`` (never parked for a
human), a circuit breaker shared by the run's threads stops a hopeless run, answers
are bounded in tokens and bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from qualflow.llm_calls import (
    CircuitBreaker,
    CircuitOpen,
    ResponseTooLarge,
    circuit_reason,
    classify,
)
from tests.conftest import REPO
from tests.fake_openai import Answer, Fault, answer, proposal
from tests.llm_helpers import CODEBOOK, make_coder, request

TEXT = "I check MMLU every day."
GOOD = answer(proposal("01.use.daily", "every day"))

# A fresh interpreter: the fault only showed while httpx was first imported by the
# worker threads themselves, which a test process that imported it before cannot see.
OUTAGE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from collections import Counter
    from tests.fake_openai import FakeOpenAI, Fault
    from qualflow.settings import load_settings
    from tests.llm_helpers import CODEBOOK, make_coder, request

    fake = FakeOpenAI().start()
    fake.responder = lambda body: Fault(500)
    settings = load_settings(
        sys.argv[1], llm_max_retries=1, llm_concurrency=8, llm_timeout=5.0,
        llm_circuit_breaker=0,
    )
    coder = make_coder(fake, settings)
    requests = [request(f"I check MMLU every day, case {i}.", pid=f"p{i}") for i in range(24)]
    sets = coder.propose(requests, CODEBOOK)
    print(json.dumps({
        "statuses": dict(Counter(s.status for s in sets)),
        "reasons": sorted({s.reason for s in sets if s.status != "failed"}),
    }))
    """
)


@pytest.fixture
def fast(settings):
    return settings.model_copy(
        update={"llm_max_retries": 2, "llm_timeout": 5.0, "llm_concurrency": 1}
    )


# ---------------------------------------------------------------------- point 1


@pytest.mark.slow
def test_outage_with_threads_never_becomes_needs_human(tmp_path):
    """8 threads against an endpoint answering 500: every passage ``failed`` (retried
    by the next run), none stored as needs_human (three fresh interpreters)."""
    for attempt in range(3):
        out = subprocess.run(
            [sys.executable, "-c", OUTAGE_SCRIPT, str(tmp_path / f"ws{attempt}")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result == {"statuses": {"failed": 24}, "reasons": []}, result


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (AttributeError("partially initialized module 'httpx'"), "retry"),
        (RuntimeError("something nobody expected"), "retry"),
        (type("E", (Exception,), {"status_code": 500})(), "retry"),
        (type("E", (Exception,), {"status_code": 429})(), "retry"),
        (type("E", (Exception,), {"status_code": 400})(), "final"),
        (type("E", (Exception,), {"status_code": 422})(), "final"),
        (type("E", (Exception,), {"status_code": 401})(), "fatal"),
        (type("E", (Exception,), {"status_code": 404})(), "fatal"),
    ],
)
def test_unknown_errors_are_retried_not_final(error, verdict):
    assert classify(error) == verdict


def test_unexpected_error_is_retried_then_failed(fake_openai, fast, monkeypatch):
    """An exception the classifier does not know (here raised by the SDK call itself)
    is retried and ends as ``failed``: nothing is stored, the next run asks again."""
    coder = make_coder(fake_openai, fast)
    calls = []

    def broken(_messages):
        calls.append(1)
        raise AttributeError("module 'httpx' has no attribute 'HTTPStatusError'")

    monkeypatch.setattr(coder.client, "_structured", lambda *a: (_Raiser(broken), None))
    [ps] = coder.propose([request(TEXT)], CODEBOOK)
    assert ps.status == "failed" and "AttributeError" in ps.reason
    assert len(calls) == 3  # 1 + llm_max_retries


class _Raiser:
    def __init__(self, fn):
        self.invoke = fn


# ---------------------------------------------------------------------- point 11


def test_breaker_opens_after_consecutive_errors_over_all_threads(fake_openai, settings):
    """A persistent 429 with a long Retry-After: the breaker opens after N errors over
    all threads and every waiting or later call stops at once, instead of each
    passage waiting out its own retries (here 5 x 60 s each)."""
    fake_openai.responder = lambda body: Fault(429, headers={"Retry-After": "60"})
    s = settings.model_copy(
        update={"llm_max_retries": 5, "llm_concurrency": 4, "llm_circuit_breaker": 4}
    )
    coder = make_coder(fake_openai, s)
    started = time.monotonic()
    sets = coder.propose([request(f"{TEXT} {i}", pid=f"p{i}") for i in range(12)], CODEBOOK)
    elapsed = time.monotonic() - started
    assert {ps.status for ps in sets} == {"failed"}  # nothing stored: resumable
    assert all("circuit open" in ps.reason for ps in sets[4:])
    assert fake_openai.chat_count <= 4 + 3  # at most the calls already on the wire
    assert elapsed < 20, elapsed
    assert "consecutive endpoint errors" in circuit_reason(coder)


def test_breaker_streak_is_reset_by_a_success(fake_openai, fast):
    s = fast.model_copy(update={"llm_max_retries": 3, "llm_circuit_breaker": 3})
    fake_openai.script(Fault(500), Fault(500), GOOD, Fault(500), Fault(500), GOOD)
    coder = make_coder(fake_openai, s)
    sets = coder.propose([request(TEXT, pid="a"), request(TEXT + "!", pid="b")], CODEBOOK)
    assert [ps.status for ps in sets] == ["ok", "ok"]
    assert circuit_reason(coder) is None


def test_wrong_key_stops_the_run_at_once(fake_openai, fast):
    """401 fails every request alike: the first one opens the breaker, no passage is
    parked for a human and no further request is sent."""
    fake_openai.responder = lambda body: Fault(401, body={"error": {"message": "bad key"}})
    coder = make_coder(fake_openai, fast)
    sets = coder.propose([request(f"{TEXT} {i}", pid=f"p{i}") for i in range(5)], CODEBOOK)
    assert {ps.status for ps in sets} == {"failed"}
    assert fake_openai.chat_count == 1
    assert "status 401" in circuit_reason(coder)


def test_shared_pause_holds_every_thread():
    breaker = CircuitBreaker(threshold=0)
    breaker.pause(0.5)
    started = time.monotonic()
    waited: list[float] = []

    def call() -> None:
        breaker.check()
        waited.append(time.monotonic() - started)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(waited) == 3 and min(waited) >= 0.45


def test_opening_wakes_a_sleeping_thread_at_once():
    breaker = CircuitBreaker(threshold=2)
    errors: list[BaseException] = []

    def sleeper() -> None:
        try:
            breaker.wait(30)
        except CircuitOpen as exc:
            errors.append(exc)

    t = threading.Thread(target=sleeper)
    started = time.monotonic()
    t.start()
    breaker.failure("500")
    breaker.failure("500")
    t.join(5)
    assert errors and time.monotonic() - started < 2
    with pytest.raises(CircuitOpen):
        breaker.check()


# ---------------------------------------------------------------------- point 12


def test_every_call_carries_a_completion_token_cap(fake_openai, fast):
    fake_openai.script(GOOD)
    make_coder(fake_openai, fast).propose([request(TEXT)], CODEBOOK)
    [body] = fake_openai.chat_requests
    assert body["max_completion_tokens"] == fast.llm_max_tokens
    assert body["max_tokens"] == fast.llm_max_tokens  # for servers that ignore the other


def test_default_openai_endpoint_call_carries_the_cap(fake_openai, fast, monkeypatch):
    """No base URL (the OpenAI default, here redirected to the fake by the SDK's own
    environment variable): the cap is still in the body."""
    from qualflow.coders.llm import LLMCoder

    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    fake_openai.script(GOOD)
    coder = LLMCoder(base_url=None, api_key="k", model="gpt-4o-mini", settings=fast, cache=None)
    coder.propose([request(TEXT)], CODEBOOK)
    assert fake_openai.chat_requests[0]["max_completion_tokens"] == fast.llm_max_tokens


def test_oversized_answer_is_refused_with_its_reason(fake_openai, fast):
    """A 5 MB rationale is refused while it is read: re-asked once, then needs_human
    with the reason; nothing of it is stored."""
    huge = proposal("01.use.daily", "every day", rationale="x" * 5_000_000)
    fake_openai.script(Answer({"codes": [huge]}), Answer({"codes": [huge]}))
    s = fast.model_copy(update={"llm_max_response_kb": 64})
    [ps] = make_coder(fake_openai, s).propose([request(TEXT)], CODEBOOK)
    assert ps.status == "needs_human"
    assert "answer too large" in ps.reason and "llm_max_response_kb" in ps.reason
    assert not ps.proposals and len(ps.raw_response or "") < 1000
    assert fake_openai.chat_count == 2


def test_answer_under_the_cap_is_accepted(fake_openai, fast):
    fake_openai.script(GOOD)
    s = fast.model_copy(update={"llm_max_response_kb": 4})
    [ps] = make_coder(fake_openai, s).propose([request(TEXT)], CODEBOOK)
    assert ps.status == "ok"


def test_chunked_answer_is_cut_at_the_cap():
    """A body without Content-Length is counted while it streams."""
    from qualflow.llm_calls import _CappedStream

    class Body:
        closed = False

        def __iter__(self):
            yield from [b"x" * 1000] * 10

        def close(self):
            self.closed = True

    stream = _CappedStream(Body(), cap=2500)
    with pytest.raises(ResponseTooLarge):
        b"".join(stream)
