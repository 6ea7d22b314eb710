"""One active codebook per workspace: set by `codebook load` and imports, shown by
`status`, used by every command; a codebook sharing no code with the workspace's gold
or reviewed codings stops a command before any work. Also `qualflow gold delete`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from qualflow.cli import app
from qualflow.db import ProposalSetRow, RunRow
from qualflow.settings import load_settings
from qualflow.store import open_store
from tests.conftest import EXAMPLES
from tests.test_exchange_taguette import FIXTURES, make_project

runner = CliRunner()
SCRIPTED = "tests.coders_fixture:scripted_coder"
# An invented two-code codebook (CSV, as a study exports it); "risk" occurs in I-3's text.
SMALL_CSV = "title,description\n06.risks.rewards.risks,A risk\n99.other,Something else\n"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def ws(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("QUALFLOW_RETRIEVAL_K", "0")  # the scripted coder needs no index
    root = tmp_path / "ws"
    assert run("init", root).exit_code == 0
    assert run("ingest", EXAMPLES / "I-3_interview.txt", "-w", root).exit_code == 0
    return root


def _store(ws: Path):
    return open_store(load_settings(ws))


def _small_codebook(tmp_path: Path) -> Path:
    path = tmp_path / "small_codebook.csv"
    path.write_text(SMALL_CSV)
    return path


def test_codebook_load_is_what_code_uses_and_status_shows(ws, tmp_path):
    book = _small_codebook(tmp_path)
    loaded = run("codebook", "load", book, "-w", ws)
    assert loaded.exit_code == 0, loaded.output
    assert "active codebook is now 'small_codebook' (2 codes" in loaded.output
    coded = run("code", "-w", ws, "--coder", SCRIPTED)
    assert coded.exit_code == 0, coded.output
    assert "the workspace's active codebook" in coded.output
    store = _store(ws)
    try:
        version = store.active_codebook().version
        with store.session() as s:
            used = set(s.scalars(select(ProposalSetRow.codebook_version)))
            run_versions = set(s.scalars(select(RunRow.codebook_version)))
    finally:
        store.close()
    assert used == run_versions == {version}  # not the 85-code default
    status = run("status", "-w", ws)
    assert f"codebook:    small_codebook {version} (active; 2 codes)" in status.output


def test_status_without_an_active_codebook_says_so(ws):
    status = run("status", "-w", ws)
    assert "benchmark-practices (from the settings; no active codebook" in status.output


def test_a_codebook_sharing_no_code_with_gold_stops_every_command_first(ws, tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        json.dumps(
            {
                "transcript": "I-3_interview",
                "text": "The big risk is false comfort.",
                "codes": ["06.risks.rewards.risks"],
                "coder": "ann",
            }
        )
        + "\n"
    )
    book = _small_codebook(tmp_path)
    assert run("gold", "import", gold, "--set", "g", "-w", ws, "--codebook", book).exit_code == 0
    other = tmp_path / "other.csv"
    other.write_text("title,description\nLocation,Where\nTime,When\n")
    assert run("codebook", "load", other, "-w", ws).exit_code == 0
    for command in (
        ["code", "-c", "learned"],
        ["run", "-c", "learned"],
        ["index"],
        ["retrieve", "a risk"],
        ["review"],
    ):
        result = run(*command, "-w", ws)
        assert result.exit_code == 1, (command, result.output)
        assert "'other' (2 codes" in result.output, command
        assert "shares no code with this workspace's gold set 'g' (1 codes)" in result.output
    store = _store(ws)
    try:
        with store.session() as s:
            assert s.scalar(select(func.count()).select_from(RunRow)) == 0  # no work done
    finally:
        store.close()
    # an explicit --codebook that does share codes runs
    coded = run("code", "-w", ws, "--coder", SCRIPTED, "--codebook", book)
    assert coded.exit_code == 0, coded.output


def test_imports_set_the_active_codebook_when_there_is_none_and_say_so(tmp_path):
    ws = tmp_path / "ws"
    assert run("init", ws).exit_code == 0
    first = run("import", "taguette", make_project(tmp_path / "a"), "-w", ws)
    assert first.exit_code == 0, first.output
    assert "active codebook is now 'Tiny study'" in first.output
    store = _store(ws)
    try:
        tiny = store.active_codebook()
    finally:
        store.close()
    assert tiny is not None and tiny.name == "Tiny study"
    # another codebook arrives while one is active: kept (no terminal to ask), said so
    qdc = run("import", "qdc", FIXTURES / "codebook.qdc", "-w", ws, "--no-validate")
    assert qdc.exit_code == 0, qdc.output
    assert "active codebook stays 'Tiny study'" in qdc.output and "--activate" in qdc.output
    store = _store(ws)
    try:
        assert store.active_codebook().version == tiny.version
    finally:
        store.close()
    switched = run(
        "import", "qdc", FIXTURES / "codebook.qdc", "-w", ws, "--no-validate", "--activate"
    )
    assert "active codebook is now" in switched.output
    store = _store(ws)
    try:
        assert store.active_codebook().version != tiny.version
    finally:
        store.close()
    back = run("codebook", "use", "Tiny study", "-w", ws)
    assert back.exit_code == 0 and "active codebook is now 'Tiny study'" in back.output
    listed = run("codebook", "list", "-w", ws)
    assert f"* Tiny study  {tiny.version}" in listed.output
    unknown = run("codebook", "use", "nope", "-w", ws)
    assert unknown.exit_code == 1 and "matches no stored codebooks" in unknown.output


def test_gold_import_sets_the_active_codebook_when_none(ws, tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        json.dumps({"text": "The big risk is false comfort.", "codes": [], "coder": "ann"}) + "\n"
    )
    book = _small_codebook(tmp_path)
    imported = run("gold", "import", gold, "--set", "g", "-w", ws, "--codebook", book)
    assert "active codebook is now 'small_codebook'" in imported.output
    again = run("gold", "import", gold, "--set", "h", "-w", ws, "--codebook", "benchmark-practices")
    assert "active codebook stays 'small_codebook'" in again.output


def test_run_and_the_scheduled_flow_use_the_active_codebook(ws, tmp_path):
    from qualflow.cli.runs import _run_codebook
    from qualflow.codebook import load_codebook

    book = _small_codebook(tmp_path)
    assert run("codebook", "load", book, "-w", ws).exit_code == 0
    source = _run_codebook(ws, None)
    assert load_codebook(source).version == load_codebook(book).version


def test_eval_names_its_own_codebook_when_it_differs_from_the_active_one(ws, tmp_path):
    book = _small_codebook(tmp_path)
    assert run("codebook", "load", book, "-w", ws).exit_code == 0
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "experiments:\n  e:\n    reference: gold:nope\n    coder: gold:nope\n"
        "    codebook: benchmark-practices\n"
    )
    result = run("eval", "-f", exp, "-w", ws, "--no-prepare", "--out", tmp_path / "out")
    assert "evaluates with its own codebook 'benchmark-practices'" in result.output
    assert "the workspace's active codebook is 'small_codebook'" in result.output


# --------------------------------------------------------------------------- gold delete


def test_gold_delete(ws, tmp_path):
    from qualflow.gold import import_gold

    store = _store(ws)
    try:
        import_gold(store, "eval/gold/examples.jsonl", "examples", segmentation="sentence")
        store.save_gold(
            "keep", "ann", {next(iter(store.gold("examples")["constructed-a"])): frozenset()}
        )
        assert store.gold_origin("examples", "constructed-a") == "constructed"
    finally:
        store.close()
    listed = run("gold", "list", "-w", ws)
    assert "constructed-a (" in listed.output and "[constructed example data]" in listed.output
    asked = runner.invoke(app, ["gold", "delete", "examples", "-w", str(ws)], input="n\n")
    assert asked.exit_code == 1 and "Delete gold set 'examples'" in asked.output
    deleted = run("gold", "delete", "examples", "-w", ws, "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert "deleted gold set 'examples'" in deleted.output
    store = _store(ws)
    try:
        assert store.gold_sets() == ["keep"] and store.gold("examples") == {}
        assert store.gold_origin("examples", "constructed-a") is None
        assert store.transcripts()  # transcripts stay
    finally:
        store.close()
    missing = run("gold", "delete", "examples", "-w", ws, "--yes")
    assert missing.exit_code == 1 and "no gold set 'examples'" in missing.output
    assert "gold sets: keep" in missing.output


# --------------------------------------------------------------------------- the store


def _exercise_workspace_facts(store) -> None:
    from qualflow.models import Code, Codebook

    book = Codebook(name="facts", codes=[Code(title="a"), Code(title="b")])
    assert store.set_active_codebook(book) == book.version
    assert store.active_codebook().titles() == ["a", "b"]
    with pytest.raises(KeyError, match="no codebook version"):
        store.set_active_codebook("0000not-stored")
    assert store.active_codebook().version == book.version
    store.set_gold_origin("facts-set", "ann", "constructed")
    assert store.gold_origin("facts-set", "ann") == "constructed"
    store.set_gold_origin("facts-set", "ann", None)
    assert store.gold_origin("facts-set", "ann") is None


def test_workspace_facts_on_sqlite(store):
    _exercise_workspace_facts(store)


@pytest.mark.postgres
def test_workspace_facts_on_postgres():
    from tests.conftest import POSTGRES_URL

    if not POSTGRES_URL:
        pytest.skip("QUALFLOW_TEST_POSTGRES_URL not set (make test starts a local server)")
    from qualflow.store import Store

    store = Store.open(POSTGRES_URL)
    try:
        _exercise_workspace_facts(store)
    finally:
        store.close()
