"""Every route of the review app against every kind of visitor.

Roles: anonymous, the reviewer a passage is assigned to (ann), another reviewer (bob)
and an admin. A reviewer never reaches another reviewer's passage, decisions or the
admin pages; an anonymous visitor is sent to the login page (GET) or refused (POST).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from qualflow.review import auth, decisions, queue
from qualflow.review.app import create_app
from qualflow.settings import load_settings
from qualflow.store import open_store
from tests.review_support import csrf_of, login, make_study

ROLES = ("anonymous", "ann", "bob", "admin")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    settings = load_settings(tmp_path_factory.mktemp("access") / "ws")
    store = open_store(settings)
    study = make_study(settings, store)
    queue.assign(store, ["ann", "bob"], strategy="round_robin")
    app = create_app(settings, store)
    clients = {}
    for role in ROLES:
        c = TestClient(app)
        if role != "anonymous":
            assert login(c, role).status_code == 303
        clients[role] = c
    ann_pid = study.passage_ids[0]  # round robin in transcript order: ann gets even places
    assert queue.assignment_for(store, auth.user_by_name(store, "ann").id, ann_pid)
    yield {"store": store, "clients": clients, "ann_pid": ann_pid}
    for c in clients.values():
        c.close()
    store.close()


def _csrf(world, role: str) -> str:
    if role == "anonymous":
        return "x"
    return csrf_of(world["clients"][role].get("/queue").text)


def _version(world, role: str, pid: str) -> str:
    user = auth.user_by_name(world["store"], role)
    return str(decisions.state(world["store"], user.id, pid).version) if user else "0"


# (method, path, expected status per role: anonymous, ann, bob, admin)
GETS = [
    ("/healthz", (200, 200, 200, 200)),
    ("/login", (200, 200, 200, 200)),
    ("/static/review.css", (200, 200, 200, 200)),
    ("/static/review.js", (200, 200, 200, 200)),
    ("/", (303, 303, 303, 303)),
    ("/queue", (303, 200, 200, 200)),
    ("/passages/{pid}", (303, 200, 403, 200)),
    ("/passages/does-not-exist", (303, 404, 404, 404)),
    ("/codes?q=daily", (303, 200, 200, 200)),
    ("/admin", (303, 403, 403, 200)),
    ("/admin/export/codings.json", (303, 403, 403, 200)),
    ("/admin/export/decisions.csv", (303, 403, 403, 200)),
]


@pytest.mark.parametrize(("path", "expected"), GETS, ids=[g[0] for g in GETS])
@pytest.mark.parametrize("role", ROLES)
def test_get_routes(world, role, path, expected):
    url = path.format(pid=world["ann_pid"])
    r = world["clients"][role].get(url, follow_redirects=False)
    assert r.status_code == expected[ROLES.index(role)], r.text[:300]
    if r.status_code == 303 and role == "anonymous":
        assert r.headers["location"].startswith("/login?next=")
    if r.status_code == 403:
        assert "Not allowed" in r.text


@pytest.mark.parametrize("role", ROLES)
def test_decide_route(world, role):
    pid = world["ann_pid"]
    r = world["clients"][role].post(
        f"/passages/{pid}/decide",
        data={"csrf": _csrf(world, role), "version": _version(world, role, pid), "action": "flag"},
        follow_redirects=False,
    )
    assert r.status_code == {"anonymous": 401, "ann": 303, "bob": 403, "admin": 303}[role]


@pytest.mark.parametrize("role", ROLES)
def test_assign_route(world, role):
    r = world["clients"][role].post(
        "/admin/assign",
        data={"csrf": _csrf(world, role), "reviewers": ["ann"], "double": "0"},
        follow_redirects=False,
    )
    assert r.status_code == {"anonymous": 401, "ann": 403, "bob": 403, "admin": 303}[role]


@pytest.mark.parametrize("role", ROLES)
def test_state_changes_without_csrf_token_are_refused(world, role):
    pid = world["ann_pid"]
    c = world["clients"][role]
    for url, data in (
        (f"/passages/{pid}/decide", {"version": _version(world, role, pid), "action": "flag"}),
        ("/admin/assign", {"reviewers": ["ann"]}),
        ("/logout", {}),
    ):
        r = c.post(url, data={**data, "csrf": "forged"}, follow_redirects=False)
        assert r.status_code in (401, 403), url
    assert c.get("/queue", follow_redirects=False).status_code == (
        303 if role == "anonymous" else 200
    )


def test_login_post_needs_its_own_csrf_token(world):
    c = TestClient(world["clients"]["admin"].app)
    r = c.post("/login", data={"username": "ann", "password": "x", "csrf": "forged"})
    assert r.status_code == 403 and "expired" in r.text


def test_reviewers_only_see_their_own_queue(world):
    store = world["store"]
    for name in ("ann", "bob"):
        html = world["clients"][name].get("/queue?show=all").text
        user = auth.user_by_name(store, name)
        mine = {i.passage_id for i in queue.items(store, user)}
        theirs = {i.passage_id for i in queue.items(store, auth.user_by_name(store, "admin"))}
        assert mine and mine < theirs
        for pid in theirs:
            assert (f"/passages/{pid}" in html) == (pid in mine)


def test_admin_sees_other_reviewers_codings_a_reviewer_never_does(world):
    pid = world["ann_pid"]
    store = world["store"]
    ann = auth.user_by_name(store, "ann")
    decisions.decide(
        store,
        ann.id,
        pid,
        "memo",
        version=decisions.state(store, ann.id, pid).version,
        memo="only admins may read this",
    )
    assert "only admins may read this" in world["clients"]["admin"].get(f"/passages/{pid}").text
    assert "only admins may read this" in world["clients"]["ann"].get(f"/passages/{pid}").text
    bob_page = world["clients"]["bob"].get(f"/passages/{pid}")
    assert bob_page.status_code == 403 and "only admins" not in bob_page.text
    bob_export = world["clients"]["bob"].get("/admin/export/decisions.csv")
    assert bob_export.status_code == 403 and "only admins" not in bob_export.text


@pytest.mark.parametrize("role", ROLES)
def test_login_and_logout_routes(world, role):
    """Fresh sessions (the shared ones must survive): log in, then log out with the token."""
    c = TestClient(world["clients"]["admin"].app)
    if role != "anonymous":
        assert login(c, role).status_code == 303
    token = csrf_of(c.get("/queue").text) if role != "anonymous" else "x"
    r = c.post("/logout", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == (401 if role == "anonymous" else 303)
    assert c.get("/queue", follow_redirects=False).status_code == 303
