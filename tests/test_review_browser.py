"""The review app in a real headless Chromium, against uvicorn on a loopback port.

Spans: select text with the mouse and add a span, adjust a span with the keyboard and
with a selection, select text with the keyboard; the stored offsets are checked. The
reviewer's traps: "Done, next" with undecided proposals, an unsaved memo, a search with
no match, a conflict (post-redirect-get, selection kept, banner in view). Security: a
throttled login, a copied cookie, error pages. The unit view is saved to
test-output/review-passage.png for a human to look at.
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


# ------------------------------------------------------------------ helpers on offsets


def point_at(page, offset: int, side: str) -> tuple[float, float]:
    """Viewport coordinates of one character of the unit's text, by its transcript
    offset: just inside its left edge (``side="left"``) or its right edge."""
    box = page.evaluate(
        """([offset]) => {
          for (const el of document.querySelectorAll('#unit .seg')) {
            const s = +el.dataset.s, e = +el.dataset.e;
            if (offset < s || offset >= e) continue;
            const r = document.createRange();
            const i = Array.from(el.textContent).slice(0, offset - s).join('').length;
            r.setStart(el.firstChild, i); r.setEnd(el.firstChild, i + 1);
            const b = r.getClientRects()[0];
            return {left: b.left, right: b.right, top: b.top, height: b.height};
          }
          return null;
        }""",
        [offset],
    )
    assert box, f"offset {offset} is not in the unit's text"
    x = box["left"] + 1 if side == "left" else box["right"] - 1
    return x, box["top"] + box["height"] / 2


def drag_select(page, start: int, end: int) -> None:
    """Select the text start..end (transcript offsets) with the mouse."""
    x1, y1 = point_at(page, start, "left")
    x2, y2 = point_at(page, end - 1, "right")
    page.mouse.move(x1, y1)
    page.mouse.down()
    page.mouse.move(x2, y2, steps=8)
    page.mouse.up()
    page.wait_for_function("() => document.activeElement.id === 'selection-code'")


def phrase(store, pid: str, words: str) -> tuple[int, int]:
    """Transcript offsets of a phrase inside the unit."""
    unit = store.passage(pid)
    at = unit.text.index(words)
    return unit.char_start + at, unit.char_start + at + len(words)


def spans_of(store, name: str, pid: str) -> set[tuple]:
    st = decisions.state(store, auth.user_by_name(store, name).id, pid)
    return {(sp.code, sp.start, sp.end, sp.origin) for sp in st.spans}


def unit_with(store, name: str, text: str) -> str:
    """The id of the reviewer's unit whose text holds ``text``."""
    user = auth.user_by_name(store, name)
    return next(i.passage_id for i in queue.items(store, user) if text in i.text)


def search_and_pick(page, query: str, title: str) -> None:
    """Type into the focused code search and pick ``title`` with the keyboard."""
    page.keyboard.type(query)
    page.wait_for_selector(f".results li[role=option] >> text={title}")
    options = page.locator(".search-form:not([hidden]) .results li[role=option] strong")
    titles = [t for t in options.all_inner_texts() if t]
    for _ in range(titles.index(title)):
        page.keyboard.press("ArrowDown")
    with page.expect_navigation():
        page.keyboard.press("Enter")


# ------------------------------------------------------------------ coding spans


def test_select_text_with_the_mouse_and_add_a_span(browser, site):
    """Drag over a phrase, choose a code: the span lands on exactly those characters."""
    url, _study, store = site
    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, url, "ann")
    pid = unit_with(store, "ann", "leaderboards pretty much every morning")
    page.goto(f"{url}/passages/{pid}")
    # context is visibly context; the proposed span is highlighted with its definition
    context = page.locator(".turn.piece.context")
    assert "context, not coded" in context.inner_text()
    proposed = page.locator("#unit .seg.proposed").first
    assert "01.use.frequency.daily: Use benchmarks daily" in proposed.get_attribute("title")
    start, end = phrase(store, pid, "pretty much every morning")
    drag_select(page, start, end)
    assert page.locator("#selection-form").is_visible()
    assert page.locator("#selection-quote").inner_text() == "pretty much every morning"
    assert page.evaluate("document.activeElement.id") == "selection-code"
    search_and_pick(page, "weekly", "01.use.frequency.weekly")
    assert ("01.use.frequency.weekly", start, end, "added") in spans_of(store, "ann", pid)
    coded = page.locator("#unit .seg.coded")
    assert "".join(coded.all_inner_texts()) == "pretty much every morning"
    assert "01.use.frequency.weekly" in page.locator("#coding").inner_text()
    # selecting into the interviewer's question is refused with the reason
    q_start = store.passage(pid).pieces[0].char_start
    drag_select(page, q_start + 4, start + 6)
    search_and_pick(page, "weekly", "01.use.frequency.weekly")
    assert "runs into context" in page.locator("#error").inner_text()
    assert "/decide" not in page.url  # the unit's own address, not the form's
    assert errors == []


