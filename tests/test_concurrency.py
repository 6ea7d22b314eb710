"""Processes at once on one store (real processes, SQLite and PostgreSQL): two
``qualflow ingest`` of the same files never crash and store each file once; several
processes opening a fresh store migrate it one after the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from qualflow.db import PassageRow, TranscriptRow, make_engine
from tests.coders_fixture import write_transcript_file
from tests.conftest import POSTGRES_URL, REPO

pytestmark = pytest.mark.slow

# Imports done, then wait for the start signal, so the processes really overlap.
STARTER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import qualflow.cli, qualflow.ingest, qualflow.store, qualflow.readers, qualflow.segment
    go = Path(sys.argv[1])
    Path(sys.argv[2]).touch()
    while not go.exists():
        time.sleep(0.002)
    sys.argv = ["qualflow", *sys.argv[3:]]
    if sys.argv[1] == "--open-store":
        from qualflow.store import Store
        Store.open(sys.argv[2]).close()
        print("migrated")
    else:
        qualflow.cli.main()
    """
)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path: Path) -> Iterator[str | None]:
    """None: the workspace's own SQLite file; else the URL of a throwaway PostgreSQL
    database (its schema not created yet)."""
    if request.param == "sqlite":
        yield None
        return
    if not POSTGRES_URL:
        pytest.skip("QUALFLOW_TEST_POSTGRES_URL not set")
    name = f"qualflow_test_faults_{uuid.uuid4().hex[:8]}"
    admin = make_engine(POSTGRES_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'create database "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


def _env(url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUALFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    if url:
        env["QUALFLOW_DATABASE_URL"] = url
    return env


def _at_once(tmp_path: Path, commands: list[list[str]], env: dict[str, str]) -> list[tuple]:
    """Start the commands, wait until each is ready, release them together."""
    go = tmp_path / f"go-{uuid.uuid4().hex[:6]}"
    procs, ready = [], []
    for i, args in enumerate(commands):
        flag = tmp_path / f"ready-{go.name}-{i}"
        ready.append(flag)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", STARTER, str(go), str(flag), *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + 120
    while not all(f.exists() for f in ready):
        assert time.monotonic() < deadline, "processes did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append((p.returncode, stdout, stderr))
    return out


def _init(ws: Path, url: str | None) -> None:
    args = [sys.executable, "-c", "from qualflow.cli import main; main()", "init", str(ws)]
    done = subprocess.run(args, cwd=REPO, env=_env(url), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _passages_in(path: Path) -> int:
    from qualflow.readers import read_transcript
    from qualflow.segment import segment

    return len(segment(read_transcript(path), "sentence"))


def test_two_ingests_at_once_store_each_file_once(tmp_path: Path, store_url):
    ws = tmp_path / "ws"
    _init(ws, store_url)
    inbox = tmp_path / "inbox"
    names = [f"P{i:02d}" for i in range(16)]
    for name in names:
        write_transcript_file(inbox, name, n_turns=8)
    results = _at_once(tmp_path, [["ingest", str(inbox), "-w", str(ws)]] * 2, _env(store_url))
    for code, stdout, stderr in results:
        assert code == 0, stdout + stderr
        assert "IntegrityError" not in stdout + stderr and stdout.rstrip().endswith(" 0 errors")
    new = sum(line.startswith("new ") for _c, out, _e in results for line in out.splitlines())
    unchanged = sum(
        line.startswith("unchanged ") for _c, out, _e in results for line in out.splitlines()
    )
    assert (new, new + unchanged) == (len(names), 2 * len(names))
    engine = make_engine(store_url or f"sqlite:///{ws / 'data' / 'qualflow.sqlite3'}")
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(TranscriptRow.name)).scalars().all()
            passages = conn.execute(select(func.count()).select_from(PassageRow)).scalar()
        assert sorted(stored) == names
        assert passages == sum(_passages_in(f) for f in sorted(inbox.iterdir()))
    finally:
        engine.dispose()


def test_first_schema_setup_by_several_processes_is_serialised(tmp_path: Path, store_url):
    url = store_url or f"sqlite:///{tmp_path / 'fresh' / 'qualflow.sqlite3'}"
    results = _at_once(tmp_path, [["--open-store", url]] * 4, _env(None))
    for code, stdout, stderr in results:
        assert code == 0 and "migrated" in stdout, stderr[-3000:]
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(text("select version_num from alembic_version")).all()
        assert len(versions) == len({v for (v,) in versions}) >= 1
    finally:
        engine.dispose()


def test_report_of_concurrent_ingest_is_json_clean(tmp_path: Path):
    """The ingest outcome of a lost race is a normal 'unchanged' (library level)."""
    from qualflow.ingest import ingest_paths
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    settings = load_settings(tmp_path / "ws")
    path = write_transcript_file(tmp_path / "in", "alpha")
    first, second = open_store(settings), open_store(settings)
    try:
        real = second._save_transcript

        def race(transcript, passages):  # the other process stores it first
            ingest_paths(first, [path], settings)
            return real(transcript, passages)

        second._save_transcript = race  # type: ignore[method-assign]
        [outcome] = ingest_paths(second, [path], settings).files
        assert outcome.status == "unchanged", json.dumps(outcome.model_dump())
        assert len(second.transcripts()) == 1
    finally:
        first.close()
        second.close()
