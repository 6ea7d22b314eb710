"""Review app at scale: queue page, unit page and "done, next" latency, server memory.

Builds a study of N units of review (chunks: an interviewer question as context and a
participant answer, 100 per transcript, with their sentence grid and one machine
proposal set each; the text is the invented sample interviews of
``qualflow.review.sample``) with bulk inserts, assigns every unit to three reviewers in
turn, starts ``qualflow review`` as its own process and measures, as one reviewer with
one browser (sequential requests):

- ``GET /queue`` (the first page; the new app also follows "next page" links), in the
  random audit order with a new seed each time, and the admin's queue (every unit),
- ``GET /passages/ID`` for random units of the reviewer's queue,
- "done, next": ``POST /passages/ID/decide`` (action done, go=next) on a unit whose
  reviewer said "no code applies" just before (that POST is not timed; the redirect's
  unit page is not followed: it is the unit page above),

and the server's resident memory (VmRSS) after start-up and at the end. Each size runs
in a fresh workspace; the server's start (which fills the queue table of a new store)
and the first queue page are timed separately. ``--done 0.5`` finishes half of the
reviewer's units first, from the front of the queue in its default order (a study
half-way through: the "to do" page then starts after the finished ones).

    .venv/bin/python benchmarks/review_scale.py --units 30000 100000
    .venv/bin/python benchmarks/review_scale.py --units 30000 100000 --done 0.5
    PYTHONPATH=/path/to/older/checkout/src .venv/bin/python benchmarks/review_scale.py ...

The last form measures another checkout of qualflow with the same script (the data
are written with table rows both versions have; ``--done`` writes the span-era columns
of the log and states).
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
import time
from pathlib import Path

import httpx

PASSWORD = "scale-benchmark-password"
REVIEWERS = ("ann", "bob", "cleo")
PER_TRANSCRIPT = 100


def build(workspace: Path, units: int, seed: int = 0, done: float = 0.0) -> dict:
    """Write the study with bulk inserts; returns what the measurement needs. ``done``:
    the share of the measured reviewer's units already finished ("no code applies",
    then done), taken from the front of their queue in its default order, the way a
    reviewer who works down the queue leaves it."""
    from sqlalchemy import insert

    from qualflow.db import (
        AssignmentRow,
        CodebookRow,
        CodeRow,
        PassageRow,
        ProposalRow,
        ProposalSetRow,
        RunRow,
        TranscriptRow,
        TurnRow,
        UserRow,
    )
    from qualflow.review.auth import hash_password
    from qualflow.review.sample import sample_codebook
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    rng = random.Random(seed)
    settings = load_settings(workspace)
    store = open_store(settings)
    book = sample_codebook()
    version = book.version
    password = hash_password(PASSWORD)
    with store.session() as s:
        s.execute(insert(CodebookRow), [{"version": version, "name": book.name, "source": ""}])
        s.execute(
            insert(CodeRow),
            [
                {"codebook_version": version, "position": i, "title": c.title,
                 "description": c.description, "inclusion": "", "exclusion": "",
                 "examples": []}
                for i, c in enumerate(book.codes)
            ],
        )  # fmt: skip
        s.add(RunRow(id=1, coder="llm", model="bench", codebook_version=version, status="done"))
        s.add(UserRow(id=1, username="admin", password_hash=password, role="admin"))
        for k, name in enumerate(REVIEWERS, start=2):
            s.add(UserRow(id=k, username=name, password_hash=password, role="reviewer"))
    unit_ids: list[str] = []
    ranks: dict[str, tuple] = {}  # unit -> its key in the default (confidence) order
    set_id = 0
    for t in range(0, units, PER_TRANSCRIPT):
        rows = _transcript(t // PER_TRANSCRIPT, min(PER_TRANSCRIPT, units - t))
        tid = rows["transcript"]["id"]
        sets, props = [], []
        for unit in rows["units"]:
            set_id += 1
            needs = rng.random() < 0.1
            sets.append(
                {"id": set_id, "run_id": 1, "passage_id": unit["id"], "coder": "llm",
                 "model": "bench", "prompt_version": "p", "codebook_version": version,
                 "status": "needs_human" if needs else "ok",
                 "reason": "bench" if needs else None}
            )  # fmt: skip
            found = unit.pop("_proposals")
            confidences = []
            for code, (start, end) in found:
                confidences.append(round(rng.uniform(0.3, 0.97), 2))
                props.append(
                    {"set_id": set_id, "passage_id": unit["id"], "code": code,
                     "rationale": "benchmark", "evidence": "", "start": start, "end": end,
                     "evidence_start": start, "evidence_end": end,
                     "confidence": confidences[-1], "located": "exact"}
                )  # fmt: skip
            rank = -1.0 if needs else min(confidences, default=2.0)
            ranks[unit["id"]] = (rank, rows["transcript"]["name"], unit["index"], unit["id"])
            unit_ids.append(unit["id"])
        with store.session() as s:
            s.execute(insert(TranscriptRow), [rows["transcript"]])
            s.execute(insert(TurnRow), [{"transcript_id": tid, **r} for r in rows["turns"]])
            s.execute(insert(PassageRow), rows["units"])
            s.execute(insert(PassageRow), rows["sentences"])
            s.execute(insert(ProposalSetRow), sets)
            s.execute(insert(ProposalRow), props)
    with store.session() as s:
        s.execute(
            insert(AssignmentRow),
            [
                {"passage_id": pid, "user_id": 2 + i % len(REVIEWERS)}
                for i, pid in enumerate(unit_ids)
            ],
        )
    mine = unit_ids[0 :: len(REVIEWERS)]
    finished = sorted(mine, key=ranks.__getitem__)[: round(done * len(mine))]
    if finished:
        _finish(store, finished, user_id=2)
    store.close()
    left = set(mine) - set(finished)
    return {"settings": settings, "mine": mine, "pending": [u for u in mine if u in left]}


def _finish(store, unit_ids: list[str], user_id: int) -> None:
    """The log and the derived states of units finished as "no code applies" (the rows
    ``decisions.decide`` writes for those two actions)."""
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from qualflow.db import DecisionRow, ReviewStateRow

    now = datetime.now(UTC)
    for i in range(0, len(unit_ids), 5000):
        part = unit_ids[i : i + 5000]
        log = [
            {"passage_id": pid, "user_id": user_id, "track_user_id": user_id,
             "action": action, "code": None, "before": [], "after": [], "spans": [],
             "memo": None, "state_version": version, "created_at": now}
            for pid in part
            for version, action in ((1, "no_code"), (2, "done"))
        ]  # fmt: skip
        states = [
            {"passage_id": pid, "user_id": user_id, "version": 2, "codes": [], "spans": [],
             "done": True, "flagged": False, "memo": None, "no_code": True,
             "proposal_status": {}, "updated_at": now}
            for pid in part
        ]  # fmt: skip
        with store.session() as s:
            s.execute(insert(DecisionRow), log)
            s.execute(insert(ReviewStateRow), states)


def _transcript(t: int, n: int) -> dict:
    """Rows of one invented transcript: n question-answer chunks and their sentences."""
    from qualflow.models import short_hash
    from qualflow.review.sample import ANSWERS, QUESTIONS

    name = f"bench-{t:05d}"
    content_hash = short_hash(name, "bench", length=64)
    tid = f"{name}@{content_hash[:12]}"
    text, turns, units, sentences = "", [], [], []
    for i in range(n):
        answer, coded = ANSWERS[(t * 7 + i) % len(ANSWERS)]
        pieces = []
        for speaker, body, codable in (
            ("Interviewer", QUESTIONS[i % len(QUESTIONS)], False),
            ("P", answer, True),
        ):
            start = len(text) + (2 if text else 0)
            text = f"{text}\n\n{body}" if text else body
            turns.append({"index": len(turns), "speaker": speaker, "text": body,
                          "char_start": start, "char_end": len(text)})  # fmt: skip
            pieces.append([len(turns) - 1, speaker, start, len(text), codable])
            for a, b in _sentences(body):
                sentences.append(
                    {"id": short_hash(content_hash, "sentence", start + a, start + b),
                     "transcript_id": tid, "segmentation": "sentence",
                     "index": len(sentences), "turn_index": len(turns) - 1,
                     "speaker": speaker, "char_start": start + a, "char_end": start + b,
                     "text": body[a:b], "codable": codable}
                )  # fmt: skip
        q, a_ = pieces
        proposals = []
        for code, evidence, _ in coded:
            at = answer.find(evidence)
            if at >= 0:
                proposals.append((code, (a_[2] + at, a_[2] + at + len(evidence))))
        units.append(
            {"id": short_hash(content_hash, "chunk:200", q[2], a_[3]), "transcript_id": tid,
             "segmentation": "chunk:200", "index": i, "turn_index": q[0], "turn_end": a_[0],
             "speaker": "P", "char_start": q[2], "char_end": a_[3],
             "text": text[q[2] : a_[3]], "codable": True, "pieces": pieces,
             "_proposals": proposals}
        )  # fmt: skip
    transcript = {
        "id": tid, "name": name, "version": 1, "is_current": True,
        "source_path": f"bench/{name}.txt", "content_hash": content_hash, "format": "txt",
        "text": text, "participant_id": f"P{t % 40}", "meta": {},
    }  # fmt: skip
    return {"transcript": transcript, "turns": turns, "units": units, "sentences": sentences}


def _sentences(body: str) -> list[tuple[int, int]]:
    out, start = [], 0
    for m in re.finditer(r"[.!?](\s+|$)", body):
        out.append((start, m.start() + 1))
        start = m.end()
    if start < len(body):
        out.append((start, len(body)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workspace: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "QUALFLOW_WORKSPACE": str(workspace)}
    cmd = [sys.executable, "-m", "qualflow", "review", "--port", str(port), "-w", str(workspace)]
    log = (workspace / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(url + "/healthz", timeout=2)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (workspace / "server.log").read_text()
                raise RuntimeError("server did not start: " + text) from None
            time.sleep(0.3)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def field_of(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    if not found:
        raise ValueError(f"no {name} on the page")
    return found.group(1)


def log_in(c: httpx.Client, name: str = "ann") -> None:
    page = c.get("/login").text
    data = {"username": name, "password": PASSWORD, "csrf": field_of(page, "csrf")}
    r = c.post("/login", data=data)
    if r.status_code != 303:
        raise RuntimeError(f"login failed: HTTP {r.status_code}")


def timed(fn, *args, **kwargs) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    r = fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1000, r


def measure(url: str, mine: list[str], pending: list[str], requests: int, seed: int) -> dict:
    rng = random.Random(seed)
    out: dict[str, list[float]] = {
        "queue": [], "page2": [], "random": [], "admin": [], "unit": [], "done_next": []
    }  # fmt: skip
    with httpx.Client(base_url=url, timeout=600) as c:
        log_in(c)
        first, r = timed(c.get, "/queue")
        if r.status_code != 200:
            raise RuntimeError(f"queue: HTTP {r.status_code}")
        for _ in range(requests):
            ms, r = timed(c.get, "/queue")
            out["queue"].append(ms)
            nxt = re.search(r'id="next-page" href="([^"]+)"', r.text)
            if nxt:
                ms, _ = timed(c.get, nxt.group(1).replace("&amp;", "&"))
                out["page2"].append(ms)
        for k in range(requests):
            ms, r = timed(c.get, f"/queue?order=random&seed={k + 1}")
            out["random"].append(ms)
        with httpx.Client(base_url=url, timeout=600) as admin:
            log_in(admin, "admin")
            admin.get("/queue")
            for _ in range(requests):
                ms, r = timed(admin.get, "/queue")
                out["admin"].append(ms)
        for pid in rng.sample(mine, requests):
            ms, r = timed(c.get, f"/passages/{pid}")
            if r.status_code != 200:
                raise RuntimeError(f"unit page: HTTP {r.status_code}")
            out["unit"].append(ms)
        for pid in rng.sample(pending, requests):
            page = c.get(f"/passages/{pid}").text
            data = {"csrf": field_of(page, "csrf"), "version": field_of(page, "version")}
            r = c.post(
                f"/passages/{pid}/decide",
                data={**data, "action": "no_code"},
                follow_redirects=True,
            )
            page = r.text
            data = {"csrf": field_of(page, "csrf"), "version": field_of(page, "version")}
            ms, r = timed(
                c.post,
                f"/passages/{pid}/decide",
                data={**data, "action": "done", "go": "next"},
                follow_redirects=False,
            )
            if r.status_code != 303:
                raise RuntimeError(f"done, next: HTTP {r.status_code}")
            out["done_next"].append(ms)
    return {"first_queue_ms": first, **out}


def pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run_size(units: int, requests: int, keep: bool, done: float = 0.0) -> dict:
    workspace = Path(tempfile.mkdtemp(prefix=f"qualflow-review-scale-{units}-"))
    try:
        t0 = time.perf_counter()
        built = build(workspace, units, done=done)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        proc, url = start_server(workspace)
        start_s = time.perf_counter() - t0
        try:
            rss_start = rss_mib(proc.pid)
            figures = measure(url, built["mine"], built["pending"], requests, seed=units)
            rss_end = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        return {"units": units, "build_s": build_s, "start_s": start_s,
                "rss_start": rss_start, "rss_end": rss_end, **figures}  # fmt: skip
    finally:
        if not keep:
            shutil.rmtree(workspace, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, nargs="+", default=[30_000, 100_000])
    ap.add_argument("--requests", type=int, default=40, help="timed requests of each kind")
    ap.add_argument("--keep", action="store_true", help="keep the workspaces")
    ap.add_argument(
        "--done",
        type=float,
        default=0.0,
        help="share of the reviewer's units finished before the server starts, from the "
        "front of the queue (0.5: half-way through the study)",
    )
    args = ap.parse_args(argv)
    import qualflow

    print(f"qualflow from {Path(qualflow.__file__).parent}")
    print(f"{args.requests} timed requests of each kind, one reviewer (ann, 1/3 of the units)")
    if not 0 <= args.done < 1:
        ap.error("--done must be at least 0 and below 1")
    if args.done:
        print(f"{args.done:.0%} of ann's units finished first, from the front of the queue")
    for units in args.units:
        r = run_size(units, args.requests, args.keep, args.done)
        print(f"\nunits {r['units']:,} (built in {r['build_s']:.0f} s)")
        print(
            f"  server start: {r['start_s']:.1f} s; first queue page: {r['first_queue_ms']:.0f} ms"
        )
        labels = (
            ("queue", "queue page"),
            ("page2", "queue, next page"),
            ("random", "queue, random order"),
            ("admin", "admin's queue page"),
            ("unit", "unit page"),
            ("done_next", "done, next"),
        )
        for key, label in labels:
            values = r[key]
            if values:
                print(
                    f"  {label:<20} p50 {pct(values, 50):7.1f} ms   p95 {pct(values, 95):7.1f} ms"
                )
        start, end = r["rss_start"], r["rss_end"]
        print(f"  server RSS: {start:.0f} MiB after start-up, {end:.0f} MiB at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
