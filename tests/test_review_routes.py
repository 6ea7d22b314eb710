"""Every action of the review app through HTTP (FastAPI TestClient on the real app)."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from qualflow.db import AssignmentRow, DecisionRow, ProposalRow
from qualflow.review import auth, decisions, queue
from qualflow.review.app import create_app
from qualflow.store import open_store
from tests.review_support import PASSWORD, csrf_of, login, make_study, proposal_ids, version_of


@pytest.fixture
def web(settings, store):
    study = make_study(settings, store)
    queue.assign(store, ["ann", "bob"], strategy="round_robin")
    app = create_app(settings, store)
    return study, app


def client(app, name: str | None = None) -> TestClient:
    c = TestClient(app)
    if name:
        assert login(c, name).status_code == 303
    return c


def mine(store, name: str) -> list[str]:
    user = auth.user_by_name(store, name)
    return [i.passage_id for i in queue.items(store, user, queue.Filters(order="transcript"))]


def post(c: TestClient, pid: str, action: str, **fields):
    page = c.get(f"/passages/{pid}")
    data = {"csrf": csrf_of(page.text), "version": str(version_of(page.text)), "action": action}
    data.update({k: str(v) for k, v in fields.items()})
    return c.post(f"/passages/{pid}/decide", data=data, follow_redirects=False)


def state(store, name: str, pid: str) -> decisions.ReviewState:
    return decisions.state(store, auth.user_by_name(store, name).id, pid)


# ------------------------------------------------------------------ login and sessions


def test_login_sets_a_signed_httponly_samesite_cookie(web):
    _, app = web
    c = TestClient(app)
    r = login(c, "ann")
    assert r.status_code == 303 and r.headers["location"] == "/queue"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("qf_session=") and "HttpOnly" in cookie
    assert "SameSite=lax" in cookie and "Max-Age=43200" in cookie  # session_hours = 12
    assert c.get("/queue").status_code == 200
    tampered = TestClient(app, cookies={"qf_session": c.cookies["qf_session"][:-2] + "xx"})
    assert tampered.get("/queue", follow_redirects=False).status_code == 303


def test_wrong_or_unknown_credentials_are_refused(web):
    _, app = web
    c = TestClient(app)
    assert login(c, "ann", "wrong password").status_code == 401
    r = login(c, "nobody")
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    assert "qf_session" not in c.cookies


def test_login_only_redirects_within_the_site(web):
    _, app = web
    c = TestClient(app)
    page = c.get("/login?next=/admin")
    assert 'name="next" value="/admin"' in page.text
    for target, expected in (("/passages/x", "/passages/x"), ("//evil.example", "/queue")):
        r = c.post(
            "/login",
            data={
                "username": "ann",
                "password": PASSWORD,
                "csrf": csrf_of(c.get("/login").text),
                "next": target,
            },
            follow_redirects=False,
        )
        assert r.headers["location"] == expected


def test_logout_ends_the_session(web):
    _, app = web
    c = client(app, "ann")
    r = c.post("/logout", data={"csrf": csrf_of(c.get("/queue").text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert 'qf_session=""' in r.headers["set-cookie"]
    assert c.get("/queue", follow_redirects=False).status_code == 303


def test_sessions_expire(settings, store):
    make_study(settings, store)
    settings.session_hours = 1 / 3600  # one second
    c = client(create_app(settings, store), "ann")
    assert c.get("/queue", follow_redirects=False).status_code == 200
    time.sleep(2.1)
    assert c.get("/queue", follow_redirects=False).status_code == 303


def test_deactivation_and_password_change_end_sessions(web, settings, store):
    from qualflow.review.audit import AuditLog

    _, app = web
    audit = AuditLog(store, auth.load_secret(None, settings.data_dir))
    ann, bob = client(app, "ann"), client(app, "bob")
    auth.set_active(store, "ann", False, audit=audit, actor="cli:test")
    assert ann.get("/queue", follow_redirects=False).status_code == 303
    assert login(TestClient(app), "ann").status_code == 401
    auth.set_password(store, "bob", "a new password", audit=audit, actor="cli:test")
    assert bob.get("/queue", follow_redirects=False).status_code == 303


def test_security_headers_are_set(web):
    _, app = web
    r = client(app, "ann").get("/queue")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"


# ------------------------------------------------------------------ actions


def _answer(store, pid: str) -> tuple[int, int]:
    (piece,) = store.passage(pid).codable_pieces()
    return piece.char_start, piece.char_end


def test_every_action_through_http(web, store):
    study, app = web
    c = client(app, "bob")
    pid = study.passage_ids[1]  # bob's, two proposals
    p1, p2 = proposal_ids(c.get(f"/passages/{pid}").text)
    with store.session() as s:
        props = {r.id: r for r in s.scalars(select(ProposalRow))}
    assert post(c, pid, "accept", proposal_id=p1).status_code == 303
    assert state(store, "bob", pid).codes == [props[p1].code]
    assert post(c, pid, "reject", proposal_id=p2).status_code == 303
    assert (
        post(c, pid, "replace", proposal_id=p1, code="01.use.impact.influence").status_code == 303
    )
    assert state(store, "bob", pid).codes == ["01.use.impact.influence"]
    a, b = _answer(store, pid)
    r = post(c, pid, "add", code="01.use.frequency.weekly", start=a, end=a + 20)
    assert r.status_code == 303
    r = post(
        c, pid, "adjust", code="01.use.frequency.weekly", start=a, end=a + 20,
        new_start=a + 3, new_end=b,
    )  # fmt: skip
    assert r.status_code == 303
    weekly = [sp for sp in state(store, "bob", pid).spans if sp.code == "01.use.frequency.weekly"]
    assert [(sp.start, sp.end, sp.origin) for sp in weekly] == [(a + 3, b, "added")]
    start, end = props[p1].start, props[p1].end
    r = post(c, pid, "remove", code="01.use.impact.influence", start=start, end=end)
    assert r.status_code == 303
    assert state(store, "bob", pid).codes == ["01.use.frequency.weekly"]
    assert post(c, pid, "flag").status_code == 303
    assert post(c, pid, "memo", memo="<script>alert(1)</script>").status_code == 303
    page = c.get(f"/passages/{pid}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert post(c, pid, "unflag").status_code == 303
    assert post(c, pid, "no_code").status_code == 303
    assert state(store, "bob", pid).codes == []
    assert post(c, pid, "undo").status_code == 303
    assert state(store, "bob", pid).codes == ["01.use.frequency.weekly"]
    r = post(c, pid, "done", go="next")
    nxt = r.headers["location"]
    assert r.status_code == 303 and nxt.startswith("/passages/") and pid not in nxt
    st = state(store, "bob", pid)
    assert st.done and not st.flagged and st.version == 12
    with store.session() as s:
        actions = [r.action for r in s.scalars(select(DecisionRow).order_by(DecisionRow.id))]
    assert actions == [
        "accept", "reject", "replace", "add", "adjust", "remove", "flag", "memo", "unflag",
        "no_code", "undo", "done",
    ]  # fmt: skip


def test_done_on_the_last_open_passage_goes_back_to_the_queue(web, store):
    _study, app = web
    c = client(app, "ann")
    ids = mine(store, "ann")
    for pid in ids:
        assert post(c, pid, "no_code").status_code == 303
    for pid in ids[:-1]:
        assert post(c, pid, "done").status_code == 303
    r = post(c, ids[-1], "done", go="next")
    assert r.headers["location"] == "/queue"
    assert "5 / 5" in c.get("/queue").text


def conflicted(c: TestClient, r):
    """A refused stale POST: a redirect (post-redirect-get) to the unit page that says
    so; returns that page."""
    assert r.status_code == 303, r.text[:300]
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert "conflict" in query
    page = c.get(r.headers["location"])
    assert page.status_code == 200 and 'id="conflict"' in page.text
    return page


def test_a_stale_version_is_a_conflict_shown_after_a_redirect_and_nothing_is_overwritten(
    web, store
):
    _study, app = web
    one, two = client(app, "ann"), client(app, "ann")  # the same reviewer in two tabs
    pid = mine(store, "ann")[0]
    (prop,) = proposal_ids(one.get(f"/passages/{pid}").text)
    page_two = two.get(f"/passages/{pid}").text
    assert post(one, pid, "accept", proposal_id=prop).status_code == 303
    r = two.post(
        f"/passages/{pid}/decide",
        data={
            "csrf": csrf_of(page_two),
            "version": str(version_of(page_two)),
            "action": "reject",
            "proposal_id": str(prop),
            "sel": "1",
        },
        follow_redirects=False,
    )
    r = conflicted(two, r)
    assert "was not saved" in r.text and "changed by you (in another window)" in r.text
    assert version_of(r.text) == 1  # the page carries the fresh version
    assert 'data-selected="1"' in r.text  # the selection is kept
    json_client = two.post(
        f"/passages/{pid}/decide",
        data={"csrf": csrf_of(page_two), "version": "0", "action": "flag"},
        headers={"Accept": "application/json"},
    )
    assert json_client.status_code == 409 and "not saved" in json_client.json()["detail"]
    st = state(store, "ann", pid)
    assert st.proposal_status == {prop: "accepted"} and st.version == 1


def _stale_post(c: TestClient, pid: str, html: str, action: str, **fields):
    """POST a decision from a page loaded earlier (its version may be stale by now)."""
    data = {"csrf": csrf_of(html), "version": str(version_of(html)), "action": action}
    data.update({k: str(v) for k, v in fields.items()})
    return c.post(f"/passages/{pid}/decide", data=data, follow_redirects=False)


def test_reviewer_and_admin_on_one_passage_get_a_conflict_not_an_overwrite(web, store):
    _study, app = web
    ann, admin = client(app, "ann"), client(app, "admin")
    pid = mine(store, "ann")[0]
    (prop,) = proposal_ids(ann.get(f"/passages/{pid}").text)
    admin_page = admin.get(f"/passages/{pid}").text
    assert version_of(admin_page) == 0 and 'id="shared-note"' in admin_page
    assert "Shared with ann" in admin_page
    assert post(ann, pid, "accept", proposal_id=prop).status_code == 303
    r = conflicted(admin, _stale_post(admin, pid, admin_page, "reject", proposal_id=prop))
    assert "changed by ann" in r.text and "was not saved" in r.text
    assert version_of(r.text) == 1  # the page carries the fresh version
    st = state(store, "ann", pid)
    assert st.proposal_status == {prop: "accepted"} and st.version == 1  # ann's intact
    # on the fresh page the admin adjudicates; ann's stale page now conflicts in turn
    ann_page = ann.get(f"/passages/{pid}").text
    assert _stale_post(admin, pid, r.text, "reject", proposal_id=prop).status_code == 303
    r = conflicted(ann, _stale_post(ann, pid, ann_page, "done"))
    assert "changed by admin" in r.text
    assert "by admin" in ann.get(f"/passages/{pid}").text  # the log says who did what
    st = state(store, "ann", pid)
    assert st.proposal_status == {prop: "rejected"} and st.version == 2 and not st.done
    with store.session() as s:
        rows = s.execute(
            select(DecisionRow.user_id, DecisionRow.track_user_id).order_by(DecisionRow.id)
        ).all()
    ids = {n: auth.user_by_name(store, n).id for n in ("ann", "admin")}
    assert rows == [(ids["ann"], ids["ann"]), (ids["admin"], ids["ann"])]
    csv_text = admin.get("/admin/export/decisions.csv").text
    assert csv_text.splitlines()[2].split(",")[2] == "admin"  # reviewer = who acted
    header = csv_text.splitlines()[0].split(",")
    assert csv_text.splitlines()[2].split(",")[header.index("track_owner")] == "ann"  # ann's track


def test_two_reviewers_assigned_one_passage_share_it_and_conflict(web, store):
    _study, app = web
    pid = mine(store, "ann")[0]
    with store.session() as s:  # a second, non-double assignment
        s.add(AssignmentRow(passage_id=pid, user_id=auth.user_by_name(store, "bob").id))
    ann, bob = client(app, "ann"), client(app, "bob")
    bob_page = bob.get(f"/passages/{pid}").text
    assert post(ann, pid, "add", code="01.use.frequency.weekly").status_code == 303
    r = conflicted(bob, _stale_post(bob, pid, bob_page, "no_code"))
    assert "changed by ann" in r.text
    assert state(store, "ann", pid).codes == ["01.use.frequency.weekly"]
    page = bob.get(f"/passages/{pid}").text  # bob sees the shared coding, and works on it
    assert "01.use.frequency.weekly" in page.split('id="coding"')[1].split("</ul>")[0]
    (prop,) = proposal_ids(page)
    assert post(bob, pid, "reject", proposal_id=prop).status_code == 303
    assert post(bob, pid, "done").status_code == 303
    assert state(store, "ann", pid).done and state(store, "bob", pid).done
    assert pid in {i.passage_id for i in queue.items(store, auth.user_by_name(store, "ann"))}
    assert all(
        i.done for i in queue.items(store, auth.user_by_name(store, "ann")) if i.passage_id == pid
    )
    weekly = frozenset({"01.use.frequency.weekly"})
    assert decisions.reviewer_codings(store) == {"ann": {pid: weekly}}  # the owner's


def test_bad_input_gets_400_with_the_reason(web, store):
    _study, app = web
    c = client(app, "ann")
    pid = mine(store, "ann")[0]
    r = post(c, pid, "add", code="no.such.code")
    assert r.status_code == 400 and "not in codebook" in r.text
    page = c.get(f"/passages/{pid}").text
    r = c.post(
        f"/passages/{pid}/decide",
        data={"csrf": csrf_of(page), "version": "", "action": "flag"},
    )
    assert r.status_code == 400 and "version" in r.text
    r = c.get("/queue?order=sideways")
    assert r.status_code == 400 and "order: &#39;sideways&#39; must be one of" in r.text
    assert "text/html" in r.headers["content-type"]


def test_double_coders_do_not_conflict_and_do_not_see_each_other(web, store):
    _study, app = web
    pid = mine(store, "ann")[0]
    with store.session() as s:
        s.add(
            AssignmentRow(
                passage_id=pid, user_id=auth.user_by_name(store, "bob").id, double_coded=True
            )
        )
    ann, bob = client(app, "ann"), client(app, "bob")
    assert post(ann, pid, "add", code="01.use.frequency.weekly").status_code == 303
    assert post(ann, pid, "memo", memo="ann's private memo").status_code == 303
    page = bob.get(f"/passages/{pid}")
    assert page.status_code == 200 and version_of(page.text) == 0
    assert "01.use.frequency.weekly" not in page.text.split('id="coding"')[1].split("</ul>")[0]
    assert "ann's private memo" not in page.text and 'id="shared-note"' not in page.text
    assert post(bob, pid, "no_code").status_code == 303
    assert state(store, "ann", pid).codes == ["01.use.frequency.weekly"]
    assert state(store, "bob", pid).codes == [] and state(store, "bob", pid).version == 1
    admin_page = client(app, "admin").get(f"/passages/{pid}").text  # admins see both
    assert "private memo" in admin_page and 'id="others"' in admin_page


def test_blind_assignment_hides_machine_proposals(web, store):
    _study, app = web
    pid = mine(store, "ann")[0]
    with store.session() as s:
        a = s.scalar(
            select(AssignmentRow).where(
                AssignmentRow.passage_id == pid,
                AssignmentRow.user_id == auth.user_by_name(store, "ann").id,
            )
        )
        a.blind_to_machine = True
        prop = s.scalar(select(ProposalRow.id).where(ProposalRow.passage_id == pid))
    c = client(app, "ann")
    page = c.get(f"/passages/{pid}").text
    assert 'id="blind-note"' in page and proposal_ids(page) == []
    assert "data-p=" not in page and "proposed p" not in page  # no proposed span shown
    queue_page = c.get("/queue?order=transcript").text
    row = queue_page.split(f'<a href="/passages/{pid}')[1].split("</tr>")[0]
    assert "blind" in row and "code-chip" not in row
    assert post(c, pid, "accept", proposal_id=prop).status_code == 403
    assert post(c, pid, "add", code="01.use.frequency.daily").status_code == 303
    admin_page = client(app, "admin").get(f"/passages/{pid}").text
    assert proposal_ids(admin_page)  # the admin is not blind


def test_proposed_spans_are_highlighted_at_their_offsets(web, store):
    study, app = web
    pid = study.passage_ids[1]
    page = client(app, "bob").get(f"/passages/{pid}").text
    segs = re.findall(
        r'<span class="seg([^"]*)" data-s="(\d+)" data-e="(\d+)"([^>]*)>([^<]*)<', page
    )
    text = store.transcript(store.passage(pid).transcript_id).text
    for _, start, end, _, shown in segs:  # every piece of text sits at its offsets
        assert text[int(start) : int(end)] == shown.replace("&#39;", "'")
    proposed = [s for s in segs if 'data-p="1"' in s[3] or 'data-p="1 2"' in s[3]]
    assert "".join(s[4] for s in proposed).startswith("We picked the smaller model")
    assert any('data-p="1 2"' in s[3] for s in segs)  # the two proposed spans overlap
    assert any(" proposed p" in s[0] for s in segs)
    question = page.split('class="turn piece context"')[1].split("</div>")[0]
    assert "context, not coded" in question and "data-p" not in question


def test_codebook_search_by_title_and_definition(web):
    _, app = web
    c = client(app, "ann")
    titles = [x["title"] for x in c.get("/codes?q=weekly").json()]
    assert titles == ["01.use.frequency.weekly"]
    by_definition = [x["title"] for x in c.get("/codes?q=finetuning based").json()]
    assert "01.use.decisionmaking.finetuning" in by_definition
    assert c.get("/codes?q=zzzz-nothing").json() == []


# ------------------------------------------------------------------ queue


def _order(c: TestClient, query: str) -> list[str]:
    """Passage ids in the order the queue page lists them."""
    html = c.get("/queue" + query).text
    return re.findall(r'<a href="/passages/([^"?]+)[^"]*" class="passage-link"', html)


def test_queue_orders_and_filters(web, store):
    study, app = web
    c = client(app, "admin")
    by_conf = _order(c, "")
    items = {i.passage_id: i for i in queue.items(store, auth.user_by_name(store, "admin"))}
    flags = [items[p].needs_human for p in by_conf]
    assert flags == sorted(flags, reverse=True) and any(flags)  # needs_human first
    rest = [items[p].confidence for p in by_conf if not items[p].needs_human]
    known = [x for x in rest if x is not None]
    assert known == sorted(known) and rest[-1] is None  # no-code sets last
    assert _order(c, "?order=transcript") == study.passage_ids
    rand = _order(c, "?order=random&seed=5")
    assert sorted(rand) == sorted(study.passage_ids) and rand == _order(c, "?order=random&seed=5")
    assert rand != _order(c, "?order=random&seed=6")
    assert len(_order(c, "?order=random&seed=5&limit=3")) == 3
    assert set(_order(c, "?transcript=interview-02")) == set(study.passage_ids[5:])
    assert set(_order(c, "?participant=P1")) == set(study.passage_ids[:5])
    assert _order(c, "?code=01.use.frequency.daily") == [study.passage_ids[0]]
    assert len(_order(c, "?code=01.use.frequency")) == 2  # a category matches its children
    assert len(_order(c, f"?run={study.run_id}")) == 10 and _order(c, "?run=999") == []
    assert _order(c, "?coder=similarity") == []


def test_queue_show_and_progress(web, store):
    _study, app = web
    c = client(app, "ann")
    ids = mine(store, "ann")
    post(c, ids[0], "no_code")
    post(c, ids[0], "done")
    post(c, ids[1], "flag")
    assert ids[0] not in _order(c, "") and _order(c, "?show=done") == [ids[0]]
    assert _order(c, "?show=flagged") == [ids[1]]
    assert "1 / 5" in c.get("/queue").text
    admin = client(app, "admin")
    assert 'id="study-progress">1 / 10' in admin.get("/queue").text
    assert _order(admin, "?show=flagged") == [ids[1]]  # admins see every reviewer's flags
    assert _order(client(app, "bob"), "?show=flagged") == []


def _start(c: TestClient, query: str) -> str | None:
    found = re.search(r'id="start" href="/passages/([^"?]+)', c.get("/queue" + query).text)
    return found.group(1) if found else None


def test_start_reviewing_goes_to_the_first_unit_to_do_from_every_view(web, store):
    """The first page of the "to do" list takes it from its first row; the other views
    (done, all, a later page) ask for it; all agree."""
    _study, app = web
    c = client(app, "ann")
    ids = mine(store, "ann")
    for pid in ids[:2]:
        post(c, pid, "no_code")
        post(c, pid, "done")
    order = "?order=transcript"
    for view in ("", "&show=done", "&show=all", f"&after={ids[2]}"):
        assert _start(c, order + view) == ids[2], view
    for pid in ids[2:]:
        post(c, pid, "no_code")
        post(c, pid, "done")
    assert _start(c, order) is None and _start(c, order + "&show=all") is None


# ------------------------------------------------------------------ admin


def test_admin_assigns_and_exports(settings, store):
    make_study(settings, store)
    app = create_app(settings, store)
    admin = client(app, "admin")
    page = admin.get("/admin").text
    r = admin.post(
        "/admin/assign",
        data={
            "csrf": csrf_of(page),
            "reviewers": ["ann", "bob"],
            "strategy": "balanced",
            "double": "0.2",
            "seed": "1",
            "blind_machine": "on",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    msg = admin.get(r.headers["location"]).text
    assert "Assigned 10 units (12 assignments, 2 double-coded)" in msg
    with store.session() as s:
        rows = s.scalars(select(AssignmentRow)).all()
    assert len(rows) == 12 and sum(r.blind_to_machine for r in rows) == 4
    again = admin.post(
        "/admin/assign",
        data={"csrf": csrf_of(page), "reviewers": ["ann"]},
        follow_redirects=True,
    )
    assert "Assigned 0 units" in again.text  # nothing is handed out twice
    bad = admin.post(
        "/admin/assign", data={"csrf": csrf_of(page), "reviewers": ["zed"]}, follow_redirects=True
    )
    assert "unknown or inactive reviewers: zed" in bad.text

    ann = client(app, "ann")
    pid = mine(store, "ann")[0]
    a, b = _answer(store, pid)
    post(ann, pid, "add", code="01.use.frequency.weekly", start=a, end=a + 11)
    page_text = ann.get(f"/passages/{pid}").text
    for prop in proposal_ids(page_text):
        post(ann, pid, "reject", proposal_id=prop)
    post(ann, pid, "done")
    exported = json.loads(admin.get("/admin/export/codings.json").text)
    assert exported == {"ann": {pid: ["01.use.frequency.weekly"]}}
    spans = json.loads(admin.get("/admin/export/spans.json").text)
    tid = store.passage(pid).transcript_id
    assert spans["ann"]["spans"] == [
        {"transcript": tid, "start": a, "end": a + 11, "code": "01.use.frequency.weekly"}
    ]
    assert spans["ann"]["scope"] == {tid: [[a, b]]}
    log = admin.get("/admin/export/decisions.csv").text.splitlines()
    assert log[0].startswith("id,time,reviewer,passage_id,action")
    assert log[0].endswith(",span_start,span_end,new_start,new_end,spans_after")
    assert ",ann," in log[1] and ",add," in log[1]
    assert f",{a},{a + 11},,,01.use.frequency.weekly@{a}-{a + 11}:added" in log[1]


def test_store_reopened_by_url_sees_the_same_decisions(web, settings, store):
    _study, app = web
    c = client(app, "ann")
    pid = mine(store, "ann")[0]
    post(c, pid, "no_code")
    post(c, pid, "done")
    other = open_store(settings)
    try:
        assert decisions.reviewer_codings(other) == {"ann": {pid: frozenset()}}
    finally:
        other.close()


def test_an_audit_sample_ends_where_the_sample_ends(web, store):
    _, app = web
    c = client(app, "admin")
    query = "?order=random&seed=9&limit=2"
    first, second = _order(c, query)
    for pid in (first, second):
        post(c, pid, "no_code")
    page = c.get(f"/passages/{first}{query}").text
    r = c.post(
        f"/passages/{first}/decide{query}",
        data={"csrf": csrf_of(page), "version": "1", "action": "done", "go": "next"},
        follow_redirects=False,
    )
    assert same_url(r.headers["location"], f"/passages/{second}{query}")
    page = c.get(r.headers["location"]).text
    r = c.post(
        f"/passages/{second}/decide{query}",
        data={"csrf": csrf_of(page), "version": "1", "action": "done", "go": "next"},
        follow_redirects=False,
    )
    assert same_url(r.headers["location"], f"/queue{query}")


def same_url(a: str, b: str) -> bool:
    ua, ub = urlsplit(a), urlsplit(b)
    return ua.path == ub.path and parse_qs(ua.query) == parse_qs(ub.query)
