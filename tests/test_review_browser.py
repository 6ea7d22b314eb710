"""The review app in a real headless Chromium, against uvicorn on a loopback port.

Flow: log in, work five passages with keyboard and mouse, undo, add a code through the
codebook search, a conflict between two reviewers in two browser contexts, logout. The
passage view is saved to test-output/review-passage.png for a human to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qualflow.review import auth, decisions, queue
from qualflow.review.app import create_app
from tests.review_support import CHROMIUM, CHROMIUM_ARGS, PASSWORD, live_server, make_study

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OUTPUT = Path(__file__).resolve().parents[1] / "test-output"


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian chromium not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def site(settings, store):
    study = make_study(settings, store)
    queue.assign(store, ["ann", "bob"], strategy="round_robin")
    with live_server(create_app(settings, store)) as url:
        yield url, study, store


def log_in(page, url: str, name: str) -> None:
    page.goto(url + "/login")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")
    assert page.url.endswith("/queue")


def key(page, k: str) -> None:
    """Press a shortcut that submits a form, and wait for the next page."""
    with page.expect_navigation():
        page.keyboard.press(k)


def coding(page) -> list[str]:
    return [t.strip() for t in page.locator("#coding li.code-chip span").all_inner_texts()]


def ann_state(store, pid: str) -> decisions.ReviewState:
    return decisions.state(store, auth.user_by_name(store, "ann").id, pid)


def current_pid(page) -> str:
    return page.locator(".passage-layout").get_attribute("data-passage")


def test_review_flow_in_chromium(browser, site):
    url, _study, store = site
    OUTPUT.mkdir(exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, url, "ann")
    assert page.locator("#my-progress").inner_text() == "0 / 5"

    # passage 1 (mouse to start, keyboard to accept and move on)
    with page.expect_navigation():
        page.click("#start")
    p1 = current_pid(page)
    first = page.locator(".proposal.selected .code-title")
    if first.count():
        code = first.inner_text()
        page.locator(".proposal.selected").hover()
        assert page.locator("mark.ev.active").count() >= 1  # its evidence is highlighted
        key(page, "a")
        assert coding(page) == [code]
    else:  # the machine proposed no code
        key(page, "x")
        assert coding(page) == []
    key(page, "n")
    assert ann_state(store, p1).done

    # passage 2: mouse reject, then add a code through the search box with the keyboard
    p2 = current_pid(page)
    assert p2 != p1
    if page.locator(".proposal [data-shortcut=reject]").count():
        with page.expect_navigation():
            page.locator(".proposal [data-shortcut=reject]").first.click()
        assert page.locator(".proposal .pill.no").count() == 1
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "add-code"
    page.keyboard.type("weekly")
    page.wait_for_selector("#add-form .results li")
    assert "01.use.frequency.weekly" in page.locator("#add-form .results").inner_text()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "01.use.frequency.weekly" in coding(page)
    key(page, "n")

    # passage 3: no code, undo it, flag, memo, done
    p3 = current_pid(page)
    key(page, "x")
    assert page.locator("#no-codes").inner_text() == "No code applies."
    key(page, "u")
    assert page.locator("#no-codes").inner_text() == "No code yet."
    assert ann_state(store, p3).version == 2  # the undo is one more decision
    key(page, "f")
    assert page.locator("#flag-pill").is_visible()
    page.keyboard.press("m")
    page.keyboard.type("Ask the team: is 'first filter' selection?")
    with page.expect_navigation():
        page.click("text=Save memo")
    assert ann_state(store, p3).memo == "Ask the team: is 'first filter' selection?"
    with page.expect_navigation():
        page.click("#done-next")

    # passage 4: replace the selected proposal (c), search by definition, pick with the mouse
    p4 = current_pid(page)
    assert page.locator(".proposal").count() >= 1  # the queue puts "no code" sets last
    replaced = page.locator(".proposal.selected .code-title").inner_text()
    page.keyboard.press("c")
    assert page.evaluate("document.activeElement.name") == "code"
    page.keyboard.type("finetuning based")
    page.wait_for_selector(".proposal.selected .results li")
    with page.expect_navigation():
        page.locator(".proposal.selected .results li", has_text="decisionmaking.finetuning").click()
    assert "01.use.decisionmaking.finetuning" in coding(page) and replaced not in coding(page)
    assert page.locator(".proposal .pill", has_text="replaced").count() == 1
    key(page, "n")
    assert ann_state(store, p4).done

    # passage 5: the machine proposed no code; confirm with the mouse, done with the mouse
    p5 = current_pid(page)
    assert page.locator(".proposal").count() == 0
    with page.expect_navigation():
        page.click("#no-code")
    assert page.locator("#no-codes").inner_text() == "No code applies."
    with page.expect_navigation():
        page.click("#done-next")
    assert page.url.endswith("/queue")
    assert page.locator("#my-progress").inner_text() == "5 / 5"
    assert ann_state(store, p5).done
    assert errors == []
    assert len(decisions.reviewer_codings(store)["ann"]) == 5

    # logout
    with page.expect_navigation():
        page.click("#logout")
    assert "/login" in page.url
    page.goto(url + "/queue")
    assert "/login" in page.url
    ctx.close()


def test_conflict_between_two_reviewers_in_chromium(browser, site):
    """Two different reviewers (two browser contexts) on one passage assigned to both:
    one coding, and the second to act on a stale page gets the conflict message. Then
    the same reviewer in two tabs, and a double-coded passage (blind: no conflict)."""
    from qualflow.db import AssignmentRow

    url, _study, store = site
    ann_ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    bob_ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    a, b = ann_ctx.new_page(), bob_ctx.new_page()
    log_in(a, url, "ann")
    log_in(b, url, "bob")
    ann, bob = auth.user_by_name(store, "ann"), auth.user_by_name(store, "bob")
    pid, other = [i.passage_id for i in queue.items(store, ann)][:2]
    with store.session() as s:  # bob is assigned ann's passage too (not double-coded)
        s.add(AssignmentRow(passage_id=pid, user_id=bob.id))
    a.goto(f"{url}/passages/{pid}")
    b.goto(f"{url}/passages/{pid}")
    assert "ann" in b.locator("#shared-note").inner_text()
    key(a, "f")  # ann flags the passage
    assert a.locator("#flag-pill").is_visible()
    with b.expect_navigation():
        b.click("#no-code")  # bob acts on the version he loaded
    conflict = b.locator("#conflict").inner_text()
    assert "changed by ann" in conflict and "was not saved" in conflict
    assert b.locator("#flag-pill").is_visible()  # bob now sees ann's change
    b.screenshot(path=str(OUTPUT / "review-conflict.png"))
    st = ann_state(store, pid)
    assert st.flagged and not st.no_code and st.version == 1  # nothing overwritten
    key(b, "x")  # acting again on the fresh page works, on the same coding
    assert ann_state(store, pid).no_code and ann_state(store, pid).version == 2
    assert decisions.state(store, bob.id, pid) == ann_state(store, pid)

    # the same reviewer in two tabs
    a.reload()
    tab = ann_ctx.new_page()
    tab.goto(f"{url}/passages/{pid}")
    key(a, "f")  # unflag
    with tab.expect_navigation():
        tab.click("#flag")  # the second tab still offers "flag"
    assert "changed by you (in another window)" in tab.locator("#conflict").inner_text()
    assert not ann_state(store, pid).flagged and ann_state(store, pid).version == 3

    # a double-coded passage: each codes blind on their own track, no conflict
    with store.session() as s:
        s.get(AssignmentRow, queue.assignment_for(store, ann.id, other).id).double_coded = True
        s.add(AssignmentRow(passage_id=other, user_id=bob.id, double_coded=True))
    a.goto(f"{url}/passages/{other}")
    b.goto(f"{url}/passages/{other}")
    key(a, "f")
    assert b.locator("#shared-note").count() == 0
    key(b, "x")  # bob's page is at version 0 of his own track: no conflict
    assert b.locator("#conflict").count() == 0 and b.locator("#flag-pill").count() == 0
    assert ann_state(store, other).flagged and not ann_state(store, other).no_code
    assert decisions.state(store, bob.id, other).no_code
    for ctx in (ann_ctx, bob_ctx):
        ctx.close()


def test_passage_view_screenshot(browser, site):
    """Two proposals with overlapping evidence, one accepted: saved for a human to look at."""
    url, study, store = site
    pid = study.passage_ids[1]  # bob's passage with two proposals
    bob = auth.user_by_name(store, "bob")
    first = decisions.state(store, bob.id, pid)
    from tests.review_support import proposal_ids

    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    page = ctx.new_page()
    log_in(page, url, "bob")
    page.goto(f"{url}/passages/{pid}")
    ids = proposal_ids(page.content())
    decisions.decide(store, bob.id, pid, "accept", version=first.version, proposal_id=ids[0])
    page.reload()
    page.keyboard.press("2")
    assert page.locator(".proposal.selected").get_attribute("data-number") == "2"
    assert page.locator("mark.ev.active").count() >= 1
    page.screenshot(path=str(OUTPUT / "review-passage.png"), full_page=True)
    ctx.close()


# ------------------------------------------------------------------ security (issue 12)


class Clock:
    """Epoch seconds that move only when the test says so (login backoff without sleeping)."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked_site(settings, store):
    clock = Clock()
    study = make_study(settings, store)
    queue.assign(store, ["ann", "bob"], strategy="round_robin")
    with live_server(create_app(settings, store, clock=clock)) as url:
        yield url, study, store, clock


