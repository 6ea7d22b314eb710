"""Prefect flow ``code_transcripts``: inbox -> ingest -> index -> proposals -> artifact.

Thin orchestration over ``qualflow.pipeline``: tasks wrap library functions and
carry what Prefect adds (retries with backoff, the index cached by codebook
version, and, when the settings name them, Prefect global concurrency and rate
limits shared by every worker). The run is planned once; each ``code_batch`` task
codes a batch of ``run_batch_size`` units (claimed with leases, so two flow workers
never send a unit twice) through one :class:`~qualflow.pipeline.Dispatcher` shared
by the run, which keeps ``llm_concurrency`` LLM calls in flight across batches and
stores every answer as it arrives: a killed run resumes where it stopped and never
duplicates. ``BATCHES_IN_FLIGHT`` tasks run at once, so the next batch's requests
are built while the last calls of the previous one are answered.

Stopping: when the run is interrupted (SIGTERM from ``qualflow serve`` or Prefect
cancelling it, Ctrl-C) no further call starts, the calls in flight get
``STOP_GRACE_SECONDS`` to store their answers, then the run row is marked
``interrupted`` and nothing more is written. When the LLM endpoint's circuit breaker
opens, the remaining batches are skipped and the run ends ``failed`` (resumable).
Under ``qualflow serve`` the flow-run process stops by itself when the serve process
is gone (parent watch, recorded in the workspace's ``data/processes``).

Deployed by ``prefect.yaml`` and ``qualflow serve``; run once by ``qualflow run``.
"""

from __future__ import annotations

import os
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
from qualflow.leases import Leases
from qualflow.llm_calls import circuit_reason, stop_calls
from qualflow.models import Codebook, short_hash
from qualflow.settings import Settings, load_settings
from qualflow.store import Store, open_store

ARTIFACT_KEY = "qualflow-coding-run"
BATCH_THREADS = 16
"""Threads of the flow's task runner (batch tasks at once are ``BATCHES_IN_FLIGHT``)."""
BATCHES_IN_FLIGHT = 2
"""Batch tasks running at once: while one waits for its last calls, the next one's
units are claimed and its requests built, so the calls never run dry between
batches. The calls themselves are bounded by the shared dispatcher's slots."""
STOP_GRACE_SECONDS = 15.0
"""How long an interrupted run waits for the batches in flight to store their answers
(Prefect's runner kills a cancelled flow-run process 30 s after its SIGTERM)."""

progress_hook: Callable[[int, int], None] | None = None
"""Set by ``qualflow run`` to drive its progress bar (same process only)."""


def calls_llm(coder: Any) -> bool:
    """Whether the coder makes LLM calls (rate limited, parallel inside ``propose``)."""
    return bool(getattr(coder, "rate_limited", coder.kind == "llm"))


def batch_plan(settings: Settings, batch_size: int | None) -> tuple[int, int]:
    """Units per batch task (``batch_size``, else ``run_batch_size``) and batch tasks
    running at once (``BATCHES_IN_FLIGHT``). The LLM calls in flight are the
    dispatcher's business (``llm_concurrency``), whatever the batch size."""
    return max(1, batch_size or settings.run_batch_size), BATCHES_IN_FLIGHT


