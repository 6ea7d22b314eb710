"""The HTML report in a real headless Chromium: the state of agreement is visible at once.

The screenshot is written to tmp_path and copied to test-output/ (git-ignored) so a
person can look at it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from qualflow import evaluate as ev
from qualflow.levels import spans_from_units

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUT = Path(__file__).resolve().parents[1] / "test-output"


def _study_like_results() -> dict:
    """A report over the 85-code study codebook with skewed, mostly rare codes."""
    from qualflow.codebook import load_codebook

    book = load_codebook("benchmark-practices")
    rng = np.random.default_rng(0)
    codes = book.titles()
    prev = np.array([0.15 * (0.8**i) for i in range(len(codes))])
    rng.shuffle(prev)
    truth = {
        f"p{i}": frozenset(c for c, p in zip(codes, prev, strict=True) if rng.random() < p)
        for i in range(300)
    }

    def noisy(extra: float, miss: float) -> dict:
        out = {}
        for pid, s in truth.items():
            kept = {x for x in s if rng.random() > miss}
            kept |= {c for c, p in zip(codes, prev, strict=True) if rng.random() < extra * p}
            out[pid] = frozenset(kept)
        return out

    a = ev.Resolved("gold:author-a", noisy(0.1, 0.05))
    b = ev.Resolved("gold:author-b", noisy(0.1, 0.1))
    machine = ev.Resolved("run:3", noisy(0.6, 0.4), model="gpt-4o-mini", prompt_version="1a2b3c")
    machine.confidences = [
        (pid, c, float(rng.random())) for pid, s in machine.coding.items() for c in s
    ]
    base = ev.Resolved("proposals:similarity", noisy(1.5, 0.6), model="minilm")
    grid = _grid(list(truth))
    for coder in (a, b, machine):
        coder.spans = spans_from_units(coder.name, coder.coding, grid)
    return ev.evaluate(
        a,
        machine,
        codebook=book,
        humans=[a, b],
        baseline=base,
        n_boot=300,
        experiment="browser",
        grid=grid,
    )


def _grid(ids: list[str]):
    """Invented positions: 30 sentences of 40 characters per transcript, 3 per turn."""
    from qualflow.levels import Grid
    from qualflow.spans import Unit

    sentences = {
        pid: Unit(pid, f"t{i // 30}", (i % 30) * 42, (i % 30) * 42 + 40)
        for i, pid in enumerate(ids)
    }
    turns = {
        f"t{k}": [Unit(f"t{k}#turn-{j}", f"t{k}", j * 126, j * 126 + 124) for j in range(10)]
        for k in range((len(ids) + 29) // 30)
    }
    return Grid(sentences, turns)


@pytest.mark.browser
@pytest.mark.slow
def test_report_is_readable_in_chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    out = ev.write_outputs(_study_like_results(), tmp_path)
    shot = tmp_path / "eval-report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(out.html_path.as_uri())
            page.screenshot(path=str(shot))
            page.screenshot(path=str(tmp_path / "eval-report-full.png"), full_page=True)
            first_table = page.evaluate("document.querySelector('table').id")
            headline_box = page.locator("#headline").bounding_box()
            headline = page.locator("#headline").inner_text()
            table = page.locator("#per-code").bounding_box()
            rows = page.locator("#per-code tbody tr")
            n_rows = rows.count()
            fifth = rows.nth(4).bounding_box()
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            images_ok = page.evaluate(
                "[...document.images].every(i => i.complete && i.naturalWidth > 100)"
            )
            header = page.locator("#per-code thead").inner_text()
            levels = page.locator("#levels tbody").inner_text()
        finally:
            browser.close()
    OUT.mkdir(exist_ok=True)
    shutil.copy(shot, OUT / "eval-report.png")
    shutil.copy(tmp_path / "eval-report-full.png", OUT / "eval-report-full.png")
    assert first_table == "per-code"  # the report leads with the per-code table
    assert headline_box["y"] < 200 and "pooled kappa" in headline and "human-human" in headline
    assert table["y"] < 300  # the table starts high on the first screen
    assert fifth["y"] + fifth["height"] < 900  # several codes are readable without scrolling
    assert scroll_width <= 1400  # no sideways scrolling: flags and deltas fit
    assert images_ok
    for column in ("precision", "recall", "κ [95% CI]", "human κ", "baseline κ", "flags"):
        assert column in header
    assert n_rows >= 10
    for level in ("span, characters", "span, highlights", "sentence", "turn"):
        assert level in levels  # the three levels side by side, within the page width
