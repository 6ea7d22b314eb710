"""Child processes that never outlive qualflow.

qualflow starts helper processes (the embedded llama.cpp server; under ``qualflow
serve``, Prefect starts a flow-run process per run). A SIGKILL of the qualflow
process runs no cleanup at all, so three mechanisms keep them from running on:

- **death signal** (Linux): :func:`die_with_parent` as ``preexec_fn`` makes the
  kernel kill the child when the thread that started it ends (``PR_SET_PDEATHSIG``);
- **parent watch**: a process qualflow does not start itself (Prefect's flow-run
  process) watches its parent with :func:`watch_parent` and stops when it is gone;
- **pid files**: every such process is recorded in the workspace
  (``data/processes/*.json``: its pid and start time, and the qualflow process that
  owns it). The next ``qualflow code``/``run``/``serve`` in that workspace ends the
  ones whose owner is gone (:func:`reap_leftovers`). A process is only ended when
  its start time still matches the record, so a reused pid is never hit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_ENV = "QUALFLOW_PARENT_PID"
"""Set by ``qualflow serve`` for the processes Prefect starts for it: the pid they
watch (and stop with) and record as their owner."""
PID_DIR = "processes"
ORPHANED = threading.Event()
"""Set by the parent watch once the parent is gone (see :func:`exit_if_orphaned`)."""
_PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------------- identity


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot, from /proc), or None when the
    process does not exist or the platform has no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def is_running(pid: int, started: str | None = None) -> bool:
    """Whether ``pid`` runs (and, when ``started`` is given, is that same process).

    A zombie (exited, not yet reaped by its parent) does not count as running.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _is_zombie(pid):
        return False
    if started is None:
        return True
    now = start_time(pid)
    return now is None or now == started


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].startswith("Z")


# ---------------------------------------------------------------------- death signal


def can_tie_to_parent() -> bool:
    return sys.platform.startswith("linux")


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when the thread
    that started it ends (Linux; None elsewhere). Start such a child from the thread
    that also stops it (a ``with`` block does), never from a short-lived thread."""
    if not can_tie_to_parent():
        return None
    import ctypes

    # Looked up before the fork: the child runs only the call itself.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)

    return preexec


# ---------------------------------------------------------------------- parent watch


def watch_parent(
    parent: int,
    on_orphan: Callable[[], None] | None = None,
    *,
    interval: float = 1.0,
    hard_exit_after: float = 30.0,
) -> threading.Thread:
    """A daemon thread that calls ``on_orphan`` once ``parent`` is gone.

    Default ``on_orphan``: SIGTERM to this process (Prefect turns it into a clean
    stop of the flow run), and a hard exit ``hard_exit_after`` seconds later if that
    did not end it (with its parent gone, Prefect's API may be gone too, and a clean
    stop can hang on reporting to it).
    """
    action = on_orphan or (lambda: _terminate_self(hard_exit_after))

    def watch() -> None:
        while os.getppid() == parent and is_running(parent):
            time.sleep(interval)
        ORPHANED.set()
        action()

    thread = threading.Thread(target=watch, name="qualflow-parent-watch", daemon=True)
    thread.start()
    return thread


def _terminate_self(hard_after: float) -> None:
    """SIGTERM to the main thread, then ``os._exit`` after ``hard_after`` seconds.

    Nothing here logs: with the parent gone, a log line to the console can meet a
    closed pipe, and rich (Prefect's console handler) answers that with SystemExit
    in the logging thread, which would end this watch before the hard exit. The
    signal goes to the main thread itself, so that a main thread blocked in a wait
    is interrupted (a process-wide signal may be taken by this thread instead).
    """
    deadline = time.monotonic() + hard_after
    try:
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - no pthread_kill
        os.kill(os.getpid(), signal.SIGTERM)
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(BaseException):  # nothing may stop the hard exit
            time.sleep(min(left, 1.0))
    os._exit(1)


def exit_if_orphaned(code: int = 1) -> None:
    """End this process now if its watched parent is gone.

    For the flow-run process of ``qualflow serve``: once its run is closed in the
    store there is nothing left to do, and Prefect's own clean-up would only wait on
    the API that died with the serve process.
    """
    if ORPHANED.is_set():
        os._exit(code)


def watch_parent_from_env(*, hard_exit_after: float = 30.0) -> int | None:
    """Under ``qualflow serve``: watch the serve process named in ``QUALFLOW_PARENT_PID``.

    Only a direct child watches (the variable is inherited by grandchildren too); a
    process started after its parent already died stops at once. Returns the pid
    watched, or None.
    """
    raw = os.environ.get(PARENT_ENV, "")
    if not raw.isdigit():
        return None
    parent = int(raw)
    if parent == os.getpid():
        return None
    if os.getppid() != parent and is_running(parent):
        return None  # a grandchild: its own parent takes care of it
    watch_parent(parent, hard_exit_after=hard_exit_after)
    return parent


# ---------------------------------------------------------------------- pid files


def pid_dir(data_dir: Path) -> Path:
    return Path(data_dir) / PID_DIR


def register(
    folder: Path, role: str, pid: int, *, owner: int | None = None, command: str = ""
) -> Path | None:
    """Record ``pid`` as a process of ``owner`` (default: this process) in ``folder``.

    Never fatal: a workspace that cannot be written only loses the record (logged).
    """
    owner = owner or os.getpid()
    record = {
        "role": role,
        "pid": pid,
        "start": start_time(pid),
        "owner": owner,
        "owner_start": start_time(owner),
        "command": command[:500],
    }
    path = Path(folder) / f"{role}-{pid}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not record process %d in %s: %s", pid, folder, exc)
        return None
    return path


def unregister(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            Path(path).unlink()


@contextlib.contextmanager
def registered(folder: Path | None, role: str, pid: int, **kwargs: Any) -> Iterator[None]:
    """Record the process for the duration of the block (nothing when ``folder`` is None)."""
    path = register(folder, role, pid, **kwargs) if folder is not None else None
    try:
        yield
    finally:
        unregister(path)


def leftovers(folder: Path) -> list[dict[str, Any]]:
    """Recorded processes whose owner is gone (records of ended processes are removed)."""
    found = []
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            pid, owner = int(record["pid"]), int(record["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            unregister(path)
            continue
        if not is_running(pid, record.get("start")):
            unregister(path)
            continue
        if owner != os.getpid() and is_running(owner, record.get("owner_start")):
            continue  # a live qualflow process still owns it
        found.append({**record, "path": str(path)})
    return found


def reap_leftovers(folder: Path, *, grace: float = 5.0) -> list[dict[str, Any]]:
    """End the recorded processes whose owner is gone: SIGTERM, then SIGKILL after
    ``grace`` seconds. Returns what was ended (each record with its ``role``)."""
    ended = []
    for record in leftovers(folder):
        pid, started = int(record["pid"]), record.get("start")
        if started is None:  # no start time to prove it is the same process: leave it
            log.warning("left-over process %d not verifiable here; not ending it", pid)
            continue
        log.warning(
            "ending a left-over %s process (pid %d) of a qualflow process that is gone",
            record.get("role"),
            pid,
        )
        _end(pid, started, grace)
        unregister(Path(record["path"]))
        ended.append(record)
    return ended


def _end(pid: int, started: str | None, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_running(pid, started):
            return
        time.sleep(0.1)
    if is_running(pid, started):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
