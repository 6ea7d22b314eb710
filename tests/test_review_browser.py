"""The review app in a real headless Chromium, against uvicorn on a loopback port.

Flow: log in, work five passages with keyboard and mouse, undo, add a code through the
codebook search, a conflict between two browser sessions, logout. The passage view is
saved to test-output/review-passage.png for a human to look at.
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


def test_conflict_between_two_sessions_in_chromium(browser, site):
    url, _study, store = site
    one = browser.new_context(viewport={"width": 1366, "height": 900})
    two = browser.new_context(viewport={"width": 1366, "height": 900})
    bob = browser.new_context()
    a, b, c = one.new_page(), two.new_page(), bob.new_page()
    log_in(a, url, "ann")
    log_in(b, url, "ann")
    log_in(c, url, "bob")
    pid = next(i.passage_id for i in queue.items(store, auth.user_by_name(store, "ann")))
    a.goto(f"{url}/passages/{pid}")
    b.goto(f"{url}/passages/{pid}")
    key(a, "f")  # the first session flags the passage
    assert a.locator("#flag-pill").is_visible()
    with b.expect_navigation():
        b.click("#no-code")  # the second acts on the version it loaded
    assert b.locator("#conflict").is_visible()
    assert "was not saved" in b.locator("#conflict").inner_text()
    b.screenshot(path=str(OUTPUT / "review-conflict.png"))
    st = ann_state(store, pid)
    assert st.flagged and st.version == 1  # nothing overwritten
    key(b, "x")  # acting again on the fresh page works
    assert ann_state(store, pid).version == 2

    # another reviewer on the same passage (double coding) never conflicts and never sees it
    with store.session() as s:
        from qualflow.db import AssignmentRow

        s.add(AssignmentRow(passage_id=pid, user_id=auth.user_by_name(store, "bob").id))
    c.goto(f"{url}/passages/{pid}")
    assert c.locator("#flag-pill").count() == 0
    key(c, "f")
    assert c.locator("#flag-pill").is_visible()
    for ctx in (one, two, bob):
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