def test_adjust_a_span_with_the_keyboard_and_with_a_selection(browser, site):
    url, _study, store = site
    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    log_in(page, url, "ann")
    pid = unit_with(store, "ann", "leaderboards pretty much every morning")
    page.goto(f"{url}/passages/{pid}")
    # keyboard: select the proposal (1), adjust (e): start one word later, end one later
    (proposal_start, proposal_end) = phrase(
        store, pid, "I check the leaderboards pretty much every morning"
    )
    page.keyboard.press("1")
    page.keyboard.press("e")
    assert "Adjusting 01.use.frequency.daily" in page.locator("#hint").inner_text()
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("ArrowRight")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    new_start, _ = phrase(store, pid, "check the leaderboards")
    _, new_end = phrase(store, pid, "every morning.")  # a word with its punctuation
    assert spans_of(store, "ann", pid) == {
        ("01.use.frequency.daily", new_start, new_end, "adjusted")
    }
    assert new_start == proposal_start + 2 and new_end > proposal_end
    # with the mouse: select other text, then "Adjust" on the span moves it there
    start, end = phrase(store, pid, "It's part of my routine")
    drag_select(page, start, end)
    page.locator("#coding .span-item").first.click()  # select the span item
    page.keyboard.press("e")  # adjust to the selection just made
    page.wait_for_load_state()
    page.wait_for_function("() => !document.querySelector('#selection-form:not([hidden])')")
    assert spans_of(store, "ann", pid) == {("01.use.frequency.daily", start, end, "adjusted")}
    st = decisions.state(store, auth.user_by_name(store, "ann").id, pid)
    assert st.spans[0].proposal_id is not None  # still known as the machine's proposal


def test_select_text_with_the_keyboard_and_code_it(browser, site):
    url, _study, store = site
    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    log_in(page, url, "ann")
    pid = unit_with(store, "ann", "leaderboards pretty much every morning")
    page.goto(f"{url}/passages/{pid}")
    page.keyboard.press("v")  # the first sentence of the answer is selected
    page.keyboard.press("ArrowDown")  # the next sentence
    page.keyboard.press("ArrowLeft")  # one word less at the end
    page.keyboard.press("/")  # code the selection
    assert page.evaluate("document.activeElement.id") == "selection-code"
    search_and_pick(page, "monthly", "01.use.frequency.monthly")
    start, end = phrase(store, pid, "It's part of my routine before stand-up, just to see whether")
    _, sentence_end = phrase(store, pid, "anything new has moved.")
    assert end < sentence_end
    spans = spans_of(store, "ann", pid)
    assert any(code == "01.use.frequency.monthly" and s == start for code, s, _e, _o in spans)
    (monthly,) = [sp for sp in spans if sp[0] == "01.use.frequency.monthly"]
    assert monthly[2] == phrase(store, pid, "whether anything new has")[1]


# ------------------------------------------------------------------ the reviewer's traps


def test_done_next_never_records_no_code_for_undecided_proposals(browser, site):
    url, _study, store = site
    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    log_in(page, url, "ann")
    with page.expect_navigation():
        page.click("#start")
    first = current_pid(page)
    assert page.locator("#done-next").is_disabled()
    page.keyboard.press("n")  # nothing happens but a hint saying why
    assert "still undecided" in page.locator("#hint").inner_text()
    assert current_pid(page) == first and ann_state(store, first).version == 0
    key(page, "j")  # skip: the next unit, no judgement recorded
    assert current_pid(page) != first
    st = ann_state(store, first)
    assert st.version == 0 and not st.done and not st.no_code
    page.goto(f"{url}/passages/{first}")
    while page.locator(".proposal .pill.pending").count():  # reject each, the next selected
        key(page, "r")
    assert page.locator("#done-next").is_disabled()  # nothing coded: say so explicitly
    key(page, "x")
    key(page, "n")
    assert ann_state(store, first).done and ann_state(store, first).no_code
    page.goto(f"{url}/queue?show=done")
    row = page.locator("tr", has=page.locator(f"a[href^='/passages/{first}']"))
    assert "no code applies" in row.locator("td.mine").inner_text()


