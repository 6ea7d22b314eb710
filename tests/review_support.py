"""Helpers shared by the review app's tests: a sample study, logins, a live server."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

PASSWORD = "correct horse 1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Study:
    settings: object
    store: object
    passage_ids: list[str]
    run_id: int


def make_study(settings, store, *, transcripts: int = 2, answers: int = 5) -> Study:
    """Sample study with users admin (admin), ann and bob (reviewers), carl (unassigned)."""
    from qualflow.db import UserRow
    from qualflow.review.sample import build_sample_study

    study = build_sample_study(store, transcripts=transcripts, answers_per_transcript=answers)
    with store.session() as s:  # one real argon2 hash, reused: hashing is slow on purpose
        for name, role in (("admin", "admin"), ("ann", "reviewer"), ("bob", "reviewer")):
            s.add(UserRow(username=name, password_hash=password_hash(), role=role))
        s.add(UserRow(username="carl", password_hash=password_hash(), role="reviewer"))
    return Study(settings, store, study.passage_ids, study.run_id)


_hash: list[str] = []


def password_hash() -> str:
    from qualflow.review.auth import hash_password

    if not _hash:
        _hash.append(hash_password(PASSWORD))
    return _hash[0]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no csrf field on the page"
    return found.group(1)


def version_of(html: str) -> int:
    found = re.search(r'name="version" value="(\d+)"', html)
    assert found, "no version field on the page"
    return int(found.group(1))


def proposal_ids(html: str) -> list[int]:
    return [int(x) for x in dict.fromkeys(re.findall(r'name="proposal_id" value="(\d+)"', html))]


def login(client, username: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf": csrf_of(page.text)},
        follow_redirects=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app) -> Iterator[str]:
    """The real app under uvicorn on a free loopback port, in a thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("review server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
