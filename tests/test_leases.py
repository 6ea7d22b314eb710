"""Leases on coding units (``qualflow.leases``): two workers on one store never send a
unit twice, and the units of a worker that died are taken over.

The process tests start real ``qualflow code`` processes against one store (SQLite
and PostgreSQL) and count, at the fake endpoint, how often each unit was requested.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from qualflow.db import ProposalSetRow, UnitLeaseRow
from qualflow.leases import Leases
from qualflow.models import utcnow
from qualflow.store import ProposalKey, Store
from tests.coders_fixture import make_transcript
from tests.conftest import REPO
from tests.fake_openai import FakeOpenAI
from tests.test_concurrency import _at_once, _env, _init, store_url  # noqa: F401

KEY = ProposalKey(coder="llm", model="m", prompt_version="p", codebook_version="c")


def _seeded_ids(store: Store, n: int = 4) -> list[str]:
    _, passages = make_transcript("alpha", n)
    store.save_transcript(*make_transcript("alpha", n))
    return [p.id for p in passages]


# ---------------------------------------------------------------------- in process


def test_a_unit_held_by_one_worker_is_not_claimed_by_another(store):
    ids = _seeded_ids(store)
    with Leases(store, KEY, holder="h:1:a") as first, Leases(store, KEY, holder="h:1:b") as other:
        assert first.claim(ids[:3]) == ids[:3]
        assert other.claim(ids) == [ids[3]]  # the rest is held by the first
        assert other.held_elsewhere(ids) == set(ids[:3])
        first.release(ids[:1])
        assert other.claim(ids) == [ids[0], ids[3]]


def test_an_expired_lease_is_taken_over(store):
    """A worker on another host that stopped renewing: its lease runs out, then the
    unit goes to whoever claims it next (and only to one of two claimants)."""
    ids = _seeded_ids(store)
    now = utcnow()
    later = now + timedelta(seconds=61)
    dead = Leases(store, KEY, seconds=60, holder="elsewhere:1:x", clock=lambda: now)
    assert dead.claim(ids) == ids
    early = Leases(store, KEY, seconds=60, holder="h:2:a", clock=lambda: now)
    assert early.claim(ids) == []  # not expired yet
    takers = [Leases(store, KEY, seconds=60, holder=f"h:3:{i}", clock=lambda: later) for i in "ab"]
    assert takers[0].claim(ids) == ids
    assert takers[1].claim(ids) == []  # taken over once, by the first
    with store.session() as s:
        holders = set(s.scalars(select(UnitLeaseRow.holder)))
    assert holders == {"h:3:a"}
    for worker in (dead, early, *takers):
        worker.close()


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(store):
    import socket

    ids = _seeded_ids(store)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = Leases(store, KEY, seconds=3600, holder=f"{socket.gethostname()}:{gone.pid}:x")
    assert dead.claim(ids) == ids
    alive = Leases(store, KEY, seconds=3600, holder=f"{socket.gethostname()}:{os.getppid()}:y")
    assert alive.claim(ids[:1]) == ids[:1]
    with Leases(store, KEY, seconds=3600) as mine:
        assert mine.claim(ids) == ids[1:]  # the dead one's, not the live parent's
    dead.close()
    alive.close()


def test_renewal_keeps_a_lease_from_expiring(store):
    ids = _seeded_ids(store)
    with Leases(store, KEY, seconds=1.5, holder="other-host:1:r") as worker:
        worker.claim(ids)
        time.sleep(2.5)  # renewed every 0.5 s
        with store.session() as s:
            until = s.scalar(select(func.min(UnitLeaseRow.expires_at)))
        assert until.replace(tzinfo=None) > utcnow().replace(tzinfo=None)
        with Leases(store, KEY, holder="h:9:z") as other:
            assert other.claim(ids) == []
    with store.session() as s:  # closed: every lease released
        assert s.scalar(select(func.count()).select_from(UnitLeaseRow)) == 0


# ---------------------------------------------------------------------- real processes


N_FILES, TURNS = 6, 20  # 60 participant answers, a chunk each


def _workspace(tmp_path: Path, url: str | None, fake: FakeOpenAI) -> tuple[Path, dict]:
    ws = tmp_path / "ws"
    env = _env(url)
    _init(ws, url)
    for i in range(N_FILES):  # every answer unique, so a request names its unit
        lines = [
            f"Interviewer: Question {t} for site {i}?"
            if t % 2 == 0
            else f"P1: In site{i} turn {t} we look at the benchmark first."
            for t in range(TURNS)
        ]
        (ws / "inbox").mkdir(exist_ok=True)
        (ws / "inbox" / f"site{i}.txt").write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    env.update(
        QUALFLOW_LLM_BASE_URL=fake.base_url,
        QUALFLOW_LLM_API_KEY="k",
        QUALFLOW_LLM_CONCURRENCY="2",
        QUALFLOW_LLM_BATCH_SIZE="1",
        QUALFLOW_RUN_BATCH_SIZE="4",
        QUALFLOW_RETRIEVAL_K="0",
        QUALFLOW_CHUNK_WORDS="5",  # one chunk per answer
    )
    cli = [sys.executable, "-c", "from qualflow.cli import main; main()"]
    done = subprocess.run(
        [*cli, "ingest", str(ws / "inbox"), "-w", str(ws)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return ws, env


def _requests_per_unit(fake: FakeOpenAI) -> Counter:
    """How often each unit (the excerpt a request carries) was sent."""
    import re

    seen: Counter = Counter()
    for i in range(fake.chat_count):
        text = "\n".join(fake.user_messages(i))
        for excerpt in re.findall(r"<excerpt id=.*?</excerpt>", text, flags=re.S):
            seen[excerpt] += 1
    return seen


def _sets_per_run(ws: Path, url: str | None) -> tuple[dict[int | None, int], int]:
    """Proposal sets written by each run, and the units in the store (chunks)."""
    from qualflow.pipeline import unit_segmentation
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    settings = load_settings(ws, chunk_words=5, **({"database_url": url} if url else {}))
    store = open_store(settings)
    try:
        with store.session() as s:
            rows = s.execute(
                select(ProposalSetRow.run_id, func.count()).group_by(ProposalSetRow.run_id)
            ).all()
            assert s.scalar(select(func.count()).select_from(UnitLeaseRow)) == 0
        units = store.passages(segmentation=unit_segmentation(settings), codable_only=True)
        return dict(rows), len(units)
    finally:
        store.close()


@pytest.mark.slow
def test_two_code_processes_at_once_request_each_unit_once(tmp_path: Path, store_url):  # noqa: F811
    with FakeOpenAI(latency=0.05) as fake:
        ws, env = _workspace(tmp_path, store_url, fake)
        runs = _at_once(tmp_path, [["code", "-w", str(ws)], ["code", "-w", str(ws)]], env)
        for code, out, err in runs:
            assert code == 0, out + err
        seen = _requests_per_unit(fake)
        assert set(seen.values()) == {1}, [u for u, n in seen.items() if n > 1]
        assert fake.chat_count == len(seen) > N_FILES * TURNS // 4  # one unit per request
        answers = {
            f"In site{i} turn {t} we look" for i in range(N_FILES) for t in range(1, TURNS, 2)
        }
        assert {a for a in answers if any(a in e for e in seen)} == answers  # all were sent
    per_run, units = _sets_per_run(ws, store_url)
    assert sum(per_run.values()) == units  # every unit coded once
    assert len(per_run) == 2 and min(per_run.values()) > 0, per_run  # both really coded


@pytest.mark.slow
def test_units_of_a_killed_code_process_are_taken_over(tmp_path: Path):
    """SIGKILL leaves its leases behind (no clean-up ran); the next ``qualflow code``
    takes them over at once (their holder process is gone) and codes everything."""
    with FakeOpenAI(latency=0.3) as fake:
        ws, env = _workspace(tmp_path, None, fake)
        cli = [sys.executable, "-c", "from qualflow.cli import main; main()"]
        first = subprocess.Popen(
            [*cli, "code", "-w", str(ws)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while fake.chat_count < 6:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        from qualflow.settings import load_settings
        from qualflow.store import open_store

        store = open_store(load_settings(ws))
        try:
            with store.session() as s:
                left = s.scalar(select(func.count()).select_from(UnitLeaseRow))
        finally:
            store.close()
        assert left > 0  # the killed worker's leases are still there
        env["QUALFLOW_LEASE_SECONDS"] = "3600"  # taken over because the holder is gone
        second = subprocess.run(
            [*cli, "code", "-w", str(ws)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 0, second.stdout + second.stderr
    per_run, units = _sets_per_run(ws, None)
    assert sum(per_run.values()) == units and len(per_run) == 2
