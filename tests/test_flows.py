"""The Prefect flows with Prefect's test harness (one temporary server for the module).

Covers the batch-run guarantees through Prefect: incremental re-runs, isolated
failures listed in the artifact, budget stop and resume, the index task cached by
codebook version, Prefect global limits, the agreement report, and a real flow
process killed with SIGKILL mid-run and resumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

# Prefect reads its home when first imported: keep its database and results in tmp.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="qualflow-test-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from qualflow.db import DecisionRow, ProposalRow, ProposalSetRow, RunRow, UserRow
from qualflow.settings import load_settings
from qualflow.store import open_store
from tests.coders_fixture import small_codebook, write_transcript_file
from tests.conftest import REPO

SCRIPTED = "tests.coders_fixture:scripted_coder"


@pytest.fixture(scope="module")
def prefect_api():
    """A temporary Prefect server for every flow test of this module."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def flows(prefect_api):
    from prefect.flows import load_flow_from_entrypoint

    return {
        "code": load_flow_from_entrypoint(f"{REPO / 'flows' / 'coding.py'}:code_transcripts"),
        "report": load_flow_from_entrypoint(f"{REPO / 'flows' / 'report.py'}:agreement_report"),
    }


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace with an inbox of two transcripts and a small codebook file."""
    root = tmp_path / "ws"
    inbox = root / "inbox"
    write_transcript_file(inbox, "alpha")
    write_transcript_file(inbox, "beta")
    book = small_codebook()
    data = {
        "name": book.name,
        "codes": [{"title": c.title, "description": c.description} for c in book.codes],
    }
    (root / "book.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("QF_TEST_CALL_LOG", str(calls))
    monkeypatch.setenv("QUALFLOW_RETRIEVAL_K", "0")
    # 12 codable words: one answer's worth, so each answer is a unit of its own
    monkeypatch.setenv("QUALFLOW_CHUNK_WORDS", "12")
    return root


def _calls(ws: Path) -> int:
    log = ws.parent / "calls.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _run(flows, ws: Path, **kw):
    params = {
        "inbox": "inbox",
        "workspace": str(ws),
        "codebook": str(ws / "book.yaml"),
        "coder": SCRIPTED,
    }
    return flows["code"](**{**params, **kw})


def _rows(ws: Path):
    """Proposal sets, proposals, sets per unit, and the units a run codes (chunks)."""
    from qualflow.pipeline import unit_segmentation

    settings = load_settings(ws)
    store = open_store(settings)
    try:
        with store.session() as s:
            sets = s.scalar(select(func.count()).select_from(ProposalSetRow))
            props = s.scalar(select(func.count()).select_from(ProposalRow))
            per_passage = s.execute(
                select(ProposalSetRow.passage_id, func.count()).group_by(ProposalSetRow.passage_id)
            ).all()
        units = store.passages(segmentation=unit_segmentation(settings), codable_only=True)
        return sets, props, dict(per_passage), {p.id for p in units}
    finally:
        store.close()


def _artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, f"no artifact {key}"
    return found[0].data


def test_flow_codes_inbox_isolates_failures_and_publishes_artifact(flows, ws, monkeypatch):
    (ws / "inbox" / "broken.docx").write_bytes(b"this is not a zip file")
    monkeypatch.setenv("QF_TEST_NEVER_VALID_TEXT", "beta turn 3")
    summary = _run(flows, ws, batch_size=2)
    sets, _props, per_passage, codable = _rows(ws)
    assert summary["status"] == "partial"  # broken.docx failed: honest, not "completed"
    assert summary["transcripts"] == 2 and summary["coded"] == len(codable) == sets
    assert set(per_passage) == codable and set(per_passage.values()) == {1}
    stages = sorted((f["stage"], Path(f["subject"]).name) for f in summary["failures"])
    assert stages[0] == ("ingest", "broken.docx")
    assert [s for s, _ in stages].count("validate") == summary["needs_human"] == 1
    md = _artifact("qualflow-coding-run")
    assert f"run {summary['run_id']}" in md.lower() or f"| Run | {summary['run_id']} |" in md
    assert "broken.docx" in md and "not a DOCX" in md and "| Needs human | 1 |" in md


def test_flow_rerun_of_unchanged_inbox_makes_no_coder_call(flows, ws):
    first = _run(flows, ws)
    calls, rows = _calls(ws), _rows(ws)[:2]
    assert calls > 0 and first["coded"] > 0
    second = _run(flows, ws)
    assert _calls(ws) == calls
    assert _rows(ws)[:2] == rows
    assert second["coded"] == 0 and second["already_coded"] == first["coded"]
    assert second["run_id"] is None


def test_flow_budget_stops_cleanly_and_next_run_resumes(flows, ws, monkeypatch):
    monkeypatch.setenv("QF_TEST_TOKENS", "100")
    monkeypatch.setenv("QUALFLOW_LLM_CONCURRENCY", "1")
    first = _run(flows, ws, batch_size=1, max_tokens=250)
    assert first["status"] == "stopped_budget"
    assert first["coded"] == 3 and first["remaining"] > 0
    assert "budget reached" in _artifact("qualflow-coding-run")
    second = _run(flows, ws, batch_size=1, max_tokens=0)
    assert second["status"] == "completed" and second["coded"] == first["remaining"]
    _sets, _props, per_passage, codable = _rows(ws)
    assert set(per_passage) == codable and set(per_passage.values()) == {1}


def test_index_task_is_cached_by_codebook_version(flows, ws, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    monkeypatch.setenv("QUALFLOW_RETRIEVAL_K", "3")
    states = []
    for _ in range(2):
        state = _run(flows, ws, coder="similarity", return_state=True)
        assert state.is_completed()
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
                )
            )
        states.append({r.name.rsplit("-", 1)[0]: r.state.name for r in runs})
    assert states[0]["build_index"] == "Completed"
    assert states[1]["build_index"] == "Cached"


def test_global_concurrency_and_rate_limits_are_created_and_taken(flows, ws, monkeypatch):
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("QUALFLOW_PREFECT_CONCURRENCY_LIMIT", "qf-test-coding")
    monkeypatch.setenv("QUALFLOW_PREFECT_RATE_LIMIT", "qf-test-rate")
    monkeypatch.setenv("QUALFLOW_LLM_CONCURRENCY", "2")
    monkeypatch.setenv("QUALFLOW_LLM_REQUESTS_PER_MINUTE", "600")
    summary = _run(flows, ws, batch_size=4)
    # strict=True: a missing limit would have failed every batch instead.
    assert summary["status"] == "completed" and summary["remaining"] == 0
    assert not summary["failures"]
    with get_client(sync_client=True) as client:
        conc = client.read_global_concurrency_limit_by_name("qf-test-coding")
        rate = client.read_global_concurrency_limit_by_name("qf-test-rate")
    assert conc.limit == 2 and conc.active_slots == 0
    assert rate.limit == 600 and rate.slot_decay_per_second == pytest.approx(10.0)


def test_rate_limit_without_a_rate_is_a_clear_error(flows, ws, monkeypatch):
    monkeypatch.setenv("QUALFLOW_PREFECT_RATE_LIMIT", "qf-test-norate")
    with pytest.raises(ValueError, match="llm_requests_per_minute is 0"):
        _run(flows, ws)


def test_agreement_report_flow_writes_report_and_artifact(flows, ws):
    _run(flows, ws)
    store = open_store(load_settings(ws))
    try:
        passages = store.passages(codable_only=True)
        words = ["leaderboard", "baseline", "reproduce", "cost", "latency", "trust"]
        coding = {
            p.id: frozenset(f"cat.{w}" for w in words if w in p.text.lower()) for p in passages
        }
        coded = sorted(pid for pid, codes in coding.items() if codes)
        coding[coded[0]] = frozenset()  # the machine is not perfect against ann
        store.save_gold("team", "ann", coding)
        store.save_gold("team", "bob", {pid: frozenset() for pid in coding})
    finally:
        store.close()
    path = Path(flows["report"](workspace=str(ws), n_boot=50, min_support=1))
    assert path == ws / "reports" / "agreement-latest.md"
    text = path.read_text(encoding="utf-8")
    assert "scripted:scripted-1" in text and "team:ann" in text and "team:bob" in text
    assert list((ws / "reports" / "agreement-latest").glob("*.json"))
    assert "team:ann" in _artifact("qualflow-agreement-report")


def test_agreement_report_without_runs_says_so(flows, ws):
    path = Path(flows["report"](workspace=str(ws)))
    assert "No finished coding run yet" in path.read_text(encoding="utf-8")


def _seed_review(ws: Path) -> list[tuple]:
    """A reviewer and decisions on already coded passages; returns the decision rows."""
    store = open_store(load_settings(ws))
    try:
        passages = store.passages(codable_only=True)[:2]
        with store.session() as s:
            user = UserRow(username="rita", password_hash="x", role="reviewer")
            s.add(user)
            s.flush()
            for p in passages:
                s.add(
                    DecisionRow(
                        passage_id=p.id,
                        user_id=user.id,
                        action="add",
                        code="cat.trust",
                        before=[],
                        after=["cat.trust"],
                        state_version=1,
                    )
                )
        return _decisions(store)
    finally:
        store.close()


def _decisions(store) -> list[tuple]:
    with store.session() as s:
        return [
            (d.id, d.passage_id, d.action, d.code, tuple(d.after), d.created_at)
            for d in s.scalars(select(DecisionRow).order_by(DecisionRow.id))
        ]


@pytest.mark.slow
def test_killed_flow_process_resumes_without_loss_or_duplicates(flows, ws, prefect_api):
    first = _run(flows, ws)  # alpha and beta coded, then reviewed
    decisions = _seed_review(ws)
    for name in ("gamma", "delta", "epsilon"):
        write_transcript_file(ws / "inbox", name, n_turns=12)
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PYTHONPATH": str(REPO),
        "QF_TEST_DELAY": "0.4",
        "QUALFLOW_LLM_CONCURRENCY": "1",
    }
    cmd = [
        sys.executable,
        "-c",
        "from qualflow.cli import main; main()",
        "run",
        "--inbox",
        str(ws / "inbox"),
        "--coder",
        SCRIPTED,
        "--codebook",
        str(ws / "book.yaml"),
        "--batch-size",
        "1",
        "-w",
        str(ws),
    ]
    log = (ws.parent / "flow-process.log").open("w")
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while _rows(ws)[0] < first["coded"] + 4:
            assert proc.poll() is None, (ws.parent / "flow-process.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the flow process coded nothing"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the flow process (and its group) only
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    killed_sets, _props, _per, codable = _rows(ws)
    assert first["coded"] + 4 <= killed_sets < len(codable), "kill did not land mid-run"
    calls_before = _calls(ws)
    again = _run(flows, ws, batch_size=1)
    _sets, _props, per_passage, codable = _rows(ws)
    assert again["status"] == "completed" and again["remaining"] == 0
    assert again["coded"] == len(codable) - killed_sets  # only what was not stored yet
    assert _calls(ws) - calls_before == again["coded"]
    assert set(per_passage) == codable and set(per_passage.values()) == {1}
    store = open_store(load_settings(ws))
    try:
        assert _decisions(store) == decisions
    finally:
        store.close()


@pytest.mark.parametrize("user_value", [None, "true"])
def test_flow_modules_default_to_offline_but_respect_the_user(user_value):
    env = {k: v for k, v in os.environ.items()
           if k not in {"DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED"}}  # fmt: skip
    if user_value:
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = user_value
    code = (
        "import os, runpy\n"
        "for f in ('flows/coding.py', 'flows/report.py'):\n"
        "    runpy.run_path(f, run_name='loaded')\n"
        "print(os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'], os.environ['DO_NOT_TRACK'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    assert out.stdout.split() == [user_value or "false", "1"]


def test_batch_plan_sizes_tasks_from_run_batch_size(settings):
    import runpy

    plan = runpy.run_path(str(REPO / "flows" / "coding.py"), run_name="loaded")["batch_plan"]
    settings.run_batch_size = 48
    assert plan(settings, None) == (48, 2)  # two tasks: one builds while one drains
    assert plan(settings, 5) == (5, 2)


def test_flow_with_the_llm_coder_on_the_fake_server(flows, ws, monkeypatch, fake_openai):
    from tests.fake_openai import answer, proposal

    monkeypatch.setenv("QUALFLOW_LLM_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("QUALFLOW_LLM_MAX_RETRIES", "0")
    monkeypatch.setenv("QUALFLOW_SEGMENTATION", "turn")  # no passage quotes another's words
    fake_openai.when("turn 1 we look", answer(proposal("cat.baseline", "baseline")))
    first = _run(flows, ws, coder="llm")
    assert first["status"] == "completed" and first["coder"] == "llm"
    assert first["coded"] == fake_openai.chat_count == first["calls"] > 0
    assert first["proposals"] == 2 and first["prompt_tokens"] > 0 and not first["failures"]
    again = _run(flows, ws, coder="llm")
    assert again["coded"] == 0 and fake_openai.chat_count == first["coded"]


# ---------------------------------------------------------------------- honest outcomes


def _llm_env(monkeypatch, fake_openai, **extra: str) -> None:
    monkeypatch.setenv("QUALFLOW_LLM_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("QUALFLOW_LLM_API_KEY", "k")
    monkeypatch.setenv("QUALFLOW_LLM_MAX_RETRIES", "0")
    for key, value in extra.items():
        monkeypatch.setenv(key, value)


def test_flow_in_which_every_call_failed_ends_failed(flows, ws, monkeypatch, fake_openai):
    """Every LLM call answered 500: the flow run is Failed in Prefect, its summary says
    failed, the run row too, and nothing is stored (the next run retries)."""
    from tests.fake_openai import Fault

    _llm_env(monkeypatch, fake_openai, QUALFLOW_LLM_CIRCUIT_BREAKER="0")
    fake_openai.responder = lambda body: Fault(500)
    state = _run(flows, ws, coder="llm", return_state=True)
    assert state.is_failed()
    summary = flows["code"].fn.__globals__["summary_of"](state)
    assert summary["status"] == "failed" and summary["coded"] == 0
    assert _rows(ws)[0] == 0
    store = open_store(load_settings(ws))
    try:
        with store.session() as s:
            assert s.get(RunRow, summary["run_id"]).status == "failed"
    finally:
        store.close()


def test_flow_stops_when_the_endpoint_circuit_opens(flows, ws, monkeypatch, fake_openai):
    from tests.fake_openai import Fault

    _llm_env(
        monkeypatch,
        fake_openai,
        QUALFLOW_LLM_CIRCUIT_BREAKER="3",
        QUALFLOW_LLM_MAX_RETRIES="2",
        QUALFLOW_LLM_CONCURRENCY="2",
    )
    fake_openai.responder = lambda body: Fault(429, headers={"Retry-After": "0.1"})
    state = _run(flows, ws, coder="llm", return_state=True)
    summary = flows["code"].fn.__globals__["summary_of"](state)
    codable = _rows(ws)[3]
    assert summary["status"] == "failed" and summary["remaining"] == len(codable)
    assert any(f["stage"] == "circuit" for f in summary["failures"])
    assert fake_openai.chat_count <= 3 + 2  # not every passage times every retry


def test_qualflow_run_exit_codes(flows, ws, monkeypatch, fake_openai, prefect_api):
    """1 when nothing could be coded, 3 when partly done, 0 when done."""
    from typer.testing import CliRunner

    from qualflow.cli import app
    from tests.fake_openai import Fault, answer

    _llm_env(monkeypatch, fake_openai, QUALFLOW_LLM_CIRCUIT_BREAKER="0")
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    args = ["run", "--inbox", str(ws / "inbox"), "--codebook", str(ws / "book.yaml"), "-w", str(ws)]
    (ws / "qualflow.toml").write_text("")
    fake_openai.responder = lambda body: Fault(500)
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == 1, failed.output
    calls: list[int] = []

    def every_other(body):
        calls.append(1)
        return Fault(500) if len(calls) % 2 else answer()

    fake_openai.responder = every_other
    partial = CliRunner().invoke(app, args)
    assert partial.exit_code == 3, partial.output
    fake_openai.responder = lambda body: answer()
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