def submit_login(page, url: str, name: str, password: str) -> None:
    page.goto(url + "/login")
    page.fill("#username", name)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")


def test_throttled_login_in_chromium(browser, clocked_site):
    """Five wrong passwords, then the right one is refused with the wait shown; another
    reviewer logs in meanwhile; after the wait the right password works."""
    url, _study, _store, clock = clocked_site
    ctx = browser.new_context()
    page = ctx.new_page()
    for _ in range(5):
        submit_login(page, url, "ann", "not my password")
        assert page.locator(".alert.error").inner_text() == "Wrong user name or password."
    page.goto(url + "/login")
    page.fill("#username", "ann")
    page.fill("#password", PASSWORD)
    with page.expect_navigation() as nav:
        page.click("form[action='/login'] button[type=submit]")
    assert nav.value.status == 429 and nav.value.headers["retry-after"] == "2"
    message = page.locator(".alert.error").inner_text()
    assert "Too many failed logins for this user name. Try again in 2 seconds" in message
    assert "/login" in page.url
    other = browser.new_context().new_page()
    log_in(other, url, "bob")  # other reviewers are not held up
    clock.now += 2
    submit_login(page, url, "ann", PASSWORD)
    assert page.url.endswith("/queue")
    ctx.close()


def test_a_copied_cookie_dies_at_logout_in_chromium(browser, site):
    url, _study, _store = site
    owner_ctx, thief_ctx = browser.new_context(), browser.new_context()
    owner, thief = owner_ctx.new_page(), thief_ctx.new_page()
    log_in(owner, url, "ann")
    thief_ctx.add_cookies([c for c in owner_ctx.cookies() if c["name"] == "qf_session"])
    thief.goto(url + "/queue")
    assert thief.locator("#my-progress").is_visible()  # the copy works while ann is in
    with owner.expect_navigation():
        owner.click("#logout")
    thief.reload()
    assert "/login" in thief.url and thief.locator("#username").is_visible()
    owner_ctx.close()
    thief_ctx.close()


