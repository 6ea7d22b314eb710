"""Password guessing against the review app, and what it does to reviewers' pages.

Starts ``qualflow review`` (a separate uvicorn process) on a fresh workspace with a
sample study, logs in one reviewer, and measures that reviewer's ``GET /queue`` latency:

1. idle (nobody guessing);
2. ``--guessers`` threads guessing one account's password from one address;
3. the same threads guessing many different names from one address (a spray);
4. a spray from a different address for every guess (what throttling per account and
   per address cannot stop; it shows the cost of unthrottled password checks).

A third of the way into each phase another reviewer logs in (trying again a second
later when told the server is busy) and the time it takes is printed.

Each phase runs ``--seconds``. Guessers take a fresh login form (CSRF cookie) for every
guess, like a browser. Addresses come from ``X-Forwarded-For``, which uvicorn trusts
from 127.0.0.1 only (its ``--forwarded-allow-ips`` default). At the end the attacked
account's right password is tried. Every figure is printed; nothing is timed in tests.

    .venv/bin/python benchmarks/login_throttle.py --guessers 8 --seconds 15
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from review_load import field_of, start_server  # a sibling script

PASSWORD = "load-test-password"


def prepare(workspace: Path) -> None:
    from qualflow.review import auth, queue
    from qualflow.review.sample import build_sample_study
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    store = open_store(load_settings(workspace))
    build_sample_study(store, transcripts=4, answers_per_transcript=10)
    for name in ("reader", "latecomer", "victim"):
        auth.add_user(store, name, PASSWORD)
    queue.assign(store, ["reader", "victim"], strategy="balanced")
    store.close()


def log_in(c: httpx.Client, name: str, password: str, address: str) -> str:
    """One login attempt: "ok", "wrong" (401), "throttled" or "busy" (both 429)."""
    headers = {"X-Forwarded-For": address}
    page = c.get("/login", headers=headers).text
    data = {"username": name, "password": password, "csrf": field_of(page, "csrf")}
    r = c.post("/login", data=data, headers=headers)
    if r.status_code == 429:
        return "busy" if "busy" in r.text else "throttled"
    return {303: "ok", 401: "wrong"}.get(r.status_code, f"HTTP {r.status_code}")


def log_in_patiently(c: httpx.Client, name: str, address: str) -> str:
    """A person logging in: when the server is busy, try again a second later."""
    for _ in range(60):
        outcome = log_in(c, name, PASSWORD, address)
        if outcome != "busy":
            return outcome
        time.sleep(1)
    return outcome


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def measure_reader(url: str, ready: threading.Event, stop: threading.Event, out: list) -> None:
    """A reviewer at work (logged in before the guessing starts) opening the queue."""
    with httpx.Client(base_url=url, timeout=60) as c:
        outcome = log_in_patiently(c, "reader", "10.9.9.9")
        if outcome != "ok":
            raise RuntimeError(f"reader could not log in: {outcome}")
        ready.set()
        while not stop.is_set():
            t0 = time.perf_counter()
            r = c.get("/queue")
            out.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"reader got HTTP {r.status_code}")
            time.sleep(0.05)


def guess(url: str, names, addresses, stop: threading.Event, tally: Counter, lock) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            with lock:
                name, address = next(names), next(addresses)
            outcome = log_in(c, name, "not-the-password", address)
            with lock:
                tally[outcome] += 1


def phase(url: str, label: str, seconds: float, guessers: int, names, addresses) -> dict:
    ready, stop, lock = threading.Event(), threading.Event(), threading.Lock()
    latencies: list[float] = []
    tally: Counter = Counter()
    reader = threading.Thread(target=measure_reader, args=(url, ready, stop, latencies))
    reader.start()
    if not ready.wait(120):
        raise RuntimeError(f"{label}: the reviewer could not log in")
    threads = [
        threading.Thread(target=guess, args=(url, names, addresses, stop, tally, lock))
        for _ in range(guessers if names else 0)
    ]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    time.sleep(seconds / 3)
    with httpx.Client(base_url=url, timeout=60) as c:  # a reviewer arriving meanwhile
        t1 = time.perf_counter()
        late = log_in_patiently(c, "latecomer", "10.8.8.8")
        late_s = time.perf_counter() - t1
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    stop.set()
    for t in [*threads, reader]:
        t.join()
    if seconds and not latencies:
        raise RuntimeError(f"{label}: the reviewer got no page")
    return {
        "phase": label,
        "checked": tally["wrong"],
        "throttled": tally["throttled"],
        "busy": tally["busy"],
        "other": sum(v for k, v in tally.items() if k not in ("wrong", "throttled", "busy")),
        "checked_per_s": tally["wrong"] / seconds,
        "late": f"{late} in {late_s:.1f} s",
        "p50": pct(latencies, 50),
        "p95": pct(latencies, 95),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guessers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        prepare(workspace)
        proc, url = start_server(workspace, None, 1)
        try:
            g, s = args.guessers, args.seconds
            rows = [
                phase(url, "idle", s, 0, None, None),
                phase(
                    url,
                    "one account, one address",
                    s,
                    g,
                    itertools.repeat("victim"),
                    itertools.repeat("10.0.0.1"),
                ),
            ]
            with httpx.Client(base_url=url, timeout=60) as c:
                right = log_in_patiently(c, "victim", "10.0.0.3")
            rows += [
                phase(url, "many names, one address", s, g,
                      (f"name{i}" for i in itertools.count()), itertools.repeat("10.0.0.2")),
                phase(url, "many names, many addresses", s, g,
                      (f"spray{i}" for i in itertools.count()),
                      (f"10.1.{i // 250}.{i % 250}" for i in itertools.count())),
            ]  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"{args.guessers} guessers, {args.seconds:.0f} s per phase, 1 server process")
    print("| phase | passwords checked (401) | throttled (429) | busy (429) | other "
          "| checked/s | reviewer GET /queue p50 / p95 ms "
          "| another reviewer's login |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['phase']} | {r['checked']} | {r['throttled']} | {r['busy']} "
              f"| {r['other']} | {r['checked_per_s']:.1f} "
              f"| {r['p50']:.0f} / {r['p95']:.0f} | {r['late']} |")  # fmt: skip
    print(f"right password of the attacked account right after phase 2: {right}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
