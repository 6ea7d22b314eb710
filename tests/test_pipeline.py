"""The coding pipeline without Prefect: incremental, resumable, isolated failures, budgets.

The units here are chunks of one answer each (with the question before it): a 5-word
budget is smaller than every participant turn of ``make_transcript``, so each turn is
a chunk of its own, which keeps the counts easy to read. Chunks of several turns are
tested in ``test_chunks.py``.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from qualflow import pipeline
from qualflow.db import FailureRow, ProposalRow, ProposalSetRow, RunRow
from qualflow.models import Candidate, ProposalSet
from tests.coders_fixture import ScriptedCoder, make_transcript, small_codebook


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"chunk_words": 5})


def _seed(store, names=("alpha", "beta"), n_turns=6, settings=None) -> list[str]:
    """Transcripts saved with their sentence grid, and (given settings) their chunks."""
    ids = []
    for name in names:
        t, passages = make_transcript(name, n_turns)
        store.save_transcript(t, passages)
        ids.append(t.id)
    if settings is not None:
        pipeline.ensure_chunks(store, settings)
    return ids


def _count(store, table) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(table)) or 0


def _codable(store, settings) -> list[str]:
    """The units a run codes: the stored chunks."""
    return [p.id for p in store.passages(segmentation=pipeline.unit_segmentation(settings))]


def test_codes_every_codable_passage_once_with_summary(store, settings):
    _seed(store)
    coder = ScriptedCoder()
    seen: list[tuple[int, int]] = []
    summary = pipeline.run_coding(
        store,
        coder,
        small_codebook(),
        settings,
        batch_size=2,
        progress=lambda d, t: seen.append((d, t)),
    )
    codable = _codable(store, settings)
    assert len(codable) == 6  # 3 participant turns per transcript, one chunk each
    chunk = store.passage(codable[0])
    assert [p.codable for p in chunk.pieces] == [False, True]  # the question, the answer
    assert sorted(coder.passages_seen) == sorted(codable)
    assert summary.status == "completed"
    assert (summary.transcripts, summary.passages, summary.coded, summary.remaining) == (2, 6, 6, 0)
    assert summary.proposals == 6  # each participant turn names one codebook word
    assert summary.codes_applied == 3
    assert summary.calls == 6
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)
    run = store.proposal_sets(run_id=summary.run_id)
    assert len(run) == 6 and all(ps.status == "ok" for ps in run)
    with store.session() as s:
        row = s.get(RunRow, summary.run_id)
        assert row.status == "completed" and row.summary["coded"] == 6


def test_rerun_unchanged_makes_no_coder_call_and_adds_no_rows(store, settings):
    _seed(store)
    pipeline.run_coding(store, ScriptedCoder(), small_codebook(), settings)
    counts = [_count(store, t) for t in (ProposalSetRow, ProposalRow, RunRow, FailureRow)]
    again = ScriptedCoder()
    summary = pipeline.run_coding(store, again, small_codebook(), settings)
    assert again.calls == []
    assert summary.already_coded == 6 and summary.coded == 0 and summary.run_id is None
    assert [_count(store, t) for t in (ProposalSetRow, ProposalRow, RunRow, FailureRow)] == counts


def test_new_transcript_codes_only_its_passages(store, settings):
    _seed(store, names=("alpha",))
    pipeline.run_coding(store, ScriptedCoder(), small_codebook(), settings)
    (new_id,) = _seed(store, names=("gamma",))
    coder = ScriptedCoder()
    summary = pipeline.run_coding(store, coder, small_codebook(), settings)
    assert {store.passage(p).transcript_id for p in coder.passages_seen} == {new_id}
    assert summary.coded == 3 and summary.already_coded == 3


def test_another_coder_key_codes_again(store, settings):
    _seed(store)
    pipeline.run_coding(store, ScriptedCoder(), small_codebook(), settings)
    other = ScriptedCoder()
    other.prompt_version = "p2"
    assert pipeline.run_coding(store, other, small_codebook(), settings).coded == 6


def test_scope_limited_to_given_transcripts(store, settings):
    alpha, _beta = _seed(store)
    coder = ScriptedCoder()
    summary = pipeline.run_coding(store, coder, small_codebook(), settings, transcript_ids=[alpha])
    assert summary.transcripts == 1 and summary.coded == 3
    assert {store.passage(p).transcript_id for p in coder.passages_seen} == {alpha}


def test_never_valid_passage_is_kept_as_needs_human_and_listed(store, settings):
    _seed(store, settings=settings)
    bad = _codable(store, settings)[1]
    summary = pipeline.run_coding(
        store, ScriptedCoder(never_valid=[bad]), small_codebook(), settings
    )
    assert summary.status == "completed" and summary.coded == 6
    assert summary.needs_human == 1 and summary.invalid_proposals == 1
    assert summary.invalid_rate == round(1 / 6, 4)
    (failure,) = summary.failures
    assert (
        failure.stage == "validate" and failure.subject == bad and "unknown code" in failure.reason
    )
    stored = {ps.passage_id: ps for ps in store.proposal_sets(run_id=summary.run_id)}
    assert stored[bad].status == "needs_human" and stored[bad].invalid[0].invalid_reason
    assert store.failures(run_id=summary.run_id) == [("validate", bad, failure.reason)]
    assert bad in pipeline.render_markdown(summary)


def test_failed_batch_is_recorded_and_retried_by_next_run(store, settings):
    _seed(store, settings=settings)
    broken = _codable(store, settings)[0]
    summary = pipeline.run_coding(
        store, ScriptedCoder(raise_for=[broken]), small_codebook(), settings, batch_size=1
    )
    assert summary.status == "partial"  # honest: one passage failed and is left uncoded
    assert summary.coded == 5 and summary.remaining == 1
    assert [(f.stage, f.subject) for f in summary.failures] == [("code", broken)]
    assert "ConnectionError" in summary.failures[0].reason
    retry = ScriptedCoder()
    second = pipeline.run_coding(store, retry, small_codebook(), settings)
    assert retry.passages_seen == [broken] and second.remaining == 0


def test_budget_stops_cleanly_and_resume_completes(store, settings):
    _seed(store)
    settings.max_tokens_per_run = 250
    coder = ScriptedCoder(tokens_per_passage=100)
    first = pipeline.run_coding(store, coder, small_codebook(), settings, batch_size=1)
    assert first.status == "stopped_budget"
    assert first.coded == 3 and first.remaining == 3 and first.prompt_tokens == 300
    with store.session() as s:
        assert s.get(RunRow, first.run_id).status == "stopped_budget"
    second = pipeline.run_coding(
        store, ScriptedCoder(tokens_per_passage=100), small_codebook(), settings, batch_size=1
    )
    assert (second.status, second.coded, second.remaining) == ("completed", 3, 0)
    third_coder = ScriptedCoder(tokens_per_passage=100)
    third = pipeline.run_coding(store, third_coder, small_codebook(), settings, batch_size=1)
    assert third_coder.calls == [] and third.status == "completed"
    sets = store.proposal_sets()
    assert sorted(ps.passage_id for ps in sets) == sorted(_codable(store, settings))


def test_cost_budget(store, settings):
    _seed(store)
    settings.max_cost_per_run = 0.015
    summary = pipeline.run_coding(
        store, ScriptedCoder(cost_per_passage=0.01), small_codebook(), settings, batch_size=1
    )
    assert summary.status == "stopped_budget" and summary.coded == 2
    assert summary.cost_usd == 0.02


def test_persist_is_idempotent(store, settings):
    _seed(store, settings=settings)
    book = small_codebook()
    store.save_codebook(book)
    passages = store.passages(segmentation=pipeline.unit_segmentation(settings))[:2]
    requests = pipeline.build_requests(store, passages, book)
    sets = pipeline.code_batch(ScriptedCoder(), requests, book)
    first = pipeline.persist(store, sets)
    second = pipeline.persist(store, sets)
    assert (first.written, first.duplicates) == (2, 0)
    assert (second.written, second.duplicates) == (0, 2)
    assert _count(store, ProposalSetRow) == 2


def test_coder_answering_wrong_passages_is_a_batch_failure(store, settings):
    _seed(store, names=("alpha",))

    class Wrong(ScriptedCoder):
        def propose(self, requests, codebook):
            return super().propose(requests, codebook)[::-1]

    summary = pipeline.run_coding(store, Wrong(), small_codebook(), settings, batch_size=3)
    assert summary.coded == 0 and summary.remaining == 3
    assert all("out of order" in f.reason for f in summary.failures)


class _Index:
    """Retrieval stand-in that ranks codes by name (the real index is tested by its owner)."""

    def __init__(self, codebook):
        self.codebook = codebook
        self.asked: list[int] = []

    def retrieve_many(self, contexts, k):
        self.asked.append(k)
        return [[Candidate(code=c, score=0.5) for c in self.codebook.codes[:k]] for _ in contexts]


def test_requests_carry_k_candidates_or_whole_codebook(store, settings):
    _seed(store, names=("alpha",), settings=settings)
    book = small_codebook()
    passages = store.passages(segmentation=pipeline.unit_segmentation(settings))
    index = _Index(book)
    with_k = pipeline.build_requests(store, passages, book, index=index, k=2)
    assert [len(r.candidates) for r in with_k] == [2, 2, 2] and index.asked == [2]
    whole = pipeline.build_requests(store, passages, book, index=index, k=0)
    assert [len(r.candidates) for r in whole] == [6, 6, 6] and index.asked == [2]
    assert whole[0].unit.pieces[0].speaker == "Interviewer"  # the question it answers
    assert [len(r.sentences) for r in whole] == [1, 1, 1]  # each answer's sentence


def test_render_markdown_lists_figures_and_failures():
    summary = pipeline.RunSummary(
        run_id=7,
        status="stopped_budget",
        coder="llm",
        model="m",
        codebook_version="abc",
        passages=10,
        coded=4,
        remaining=6,
        prompt_tokens=1200,
        completion_tokens=300,
        cost_usd=0.0123,
        failures=[pipeline.Failure(stage="ingest", subject="bad|file.docx", reason="not a zip")],
    )
    md = pipeline.render_markdown(summary)
    assert "| Still uncoded | 6 |" in md
    assert "budget reached" in md and "$0.0123" in md
    assert "bad\\|file.docx" in md and "not a zip" in md


def test_proposal_set_usage_survives_round_trip(store, settings):
    _seed(store, names=("alpha",))
    summary = pipeline.run_coding(
        store, ScriptedCoder(tokens_per_passage=40), small_codebook(), settings
    )
    sets: list[ProposalSet] = store.proposal_sets(run_id=summary.run_id)
    assert sum(ps.usage.prompt_tokens for ps in sets) == summary.prompt_tokens == 120


# ---------------------------------------------------------------------- the real LLM coder


def _llm_settings(settings, fake_openai):
    settings.llm_base_url = fake_openai.base_url
    settings.llm_model = "gpt-4o-mini"
    settings.llm_max_retries = 0
    settings.retrieval_k = 0
    return settings


def test_llm_coder_through_pipeline_is_incremental_and_budgeted(store, settings, fake_openai):
    from qualflow.coders.factory import open_coder
    from tests.fake_openai import answer, proposal

    _seed(store)
    settings = _llm_settings(settings, fake_openai)
    fake_openai.when("turn 1 we look", answer(proposal("cat.baseline", "baseline")))
    settings.max_tokens_per_run = 1  # the first call uses it up
    settings.llm_concurrency = 2  # overshoot: at most the 2 calls in flight, never a third
    with open_coder("llm", settings, store) as coder:
        first = pipeline.run_coding(store, coder, small_codebook(), settings, batch_size=2)
    assert first.status == "stopped_budget" and first.coded == 2 and first.remaining == 4
    assert first.prompt_tokens > 0 and fake_openai.chat_count == 2
    settings.max_tokens_per_run = 0
    with open_coder("llm", settings, store) as coder:
        second = pipeline.run_coding(store, coder, small_codebook(), settings)
    assert second.status == "completed" and second.coded == 4 and fake_openai.chat_count == 6
    assert second.proposals + first.proposals == 2  # turn 1 of alpha and of beta
    assert not first.failures and not second.failures
    rows = _count(store, ProposalSetRow)
    with open_coder("llm", settings, store) as coder:
        third = pipeline.run_coding(store, coder, small_codebook(), settings)
    assert (
        fake_openai.chat_count == 6 and third.coded == 0 and _count(store, ProposalSetRow) == rows
    )


def test_llm_answer_that_never_validates_is_needs_human_in_summary(store, settings, fake_openai):
    from qualflow.coders.factory import open_coder
    from tests.fake_openai import answer, proposal

    _seed(store, names=("alpha",))
    settings = _llm_settings(settings, fake_openai)
    invented = answer(proposal("cat.nonexistent", "words that are not in the passage"))
    fake_openai.when("turn 3", invented)
    with open_coder("llm", settings, store) as coder:
        summary = pipeline.run_coding(store, coder, small_codebook(), settings)
    assert summary.status == "completed" and summary.coded == 3 and summary.remaining == 0
    assert summary.needs_human == 1 and summary.invalid_proposals >= 1
    (failure,) = summary.failures
    bad = store.passage(failure.subject)
    assert failure.stage == "validate" and "turn 3" in bad.text and failure.reason
    assert bad.is_chunk


# ---------------------------------------------------------------------- qualflow code


def _cli(*args: str):
    from typer.testing import CliRunner

    from qualflow.cli import app

    return CliRunner().invoke(app, list(args))


def test_qualflow_code_command_codes_inbox_and_reruns_incrementally(tmp_path, monkeypatch):
    import yaml

    from qualflow.settings import load_settings
    from qualflow.store import open_store
    from tests.coders_fixture import write_transcript_file

    ws = tmp_path / "ws"
    _cli("init", str(ws))
    write_transcript_file(ws / "inbox", "alpha")
    (ws / "inbox" / "broken.docx").write_bytes(b"not a zip")
    book = small_codebook()
    codes = [{"title": c.title, "description": c.description} for c in book.codes]
    (ws / "book.yaml").write_text(yaml.safe_dump({"name": book.name, "codes": codes}))
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("QF_TEST_CALL_LOG", str(calls))
    monkeypatch.setenv("QUALFLOW_RETRIEVAL_K", "0")
    args = ["code", "--inbox", str(ws / "inbox"), "-w", str(ws), "--codebook",
            str(ws / "book.yaml"), "--coder", "tests.coders_fixture:scripted_coder"]  # fmt: skip
    first = _cli(*args)
    assert first.exit_code == 3, first.output  # partly done: broken.docx failed
    assert "not a DOCX file" in first.output and "Coded by this run" in first.output
    n_calls = len(calls.read_text().splitlines())
    store = open_store(load_settings(ws))
    try:
        coded = len(store.proposal_sets())
        units = store.passages(segmentation=pipeline.unit_segmentation(load_settings(ws)))
        assert coded == len(units) > 0 and all(u.is_chunk for u in units)
    finally:
        store.close()
    second = _cli(*args)
    assert second.exit_code == 3, second.output  # broken.docx is still there
    assert len(calls.read_text().splitlines()) == n_calls


def test_learned_coder_without_training_data_is_a_clear_error(tmp_path):
    _cli("init", str(tmp_path / "ws"))
    result = _cli("code", "-w", str(tmp_path / "ws"), "--coder", "learned")
    assert result.exit_code == 1
    assert "no learned coder is trained" in result.output  # and how to train one


def test_unknown_coder_is_a_clear_error(tmp_path):
    _cli("init", str(tmp_path / "ws"))
    result = _cli("code", "-w", str(tmp_path / "ws"), "--coder", "oracle")
    assert result.exit_code == 1 and "unknown coder 'oracle'" in result.output


def test_passages_by_id_keeps_order_across_chunks(store):
    _seed(store)
    ids = [p.id for p in store.passages()][::-1]
    got = pipeline.passages_by_id(store, [*ids, "missing"], chunk=5)
    assert [p.id for p in got] == ids
