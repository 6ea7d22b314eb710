"""Prefect flow ``code_transcripts``: inbox -> ingest -> index -> proposals -> artifact.

Thin orchestration over ``qualflow.pipeline``: tasks wrap library functions and
carry what Prefect adds (retries with backoff, the index cached by codebook
version, batches mapped over a thread pool and limited per process or, when the
settings name them, by Prefect global concurrency and rate limits shared by every
worker). Every batch persists its proposal sets as soon as it returns, so a killed
run resumes where it stopped and never duplicates.

Stopping: when the run is interrupted (SIGTERM from ``qualflow serve`` or Prefect
cancelling it, Ctrl-C) batches not yet started are dropped, the ones in flight get
``STOP_GRACE_SECONDS`` to store their answers, then the run row is marked
``interrupted`` and nothing more is written. When the LLM endpoint's circuit breaker
opens, the remaining batches are skipped and the run ends ``failed`` (resumable).
Under ``qualflow serve`` the flow-run process stops by itself when the serve process
is gone (parent watch, recorded in the workspace's ``data/processes``).

Deployed by ``prefect.yaml`` and ``qualflow serve``; run once by ``qualflow run``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from datetime import timedelta
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline by default,
os.environ.setdefault("DO_NOT_TRACK", "1")  # set before Prefect reads its settings

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from qualflow import pipeline, processes
from qualflow.llm_calls import circuit_reason
from qualflow.models import Codebook, short_hash
from qualflow.settings import Settings, load_settings
from qualflow.store import Store, open_store

ARTIFACT_KEY = "qualflow-coding-run"
BATCH_THREADS = 16
"""Upper bound of batch tasks running at once; the effective limit is the per-process
semaphore (see :func:`batch_plan`) and, when named, the Prefect global limit."""
OFFLINE_BATCH = 32
"""Default passages per batch task for coders without LLM calls (one embedding batch)."""
STOP_GRACE_SECONDS = 15.0
"""How long an interrupted run waits for the batches in flight to store their answers
(Prefect's runner kills a cancelled flow-run process 30 s after its SIGTERM)."""

progress_hook: Callable[[int, int], None] | None = None
"""Set by ``qualflow run`` to drive its progress bar (same process only)."""


class BatchJob:
    """What every batch task of one run shares (kept opaque to Prefect's parameter
    handling on purpose: a plain object, passed through the in-process thread pool)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        coder: Any,
        codebook: Codebook,
        index: Any,
        run_id: int,
        budget: pipeline.Budget,
        in_flight: int,
    ):
        self.settings = settings
        self.store = store
        self.coder = coder
        self.codebook = codebook
        self.index = index
        self.run_id = run_id
        self.budget = budget
        self.local = threading.BoundedSemaphore(max(1, in_flight))
        self.stopping = threading.Event()
        self.closed = False
        self._gate = threading.Lock()

    def persist(self, sets: list) -> pipeline.BatchResult | None:
        """Store a batch's proposal sets unless the run is already closed (then None)."""
        with self._gate:
            if self.closed:
                return None
            return pipeline.persist(self.store, sets, run_id=self.run_id)

    def close(self) -> None:
        """From now on nothing is written: the run row gets its final status next."""
        with self._gate:
            self.closed = True

    @contextmanager
    def slot(self, n_passages: int) -> Iterator[None]:
        """Hold a coding slot: the per-process semaphore, plus the global limits if named."""
        from prefect.concurrency.sync import concurrency, rate_limit

        settings = self.settings
        with self.local:
            if settings.prefect_rate_limit and calls_llm(self.coder):
                calls = -(-n_passages // max(1, settings.llm_batch_size))
                if settings.llm_requests_per_minute > 0:  # never ask more than the limit holds
                    calls = min(calls, settings.llm_requests_per_minute)
                rate_limit(settings.prefect_rate_limit, occupy=calls, strict=True)
            shared = (
                concurrency(settings.prefect_concurrency_limit, occupy=1, strict=True)
                if settings.prefect_concurrency_limit
                else nullcontext()
            )
            with shared:
                yield


def calls_llm(coder: Any) -> bool:
    """Whether the coder makes LLM calls (rate limited, parallel inside ``propose``)."""
    return bool(getattr(coder, "rate_limited", coder.kind == "llm"))


def batch_plan(settings: Settings, coder: Any, batch_size: int | None) -> tuple[int, int]:
    """Passages per batch task and batch tasks coding at once in this process.

    An LLM coder runs the calls of one ``propose`` in parallel (up to
    ``llm_concurrency``), so tasks in flight x calls per task stays within
    ``llm_concurrency``. The default is one LLM call per task: the pool stays full, and
    a killed run loses at most the calls in flight.
    """
    # The coder's own settings win: the embedded llama.cpp server takes one call at a
    # time, so its coder runs with llm_concurrency = 1 whatever the workspace says.
    settings = getattr(coder, "settings", None) or settings
    per_call = max(1, settings.llm_batch_size)
    concurrency = max(1, settings.llm_concurrency)
    if not calls_llm(coder):
        return batch_size or OFFLINE_BATCH, concurrency
    size = batch_size or per_call
    calls = -(-size // per_call)
    return size, max(1, concurrency // min(calls, concurrency))


# ---------------------------------------------------------------------- tasks


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2), cache_policy=NO_CACHE)
def ingest_sources(store: Store, settings: Settings, sources: list[str]) -> dict:
    """Read and segment the files; bad files are recorded, never fatal. What a reader
    kept but flags (caption cues with unusable timing) goes to the run's log."""
    from qualflow.ingest import ingest_paths

    report = ingest_paths(store, sources, settings)
    logger = get_run_logger()
    for warning in report.warnings:  # file, line and reason: never transcript text
        logger.warning("ingest: %s", warning)
    failures = [
        pipeline.Failure(stage="ingest", subject=f.path, reason=f.reason or "unreadable")
        for f in report.errors
    ]
    return {
        "transcript_ids": report.transcript_ids,
        "failures": [f.model_dump() for f in failures],
    }


def _index_cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    settings: Settings = parameters["settings"]
    where = settings.chroma_url or str(settings.chroma_path.resolve())
    return "qualflow-index-" + short_hash(
        parameters["codebook"].version, settings.embedding_model, where
    )


@task(
    cache_key_fn=_index_cache_key,
    cache_expiration=timedelta(days=30),
    persist_result=True,
    retries=1,
    retry_delay_seconds=5,
)
def build_index(codebook: Codebook, settings: Settings) -> str:
    """Build the codebook's vector index; cached by codebook version and index location."""
    pipeline.open_index(codebook, settings)
    return codebook.version


@task(
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,
    tags=["qualflow-coding"],
)
def code_batch(job: BatchJob, passage_ids: list[str]) -> pipeline.BatchResult:
    """Code one batch and persist its proposal sets.

    Skipped once the budget is used, the run is stopping or the LLM endpoint's
    circuit is open; the answers of a batch that returns after the run was closed
    are dropped (their passages stay uncoded for the next run).
    """
    with job.slot(len(passage_ids)):
        if job.budget.exhausted:
            return pipeline.BatchResult(skipped_budget=True)
        if job.stopping.is_set() or circuit_reason(job.coder):
            return pipeline.BatchResult()
        passages = pipeline.passages_by_id(job.store, passage_ids)
        # A retry after a partial write must not re-send what is already stored.
        key = pipeline.proposal_key(job.coder, job.codebook)
        passages = pipeline.select_uncoded(job.store, key, passages)
        requests = pipeline.build_requests(
            job.store, passages, job.codebook, index=job.index, k=job.settings.retrieval_k
        )
        sets = pipeline.code_batch(job.coder, requests, job.codebook)
        result = job.persist(sets)
        if result is None:
            return pipeline.BatchResult()
        job.budget.add(result.usage)
        return result


# ---------------------------------------------------------------------- global limits


def ensure_global_limits(settings: Settings) -> None:
    """Create the named Prefect global limits if missing (their size from the settings)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    wanted: list[GlobalConcurrencyLimitCreate] = []
    if settings.prefect_concurrency_limit:
        wanted.append(
            GlobalConcurrencyLimitCreate(
                name=settings.prefect_concurrency_limit, limit=max(1, settings.llm_concurrency)
            )
        )
    if settings.prefect_rate_limit:
        rpm = settings.llm_requests_per_minute
        if rpm <= 0:
            raise ValueError(
                "prefect_rate_limit is set but llm_requests_per_minute is 0: "
                "give the request rate the limit should enforce"
            )
        wanted.append(
            GlobalConcurrencyLimitCreate(
                name=settings.prefect_rate_limit, limit=rpm, slot_decay_per_second=rpm / 60.0
            )
        )
    if not wanted:
        return
    with get_client(sync_client=True) as client:
        for limit in wanted:
            try:
                client.read_global_concurrency_limit_by_name(limit.name)
            except ObjectNotFound:
                with suppress(ObjectAlreadyExists):  # another worker created it first
                    client.create_global_concurrency_limit(limit)


# ---------------------------------------------------------------------- the flow


@flow(
    name="code-transcripts",
    task_runner=ThreadPoolTaskRunner(max_workers=BATCH_THREADS),
    log_prints=False,
)
def code_transcripts(
    inbox: str | None = None,
    files: list[str] | None = None,
    workspace: str = ".",
    codebook: str | None = None,
    coder: str = "llm",
    batch_size: int | None = None,
    max_tokens: int | None = None,
    max_cost: float | None = None,
) -> dict:
    """Code new transcripts and put the proposals in the review queue.

    Args:
        inbox: Folder of transcript files (default: the workspace's ``inbox`` setting;
            relative to the workspace). Ignored when ``files`` is given.
        files: Explicit transcript files instead of an inbox.
        workspace: Workspace folder (qualflow.toml, data/).
        codebook: Codebook name or file (default: the workspace's active codebook, else
            the ``codebook`` setting).
        coder: ``llm``, ``similarity``, ``learned`` or an importable ``module:callable``.
        batch_size: Passages per batch task (default: llm_batch_size for the LLM coder,
            i.e. one LLM call per task; 32 for coders without LLM calls).
        max_tokens: Token budget of this run (default: max_tokens_per_run; 0 = none).
        max_cost: USD budget of this run (default: max_cost_per_run; 0 = none).

    Returns the run summary (``qualflow.pipeline.RunSummary`` as a dict); a run that
    ended ``failed`` ends in Prefect's Failed state and raises :class:`RunFailedError`
    (``.summary``) when the flow is called directly (``summary_of`` reads either).
    """

    started = time.monotonic()
    logger = get_run_logger()
    watched = processes.watch_parent_from_env(hard_exit_after=STOP_GRACE_SECONDS + 10)
    overrides: dict[str, Any] = {}
    if max_tokens is not None:
        overrides["max_tokens_per_run"] = max_tokens
    if max_cost is not None:
        overrides["max_cost_per_run"] = max_cost
    settings = load_settings(workspace, **overrides)
    folder = processes.pid_dir(settings.data_dir) if watched else None
    store = open_store(settings)
    try:
        with processes.registered(folder, "flow-run", os.getpid(), owner=watched):
            summary = _run(settings, store, inbox, files, codebook, coder, batch_size, started)
        logger.info(
            "run %s %s: %d coded, %d remaining, %d failures",
            summary.run_id,
            summary.status,
            summary.coded,
            summary.remaining,
            len(summary.failures),
        )
        create_markdown_artifact(
            markdown=pipeline.render_markdown(summary),
            key=ARTIFACT_KEY,
            description=f"qualflow coding run {summary.run_id}: {summary.status}",
        )
        return final_state(summary)
    finally:
        store.close()


class RunFailedError(RuntimeError):
    """The coding run ended ``failed``; ``summary`` is its summary as a dict."""

    def __init__(self, summary: dict):
        super().__init__(
            f"qualflow coding run {summary.get('run_id')} failed: "
            f"{len(summary.get('failures') or [])} failures, nothing coded"
        )
        self.summary = summary

    def __reduce__(self) -> tuple:
        return (type(self), (self.summary,))


def final_state(summary: pipeline.RunSummary) -> Any:
    """The flow run's state, honest in Prefect's UI: Failed when the run failed (its
    result is a :class:`RunFailedError` carrying the summary), Completed named
    'Partial' when it is partly done, else Completed; the result is the summary dict."""
    from prefect.states import Completed, Failed

    data = summary.model_dump(mode="json")
    message = f"qualflow coding run {summary.run_id}: {summary.status}"
    if summary.status == "failed":
        return Failed(message=message, data=RunFailedError(data))
    if summary.status in {"partial", "stopped_budget"}:
        return Completed(message=message, name="Partial", data=data)
    return data


def summary_of(state: Any) -> dict:
    """The summary dict of a finished ``code_transcripts`` flow-run state (also of a
    failed run); raises the flow's own exception when it crashed before a summary."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunFailedError):
        return result.summary
    if isinstance(result, BaseException):
        raise result
    return result


def _run(
    settings: Settings,
    store: Store,
    inbox: str | None,
    files: list[str] | None,
    codebook: str | None,
    coder: str,
    batch_size: int | None,
    started: float,
) -> pipeline.RunSummary:
    """Ingest, index and code: everything of the flow but its report."""
    from qualflow.coders.factory import needs_index, open_coder

    sources = list(files or []) or [str(p) for p in pipeline.sources_of(settings, inbox)]
    transcript_ids: list[str] | None = None
    failures: list[pipeline.Failure] = []
    if sources:
        ingested = ingest_sources(store, settings, sources)
        transcript_ids = ingested["transcript_ids"]
        failures = [pipeline.Failure(**f) for f in ingested["failures"]]
    # no codebook given: the workspace's active codebook, else the settings' one
    book = (None if codebook else store.active_codebook()) or pipeline.run_codebook(
        settings, codebook
    )
    store.save_codebook(book)
    index = None
    if needs_index(coder, settings):
        build_index(book, settings)
        index = pipeline.open_index(book, settings)
    ensure_global_limits(settings)
    with open_coder(coder, settings, store, index, codebook=book) as opened:
        return _code(
            settings, store, opened, book, index, transcript_ids, failures, batch_size, started
        )


def _code(
    settings: Settings,
    store: Store,
    coder: Any,
    book: Codebook,
    index: Any,
    transcript_ids: list[str] | None,
    failures: list[pipeline.Failure],
    batch_size: int | None,
    started: float,
) -> pipeline.RunSummary:
    key = pipeline.proposal_key(coder, book)
    plan = pipeline.plan_run(
        store, key, transcript_ids=transcript_ids, segmentation=settings.segmentation
    )
    _progress(0, len(plan.todo))
    if not plan.todo:
        return pipeline.nothing_to_do(key, plan, started=started, ingest_failures=failures)
    from qualflow.coders.factory import run_provenance  # what the coder learned from

    params = {**run_provenance(coder), "coder": coder.kind, "flow": True}
    run_id = pipeline.start_run(store, key, plan, params)
    budget = pipeline.Budget.from_settings(settings)
    size, in_flight = batch_plan(settings, coder, batch_size)
    job = BatchJob(settings, store, coder, book, index, run_id, budget, in_flight)
    chunks = pipeline.batches(plan.todo, size)
    total = pipeline.BatchResult()
    futures: dict[Any, list[str]] = {}
    try:
        futures = {code_batch.submit(job, ids): ids for ids in chunks}
        done = 0
        for future in as_completed(list(futures)):
            ids = futures.pop(future)
            try:
                total = total + future.result()
            except Exception as exc:  # retries exhausted: record, leave uncoded, go on
                total = total + pipeline.record_batch_failure(store, ids, exc, run_id=run_id)
            done += len(ids)
            _progress(done, len(plan.todo))
    except BaseException as exc:
        interrupted = not isinstance(exc, Exception) or _is_cancellation(exc)
        total = total + _stop_batches(job, futures)
        store.finish_run(
            run_id, status="interrupted" if interrupted else "failed", usage=total.usage
        )
        processes.exit_if_orphaned()  # serve is gone, and its Prefect API with it
        raise
    return pipeline.finish_run(
        store,
        run_id,
        key,
        plan,
        total,
        started=started,
        ingest_failures=failures,
        stopped_budget=total.skipped_budget or budget.exhausted,
        stopped_circuit=circuit_reason(coder),
    )


def _is_cancellation(exc: BaseException) -> bool:
    """Prefect's and anyio's ways of saying "stop" (some are plain Exceptions)."""
    return type(exc).__name__ in {"TerminationSignal", "CancelledError", "Abort", "Pause"}


def _stop_batches(job: BatchJob, pending: dict[Any, list[str]]) -> pipeline.BatchResult:
    """Stop the run's batches before its row gets a final status.

    Batches not yet started are dropped, the coder's breaker stops pending LLM calls
    and retries, the batches in flight get ``STOP_GRACE_SECONDS`` to store what they
    have; then the job is closed so that nothing is written after the run row.
    Returns what the batches not yet counted did (for the run's usage).
    """
    job.stopping.set()
    breaker = getattr(getattr(job.coder, "client", None), "breaker", None)
    if breaker is not None:
        breaker.trip("the run was interrupted")
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    total = pipeline.BatchResult()
    for future in pending:
        with suppress(BaseException):
            future.wait(timeout=max(0.0, deadline - time.monotonic()))
            result = future.result(raise_on_failure=False) if future.state.is_completed() else None
            if isinstance(result, pipeline.BatchResult):
                total = total + result
    job.close()
    return total


def _progress(done: int, total: int) -> None:
    if progress_hook is not None:
        progress_hook(done, total)


if __name__ == "__main__":
    import sys

    print(code_transcripts(files=sys.argv[1:] or None, coder="similarity"))
