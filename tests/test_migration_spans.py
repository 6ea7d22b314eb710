"""The spans migration on a store made by release 0.1.0: nothing lost, nothing moved.

``tests/fixtures/stores/release-0.1.0.sqlite3`` was written by the release before spans
(its README says how); the figures below were read from it before the migration.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from qualflow.store import Store
from tests.conftest import POSTGRES_URL

FIXTURE = Path(__file__).parent / "fixtures" / "stores" / "release-0.1.0.sqlite3"


def _before(path: Path) -> dict:
    """What the old store holds, read with plain SQL (no qualflow code)."""
    con = sqlite3.connect(path)
    try:
        gold: dict[tuple[str, str], dict[str, frozenset[str]]] = {}
        for gset, coder, pid, codes in con.execute(
            "select gold_set, coder, passage_id, codes from gold_codings"
        ):
            import json

            gold.setdefault((gset, coder), {})[pid] = frozenset(json.loads(codes))
        proposals = con.execute(
            "select p.id, p.code, p.evidence, p.evidence_start, p.evidence_end, p.valid, "
            "g.char_start, g.char_end, g.text from proposals p join passages g "
            "on g.id = p.passage_id order by p.id"
        ).fetchall()
        counts = {
            table: con.execute(f"select count(*) from {table}").fetchone()[0]
            for table in (
                "transcripts", "passages", "proposal_sets", "proposals", "decisions",
                "review_states", "assignments", "users", "highlights", "runs",
            )
        }  # fmt: skip
        decisions = con.execute("select * from decisions order by id").fetchall()
        states = con.execute("select * from review_states order by passage_id, user_id").fetchall()
        return {
            "gold": gold,
            "proposals": proposals,
            "counts": counts,
            "decisions": decisions,
            "states": states,
        }
    finally:
        con.close()


@pytest.fixture
def migrated(tmp_path):
    path = tmp_path / "release.sqlite3"
    shutil.copy(FIXTURE, path)
    before = _before(path)
    store = Store.open(f"sqlite:///{path}")
    yield store, before, path
    store.close()


def test_every_row_survives_and_review_tables_are_untouched(migrated):
    _store, before, path = migrated
    con = sqlite3.connect(path)
    try:
        for table, n in before["counts"].items():
            assert con.execute(f"select count(*) from {table}").fetchone()[0] == n, table
        # later revisions (review_spans) add columns at the end; the old ones are unchanged
        width = len(before["decisions"][0])
        rows = con.execute("select * from decisions order by id").fetchall()
        assert [r[:width] for r in rows] == before["decisions"]
        states = con.execute("select * from review_states order by passage_id, user_id").fetchall()
        assert [r[: len(before["states"][0])] for r in states] == before["states"]
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        assert "gold_codings" not in tables and {"gold_spans", "gold_scopes"} <= tables
    finally:
        con.close()


def test_a_passage_proposal_becomes_a_span_over_its_passage(migrated):
    store, before, _ = migrated
    by_id = {}
    with store.session() as s:
        from qualflow.db import ProposalRow

        by_id = {r.id: r for r in s.query(ProposalRow)}
    assert len(by_id) == len(before["proposals"]) == 159
    quoted = 0
    for pid, code, evidence, ev_start, ev_end, _valid, start, end, text in before["proposals"]:
        row = by_id[pid]
        assert (row.code, row.evidence, row.start, row.end) == (code, evidence, start, end)
        if ev_start is None:
            assert row.evidence_start is None
            continue
        quoted += 1
        # evidence offsets were relative to the passage; now they point into the transcript
        assert (row.evidence_start, row.evidence_end) == (start + ev_start, start + ev_end)
        assert text[ev_start:ev_end] == evidence
    assert quoted == 158  # every proposal with an evidence quote kept it
    sets = store.proposal_sets()
    needs = [ps for ps in sets if ps.status == "needs_human"]
    assert len(sets) == 82 and len(needs) == 1 and needs[0].invalid[0].invalid_reason


def test_gold_codings_become_spans_and_read_back_identically(migrated):
    store, before, _ = migrated
    assert store.gold_sets() == ["examples"]
    gold = store.gold("examples")
    for (gset, coder), coding in before["gold"].items():
        assert gset == "examples"
        assert gold[coder] == coding  # passage ids and code sets, "no code" included
    spans = store.gold_codings("examples")
    assert sum(len(c.spans) for c in spans.values()) == sum(
        len(codes) for coding in before["gold"].values() for codes in coding.values()
    )
    for coder, coding in spans.items():
        passages = {p.id: p for p in store.passages(ids=list(before["gold"][("examples", coder)]))}
        for span in coding.spans:
            assert any(
                (p.transcript_id, p.char_start, p.char_end)
                == (span.transcript_id, span.start, span.end)
                for p in passages.values()
            )


def test_the_migrated_store_codes_chunks_beside_its_old_passage_sets(migrated, tmp_path):
    from qualflow import pipeline
    from qualflow.settings import load_settings
    from tests.coders_fixture import ScriptedCoder

    store, _, _ = migrated
    settings = load_settings(tmp_path / "ws")
    book = store.codebook()
    summary = pipeline.run_coding(store, ScriptedCoder(), book, settings)
    assert summary.status == "completed" and summary.coded == summary.passages > 0
    assert len(store.proposal_sets()) == 82 + summary.coded


def test_downgrade_brings_passage_gold_back(migrated):
    from alembic import command
    from alembic.config import Config

    store, before, path = migrated
    store.close()
    cfg = Config()
    cfg.set_main_option(
        "script_location", str(Path(__import__("qualflow").__file__).parent / "migrations")
    )
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.downgrade(cfg, "review_track")
    again = _before(path)
    assert again["gold"] == before["gold"]
    assert again["proposals"] == before["proposals"]


@pytest.mark.postgres
def test_spans_migration_on_postgres():
    """The same carry-over on PostgreSQL, from a schema at the release's revision."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from qualflow.db import make_engine

    url = POSTGRES_URL
    if not url:
        pytest.skip("QUALFLOW_TEST_POSTGRES_URL not set (make test starts a local server)")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("drop schema public cascade"))
        conn.execute(text("create schema public"))
    cfg = Config()
    cfg.set_main_option(
        "script_location", str(Path(__import__("qualflow").__file__).parent / "migrations")
    )
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "review_track")
    with engine.begin() as conn:
        conn.execute(
            text(
                "insert into transcripts (id, name, version, is_current, source_path, "
                "content_hash, format, text, metadata, ingested_at) values ('t@1', 't', 1, "
                "true, 't.txt', 'h', 'txt', 'Hello there. We check MMLU daily.', '{}', now())"
            )
        )
        conn.execute(
            text(
                "insert into passages (id, transcript_id, segmentation, index, turn_index, "
                "char_start, char_end, text, codable) values "
                "('p1', 't@1', 'sentence', 0, 0, 0, 12, 'Hello there.', true), "
                "('p2', 't@1', 'sentence', 1, 0, 13, 33, 'We check MMLU daily.', true)"
            )
        )
        conn.execute(
            text(
                "insert into proposal_sets (id, passage_id, coder, model, prompt_version, "
                "codebook_version, status, attempts, prompt_tokens, completion_tokens, "
                "cost_usd, created_at) values (1, 'p2', 'llm', 'm', 'v', 'cb', 'ok', 1, 0, 0, "
                "0, now())"
            )
        )
        conn.execute(
            text(
                "insert into proposals (set_id, passage_id, code, rationale, evidence, "
                "evidence_start, evidence_end, confidence, in_candidates, valid) values "
                "(1, 'p2', 'daily', 'r', 'check MMLU', 3, 13, 0.9, true, true)"
            )
        )
        conn.execute(
            text(
                "insert into gold_codings (gold_set, coder, passage_id, codes, created_at) "
                "values ('g', 'ann', 'p1', '[]', now()), ('g', 'ann', 'p2', '[\"daily\"]', now())"
            )
        )
    engine.dispose()
    store = Store.open(url)
    try:
        [ps] = store.proposal_sets()
        [p] = ps.proposals
        assert (p.start, p.end, p.evidence_start, p.evidence_end) == (13, 33, 16, 26)
        assert store.gold("g") == {"ann": {"p1": frozenset(), "p2": frozenset({"daily"})}}
    finally:
        store.close()
