"""`qualflow users ...`, `qualflow assign` and `qualflow review` (a real server process)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from qualflow.cli import app
from qualflow.review import auth
from qualflow.review.sample import build_sample_study
from tests.review_support import free_port

runner = CliRunner()


def run(settings, *args: str, input: str | None = None):
    return runner.invoke(app, [*args, "--workspace", str(settings.workspace)], input=input)


def test_users_add_list_deactivate(settings, store):
    r = run(
        settings,
        "users",
        "add",
        "root",
        "--role",
        "admin",
        "--password-stdin",
        input="s3cret-pass\n",
    )
    assert r.exit_code == 0 and "created admin 'root'" in r.output
    r = run(settings, "users", "add", "ann", input="another-pass\nanother-pass\n")  # prompted
    assert r.exit_code == 0, r.output
    assert auth.authenticate(store, "root", "s3cret-pass") is not None
    assert auth.authenticate(store, "ann", "another-pass") is not None
    assert run(settings, "users", "list").output.splitlines() == [
        "ann\treviewer\tactive\t0 sessions",
        "root\tadmin\tactive\t0 sessions",
    ]
    r = run(settings, "users", "deactivate", "ann")
    assert r.exit_code == 0 and auth.authenticate(store, "ann", "another-pass") is None
    assert "ann\treviewer\tinactive" in run(settings, "users", "list").output
    assert run(settings, "users", "activate", "ann").exit_code == 0


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["users", "add", "x", "--role", "owner", "--password-stdin"], "long enough\n", "role"),
        (["users", "add", "x", "--password-stdin"], "short\n", "at least 8"),
        (["users", "deactivate", "nobody"], None, "no user 'nobody'"),
        (["users", "role", "nobody", "admin"], None, "no user 'nobody'"),
        (["users", "password", "nobody", "--password-stdin"], "long enough\n", "no user"),
        (["users", "logout", "nobody"], None, "no user 'nobody'"),
        (["users", "unlock", "nobody"], None, "no user 'nobody'"),
        (["users", "audit", "--event", "coffee"], None, "event 'coffee': must be one of"),
    ],
)
def test_user_commands_fail_clearly(settings, store, args, stdin, message):
    r = run(settings, *args, input=stdin)
    assert r.exit_code == 1 and message in r.output


def test_role_password_logout_and_unlock_commands_end_sessions_and_are_audited(settings, store):
    """Each account command ends the sessions it must, and `users audit` shows it all
    (never a password)."""
    from fastapi.testclient import TestClient

    from qualflow.review.app import create_app
    from tests.review_support import login

    for name, role in (("lead", "admin"), ("ann", "reviewer")):
        r = run(settings, "users", "add", name, "--role", role, "--password-stdin",
                input="first-password\n")  # fmt: skip
        assert r.exit_code == 0, r.output
    app = create_app(settings, store)

    def session() -> TestClient:
        c = TestClient(app)
        assert login(c, "ann", password).status_code == 303
        return c

    def alive(c: TestClient) -> bool:
        return c.get("/queue", follow_redirects=False).status_code == 200

    password = "first-password"
    c = session()
    assert "ann\treviewer\tactive\t1 sessions" in run(settings, "users", "list").output
    r = run(settings, "users", "role", "ann", "admin")
    assert r.exit_code == 0 and "now admin" in r.output and not alive(c)
    c = session()
    assert c.get("/admin").status_code == 200  # the new role applies to the new session
    r = run(settings, "users", "password", "ann", "--password-stdin", input="second-password\n")
    assert r.exit_code == 0 and not alive(c)
    password = "second-password"
    c = session()
    r = run(settings, "users", "logout", "ann")
    assert r.exit_code == 0 and "ended 1 session(s)" in r.output and not alive(c)

    for _ in range(5):
        login(TestClient(app), "ann", "not-the-password")
    assert login(TestClient(app), "ann", password).status_code == 429
    assert run(settings, "users", "unlock", "ann").exit_code == 0
    assert login(TestClient(app), "ann", password).status_code == 303

    out = run(settings, "users", "audit", "--limit", "100").output
    kinds = [line.split("\t")[1] for line in out.splitlines()]
    for kind in ("user_added", "login", "role_changed", "sessions_revoked", "password_changed",
                 "login_failed", "login_throttled", "unlocked"):  # fmt: skip
        assert kind in kinds, kind
    assert "reviewer -> admin" in out and "by cli:" in out
    for secret in ("first-password", "second-password", "not-the-password"):
        assert secret not in out
    only = run(settings, "users", "audit", "--user", "ann", "--event", "login_failed").output
    assert len(only.splitlines()) == 5 and "wrong password" in only


def test_duplicate_user_is_refused(settings, store):
    assert (
        run(settings, "users", "add", "ann", "--password-stdin", input="password-1\n").exit_code
        == 0
    )
    r = run(settings, "users", "add", "ann", "--password-stdin", input="password-2\n")
    assert r.exit_code == 1 and "already exists" in r.output


def test_assign_command(settings, store):
    build_sample_study(store)
    for name in ("a", "b"):
        run(settings, "users", "add", name, "--password-stdin", input="password-1\n")
    r = run(settings, "assign", "--reviewers", "a,b", "--double", "0.2", "--blind-machine")
    assert r.exit_code == 0, r.output
    assert "assigned 10 units: 12 assignments, 2 double-coded" in r.output
    r = run(settings, "assign", "--reviewers", "a,zed")
    assert r.exit_code == 1 and "unknown or inactive reviewers: zed" in r.output


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_review_command_serves_the_app(settings, store, workers):
    port = free_port()
    env = {**os.environ, "QUALFLOW_WORKSPACE": str(settings.workspace)}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "qualflow"), "review", "--port", str(port),
         "--workers", str(workers), "-w", str(settings.workspace)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.3)
        assert r.json() == {"ok": True}
        login = httpx.get(f"http://127.0.0.1:{port}/queue", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"].startswith("/login")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def unfrozen():
    """The garbage collector as a test process needs it (nothing frozen), before and
    after: frozen objects are never collected."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_review_command_freezes_start_up_objects_before_serving(
    settings, store, monkeypatch, unfrozen
):
    """A full collection otherwise walks everything start-up built on every few dozen
    requests (a pause of about 100 ms in the unit page's tail at scale)."""
    import uvicorn

    build_sample_study(store)
    served: list[int] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: served.append(gc.get_freeze_count()))
    r = run(settings, "review", "--port", str(free_port()))
    assert r.exit_code == 0, r.output
    assert len(served) == 1 and served[0] > 10_000


def test_worker_factory_freezes_start_up_objects(settings, store, monkeypatch, unfrozen):
    from qualflow.review.app import app_from_env

    build_sample_study(store)
    monkeypatch.setenv("QUALFLOW_WORKSPACE", str(settings.workspace))
    assert gc.get_freeze_count() == 0
    web = app_from_env()
    assert web.state.store is not None
    assert gc.get_freeze_count() > 10_000
    web.state.store.close()
