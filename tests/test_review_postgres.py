"""The review app on PostgreSQL: same code, no SQLite-only SQL (own throwaway database)."""

from __future__ import annotations

import threading
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from qualflow.db import AssignmentRow, DecisionRow, make_engine
from qualflow.review import auth, decisions, queue
from qualflow.review.app import create_app
from qualflow.settings import load_settings
from qualflow.store import Store
from tests.conftest import POSTGRES_URL
from tests.review_support import csrf_of, login, make_study, proposal_ids, version_of

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def pg_store():
    if not POSTGRES_URL:
        pytest.skip("QUALFLOW_TEST_POSTGRES_URL not set (make test starts a local server)")
    name = f"qualflow_review_{uuid.uuid4().hex[:10]}"
    admin = make_engine(POSTGRES_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'create database "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    store = Store.open(url)
    try:
        yield store, url
    finally:
        store.close()
        with admin.connect() as conn:
            conn.execute(text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


def test_concurrent_decisions_on_postgres(pg_store, tmp_path):
    store, url = pg_store
    settings = load_settings(tmp_path / "ws", database_url=url)
    study = make_study(settings, store)
    ids = [auth.user_by_name(store, n).id for n in ("ann", "admin", "bob")]
    pid = study.passage_ids[0]
    with store.session() as s:  # ann's passage: all three act on its one shared track
        s.add(AssignmentRow(passage_id=pid, user_id=ids[0]))
    for start in (0, 1):
        outcomes: list[str] = []
        barrier = threading.Barrier(8)

        def act(i: int, start=start, outcomes=outcomes, barrier=barrier) -> None:
            barrier.wait()
            try:
                uid = ids[i % 3]
                decisions.decide(store, uid, pid, "memo", version=start, memo=f"m{i}")
                outcomes.append("ok")
            except decisions.Conflict:
                outcomes.append("conflict")

        threads = [threading.Thread(target=act, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    with store.session() as s:
        rows = s.scalars(select(DecisionRow).order_by(DecisionRow.id)).all()
        assert [r.state_version for r in rows] == [1, 2]
        assert {r.track_user_id for r in rows} == {ids[0]}


def test_review_flow_on_postgres(pg_store, tmp_path):
    store, url = pg_store
    settings = load_settings(tmp_path / "ws", database_url=url)
    study = make_study(settings, store)
    queue.assign(store, ["ann", "bob"], strategy="round_robin", double_share=0.2, seed=1)
    app = create_app(settings, store)
    one, two = TestClient(app), TestClient(app)  # bob in two windows, on his blind track
    assert login(one, "bob").status_code == 303 and login(two, "bob").status_code == 303
    pid = study.passage_ids[1]
    assert queue.assignment_for(store, auth.user_by_name(store, "bob").id, pid).double_coded
    page = one.get(f"/passages/{pid}").text
    stale = two.get(f"/passages/{pid}").text
    p1, _ = proposal_ids(page)
    data = {"csrf": csrf_of(page), "version": str(version_of(page)), "action": "accept"}
    r = one.post(f"/passages/{pid}/decide", data={**data, "proposal_id": str(p1)})
    assert r.status_code == 200 and "ACCEPTED" in r.text.upper()
    r = two.post(
        f"/passages/{pid}/decide",
        data={"csrf": csrf_of(stale), "version": str(version_of(stale)), "action": "no_code"},
    )
    # post-redirect-get: the unit again, with the conflict banner
    assert r.status_code == 200 and "conflict=" in str(r.url)
    assert 'id="conflict"' in r.text and "changed by you (in another window)" in r.text
    page = one.get(f"/passages/{pid}").text
    r = one.post(
        f"/passages/{pid}/decide",
        data={"csrf": csrf_of(page), "version": str(version_of(page)), "action": "reject",
              "proposal_id": str(proposal_ids(page)[1])},
    )  # fmt: skip
    page = r.text
    r = one.post(
        f"/passages/{pid}/decide",
        data={"csrf": csrf_of(page), "version": str(version_of(page)), "action": "done"},
    )
    assert r.status_code == 200
    codings = decisions.reviewer_codings(store)
    assert list(codings) == ["bob"] and len(codings["bob"][pid]) == 1
    assert "Conf." in one.get("/queue?order=random&seed=3&code=01.use").text
    assert decisions.rebuild_states(store) == 1

    # bob and an admin on one of bob's single-coded passages share its one coding
    bob = auth.user_by_name(store, "bob")
    shared = next(
        i.passage_id for i in queue.items(store, bob) if not i.double_coded and i.passage_id != pid
    )
    admin = TestClient(app)
    assert login(admin, "admin").status_code == 303
    stale = admin.get(f"/passages/{shared}").text
    page = one.get(f"/passages/{shared}").text
    r = one.post(
        f"/passages/{shared}/decide",
        data={"csrf": csrf_of(page), "version": str(version_of(page)), "action": "flag"},
    )
    assert r.status_code == 200
    r = admin.post(
        f"/passages/{shared}/decide",
        data={"csrf": csrf_of(stale), "version": str(version_of(stale)), "action": "no_code"},
    )
    assert 'id="conflict"' in r.text and "changed by bob" in r.text
    st = decisions.state(store, bob.id, shared)
    assert st.flagged and st.version == 1 and not st.no_code