def test_an_unsaved_memo_is_never_lost_silently(browser, site):
    url, _study, store = site
    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    dialogs: list[str] = []

    def on_dialog(dialog) -> None:
        dialogs.append(dialog.type)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    log_in(page, url, "ann")
    pid = unit_with(store, "ann", "leaderboards pretty much every morning")
    page.goto(f"{url}/passages/{pid}")
    page.keyboard.press("m")
    page.keyboard.type("check the stand-up routine")
    page.keyboard.press("Escape")  # leaves the box: shortcuts work again
    assert page.evaluate("document.activeElement.id") != "memo"
    assert page.locator("#memo-unsaved").is_visible()
    page.keyboard.press("j")  # leaving the unit asks first
    page.wait_for_timeout(500)
    assert dialogs == ["beforeunload"] and current_pid(page) == pid
    assert page.locator("#memo").input_value() == "check the stand-up routine"
    key(page, "a")  # another action on this unit keeps the draft, still marked unsaved
    assert page.locator("#memo").input_value() == "check the stand-up routine"
    assert page.locator("#memo-unsaved").is_visible() and ann_state(store, pid).memo is None
    page.keyboard.press("m")
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")  # saves from the keyboard
    assert ann_state(store, pid).memo == "check the stand-up routine"
    assert not page.locator("#memo-unsaved").is_visible()
    page.keyboard.press("m")
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")  # an empty memo clears it
    assert ann_state(store, pid).memo is None
    assert len(dialogs) == 1


def test_code_search_says_when_nothing_matches(browser, site):
    url, _study, _store = site
    page = browser.new_context().new_page()
    log_in(page, url, "ann")
    with page.expect_navigation():
        page.click("#start")
    page.keyboard.press("/")
    page.keyboard.type("zzqqx")
    page.wait_for_selector("#add-form .results li.no-match")
    assert "No code matches “zzqqx”" in page.locator("#add-form .results").inner_text()


def test_a_conflict_keeps_the_selection_and_the_banner_in_view(browser, site):
    """Two reviewers on one shared unit (two browser contexts); the second acts on a
    stale page: the unit comes back by post-redirect-get, its address a page address,
    the conflict banner in view and the same item selected. Then one reviewer in two
    tabs, and a double-coded unit (blind tracks: no conflict)."""
    from qualflow.db import AssignmentRow

    url, _study, store = site
    ann_ctx = browser.new_context(viewport={"width": 1366, "height": 700})
    bob_ctx = browser.new_context(viewport={"width": 1366, "height": 700})
    a, b = ann_ctx.new_page(), bob_ctx.new_page()
    log_in(a, url, "ann")
    log_in(b, url, "bob")
    ann, bob = auth.user_by_name(store, "ann"), auth.user_by_name(store, "bob")
    pid, other = [i.passage_id for i in queue.items(store, ann)][:2]
    with store.session() as s:  # bob is assigned ann's unit too (not double-coded)
        s.add(AssignmentRow(passage_id=pid, user_id=bob.id))
    a.goto(f"{url}/passages/{pid}")
    b.goto(f"{url}/passages/{pid}")
    assert "ann" in b.locator("#shared-note").inner_text()
    key(a, "f")  # ann flags the unit
    b.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    if b.locator(".proposal").count():
        b.keyboard.press("1")
        selected = b.locator(".item.selected").get_attribute("data-number")
        key(b, "r")  # bob rejects on the version he loaded
    else:
        selected = "0"
        key(b, "x")
    assert "/decide" not in b.url and "conflict=" in b.url
    conflict = b.locator("#conflict")
    assert "changed by ann" in conflict.inner_text() and "was not saved" in conflict.inner_text()
    box = conflict.bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 700
    if selected != "0":
        assert b.locator(".item.selected").get_attribute("data-number") == selected
    b.screenshot(path=str(OUTPUT / "review-conflict.png"))
    st = ann_state(store, pid)
    assert st.flagged and st.version == 1  # nothing overwritten
    b.reload()  # a page address: reloading does not post again
    assert ann_state(store, pid).version == 1
    key(b, "u")  # acting on the fresh page works, on the same coding
    assert ann_state(store, pid).version == 2 and not ann_state(store, pid).flagged

    # the same reviewer in two tabs
    a.reload()
    tab = ann_ctx.new_page()
    tab.goto(f"{url}/passages/{pid}")
    key(a, "f")
    with tab.expect_navigation():
        tab.click("#flag")  # the second tab still offers "flag"
    assert "changed by you (in another window)" in tab.locator("#conflict").inner_text()
    assert ann_state(store, pid).flagged and ann_state(store, pid).version == 3

    # a double-coded unit: each codes blind on their own track, no conflict
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


def test_unit_view_screenshot(browser, site):
    """Two proposed spans that overlap, one accepted and adjusted, a span of the
    reviewer's own: saved for a human to look at."""
    url, study, store = site
    pid = study.passage_ids[1]  # bob's unit with two proposals
    bob = auth.user_by_name(store, "bob")
    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    page = ctx.new_page()
    log_in(page, url, "bob")
    page.goto(f"{url}/passages/{pid}")
    key(page, "a")
    start, end = phrase(store, pid, "a third of the cost to run")
    drag_select(page, start, end)
    search_and_pick(page, "selection", "01.use.decisionmaking.selection")
    page.keyboard.press("2")
    assert page.locator(".item.selected").get_attribute("data-number") == "2"
    assert page.locator("#unit .seg.active").count() >= 1
    assert page.locator("#unit .seg.coded").count() >= 2
    assert len(decisions.state(store, bob.id, pid).spans) == 2
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
