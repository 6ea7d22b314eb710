"""Honest outcomes: run statuses ``partial``/``failed``, exit codes of ``code`` and
``ingest``, and the circuit breaker stopping a run whose endpoint is down."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from qualflow import pipeline
from qualflow.db import ProposalSetRow, RunRow
from tests.coders_fixture import (
    ScriptedCoder,
    make_transcript,
    small_codebook,
    write_transcript_file,
)
from tests.fake_openai import Fault, answer


@pytest.fixture
def settings(settings):
    """Chunks of one answer each (see test_pipeline.py): easy counts."""
    return settings.model_copy(update={"chunk_words": 5})


def _seed(store, settings, names=("alpha", "beta")) -> None:
    for name in names:
        store.save_transcript(*make_transcript(name, 6))
    pipeline.ensure_chunks(store, settings)


def _codable(store, settings) -> list[str]:
    """The units a run codes: the stored chunks."""
    return [p.id for p in store.passages(segmentation=pipeline.unit_segmentation(settings))]


def _sets(store) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(ProposalSetRow)) or 0


def _cli(*args: str):
    from qualflow.cli import app

    return CliRunner().invoke(app, list(args))


# ---------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("coded", "remaining", "stages", "budget", "circuit", "status"),
    [
        (6, 0, [], False, None, "completed"),
        (6, 0, ["validate"], False, None, "completed"),  # needs_human is coded
        (5, 1, ["code"], False, None, "partial"),
        (0, 6, ["code"] * 6, False, None, "failed"),
        (3, 3, [], True, None, "stopped_budget"),
        (3, 3, ["code"], False, "circuit open", "failed"),
        (6, 0, ["ingest"], False, None, "partial"),
    ],
)
def test_run_status_rules(coded, remaining, stages, budget, circuit, status):
    failures = [pipeline.Failure(stage=s, subject="x", reason="r") for s in stages]
    got = pipeline.run_status(
        coded=coded,
        remaining=remaining,
        failures=failures,
        stopped_budget=budget,
        stopped_circuit=circuit,
    )
    assert got == status


def test_run_in_which_every_call_failed_is_failed(store, settings):
    _seed(store, settings)
    coder = ScriptedCoder(raise_for=_codable(store, settings))
    summary = pipeline.run_coding(store, coder, small_codebook(), settings, batch_size=2)
    assert summary.status == "failed" and summary.coded == 0
    with store.session() as s:
        assert s.get(RunRow, summary.run_id).status == "failed"
    assert "failed" in pipeline.render_markdown(summary)


def test_some_failed_is_partial(store, settings):
    _seed(store, settings)
    coder = ScriptedCoder(raise_for=_codable(store, settings)[:1])
    summary = pipeline.run_coding(store, coder, small_codebook(), settings, batch_size=1)
    assert summary.status == "partial" and summary.remaining == 1
    assert "partial" in pipeline.render_markdown(summary)


def test_ctrl_c_ends_the_run_interrupted_not_failed(store, settings):
    _seed(store, settings)
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) > 1:  # the first call announces the plan; then Ctrl-C
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.run_coding(
            store, ScriptedCoder(), small_codebook(), settings, batch_size=1, progress=progress
        )
    with store.session() as s:
        (run,) = s.scalars(select(RunRow)).all()
        assert run.status == "interrupted"
    again = pipeline.run_coding(store, ScriptedCoder(), small_codebook(), settings)
    assert again.status == "completed" and again.remaining == 0


# ---------------------------------------------------------------------- circuit breaker


def test_circuit_breaker_stops_the_run_failed_and_resumable(store, settings, fake_openai):
    """A persistent 429: the run stops after N errors over all threads, is ``failed``,
    stores nothing for the unanswered passages, and the next run codes them all."""
    from tests.llm_helpers import make_coder

    _seed(store, settings, names=("alpha", "beta", "gamma", "delta"))
    todo = _codable(store, settings)
    fake_openai.responder = lambda body: Fault(429, headers={"Retry-After": "0.2"})
    s = settings.model_copy(
        update={"llm_max_retries": 3, "llm_concurrency": 2, "llm_circuit_breaker": 4}
    )
    summary = pipeline.run_coding(store, make_coder(fake_openai, s), small_codebook(), s)
    assert summary.status == "failed" and summary.coded == 0
    assert summary.remaining == len(todo) == 12
    assert fake_openai.chat_count <= 4 + 2  # stopped, not 12 passages x 4 attempts
    assert any(f.stage == "circuit" and "consecutive" in f.reason for f in summary.failures)
    assert _sets(store) == 0
    fake_openai.responder = lambda body: answer()
    again = pipeline.run_coding(store, make_coder(fake_openai, s), small_codebook(), s)
    assert again.status == "completed" and again.coded == 12


# ---------------------------------------------------------------------- exit codes


@pytest.fixture
def endpoint_ws(tmp_path, monkeypatch, fake_openai):
    ws = tmp_path / "ws"
    assert _cli("init", str(ws)).exit_code == 0
    write_transcript_file(ws / "inbox", "alpha")
    monkeypatch.setenv("QUALFLOW_LLM_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("QUALFLOW_LLM_API_KEY", "k")
    monkeypatch.setenv("QUALFLOW_LLM_MAX_RETRIES", "0")
    monkeypatch.setenv("QUALFLOW_LLM_CONCURRENCY", "1")
    monkeypatch.setenv("QUALFLOW_RETRIEVAL_K", "0")
    monkeypatch.setenv("QUALFLOW_CHUNK_WORDS", "5")  # one chunk per answer: three units
    return ws


def test_code_exits_1_when_every_call_failed(endpoint_ws, fake_openai):
    fake_openai.responder = lambda body: Fault(500)
    result = _cli("code", str(endpoint_ws / "inbox"), "-w", str(endpoint_ws))
    assert result.exit_code == 1, result.output
    assert "Run failed" in result.output


def test_code_exits_3_when_partly_done(endpoint_ws, fake_openai):
    calls = []

    def first_fails(body):
        calls.append(1)
        return Fault(500) if len(calls) == 1 else answer()

    fake_openai.responder = first_fails
    result = _cli("code", str(endpoint_ws / "inbox"), "-w", str(endpoint_ws))
    assert result.exit_code == 3, result.output
    again = _cli("code", str(endpoint_ws / "inbox"), "-w", str(endpoint_ws))
    assert again.exit_code == 0, again.output  # the failed passage is coded now


def test_ingest_exit_codes(tmp_path):
    ws = tmp_path / "ws"
    assert _cli("init", str(ws)).exit_code == 0
    good = write_transcript_file(tmp_path / "in", "alpha")
    bad = [tmp_path / "in" / f"bad{i}.docx" for i in range(9)]
    for b in bad:
        b.write_bytes(b"not a zip")
    mixed = _cli("ingest", str(tmp_path / "in"), "-w", str(ws))
    assert mixed.exit_code == 3, mixed.output  # 9 of 10 failed: not a success
    assert _cli("ingest", str(bad[0]), "-w", str(ws)).exit_code == 1
    assert _cli("ingest", str(good), "-w", str(ws)).exit_code == 0
