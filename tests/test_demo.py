"""The README's first command, end to end: `qualflow demo` on examples/ (similarity coder)."""

import os
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
    out = first.stdout
    assert "6 new" in out or "new" in out
    assert "160/160 records imported" in out
    assert "similarity" in out and "inferior" in out  # the honest verdict vs the humans
    report = ws / "reports" / "demo-similarity.json"
    assert report.is_file() and (ws / "reports" / "demo-similarity.html").is_file()
    accounts = ws / "data" / "demo-accounts.txt"
    assert stat.S_IMODE(accounts.stat().st_mode) == 0o600
    assert {line.split("\t")[0] for line in accounts.read_text().splitlines()} == {
        "admin",
        "reviewer-1",
        "reviewer-2",
    }

    second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "assigned 0 new passages" in second.stdout  # nothing handed out twice
    assert "Coded by this run             0" in second.stdout or "nothing to code" in (
        second.stdout.lower()
    )
