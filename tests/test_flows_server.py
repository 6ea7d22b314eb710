"""qualflow against real Prefect servers, in subprocesses: ``qualflow run`` against a
``prefect server start`` on loopback (the scale-out set-up), and ``qualflow serve``
with its own in-process server (the one-machine set-up), stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

os.environ["PREFECT_HOME"] = os.environ.get("PREFECT_HOME") or tempfile.mkdtemp(
    prefix="qualflow-test-prefect-"
)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from tests.coders_fixture import small_codebook, write_transcript_file
from tests.conftest import REPO

pytestmark = pytest.mark.slow
QUALFLOW = [sys.executable, "-c", "from qualflow.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no Prefect API at {url}: {log.read_text()[-3000:]}")


@contextmanager
def started(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> Iterator[subprocess.Popen]:
    """A subprocess in its own group, stopped (SIGTERM, then SIGKILL) on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]),
        QUALFLOW_RETRIEVAL_K="0",
    )
    return env


@contextmanager
def client_for(url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        yield client


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    from typer.testing import CliRunner

    from qualflow.cli import app

    ws = tmp_path / "ws"
    assert CliRunner().invoke(app, ["init", str(ws)]).exit_code == 0
    write_transcript_file(ws / "inbox", "alpha")
    book = small_codebook()
    codes = [{"title": c.title, "description": c.description} for c in book.codes]
    (ws / "book.yaml").write_text(yaml.safe_dump({"name": book.name, "codes": codes}))
    return ws


@pytest.fixture(scope="module")
def real_server(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """``prefect server start`` on a free loopback port (its own PREFECT_HOME)."""
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = base_env(tmp)
    cmd = [sys.executable, "-m", "prefect", "server", "start",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with started(cmd, env, tmp / "server.log") as server:
        wait_healthy(url, server, tmp / "server.log")
        yield url, {**env, "PREFECT_API_URL": url}


def test_run_against_a_real_prefect_server(real_server, tmp_path: Path, workspace: Path):
    url, env = real_server
    run = subprocess.run(
        [*QUALFLOW, "run", "--inbox", str(workspace / "inbox"), "-w", str(workspace),
         "--coder", "tests.coders_fixture:scripted_coder",
         "--codebook", str(workspace / "book.yaml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Starting temporary server" not in run.stdout + run.stderr
    with client_for(url) as client:
        runs = client.read_flow_runs()
        artifacts = client.read_artifacts()
    completed = [r for r in runs if r.state and r.state.is_completed()]
    assert any(r.parameters.get("workspace") == str(workspace) for r in completed)
    assert any(a.key == "qualflow-coding-run" and "Coded by this run" in a.data for a in artifacts)


def test_prefect_yaml_deploys_to_a_work_pool_and_a_worker_runs_it(
    real_server, tmp_path: Path, workspace: Path
):
    """The scale-out path: `prefect deploy --all` from prefect.yaml, a process worker."""
    url, env = real_server
    env = {**env, "QUALFLOW_CHECKOUT": str(REPO)}

    def prefect(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    prefect("work-pool", "create", "qualflow", "--type", "process", "--overwrite")
    prefect("deploy", "--all")
    prefect(
        "deployment", "run", "code-transcripts/nightly-coding",
        "--param", f"workspace={workspace}", "--param", f"inbox={workspace / 'inbox'}",
        "--param", "coder=tests.coders_fixture:scripted_coder",
        "--param", f"codebook={workspace / 'book.yaml'}",
    )  # fmt: skip
    prefect("worker", "start", "--pool", "qualflow", "--run-once", timeout=300)
    with client_for(url) as client:
        deployments = {d.name for d in client.read_deployments()}
        runs = [r for r in client.read_flow_runs() if r.deployment_id is not None]
    assert {"nightly-coding", "morning-report"} <= deployments
    (run,) = [r for r in runs if r.parameters.get("workspace") == str(workspace)]
    assert run.state.is_completed(), run.state
    from qualflow.pipeline import unit_segmentation
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    settings = load_settings(workspace)
    store = open_store(settings)
    try:  # the flow codes the units `qualflow code` codes: chunks
        units = store.passages(segmentation=unit_segmentation(settings), codable_only=True)
        assert len(store.proposal_sets()) == len(units) > 0
    finally:
        store.close()


def test_serve_registers_both_deployments_with_schedules_and_stops_on_sigterm(
    tmp_path: Path, workspace: Path
):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**base_env(tmp_path), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    log = tmp_path / "serve.log"
    cmd = [*QUALFLOW, "serve", "-w", str(workspace), "--port", str(port)]
    # Started from the workspace, not the checkout: served runs must still find the flows.
    with started(cmd, env, log, cwd=workspace) as proc:
        wait_healthy(url, proc, log)
        deadline = time.monotonic() + 120
        found: dict[str, int] = {}
        while time.monotonic() < deadline:
            found = scheduled_runs(url)
            if len(found) == 2 and all(found.values()):
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        assert found == {"nightly-coding": found.get("nightly-coding"),
                         "morning-report": found.get("morning-report")}  # fmt: skip
        assert all(n > 0 for n in found.values()), found
        with client_for(url) as client:
            deployments = {d.name: d for d in client.read_deployments()}
        assert deployments["nightly-coding"].parameters["workspace"] == str(workspace)
        assert deployments["morning-report"].schedules[0].schedule.cron == "0 6 * * *"
        state = run_now(url, deployments["nightly-coding"].id, workspace)
        assert state.is_completed(), (state, log.read_text()[-3000:])
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert "qualflow serve stopped." in log.read_text()


def run_now(url: str, deployment_id, workspace: Path, timeout: float = 180):
    """Ask the served deployment for a run now and wait for its final state."""
    with client_for(url) as client:
        run = client.create_flow_run_from_deployment(
            deployment_id,
            parameters={
                "inbox": str(workspace / "inbox"),
                "coder": "tests.coders_fixture:scripted_coder",
                "codebook": str(workspace / "book.yaml"),
            },
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                return state
            time.sleep(1)
    raise AssertionError(f"served run {run.id} did not finish in {timeout} s")


def scheduled_runs(url: str) -> dict[str, int]:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    out = {}
    with client_for(url) as client:
        for d in client.read_deployments():
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                    )
                ),
            )
            out[d.name] = len(runs)
    return out


# ---------------------------------------------------------------------- serve killed or stopped


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(")") + 2 :].split()[1]), []).append(
                int(entry.name)
            )
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat[stat.rfind(")") + 2 :].startswith("Z")


@contextmanager
def serving_a_slow_run(tmp_path: Path, workspace: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``qualflow serve`` with a coding run in flight (1 s per passage, one at a time)."""
    for name in ("beta", "gamma", "delta"):
        write_transcript_file(workspace / "inbox", name, n_turns=12)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    calls = tmp_path / "calls.jsonl"
    env = {
        **base_env(tmp_path),
        "QF_TEST_DELAY": "1.0",
        "QF_TEST_CALL_LOG": str(calls),
        "QUALFLOW_LLM_CONCURRENCY": "1",
    }
    log = tmp_path / "serve.log"
    cmd = [*QUALFLOW, "serve", "-w", str(workspace), "--port", str(port)]
    with started(cmd, env, log, cwd=workspace) as proc:
        wait_healthy(url, proc, log)
        with client_for(url) as client:
            deadline = time.monotonic() + 120
            while not (
                found := [d for d in client.read_deployments() if d.name == "nightly-coding"]
            ):
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
            client.create_flow_run_from_deployment(
                found[0].id,
                parameters={
                    "inbox": str(workspace / "inbox"),
                    "coder": "tests.coders_fixture:scripted_coder",
                    "codebook": str(workspace / "book.yaml"),
                    "batch_size": 1,
                },
            )
        deadline = time.monotonic() + 240
        while not (calls.exists() and len(calls.read_text().splitlines()) >= 3):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the served run coded nothing"
            time.sleep(0.3)
        yield proc, log


def test_sigkill_of_serve_stops_its_flow_run_process(tmp_path: Path, workspace: Path):
    """The flow-run process Prefect starts for a served run used to keep coding, then
    idle, after ``qualflow serve`` was killed."""
    below: set[int] = set()
    try:
        with serving_a_slow_run(tmp_path, workspace) as (proc, _log):
            below = _descendants(proc.pid)
            assert below, "no flow-run process"
            os.kill(proc.pid, signal.SIGKILL)  # serve only: not its process group
            proc.wait(timeout=30)
            deadline = time.monotonic() + 60
            while any(_alive(p) for p in below) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not [p for p in below if _alive(p)], "flow-run process outlived serve"
    finally:
        for pid in below:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_of_serve_stops_batches_then_marks_the_run_interrupted(
    tmp_path: Path, workspace: Path
):
    """Today the run was marked failed while its batches went on writing: now the
    batches stop first, the run is ``interrupted`` and nothing is written after it."""
    from sqlalchemy import func, select

    from qualflow.db import ProposalSetRow, RunRow
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    with serving_a_slow_run(tmp_path, workspace) as (proc, log):
        below = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert not [p for p in below if _alive(p)], "a process outlived serve"
    store = open_store(load_settings(workspace))
    try:
        with store.session() as s:
            [run] = s.scalars(select(RunRow)).all()
            last_write = s.scalar(select(func.max(ProposalSetRow.created_at)))
            written = s.scalar(select(func.count()).select_from(ProposalSetRow))
        assert run.status == "interrupted", (run.status, log.read_text()[-3000:])
        assert run.finished_at is not None and last_write is not None
        assert last_write.replace(tzinfo=None) <= run.finished_at.replace(tzinfo=None)
        time.sleep(3)
        with store.session() as s:
            assert s.scalar(select(func.count()).select_from(ProposalSetRow)) == written
    finally:
        store.close()