def test_error_pages_in_chromium(browser, site):
    """Bad numbers, missing pages and oversized memos show pages saying which field and
    why, never raw JSON."""
    url, _study, store = site
    ctx = browser.new_context()
    page = ctx.new_page()
    log_in(page, url, "ann")
    pid = queue.items(store, auth.user_by_name(store, "ann"))[0].passage_id
    for path, status, title, says in (
        ("/queue?run=999999999999999999999999999999", 400, "Bad request", "run: "),
        (f"/passages/{pid}?limit=-1", 400, "Bad request", "limit: -1 is outside"),
        ("/passages/does-not-exist", 404, "Not found", "no such passage"),
        (f"/passages/{pid}/decide", 405, "Method not allowed", "Go back to the queue"),
    ):
        response = page.goto(url + path)
        assert response.status == status, path
        assert page.locator("h1").inner_text() == title
        assert says in page.locator("#error-message").inner_text()
        assert "detail" not in page.locator("body").inner_text()

    page.goto(f"{url}/passages/{pid}")
    assert page.locator("#memo").get_attribute("maxlength") == "20000"
    page.evaluate("() => { const m = document.getElementById('memo');"
                  " m.removeAttribute('maxlength'); m.value = 'y'.repeat(20001); }")  # fmt: skip
    with page.expect_navigation() as nav:
        page.click("text=Save memo")
    assert nav.value.status == 413
    assert "memo: 20,001 characters; at most 20,000" in page.locator("#error").inner_text()
    page.evaluate("() => { const m = document.getElementById('memo');"
                  " m.removeAttribute('maxlength'); m.value = 'z'.repeat(900000); }")  # fmt: skip
    with page.expect_navigation() as nav:
        page.click("text=Save memo")
    assert nav.value.status == 413
    assert page.locator("h1").inner_text() == "Too large"
    assert "The request is too large" in page.locator("#error-message").inner_text()
    assert decisions.state(store, auth.user_by_name(store, "ann").id, pid).memo is None
    ctx.close()
