"""The review_spans migration on a store made by release 0.1.0 (passage-level review):
every decision and review state carried over, a code on a passage now a span over it.

``tests/fixtures/stores/release-0.1.0.sqlite3`` (see its README) holds 157 decisions
over 30 review states, made through the release's own ``review.decisions.decide``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select

from qualflow.db import DecisionRow, ProposalRow, ReviewStateRow
from qualflow.review import decisions
from qualflow.store import Store
from tests.conftest import POSTGRES_URL

FIXTURE = Path(__file__).parent / "fixtures" / "stores" / "release-0.1.0.sqlite3"
MIGRATIONS = Path(decisions.__file__).parents[1] / "migrations"


def _old(path: Path) -> dict:
    """The review tables as the release left them, read with plain SQL."""
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try:
        return {
            "decisions": [dict(r) for r in con.execute("select * from decisions order by id")],
            "states": [
                dict(r)
                for r in con.execute("select * from review_states order by passage_id, user_id")
            ],
            "passages": {
                r["id"]: (r["transcript_id"], r["char_start"], r["char_end"])
                for r in con.execute("select * from passages")
            },
            "users": {r["id"]: r["username"] for r in con.execute("select * from users")},
        }
    finally:
        con.close()


@pytest.fixture
def migrated(tmp_path):
    path = tmp_path / "release.sqlite3"
    shutil.copy(FIXTURE, path)
    before = _old(path)
    store = Store.open(f"sqlite:///{path}")
    yield store, before, path
    store.close()


def test_the_fixture_is_what_its_readme_says(migrated):
    _, before, _ = migrated
    assert len(before["decisions"]) == 157 and len(before["states"]) == 30
    actions = {d["action"] for d in before["decisions"]}
    assert {"accept", "reject", "add", "no_code", "memo", "undo", "done"} <= actions


def test_every_decision_and_state_keeps_its_old_columns(migrated):
    _, before, path = migrated
    after = _old(path)
    assert len(after["decisions"]) == 157 and len(after["states"]) == 30
    for old, new in zip(before["decisions"], after["decisions"], strict=True):
        assert {k: new[k] for k in old} == old
    for old, new in zip(before["states"], after["states"], strict=True):
        assert {k: new[k] for k in old} == old


def test_a_code_on_a_passage_becomes_a_span_over_the_passage(migrated):
    store, before, _ = migrated
    places = before["passages"]
    with store.session() as s:
        rows = s.scalars(select(DecisionRow).order_by(DecisionRow.id)).all()
        proposals = {p.id: p for p in s.scalars(select(ProposalRow))}
    origins: dict[str, int] = {}
    for row in rows:
        _, start, end = places[row.passage_id]
        assert row.spans is not None, row.id
        assert sorted(sp["code"] for sp in row.spans) == sorted(row.after)  # codes = spans
        for sp in row.spans:
            assert (sp["start"], sp["end"]) == (start, end)
            origins[sp["origin"]] = origins.get(sp["origin"], 0) + 1
            if sp["origin"] == "accepted":  # from the proposal the reviewer accepted
                proposal = proposals[sp["proposal_id"]]
                assert (proposal.passage_id, proposal.code) == (row.passage_id, sp["code"])
            else:
                assert sp["origin"] == "added" and sp["proposal_id"] is None
        if row.action in ("accept", "add") and row.code:
            assert (row.span_start, row.span_end) == (start, end)
    assert origins["accepted"] and origins["added"]


def test_derived_states_match_the_release_and_the_migrated_cache(migrated):
    store, before, _ = migrated
    with store.session() as s:
        cache = {(r.passage_id, r.user_id): r for r in s.scalars(select(ReviewStateRow))}
    for old in before["states"]:
        key = (old["passage_id"], old["user_id"])
        st = decisions.track_state(store, old["user_id"], old["passage_id"])
        # what the release derived: codes, done, flagged, version
        assert st.codes == sorted(json.loads(old["codes"])), key
        assert (st.done, st.flagged, st.version) == (
            bool(old["done"]),
            bool(old["flagged"]),
            old["version"],
        )
        # what the migration wrote into the cache is the derivation on spans
        row = cache[key]
        assert [sp.to_json() for sp in st.spans] == row.spans
        assert (st.memo, st.no_code) == (row.memo, row.no_code)
        assert {str(k): v for k, v in st.proposal_status.items()} == row.proposal_status
    memos = [d for d in before["decisions"] if d["action"] == "memo"]
    assert memos and any(cache[k].memo for k in cache)
    written = sorted((r.passage_id, r.user_id, json.dumps(r.spans)) for r in cache.values())
    decisions.rebuild_states(store)
    with store.session() as s:
        rebuilt = sorted(
            (r.passage_id, r.user_id, json.dumps(r.spans))
            for r in s.scalars(select(ReviewStateRow))
        )
    assert rebuilt == written


def test_reviewer_codings_are_unchanged_and_come_as_spans_over_the_passages(migrated):
    store, before, _ = migrated
    names = before["users"]
    expected: dict[str, dict[str, frozenset[str]]] = {}
    for old in before["states"]:
        if old["done"]:
            codes = frozenset(json.loads(old["codes"]))
            expected.setdefault(names[old["user_id"]], {})[old["passage_id"]] = codes
    assert decisions.reviewer_codings(store) == expected
    spans = decisions.reviewer_span_codings(store)
    assert sorted(spans) == sorted(expected)
    for name, coding in spans.items():
        places = [before["passages"][pid] for pid in expected[name]]
        assert sum(len(r) for r in coding.scope.values()) == len(places)
        assert len(coding.spans) == sum(len(c) for c in expected[name].values())
        for span in coding.spans:
            assert (span.transcript_id, span.start, span.end) in places


def test_a_migrated_unit_can_be_reviewed_on_spans(migrated):
    store, before, _ = migrated
    old = next(s for s in before["states"] if json.loads(s["codes"]))
    pid, owner = old["passage_id"], old["user_id"]
    st = decisions.track_state(store, owner, pid)
    span = st.spans[0]
    st = decisions.decide(
        store, owner, pid, "adjust", version=st.version, code=span.code, start=span.start,
        end=span.end, new_start=span.start, new_end=span.end - 1,
    )  # fmt: skip
    assert any(sp.end == span.end - 1 for sp in st.spans)


def test_downgrade_keeps_the_release_columns(migrated):
    from alembic import command
    from alembic.config import Config

    store, before, path = migrated
    store.close()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.downgrade(cfg, "spans")  # review_spans undone (and unit_leases, which follows it)
    after = _old(path)
    assert after["decisions"] == before["decisions"]
    assert after["states"] == before["states"]


@pytest.mark.postgres
def test_review_spans_migration_on_postgres():
    """Old passage-level decisions on PostgreSQL (JSON columns) become spans too."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from qualflow.db import make_engine, migrate

    if not POSTGRES_URL:
        pytest.skip("QUALFLOW_TEST_POSTGRES_URL not set (make test starts a local server)")
    engine = make_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(text("drop schema public cascade"))
        conn.execute(text("create schema public"))
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "spans")
    statements = [
        "insert into transcripts (id, name, version, is_current, source_path, content_hash, "
        "format, text, metadata, ingested_at) values ('t@1', 't', 1, true, 't.txt', 'h', "
        "'txt', 'Hello there. We check MMLU daily.', '{}', now())",
        "insert into passages (id, transcript_id, segmentation, index, turn_index, char_start, "
        "char_end, text, codable) values ('p2', 't@1', 'sentence', 1, 0, 13, 33, "
        "'We check MMLU daily.', true)",
        "insert into users (id, username, password_hash, role, active, created_at) values "
        "(1, 'ann', 'x', 'reviewer', true, now())",
        "insert into decisions (id, passage_id, user_id, action, code, before, after, "
        "state_version, created_at, track_user_id) values "
        "(1, 'p2', 1, 'add', 'daily', '[]', '[\"daily\"]', 1, now(), 1), "
        "(2, 'p2', 1, 'add', 'mmlu', '[\"daily\"]', '[\"daily\", \"mmlu\"]', 2, now(), 1), "
        "(3, 'p2', 1, 'done', null, '[\"daily\", \"mmlu\"]', '[\"daily\", \"mmlu\"]', 3, "
        "now(), 1)",
        "insert into decisions (id, passage_id, user_id, action, before, after, undoes_id, "
        "state_version, created_at, track_user_id) values (4, 'p2', 1, 'undo', "
        '\'["daily", "mmlu"]\', \'["daily", "mmlu"]\', 3, 4, now(), 1)',
        "insert into review_states (passage_id, user_id, version, codes, done, flagged, "
        "updated_at) values ('p2', 1, 4, '[\"daily\", \"mmlu\"]', false, false, now())",
    ]
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    migrate(engine)
    store = Store(engine)
    try:
        st = decisions.track_state(store, 1, "p2")
        assert [(sp.code, sp.start, sp.end, sp.origin) for sp in st.spans] == [
            ("daily", 13, 33, "added"),
            ("mmlu", 13, 33, "added"),
        ]
        assert not st.done and st.version == 4
        with store.session() as s:
            row = s.get(ReviewStateRow, ("p2", 1))
            assert [sp["code"] for sp in row.spans] == ["daily", "mmlu"]
    finally:
        engine.dispose()