def limits_gate(settings: Settings, coder: Any) -> pipeline.CallGate | None:
    """What every coder call holds when the settings name Prefect global limits: a slot
    of the concurrency limit (any coder) and, for LLM coders, one rate-limit slot per
    LLM request of the call. None when no global limit is named."""
    if not settings.prefect_concurrency_limit and not settings.prefect_rate_limit:
        return None
    coder_settings = getattr(coder, "settings", None) or settings
    per_call = max(1, coder_settings.llm_batch_size)

    @contextmanager
    def gate(n_units: int) -> Iterator[None]:
        from prefect.concurrency.sync import concurrency, rate_limit

        if settings.prefect_rate_limit and calls_llm(coder):
            calls = -(-n_units // per_call)
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

    return gate


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
def code_batch(dispatcher: pipeline.Dispatcher, unit_ids: list[str]) -> pipeline.BatchResult:
    """Code one batch of units through the run's dispatcher (a plain object, kept
    opaque to Prefect's parameter handling) and store their answers as they arrive.

    Units another worker holds or that are coded already are skipped; calls are not
    sent once the budget is used, the run is stopping or the LLM endpoint's circuit
    is open. A coder error fails the task after the batch's other calls are stored;
    Prefect's retry then sends only what is still uncoded.
    """
    return dispatcher.code(unit_ids, raise_errors=True)


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
        batch_size: Units per batch task (default: the ``run_batch_size`` setting); the
            LLM calls in flight are ``llm_concurrency`` whatever the batch size.
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
    pipeline.save_codebook(store, book)
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
    unit = pipeline.unit_segmentation(settings)
    pipeline.ensure_chunks(store, settings, transcript_ids)
    plan = pipeline.plan_run(store, key, transcript_ids=transcript_ids, segmentation=unit)
    _progress(0, len(plan.todo))
    if not plan.todo:
        return pipeline.nothing_to_do(
            key, plan, started=started, ingest_failures=failures, unit=unit
        )
    from qualflow.coders.factory import run_provenance  # what the coder learned from

    params = {**run_provenance(coder), "coder": coder.kind, "flow": True, "unit": unit}
    run_id = pipeline.start_run(store, key, plan, params)
    size, in_flight = batch_plan(settings, batch_size)
    leases = Leases(store, key, seconds=settings.lease_seconds)
    dispatcher = pipeline.Dispatcher(
        store,
        coder,
        book,
        settings,
        key=key,
        run_id=run_id,
        budget=pipeline.Budget.from_settings(settings),
        index=index,
        leases=leases,
        progress=_progress,
        planned=len(plan.todo),
        batch_size=size,
        call_gate=limits_gate(settings, coder),
    )
    window: dict[Any, list[str]] = {}
    try:
        with leases, dispatcher:
            _run_batches(dispatcher, pipeline.batches(plan.todo, size), in_flight, window)
    except BaseException as exc:
        interrupted = not isinstance(exc, Exception) or _is_cancellation(exc)
        _stop_batches(dispatcher, window)
        store.finish_run(
            run_id,
            status="interrupted" if interrupted else "failed",
            usage=dispatcher.total.usage,
        )
        processes.exit_if_orphaned()  # serve is gone, and its Prefect API with it
        raise
    return pipeline.finish_run(
        store,
        run_id,
        key,
        plan,
        dispatcher.total,
        started=started,
        ingest_failures=failures,
        stopped_budget=dispatcher.total.skipped_budget or dispatcher.budget.exhausted,
        stopped_circuit=circuit_reason(coder),
        unit=unit,
        leases=leases,
    )


def _run_batches(
    dispatcher: pipeline.Dispatcher,
    chunks: list[list[str]],
    in_flight: int,
    window: dict[Any, list[str]],
) -> None:
    """Submit batch tasks, ``in_flight`` at a time, until all are done or the run
    stops; a batch whose retries are exhausted is recorded (its units stay uncoded)."""
    queue = iter(chunks)

    def top_up() -> None:
        while len(window) < in_flight and dispatcher.stop_reason() is None:
            ids = next(queue, None)
            if ids is None:
                return
            window[code_batch.submit(dispatcher, ids)] = ids

    top_up()
    while window:
        future = next(as_completed(list(window)))
        ids = window.pop(future)
        try:
            future.result()
        except Exception as exc:  # retries exhausted: record, leave uncoded, go on
            dispatcher.record_failure(ids, exc)
        top_up()


def _is_cancellation(exc: BaseException) -> bool:
    """Prefect's and anyio's ways of saying "stop" (some are plain Exceptions)."""
    return type(exc).__name__ in {"TerminationSignal", "CancelledError", "Abort", "Pause"}


def _stop_batches(dispatcher: pipeline.Dispatcher, pending: dict[Any, list[str]]) -> None:
    """Stop the run's batches before its row gets a final status.

    No further call starts, the coder's breaker stops pending LLM calls and retries,
    the batches in flight get ``STOP_GRACE_SECONDS`` to store what they have; then
    the dispatcher is closed so that nothing is written after the run row.
    """
    dispatcher.stop()
    stop_calls(dispatcher.coder, "the run was interrupted")
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for future in pending:
        with suppress(BaseException):
            future.wait(timeout=max(0.0, deadline - time.monotonic()))
    dispatcher.close()


def _progress(done: int, total: int) -> None:
    if progress_hook is not None:
        progress_hook(done, total)


if __name__ == "__main__":
    import sys

    print(code_transcripts(files=sys.argv[1:] or None, coder="similarity"))
