"""The review queue's done count and "to do" walk are answered from indexes
(migration ``review_count_indexes``): a reviewer's finished states, their units and
assignments are found without reading a table row, and the order indexes carry each
unit's shared track owner. The speed itself is measured by
``benchmarks/review_scale.py`` (docs/review.md); here the plans and the migration."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from qualflow.db import ReviewStateRow
from qualflow.review import auth, decisions, queue
from tests.review_support import make_study

WANTED = {
    ("review_states", "ix_review_states_user_done"): ["user_id", "done", "passage_id"],
    ("review_units", "ix_review_units_rank"): [
        "current",
        "rank",
        "transcript_name",
        "position",
        "passage_id",
        "shared_owner",
    ],
    ("review_units", "ix_review_units_place"): [
        "current",
        "transcript_name",
        "position",
        "passage_id",
        "shared_owner",
    ],
    ("review_units", "ix_review_units_unit_owner"): ["passage_id", "current", "shared_owner"],
    ("assignments", "ix_assignments_unit_user_mode"): [
        "passage_id",
        "user_id",
        "double_coded",
        "blind_to_machine",
    ],
}


def _indexes(engine) -> dict[tuple[str, str], list[str]]:
    found = inspect(engine)
    return {
        (table, ix["name"]): list(ix["column_names"])
        for table in ("review_states", "review_units", "assignments")
        for ix in found.get_indexes(table)
    }


def test_the_store_has_the_review_count_indexes(store):
    have = _indexes(store.engine)
    for key, columns in WANTED.items():
        assert have.get(key) == columns, key


def test_the_migration_goes_down_and_up_again(settings, store):
    from alembic import command
    from alembic.config import Config

    from qualflow import db

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "unit_leases")
    have = _indexes(store.engine)
    assert ("review_units", "ix_review_units_unit_owner") not in have
    assert have[("review_states", "ix_review_states_user_done")] == ["user_id", "done"]
    assert "shared_owner" not in have[("review_units", "ix_review_units_rank")]
    db.migrate(store.engine)
    have = _indexes(store.engine)
    for key, columns in WANTED.items():
        assert have.get(key) == columns, key


def _plan(store, stmt) -> list[str]:
    sql = str(stmt.compile(store.engine, compile_kwargs={"literal_binds": True}))
    with store.engine.connect() as conn:
        return [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]


def test_done_count_and_to_do_walk_read_indexes_not_rows(settings, store):
    """On SQLite (the planner's choice, with the statistics the queue keeps): the
    reviewer's done count touches each table through a covering index, and the "to
    do" walk reads each unit's owner and assignment from indexes."""
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite query plans")
    study = make_study(settings, store, transcripts=6, answers=10)
    queue.assign(store, ["ann", "bob"], seed=1)
    ann = auth.user_by_name(store, "ann")
    for item in queue.items(store, ann)[:15]:
        st = decisions.state(store, ann.id, item.passage_id)
        st = decisions.decide(store, ann.id, item.passage_id, "no_code", version=st.version)
        decisions.decide(store, ann.id, item.passage_id, "done", version=st.version)
    assert study.passage_ids
    with store.engine.begin() as conn:  # statistics as a grown study has them
        for table in ("review_units", "review_states", "assignments"):
            conn.exec_driver_sql(f"ANALYZE {table}")
    q = queue._query(store, ann, queue.Filters())
    count = q.select(func.count(), show=False, states="inner").where(q.rs.done.is_(True))
    plan = _plan(store, count)
    assert len(plan) == 3 and all("COVERING INDEX" in line for line in plan), plan
    with store.session() as s:
        assert s.scalar(count) == 15
        assert s.scalar(select(func.count()).where(ReviewStateRow.done.is_(True))) == 15
    walk = _plan(store, q.select(*q.row_columns()).order_by(*q.keys()).limit(101))
    assert "ix_review_units_rank" in walk[0], walk
    assert any("COVERING INDEX ix_assignments_unit_user_mode" in line for line in walk), walk
