"""Load test of the review app: concurrent reviewers against a real local server.

Starts ``qualflow review`` (a separate process, uvicorn) on a fresh workspace holding a
sample study, lets N reviewer threads (httpx, each logged in with its own session) work
for a bounded time, then checks the decision log against what the clients saw:

- every POST the server answered with 303 (saved) is exactly one decision row, with the
  action the client sent and the state version it expected (nothing lost);
- no (reviewer, passage, state version) appears twice in the log (nothing duplicated);
- the review_states cache equals a rebuild from the log.

Threads share accounts in pairs by default (``--accounts`` < ``--reviewers``), like one
reviewer with two browser tabs, so genuine conflicts (answered by a redirect to the unit
with the conflict banner) happen and are counted. "Done" on a unit with undecided
proposals or nothing coded is refused (400) by design and counted apart.

    .venv/bin/python benchmarks/review_load.py --reviewers 20 --seconds 30
    .venv/bin/python benchmarks/review_load.py --database-url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PASSWORD = "load-test-password"
CODES = [
    "01.use.frequency.daily",
    "01.use.frequency.weekly",
    "01.use.impact.influence",
    "01.use.information.usecase",
    "01.use.decisionmaking.selection",
]


@dataclass
class Tally:
    saved: list[tuple[str, str, int, str]] = field(default_factory=list)  # user, pid, ver, action
    conflicts: int = 0
    refused: int = 0  # "done" on a unit with undecided proposals or nothing coded: a 400
    other: Counter = field(default_factory=Counter)
    get_ms: list[float] = field(default_factory=list)
    post_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: int = 0  # threads logged in (or failed to)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(workspace: Path, database_url: str | None, accounts: int, transcripts: int):
    """Sample study, accounts r00.., every passage assigned (balanced)."""
    from qualflow.review import auth, queue
    from qualflow.review.sample import build_sample_study
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    settings = load_settings(workspace, database_url=database_url)
    store = open_store(settings)
    study = build_sample_study(store, transcripts=transcripts, answers_per_transcript=10)
    names = [f"r{i:02d}" for i in range(accounts)]
    for name in names:
        auth.add_user(store, name, PASSWORD)
    queue.assign(store, names, strategy="balanced")
    mine = {
        name: [i.passage_id for i in queue.items(store, auth.user_by_name(store, name))]
        for name in names
    }
    store.close()
    return settings, study, mine


def start_server(workspace: Path, database_url: str | None, workers: int) -> tuple:
    port = free_port()
    env = {**os.environ, "QUALFLOW_WORKSPACE": str(workspace)}
    if database_url:
        env["QUALFLOW_DATABASE_URL"] = database_url
    exe = Path(sys.executable).parent / "qualflow"
    cmd = [str(exe), "review", "--port", str(port), "--workers", str(workers)]
    log = (workspace / "server.log").open("wb")  # a file, so a full pipe never blocks it
    proc = subprocess.Popen([*cmd, "-w", str(workspace)], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/healthz", timeout=2)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (workspace / "server.log").read_text()
                raise RuntimeError("server did not start: " + text) from None
            time.sleep(0.3)


def field_of(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    if not m:
        raise ValueError(f"no {name} on page")
    return m.group(1)


def reviewer(
    url: str, name: str, passages: list[str], seconds: float, go, seed: int, tally: Tally
) -> None:
    try:
        work(url, name, passages, seconds, go, seed, tally)
    except Exception as exc:  # counted as a failure of the run, not swallowed
        with tally.lock:
            tally.other[f"{type(exc).__name__}: {exc}"] += 1
            tally.ready += 1


def work(
    url: str, name: str, passages: list[str], seconds: float, go, seed: int, tally: Tally
) -> None:
    """Log in (argon2 is slow on purpose, so before the clock starts), then work."""
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as c:
        for _ in range(60):  # 429 while the server checks other passwords: retry later
            page = c.get("/login").text
            r = c.post(
                "/login",
                data={"username": name, "password": PASSWORD, "csrf": field_of(page, "csrf")},
            )
            if r.status_code != 429:
                break
            time.sleep(float(r.headers.get("retry-after", "1")))
        if r.status_code != 303 or r.headers.get("location") != "/queue":
            raise RuntimeError(f"{name} could not log in: HTTP {r.status_code}")
        with tally.lock:
            tally.ready += 1
        go.wait()
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            pid = rng.choice(passages)
            t0 = time.perf_counter()
            page = c.get(f"/passages/{pid}")
            t1 = time.perf_counter()
            html = page.text
            version = int(field_of(html, "version"))
            proposals = list(dict.fromkeys(re.findall(r'name="proposal_id" value="(\d+)"', html)))
            data = {"csrf": field_of(html, "csrf"), "version": str(version)}
            choices = ["add", "flag", "memo", "done", "no_code"]
            choices += ["accept", "reject"] if proposals else []
            choices += [] if re.search(r'id="undo"[^>]*disabled', html) else ["undo"]
            action = rng.choice(choices)
            data["action"] = action
            if action in ("accept", "reject"):
                data["proposal_id"] = rng.choice(proposals)
            elif action == "add":
                data["code"] = rng.choice(CODES)
            elif action == "memo":
                data["memo"] = f"memo {rng.random():.6f}"
            t2 = time.perf_counter()
            resp = c.post(f"/passages/{pid}/decide", data=data, follow_redirects=False)
            t3 = time.perf_counter()
            with tally.lock:
                tally.get_ms.append((t1 - t0) * 1000)
                tally.post_ms.append((t3 - t2) * 1000)
                if resp.status_code == 303 and "conflict=" not in resp.headers["location"]:
                    tally.saved.append((name, pid, version + 1, action))
                elif resp.status_code == 409 or "conflict=" in resp.headers.get("location", ""):
                    tally.conflicts += 1
                elif resp.status_code == 400 and action == "done":
                    tally.refused += 1
                else:
                    tally.other[resp.status_code] += 1


def check(settings, tally: Tally) -> list[str]:
    """Compare the log with the clients' saved POSTs; returns problems (empty = good)."""
    from sqlalchemy import select

    from qualflow.db import DecisionRow, ReviewStateRow, UserRow
    from qualflow.review.decisions import rebuild_states
    from qualflow.store import open_store

    store = open_store(settings)
    problems = []
    with store.session() as s:
        names = dict(s.execute(select(UserRow.id, UserRow.username)).all())
        rows = [
            (names[r.user_id], r.passage_id, r.state_version, r.action)
            for r in s.scalars(select(DecisionRow))
        ]
        cache = sorted(
            (r.passage_id, r.user_id, r.version, tuple(r.codes), r.done, r.flagged)
            for r in s.scalars(select(ReviewStateRow))
        )
    keys = Counter((u, p, v) for u, p, v, _ in rows)
    dupes = [k for k, n in keys.items() if n > 1]
    if dupes:
        problems.append(f"{len(dupes)} duplicated (reviewer, passage, version) in the log")
    if sorted(rows) != sorted(tally.saved):
        lost = set(tally.saved) - set(rows)
        extra = set(rows) - set(tally.saved)
        problems.append(f"log != saved POSTs: {len(lost)} lost, {len(extra)} unexplained")
    rebuild_states(store)
    with store.session() as s:
        rebuilt = sorted(
            (r.passage_id, r.user_id, r.version, tuple(r.codes), r.done, r.flagged)
            for r in s.scalars(select(ReviewStateRow))
        )
    if rebuilt != cache:
        problems.append("review_states cache differs from a rebuild from the log")
    store.close()
    return problems


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reviewers", type=int, default=20, help="concurrent reviewer threads")
    ap.add_argument("--accounts", type=int, default=10, help="accounts the threads share")
    ap.add_argument("--seconds", type=float, default=30.0, help="how long they work")
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    ap.add_argument("--transcripts", type=int, default=20, help="x10 passages in the study")
    ap.add_argument("--spread", type=int, default=4, help="passages each thread works on")
    ap.add_argument("--database-url", default=None, help="store URL (default: SQLite file)")
    args = ap.parse_args(argv)

    workspace = Path(tempfile.mkdtemp(prefix="qualflow-review-load-"))
    try:
        settings, study, mine = prepare(
            workspace, args.database_url, args.accounts, args.transcripts
        )
        proc, url = start_server(workspace, args.database_url, args.workers)
        tally = Tally()
        try:
            names = sorted(mine)
            go = threading.Event()
            threads = [
                threading.Thread(
                    target=reviewer,
                    args=(
                        url,
                        names[i % len(names)],
                        mine[names[i % len(names)]][: args.spread],
                        args.seconds,
                        go,
                        i,
                        tally,
                    ),
                )
                for i in range(args.reviewers)
            ]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 300
            while tally.ready < args.reviewers and time.monotonic() < deadline:
                time.sleep(0.1)
            started = time.monotonic()
            go.set()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        problems = check(settings, tally)
        store_kind = "postgresql" if args.database_url else "sqlite (WAL)"
        posts = len(tally.post_ms)
        print(f"store: {store_kind}; server workers: {args.workers}")
        print(f"reviewer threads: {args.reviewers} on {args.accounts} accounts, {elapsed:.1f} s")
        print(f"passages in study: {len(study.passage_ids)}")
        print(f"decision POSTs: {posts} ({posts / elapsed:.1f}/s)")
        print(f"  saved (303): {len(tally.saved)}  conflicts (303 to the page): "
              f"{tally.conflicts}  refused done (400): {tally.refused}  "
              f"other: {dict(tally.other) or 0}")  # fmt: skip
        print(f"GET passage page latency ms: p50 {pct(tally.get_ms, 50):.1f}  "
              f"p95 {pct(tally.get_ms, 95):.1f}")  # fmt: skip
        print(f"POST decision latency ms:    p50 {pct(tally.post_ms, 50):.1f}  "
              f"p95 {pct(tally.post_ms, 95):.1f}")  # fmt: skip
        if problems or tally.other or not tally.saved:
            for p in problems:
                print("PROBLEM:", p)
            return 1
        print("check: every saved POST is exactly one decision row; none lost, none duplicated;")
        print("       review_states cache equals a rebuild from the log")
        return 0
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
