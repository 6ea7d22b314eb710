"""Child processes never outlive qualflow (real processes): the death signal, the
parent watch, pid files in the workspace and the reaping of leftovers, and a SIGKILL
of ``qualflow run`` / ``qualflow code`` with the embedded model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.coders_fixture import small_codebook, write_transcript_file
from tests.conftest import REPO

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
pytestmark = [linux_only]

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUALFLOW_", "PREFECT_API"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    env.update(extra)
    return env


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (test-side check, independent of the code under test)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat[stat.rfind(")") + 2 :].startswith("Z")


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """The pids still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if running(p)}
        time.sleep(0.1)
    return alive


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------- death signal


def test_child_started_with_die_with_parent_dies_with_a_killed_parent():
    script = textwrap.dedent(
        f"""
        import subprocess, time
        from qualflow import processes
        child = subprocess.Popen({SLEEPER!r}, preexec_fn=processes.die_with_parent())
        print(child.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], env=_env(), stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    try:
        assert running(child)
        parent.kill()
        parent.wait()
        assert wait_gone({child}, 5) == set()
    finally:
        kill_all({child})


# ---------------------------------------------------------------------- parent watch


def test_watching_child_stops_when_its_parent_is_killed(tmp_path: Path):
    child_script = textwrap.dedent(
        """
        import os, sys, time
        from qualflow import processes
        processes.watch_parent(int(sys.argv[1]), interval=0.2)
        time.sleep(600)
        """
    )
    parent_script = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {child_script!r}, str(os.getpid())])
        print(child.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_script], env=_env(), stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    try:
        time.sleep(1.0)
        assert running(child)
        parent.kill()
        parent.wait()
        assert wait_gone({child}, 10) == set()
    finally:
        kill_all({child})


def test_watch_from_env_stops_a_child_whose_parent_is_already_gone():
    """Started after its parent died (reparented): stops at once."""
    script = textwrap.dedent(
        """
        import os, time
        from qualflow import processes
        os.environ[processes.PARENT_ENV] = "999999999"
        processes.watch_parent_from_env()
        time.sleep(30)
        """
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], env=_env(), timeout=60)
    assert done.returncode == -signal.SIGTERM and time.monotonic() - started < 20


# ---------------------------------------------------------------------- pid files


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftover_of_a_dead_owner_is_ended_and_its_record_removed(tmp_path: Path):
    from qualflow import processes

    sleeper = subprocess.Popen(SLEEPER)
    try:
        record = processes.register(tmp_path, "llama-server", sleeper.pid, owner=_dead_pid())
        assert record is not None and json.loads(record.read_text())["start"]
        ended = processes.reap_leftovers(tmp_path, grace=2)
        assert [r["pid"] for r in ended] == [sleeper.pid]
        assert sleeper.wait(timeout=5) is not None
        assert not record.exists()
    finally:
        sleeper.kill()


def test_process_of_a_live_owner_is_left_alone(tmp_path: Path):
    from qualflow import processes

    sleeper = subprocess.Popen(SLEEPER)
    owner = subprocess.Popen(SLEEPER)
    try:
        processes.register(tmp_path, "flow-run", sleeper.pid, owner=owner.pid)
        assert processes.reap_leftovers(tmp_path, grace=1) == []
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        owner.kill()


def test_a_reused_pid_is_never_hit(tmp_path: Path):
    from qualflow import processes

    """The record's start time no longer matches: the record goes, the process stays."""
    sleeper = subprocess.Popen(SLEEPER)
    try:
        path = processes.register(tmp_path, "llama-server", sleeper.pid, owner=_dead_pid())
        record = json.loads(path.read_text())
        record["start"] = str(int(record["start"]) - 12345)
        path.write_text(json.dumps(record))
        assert processes.reap_leftovers(tmp_path, grace=1) == []
        assert sleeper.poll() is None and not path.exists()
    finally:
        sleeper.kill()


def test_next_qualflow_code_ends_a_leftover_of_its_workspace(tmp_path: Path):
    from typer.testing import CliRunner

    from qualflow import processes
    from qualflow.cli import app

    ws = tmp_path / "ws"
    assert CliRunner().invoke(app, ["init", str(ws)]).exit_code == 0
    sleeper = subprocess.Popen(SLEEPER)
    try:
        processes.register(
            ws / "data" / "processes", "llama-server", sleeper.pid, owner=_dead_pid()
        )
        result = CliRunner().invoke(app, ["code", "-w", str(ws), "--coder", "similarity"])
        assert result.exit_code == 0, result.output
        assert "ended a left-over llama-server process" in result.output
        assert sleeper.wait(timeout=10) is not None
    finally:
        sleeper.kill()


# ---------------------------------------------------------------------- SIGKILL of the CLI


@pytest.mark.slow
def test_sigkill_of_qualflow_run_leaves_no_process_behind(tmp_path: Path):
    """``qualflow run`` with no PREFECT_API_URL: Prefect's temporary API server used to
    be a separate process that a SIGKILL left running for good."""
    ws = tmp_path / "ws"
    from typer.testing import CliRunner

    from qualflow.cli import app

    assert CliRunner().invoke(app, ["init", str(ws)]).exit_code == 0
    for name in ("alpha", "beta", "gamma"):
        write_transcript_file(ws / "inbox", name, n_turns=12)
    import yaml

    book = small_codebook()
    codes = [{"title": c.title, "description": c.description} for c in book.codes]
    (ws / "book.yaml").write_text(yaml.safe_dump({"name": book.name, "codes": codes}))
    env = _env(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        QF_TEST_DELAY="0.5",
        QF_TEST_CALL_LOG=str(tmp_path / "calls.jsonl"),
        QUALFLOW_RETRIEVAL_K="0",
    )
    cmd = [sys.executable, "-c", "from qualflow.cli import main; main()", "run",
           "--inbox", str(ws / "inbox"), "--coder", "tests.coders_fixture:scripted_coder",
           "--codebook", str(ws / "book.yaml"), "--batch-size", "1", "-w", str(ws)]  # fmt: skip
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    below: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        calls = tmp_path / "calls.jsonl"
        while not (calls.exists() and len(calls.read_text().splitlines()) >= 2):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run coded nothing"
            time.sleep(0.2)
        below = descendants(proc.pid)
        proc.kill()
        proc.wait(timeout=30)
        assert wait_gone(below, 10) == set(), f"left running: {below}"
    finally:
        log.close()
        kill_all(below | {proc.pid})


@pytest.mark.slow
@pytest.mark.llm
def test_sigkill_of_qualflow_code_ends_the_embedded_model_at_once(tmp_path: Path):
    """SIGKILL while the llama.cpp server generates: it goes with qualflow (a SIGTERM
    let it finish the generation, about a minute of CPU)."""
    from qualflow.local_llm import LocalLLMError, find_model

    try:
        find_model()
    except LocalLLMError as exc:
        pytest.skip(f"embedded model not available: {exc}")
    from typer.testing import CliRunner

    from qualflow.cli import app

    ws = tmp_path / "ws"
    assert CliRunner().invoke(app, ["init", str(ws)]).exit_code == 0
    write_transcript_file(ws / "inbox", "alpha", n_turns=6)
    cmd = [sys.executable, "-c", "from qualflow.cli import main; main()", "code",
           "--inbox", str(ws / "inbox"), "-w", str(ws)]  # fmt: skip
    log = (tmp_path / "code.log").open("w")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(QUALFLOW_RETRIEVAL_K="5"), stdout=log, stderr=subprocess.STDOUT
    )
    below: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while not (below := {p for p in descendants(proc.pid) if "llama_cpp" in _cmdline(p)}):
            assert proc.poll() is None, (tmp_path / "code.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the embedded model did not start"
            time.sleep(0.5)
        time.sleep(15)  # loaded, healthy, and the first request in flight (25-60 s each)
        proc.kill()
        proc.wait(timeout=30)
        assert wait_gone(below, 5) == set(), "the llama.cpp server outlived qualflow"
    finally:
        log.close()
        kill_all(below | {proc.pid})
