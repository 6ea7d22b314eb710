"""The README's first command, end to end: `qualflow demo` on examples/ (similarity coder)."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_demo_runs_the_whole_job_and_is_incremental(tmp_path: Path):
    ws = tmp_path / "demo"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "COLUMNS": "200",
    }
    cmd = [
        sys.executable,
        "-m",
        "qualflow",
        "demo",
        "-w",
        str(ws),
        "--coders",
        "similarity",
        "--n-boot",
        "50",
    ]
    first = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Traceback" not in first.stdout + first.stderr  # nothing alarming at exit either
    out = first.stdout
    assert "6 new" in out or "new" in out
    assert "160/160 records imported" in out
    assert "constructed example data (not human): constructed-a, constructed-b" in out
    # the constructed example gold set is never read as a human baseline
    assert "human baseline: no human baseline measured" in out
    assert "inferior" not in out and "non-inferior" not in out
    assert "double-coded: blind to each other and to the machine" in out
    report = ws / "reports" / "demo-similarity.json"
    assert report.is_file() and (ws / "reports" / "demo-similarity.html").is_file()
    results = json.loads(report.read_text())
    assert results["human_baseline"] is None and results["coverage"]["share"] > 0
    accounts = ws / "data" / "demo-accounts.txt"
    assert stat.S_IMODE(accounts.stat().st_mode) == 0o600
    assert {line.split("\t")[0] for line in accounts.read_text().splitlines()} == {
        "admin",
        "reviewer-1",
        "reviewer-2",
    }

    double_coded = _sentences_in(ws, _review_the_double_coded_share(ws))
    second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "assigned 0 new passages" in second.stdout  # nothing handed out twice
    assert re.search(r"Coded by this run\s+0\s", second.stdout) or "nothing to code" in (
        second.stdout.lower()
    )
    # once both reviewers coded the double-coded share, that is the human baseline
    assert (
        "human baseline: measured: reviewer:reviewer-1, reviewer:reviewer-2 on "
        f"{double_coded} passages"
    ) in second.stdout
    results = json.loads(report.read_text())
    assert results["human_baseline"]["humans"] == ["reviewer:reviewer-1", "reviewer:reviewer-2"]


def _sentences_in(ws: Path, unit_ids: list[str]) -> int:
    """The grid sentences inside these coding units (chunks): what the human baseline
    rests on."""
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    settings = load_settings(ws)
    store = open_store(settings)
    try:
        units = store.passages(ids=unit_ids)
        grid = store.passages(segmentation=settings.segmentation, codable_only=True)
    finally:
        store.close()
    return sum(
        1
        for s in grid
        if any(
            s.transcript_id == u.transcript_id and u.char_start <= s.char_start < u.char_end
            for u in units
        )
    )


def _review_the_double_coded_share(ws: Path) -> list[str]:
    """Both demo reviewers finish their blind codings of the double-coded units, as
    they would in the review app; they disagree on every third unit."""
    from sqlalchemy import select

    from qualflow.db import AssignmentRow, UserRow
    from qualflow.review.decisions import decide
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    store = open_store(load_settings(ws))
    try:
        with store.session() as s:
            users = dict(s.execute(select(UserRow.username, UserRow.id)).all())
            double = sorted(
                set(s.scalars(select(AssignmentRow.passage_id).where(AssignmentRow.double_coded)))
            )
        assert double, "the demo assigns a double-coded share"
        for i, pid in enumerate(double):
            for name in ("reviewer-1", "reviewer-2"):
                if i % 3 == 0 and name == "reviewer-2":
                    decide(store, users[name], pid, "add", version=0, code="05.gaps.issues")
                else:
                    decide(store, users[name], pid, "no_code", version=0)
                decide(store, users[name], pid, "done", version=1)
    finally:
        store.close()
    return double
