"""The coding pipeline as plain functions: uncoded units -> requests -> coder calls ->
proposal sets in the store, with a run row, usage, a budget and a summary.

The unit of a coder call is a chunk of consecutive turns (``chunk.py``; or a grid
passage with ``coding_unit = "passage"``); its answer is a set of spans. A run first
cuts the transcripts in scope into chunks (stored as passages of segmentation
``chunk:<words>``, idempotently), plans once which units are still uncoded, then
streams them through a :class:`Dispatcher`: batches of ``run_batch_size`` units are
claimed (``qualflow.leases``) and their requests built while the coder's calls of
earlier batches are in flight, and every answer is stored as soon as it arrives.

No Prefect here: ``flows/`` wraps batches in tasks, and ``qualflow code`` calls
:func:`run_coding` directly. The guarantees of a batch run live here:

- incremental: a unit that already has a proposal set under the run's
  :class:`~qualflow.store.ProposalKey` is never sent to the coder again;
- resumable: each proposal set is written as soon as its call returns, and the
  store refuses a second set under the same key, so a killed run loses at most the
  calls in flight and a re-run never duplicates;
- one worker per unit: workers coding the same store at once claim batches with
  leases, so no unit is sent twice (a killed worker's leases are taken over);
- isolated failures: a call whose coder raises is recorded per unit and left
  uncoded (a later run retries it); a unit whose answer never validates is stored
  as ``needs_human`` with its reason and listed as a failure;
- bounded cost: a :class:`Budget` is checked before every call, so a run stops
  cleanly (status ``stopped_budget``) having overshot by at most the calls in
  flight; the next run carries on where it stopped.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from qualflow.models import (
    Candidate,
    Codebook,
    CodingRequest,
    Passage,
    PassageContext,
    ProposalSet,
    Usage,
)
from qualflow.store import ProposalKey, Store

if TYPE_CHECKING:
    from qualflow.coders.base import Coder
    from qualflow.leases import Leases
    from qualflow.settings import Settings

log = logging.getLogger(__name__)

RunStatus = Literal["running", "completed", "partial", "stopped_budget", "failed", "interrupted"]
Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` as answers come in (units, this run)."""
CallGate = Callable[[int], AbstractContextManager[Any]]
"""Wraps every coder call, given its number of units (e.g. Prefect global limits)."""


class BudgetExceeded(RuntimeError):
    """The run's token or cost budget is used up (raised only by :meth:`Budget.check`)."""


class Failure(BaseModel):
    stage: str = Field(description="ingest, code or validate.")
    subject: str = Field(description="File path or passage id.")
    reason: str


class RunSummary(BaseModel):
    """What one coding run did; stored in the run row and published as an artifact."""

    run_id: int | None = None
    status: RunStatus = "running"
    coder: str = ""
    model: str = ""
    prompt_version: str = ""
    codebook_version: str = ""
    unit: str = Field(default="", description="The unit of a coder call, e.g. chunk:200.")
    transcripts: int = Field(default=0, description="Transcripts in scope.")
    passages: int = Field(default=0, description="Units (chunks or passages) in scope.")
    already_coded: int = Field(default=0, description="Skipped: coded before under this key.")
    carried: int = Field(
        default=0,
        description="Of the already coded: answers carried over from an earlier version of "
        "an edited transcript, its text unchanged (review/carry.py).",
    )
    coded: int = Field(default=0, description="Proposal sets written by this run.")
    remaining: int = Field(default=0, description="Units in scope still uncoded.")
    elsewhere: int = Field(
        default=0,
        description="Units in scope another worker was coding when this run ended "
        "(claimed by it; not counted as remaining).",
    )
    proposals: int = Field(default=0, description="Valid span proposals written.")
    codes_applied: int = Field(default=0, description="Distinct codes among them.")
    no_code: int = Field(default=0, description="Units answered with 'no code applies'.")
    needs_human: int = 0
    invalid_proposals: int = 0
    invalid_rate: float = Field(default=0.0, description="Invalid / (valid + invalid).")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost_usd: float = 0.0
    wall_seconds: float = 0.0
    failures: list[Failure] = Field(default_factory=list)

    @property
    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            calls=self.calls,
            cost_usd=self.cost_usd,
        )


def run_status(
    *,
    coded: int,
    remaining: int,
    failures: Sequence[Failure],
    stopped_budget: bool = False,
    stopped_circuit: str | None = None,
) -> RunStatus:
    """The honest outcome of a run.

    ``completed``: nothing failed and nothing in scope is left uncoded (answers that
    went to ``needs_human`` are coded: a human takes them from there).
    ``stopped_budget``: the budget stopped it with passages left. ``failed``: the
    endpoint circuit opened, or nothing was coded while something failed or was left
    uncoded. ``partial``: some passages coded, some failed or left uncoded.
    """
    hard = [f for f in failures if f.stage != "validate"]
    if stopped_circuit:
        return "failed"
    if stopped_budget and remaining:
        return "stopped_budget"
    if not hard and not remaining:
        return "completed"
    return "failed" if coded == 0 else "partial"


# ---------------------------------------------------------------------- budget


class Budget:
    """Thread-safe usage counter with an optional token and cost ceiling (0 = none).

    Checked before each coder call: a run overshoots by at most the calls in flight.
    """

    def __init__(self, max_tokens: int = 0, max_cost: float = 0.0):
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.used = Usage()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Budget:
        return cls(settings.max_tokens_per_run, settings.max_cost_per_run)

    def add(self, usage: Usage) -> None:
        with self._lock:
            self.used = self.used + usage

    @property
    def exhausted(self) -> bool:
        with self._lock:
            tokens = self.used.prompt_tokens + self.used.completion_tokens
            if self.max_tokens and tokens >= self.max_tokens:
                return True
            return bool(self.max_cost and self.used.cost_usd >= self.max_cost)

    def check(self) -> None:
        if self.exhausted:
            raise BudgetExceeded(
                f"budget reached: {self.used.prompt_tokens + self.used.completion_tokens} "
                f"tokens (max {self.max_tokens or '-'}), ${self.used.cost_usd:.4f} "
                f"(max {self.max_cost or '-'})"
            )


# ---------------------------------------------------------------------- selection


def proposal_key(coder: Coder, codebook: Codebook) -> ProposalKey:
    return ProposalKey(
        coder=coder.kind,
        model=coder.model,
        prompt_version=coder.prompt_version,
        codebook_version=codebook.version,
    )


def unit_segmentation(settings: Settings) -> str:
    """The segmentation name of the units a run codes (``chunk:<words>`` or the grid)."""
    from qualflow.chunk import segmentation_name

    if settings.coding_unit == "chunk":
        return segmentation_name(settings.chunk_words)
    return settings.segmentation


def ensure_chunks(
    store: Store, settings: Settings, transcript_ids: Iterable[str] | None = None
) -> int:
    """Cut the transcripts in scope into chunks and store those not stored yet.

    Chunks are a pure function of the transcript version and the settings, so this is
    idempotent: a transcript whose chunks are stored is not read again. Returns the
    chunks added. Two workers starting at once may cut the same transcript: the one
    whose insert collides finds the other's (identical) chunks stored and goes on.
    """
    if settings.coding_unit != "chunk":
        return 0
    from sqlalchemy.exc import IntegrityError

    from qualflow.chunk import chunks_for

    name = unit_segmentation(settings)
    ids = list(dict.fromkeys(transcript_ids)) if transcript_ids is not None else None
    missing = store.transcripts_without(name, ids)
    added = 0
    for tid in missing:
        transcript = store.transcript(tid)
        if transcript is None:
            continue
        chunks = chunks_for(transcript, settings)
        try:
            added += store.add_passages(chunks)
        except IntegrityError:  # another worker stored them meanwhile: add what is left
            added += store.add_passages(chunks)
    return added


def save_codebook(store: Store, codebook: Codebook) -> str:
    """Store the run's codebook version; two workers starting at once may both insert
    it: the one that collides finds the other's identical row and goes on."""
    from sqlalchemy.exc import IntegrityError

    try:
        return store.save_codebook(codebook)
    except IntegrityError:
        return store.save_codebook(codebook)


def passages_in_scope(
    store: Store,
    *,
    transcript_ids: Iterable[str] | None = None,
    segmentation: str | None = None,
) -> list[Passage]:
    """Codable units of the given transcripts (default: every current transcript)."""
    if transcript_ids is None:
        return store.passages(segmentation=segmentation, codable_only=True)
    out: list[Passage] = []
    for tid in dict.fromkeys(transcript_ids):
        out += store.passages(transcript_id=tid, segmentation=segmentation, codable_only=True)
    return out


def select_uncoded(store: Store, key: ProposalKey, passages: Sequence[Passage]) -> list[Passage]:
    """The passages without a proposal set under ``key`` (order kept).

    Reads every id coded under the key: for planning a run (once), not per batch;
    batches use :func:`uncoded_among`.
    """
    done = store.coded_passage_ids(key)
    return [p for p in passages if p.id not in done]


def uncoded_among(
    store: Store, key: ProposalKey, unit_ids: Sequence[str], chunk: int = 500
) -> list[str]:
    """Those of ``unit_ids`` without a proposal set under ``key`` (order kept); reads
    only the given ids, so its cost follows the batch, not what is stored."""
    from sqlalchemy import select

    from qualflow.db import ProposalSetRow

    coded: set[str] = set()
    ids = list(unit_ids)
    with store.session() as s:
        for i in range(0, len(ids), chunk):
            coded.update(
                s.scalars(
                    select(ProposalSetRow.passage_id).where(
                        ProposalSetRow.coder == key.coder,
                        ProposalSetRow.model == key.model,
                        ProposalSetRow.prompt_version == key.prompt_version,
                        ProposalSetRow.codebook_version == key.codebook_version,
                        ProposalSetRow.passage_id.in_(ids[i : i + chunk]),
                    )
                )
            )
    return [u for u in ids if u not in coded]


def passages_by_id(store: Store, ids: Sequence[str], chunk: int = 500) -> list[Passage]:
    """Passages in the order of ``ids`` (queried in chunks: SQL has a variable limit)."""
    found: dict[str, Passage] = {}
    for i in range(0, len(ids), chunk):
        found.update((p.id, p) for p in store.passages(ids=ids[i : i + chunk]))
    return [found[pid] for pid in ids if pid in found]


def whole_codebook(codebook: Codebook) -> list[Candidate]:
    return [Candidate(code=c, score=1.0) for c in codebook.codes]


class SentenceSource:
    """The codable sentences of each transcript (for coders that decide sentence by
    sentence), cut on demand with the study's segmentation rules.

    Keeps the last ``keep`` transcripts (a run goes through units in transcript
    order), so its memory does not grow with the study; thread-safe.
    """

    def __init__(self, store: Store, settings: Settings | None, keep: int = 16):
        self.store = store
        self.settings = settings
        self.keep = max(1, keep)
        self._cache: OrderedDict[str, tuple[list[Passage], list[int]]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, transcript_id: str) -> list[Passage]:
        return self._entry(transcript_id)[0]

    def around(self, unit: Passage) -> list[Passage]:
        """The transcript's sentences that start inside the unit's character range."""
        sentences, starts = self._entry(unit.transcript_id)
        lo = bisect.bisect_left(starts, unit.char_start)
        hi = bisect.bisect_left(starts, unit.char_end)
        return sentences[lo:hi]

    def _entry(self, transcript_id: str) -> tuple[list[Passage], list[int]]:
        with self._lock:
            if transcript_id in self._cache:
                self._cache.move_to_end(transcript_id)
                return self._cache[transcript_id]
        from qualflow.chunk import sentences_for

        transcript = self.store.transcript(transcript_id)
        sentences = sentences_for(transcript, self.settings) if transcript is not None else []
        sentences = sorted(sentences, key=lambda p: p.char_start)
        entry = (sentences, [p.char_start for p in sentences])
        with self._lock:
            self._cache[transcript_id] = entry
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return entry


def build_requests(
    store: Store,
    passages: Sequence[Passage],
    codebook: Codebook,
    *,
    index: Any = None,
    k: int = 0,
    sentences: SentenceSource | None = None,
) -> list[CodingRequest]:
    """Units in context with their candidate codes (k = 0 or no index: all codes) and
    their codable sentences in context."""
    contexts = store.contexts(list(passages))
    candidates = retrieve_candidates(contexts, codebook, index=index, k=k)
    source = sentences or SentenceSource(store, None)
    inside = [_unit_sentences(ctx.passage, source) for ctx in contexts]
    flat = store.contexts([s for group in inside for s in group])
    requests, i = [], 0
    for ctx, cands, group in zip(contexts, candidates, inside, strict=True):
        requests.append(
            CodingRequest(context=ctx, candidates=cands, sentences=flat[i : i + len(group)])
        )
        i += len(group)
    return requests


def _unit_sentences(unit: Passage, source: SentenceSource) -> list[Passage]:
    from qualflow.chunk import sentences_in

    if unit.is_chunk:  # only the sentences in the unit's range can lie inside it
        return sentences_in(unit, source.around(unit))
    return [unit] if unit.codable else []


def retrieve_candidates(
    contexts: Sequence[PassageContext], codebook: Codebook, *, index: Any = None, k: int = 0
) -> list[list[Candidate]]:
    if k <= 0 or index is None or k >= len(codebook.codes):
        everything = whole_codebook(codebook)
        return [list(everything) for _ in contexts]
    if hasattr(index, "retrieve_many"):
        return list(index.retrieve_many(list(contexts), k))
    return [index.retrieve(ctx, k) for ctx in contexts]


def batches(items: Sequence[Any], size: int) -> list[list[Any]]:
    size = max(1, size)
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def default_batch_size(settings: Settings) -> int:
    """Units per batch of a run (``run_batch_size``): claimed and built together."""
    return max(1, settings.run_batch_size)


# ---------------------------------------------------------------------- coding


def code_batch(
    coder: Coder, requests: Sequence[CodingRequest], codebook: Codebook
) -> list[ProposalSet]:
    """The coder's proposal sets for a batch, checked to answer each request in order."""
    if not requests:
        return []
    sets = coder.propose(list(requests), codebook)
    expected = [r.passage.id for r in requests]
    got = [s.passage_id for s in sets]
    if got != expected:
        raise RuntimeError(
            f"coder {coder.kind}/{coder.model} answered {len(got)} passages for "
            f"{len(expected)} requested, or out of order"
        )
    return sets


class BatchResult(BaseModel):
    passages: int = 0
    written: int = 0
    duplicates: int = 0
    proposals: int = 0
    no_code: int = 0
    needs_human: int = 0
    invalid: int = 0
    codes: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    failures: list[Failure] = Field(default_factory=list)
    skipped_budget: bool = False

    def __add__(self, other: BatchResult) -> BatchResult:
        out = self.model_copy(deep=True)
        out.merge(other)
        return out

    def merge(self, other: BatchResult) -> None:
        """Add ``other`` in place (a run's total grows by its calls' results)."""
        self.passages += other.passages
        self.written += other.written
        self.duplicates += other.duplicates
        self.proposals += other.proposals
        self.no_code += other.no_code
        self.needs_human += other.needs_human
        self.invalid += other.invalid
        if other.codes and not set(other.codes) <= set(self.codes):
            self.codes = sorted(set(self.codes) | set(other.codes))
        self.usage = self.usage + other.usage
        self.failures.extend(other.failures)
        self.skipped_budget = self.skipped_budget or other.skipped_budget


def persist(store: Store, sets: Sequence[ProposalSet], *, run_id: int | None = None) -> BatchResult:
    """Write proposal sets (one transaction each); a set already stored is skipped.

    A set with status ``failed`` is not written (so a later run retries the passage)
    but recorded as a failure; ``needs_human`` sets are written and also recorded.
    """
    result = BatchResult(passages=len(sets))
    codes: set[str] = set()
    for ps in sets:
        result.usage = result.usage + ps.usage
        if ps.status == "failed":
            result.failures.append(_fail(store, "code", ps.passage_id, ps.reason, run_id))
            continue
        if not store.save_proposal_set(ps, run_id=run_id):
            result.duplicates += 1
            continue
        result.written += 1
        result.proposals += len(ps.proposals)
        result.invalid += len(ps.invalid)
        codes |= ps.codes
        if ps.status == "needs_human":
            result.needs_human += 1
            result.failures.append(_fail(store, "validate", ps.passage_id, ps.reason, run_id))
        elif not ps.proposals:
            result.no_code += 1
    result.codes = sorted(codes)
    return result


def record_batch_failure(
    store: Store, passage_ids: Sequence[str], error: BaseException, *, run_id: int | None
) -> BatchResult:
    """Record a batch whose coder call failed for good; its passages stay uncoded."""
    reason = f"{type(error).__name__}: {error}"
    log.warning("batch of %d passages failed: %s", len(passage_ids), reason)
    failures = [_fail(store, "code", pid, reason, run_id) for pid in passage_ids]
    return BatchResult(passages=len(passage_ids), failures=failures)


def _fail(store: Store, stage: str, subject: str, reason: str | None, run_id: int | None):
    reason = reason or "no reason given"
    store.record_failure(stage, subject, reason, run_id=run_id)
    return Failure(stage=stage, subject=subject, reason=reason)


# ---------------------------------------------------------------------- dispatch


def call_plan(coder: Coder) -> tuple[int | None, int]:
    """Units per coder call and calls in flight at once, as the coder says.

    A coder with parallel calls (the LLM coder) names ``call_size`` (units per
    request) and ``parallel_calls`` (``llm_concurrency``). Any other coder gets a
    whole batch per call, one call at a time (``None``, 1).
    """
    size = getattr(coder, "call_size", None)
    slots = getattr(coder, "parallel_calls", 1)
    return (max(1, int(size)) if size else None), max(1, int(slots or 1))


HELPERS = 2
"""Workers beyond the calls in flight: they store answers and wait, with the next
request ready, for a call slot to free (see :class:`Dispatcher`)."""


class _CallOutcome:
    """What one worker's call did: a stored result, a skip, or an error."""

    __slots__ = ("error", "ids", "result", "skipped")

    def __init__(
        self,
        ids: list[str],
        result: BatchResult | None = None,
        error: BaseException | None = None,
        skipped: bool = False,
    ):
        self.ids = ids
        self.result = result
        self.error = error
        self.skipped = skipped


class Dispatcher:
    """Codes units as a stream: claims a batch, builds its requests, keeps the coder's
    calls in flight and stores every answer as it arrives.

    The thread that calls :meth:`code` claims batches of ``batch_size`` units (leases,
    then a check of what is coded meanwhile, limited to the batch) and builds their
    requests; a pool of workers makes the calls. ``slots`` calls (``llm_concurrency``
    for the LLM coder) are in flight at once; the pool has ``HELPERS`` more workers,
    which store the answers that came in while the next calls already run, and the
    next batch is built while a pool's worth of calls is still queued. So a call slot
    never waits for request building or saving. Each worker stores its call's
    proposal sets at once (one transaction per set) and releases their leases.

    A worker checks the stops once it holds a call slot, just before the call: the
    budget is used up (``skipped_budget``), the LLM endpoint's circuit is open, or
    :meth:`stop` was called; a queued call is then never sent. A call's usage counts
    against the budget before its slot is freed, so a run overshoots its budget by at
    most the calls in flight. After :meth:`close` nothing is written. Several threads
    may call :meth:`code` at once (the flow's batch tasks): they share the pool, so
    calls keep flowing across batches.
    ``total`` is what the whole run did (thread-safe).
    """

    def __init__(
        self,
        store: Store,
        coder: Coder,
        codebook: Codebook,
        settings: Settings,
        *,
        key: ProposalKey,
        run_id: int | None,
        budget: Budget,
        index: Any = None,
        leases: Leases | None = None,
        progress: Progress | None = None,
        planned: int = 0,
        batch_size: int | None = None,
        call_gate: CallGate | None = None,
    ):
        self.store = store
        self.coder = coder
        self.codebook = codebook
        self.settings = settings
        self.key = key
        self.run_id = run_id
        self.budget = budget
        self.index = index
        self.leases = leases
        self.progress = progress
        self.planned = planned
        self.batch_size = max(1, batch_size or default_batch_size(settings))
        self.call_size, self.slots = call_plan(coder)
        self.workers = self.slots + HELPERS
        self._slots = threading.BoundedSemaphore(self.slots)
        self.call_gate = call_gate or (lambda _n: nullcontext())
        self.sentences = SentenceSource(store, settings)
        self.total = BatchResult()
        self.done = 0
        self.closed = False
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._writing = 0
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="qualflow-call")

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Send no further call (the ones in flight finish and are stored)."""
        self._stopping.set()

    def close(self) -> None:
        """From now on nothing is written (waits for stores under way to finish)."""
        with self._cond:
            self.closed = True
            while self._writing:
                self._cond.wait()

    def shutdown(self, *, wait_calls: bool = True) -> None:
        self._pool.shutdown(wait=wait_calls, cancel_futures=not wait_calls)

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, exc_type: Any, *_rest: Any) -> None:
        if exc_type is not None:
            self.stop()
        self.shutdown(wait_calls=exc_type is None)

    def stop_reason(self) -> str | None:
        """Why no further call may start (budget, circuit, stop), or None."""
        from qualflow.llm_calls import circuit_reason

        if self.budget.exhausted:
            return "budget"
        if circuit_reason(self.coder):
            return "circuit"
        if self._stopping.is_set():
            return "stopped"
        return None

    # ------------------------------------------------------------------ coding

    def code(self, unit_ids: Sequence[str], *, raise_errors: bool = False) -> BatchResult:
        """Code the units (those claimed by nobody else and still uncoded) and store
        their answers; what these units did (it is also added to ``total``).

        A call whose coder raises is recorded as a failure of its units (left uncoded
        for the next run), or with ``raise_errors`` the first such error is raised
        once every other call of these units is done (a flow task retries it; the
        retry sends only what is still uncoded).
        """
        result = BatchResult()
        errors: list[BaseException] = []
        pending: set[Future] = set()
        try:
            for ids in batches(unit_ids, self.batch_size):
                if self._note_stop(result):
                    break
                requests = self._prepare(ids)
                step = self.call_size or len(requests) or 1
                for call in batches(requests, step):
                    pending.add(self._pool.submit(self._call, call))
                # build the next batch while a pool's worth of calls is still queued
                pending = self._collect(pending, 2 * self.workers, result, errors, raise_errors)
            self._collect(pending, 0, result, errors, raise_errors)
        except BaseException:
            self.stop()
            raise
        self._note_stop(result)
        if errors:
            raise errors[0]
        return result

    def record_failure(self, unit_ids: Sequence[str], error: BaseException) -> BatchResult:
        """Record units whose batch failed for good (those still uncoded) in the total."""
        left = uncoded_among(self.store, self.key, unit_ids)
        result = record_batch_failure(self.store, left, error, run_id=self.run_id)
        with self._cond:
            self.total.merge(result)
        return result

    def _note_stop(self, result: BatchResult) -> bool:
        reason = self.stop_reason()
        if reason == "budget":
            result.skipped_budget = True
            with self._cond:
                self.total.skipped_budget = True
        return reason is not None

    def _prepare(self, ids: list[str]) -> list[CodingRequest]:
        """Claim the units, drop those coded since the plan, build their requests."""
        claimed = self.leases.claim(ids) if self.leases is not None else list(ids)
        fresh = uncoded_among(self.store, self.key, claimed) if claimed else []
        if self.leases is not None and len(fresh) < len(claimed):
            self.leases.release(set(claimed) - set(fresh))
        if not fresh:
            return []
        return build_requests(
            self.store,
            passages_by_id(self.store, fresh),
            self.codebook,
            index=self.index,
            k=self.settings.retrieval_k,
            sentences=self.sentences,
        )

    def _call(self, requests: list[CodingRequest]) -> _CallOutcome:
        """One coder call in a worker: checked, made, stored, leases released."""
        ids = [r.passage.id for r in requests]
        try:
            with self._slots:
                if self.stop_reason() is not None:
                    return _CallOutcome(ids, skipped=True)
                try:
                    with self.call_gate(len(requests)):
                        sets = code_batch(self.coder, requests, self.codebook)
                except Exception as exc:  # the coder failed for the whole call
                    return _CallOutcome(ids, error=exc)
                self.budget.add(sum((ps.usage for ps in sets), Usage()))
            result = self._store(sets)
            if result is None:  # the run was closed meanwhile: nothing written
                return _CallOutcome(ids, skipped=True)
            with self._cond:
                self.total.merge(result)
                self.done += len(ids)
                done = self.done
            if self.progress is not None:
                self.progress(done, self.planned)
            return _CallOutcome(ids, result=result)
        finally:
            if self.leases is not None:
                self.leases.release(ids)

    def _store(self, sets: list[ProposalSet]) -> BatchResult | None:
        with self._cond:
            if self.closed:
                return None
            self._writing += 1
        try:
            return persist(self.store, sets, run_id=self.run_id)
        finally:
            with self._cond:
                self._writing -= 1
                self._cond.notify_all()

    def _collect(
        self,
        pending: set[Future],
        keep: int,
        result: BatchResult,
        errors: list[BaseException],
        raise_errors: bool,
    ) -> set[Future]:
        """Wait until at most ``keep`` calls are pending; account for the finished."""
        while len(pending) > keep:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                outcome: _CallOutcome = future.result()
                if outcome.result is not None:
                    result.merge(outcome.result)
                elif outcome.error is not None:
                    if raise_errors:
                        errors.append(outcome.error)
                    else:
                        result.merge(self.record_failure(outcome.ids, outcome.error))
                        self._count_done(len(outcome.ids))
        return pending

    def _count_done(self, n: int) -> None:
        with self._cond:
            self.done += n
            done = self.done
        if self.progress is not None:
            self.progress(done, self.planned)


# ---------------------------------------------------------------------- a whole run


class RunPlan(BaseModel):
    """What a run will do, decided before any coder call."""

    key: dict[str, str]
    transcripts: int
    in_scope: int
    already_coded: int
    carried: int = 0
    todo: list[str] = Field(description="Passage ids to code, in order.")


def plan_run(
    store: Store,
    key: ProposalKey,
    *,
    transcript_ids: Iterable[str] | None = None,
    segmentation: str | None = None,
) -> RunPlan:
    """The units in scope and those still to code under ``key``; ``segmentation`` is the
    units' (``unit_segmentation``; chunks must be stored first, see ``ensure_chunks``).

    Done once per run: the batches then only check their own units."""
    scope = passages_in_scope(store, transcript_ids=transcript_ids, segmentation=segmentation)
    todo = select_uncoded(store, key, scope)
    return RunPlan(
        key=key.__dict__,
        transcripts=len({p.transcript_id for p in scope}),
        in_scope=len(scope),
        already_coded=len(scope) - len(todo),
        carried=carried_answers(store, key, [p.id for p in scope]),
        todo=[p.id for p in todo],
    )


def carried_answers(store: Store, key: ProposalKey, unit_ids: Sequence[str]) -> int:
    """Units whose answer under ``key`` was carried over from an earlier transcript
    version (``proposal_sets.carried_from``) rather than coded."""
    from sqlalchemy import func, select

    from qualflow.db import ProposalSetRow

    n = 0
    with store.session() as s:
        for i in range(0, len(unit_ids), 500):
            n += (
                s.scalar(
                    select(func.count()).where(
                        ProposalSetRow.passage_id.in_(list(unit_ids[i : i + 500])),
                        ProposalSetRow.carried_from.is_not(None),
                        ProposalSetRow.coder == key.coder,
                        ProposalSetRow.model == key.model,
                        ProposalSetRow.prompt_version == key.prompt_version,
                        ProposalSetRow.codebook_version == key.codebook_version,
                    )
                )
                or 0
            )
    return n


def nothing_to_do(
    key: ProposalKey,
    plan: RunPlan,
    *,
    started: float,
    ingest_failures: Sequence[Failure] = (),
    unit: str = "",
) -> RunSummary:
    """The summary of a run that found every unit in scope coded (no run row).

    Its status: ``completed``, or with bad files ``partial`` (the rest is coded) or
    ``failed`` (no file could be read: nothing is in scope).
    """
    return RunSummary(
        status=run_status(coded=plan.in_scope, remaining=0, failures=ingest_failures),
        unit=unit,
        coder=key.coder,
        model=key.model,
        prompt_version=key.prompt_version,
        codebook_version=key.codebook_version,
        transcripts=plan.transcripts,
        passages=plan.in_scope,
        already_coded=plan.already_coded,
        carried=plan.carried,
        wall_seconds=round(time.monotonic() - started, 2),
        failures=list(ingest_failures),
    )


def start_run(store: Store, key: ProposalKey, plan: RunPlan, params: dict | None = None) -> int:
    return store.start_run(key, params={**(params or {}), "todo": len(plan.todo)})


def finish_run(
    store: Store,
    run_id: int,
    key: ProposalKey,
    plan: RunPlan,
    result: BatchResult,
    *,
    started: float,
    ingest_failures: Sequence[Failure] = (),
    stopped_budget: bool = False,
    stopped_circuit: str | None = None,
    unit: str = "",
    leases: Leases | None = None,
) -> RunSummary:
    """Close the run row with its summary.

    ``remaining``: units of the plan still uncoded, except those another worker holds
    (``elsewhere``: it is coding them). ``stopped_circuit``: why the LLM endpoint's
    circuit breaker stopped the run.
    """
    # leases first: another worker stores a unit before it releases its lease, so a
    # unit held now is either still held or stored when the uncoded ones are read
    held = leases.held_elsewhere(plan.todo) if leases is not None and plan.todo else set()
    left = uncoded_among(store, key, plan.todo)
    elsewhere = sum(1 for u in left if u in held)
    remaining = len(left) - elsewhere
    checked = result.proposals + result.invalid
    failures = [*ingest_failures, *result.failures]
    if stopped_circuit:
        failures.append(_fail(store, "circuit", "LLM endpoint", stopped_circuit, run_id))
    summary = RunSummary(
        run_id=run_id,
        unit=unit,
        status=run_status(
            coded=result.written,
            remaining=remaining,
            failures=failures,
            stopped_budget=stopped_budget,
            stopped_circuit=stopped_circuit,
        ),
        coder=key.coder,
        model=key.model,
        prompt_version=key.prompt_version,
        codebook_version=key.codebook_version,
        transcripts=plan.transcripts,
        passages=plan.in_scope,
        already_coded=plan.already_coded,
        carried=plan.carried,
        coded=result.written,
        remaining=remaining,
        elsewhere=elsewhere,
        proposals=result.proposals,
        codes_applied=len(result.codes),
        no_code=result.no_code,
        needs_human=result.needs_human,
        invalid_proposals=result.invalid,
        invalid_rate=round(result.invalid / checked, 4) if checked else 0.0,
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        calls=result.usage.calls,
        cost_usd=round(result.usage.cost_usd, 6),
        wall_seconds=round(time.monotonic() - started, 2),
        failures=failures,
    )
    store.finish_run(
        run_id, status=summary.status, usage=summary.usage, summary=summary.model_dump()
    )
    return summary


def run_coding(
    store: Store,
    coder: Coder,
    codebook: Codebook,
    settings: Settings,
    *,
    index: Any = None,
    transcript_ids: Iterable[str] | None = None,
    batch_size: int | None = None,
    budget: Budget | None = None,
    progress: Progress | None = None,
    ingest_failures: Sequence[Failure] = (),
    params: dict | None = None,
    started: float | None = None,
) -> RunSummary:
    """Code every uncoded unit in scope in this process: planned once, then streamed
    through a :class:`Dispatcher` (batches claimed with leases, calls kept in flight,
    answers stored as they come).

    ``started`` (a ``time.monotonic()`` value) lets a caller that ingested and built
    the index first count that in the summary's wall time.
    """
    from qualflow.leases import Leases
    from qualflow.llm_calls import circuit_reason, stop_calls

    started = started if started is not None else time.monotonic()
    save_codebook(store, codebook)
    key = proposal_key(coder, codebook)
    unit = unit_segmentation(settings)
    ensure_chunks(store, settings, transcript_ids)
    plan = plan_run(store, key, transcript_ids=transcript_ids, segmentation=unit)
    if not plan.todo:  # nothing to do: no coder call, no run row
        if progress:
            progress(0, 0)
        return nothing_to_do(key, plan, started=started, ingest_failures=ingest_failures, unit=unit)
    from qualflow.coders.factory import run_provenance  # what the coder learned from

    run_id = start_run(store, key, plan, {**run_provenance(coder), **(params or {}), "unit": unit})
    leases = Leases(store, key, seconds=settings.lease_seconds)
    dispatcher = Dispatcher(
        store,
        coder,
        codebook,
        settings,
        key=key,
        run_id=run_id,
        budget=budget or Budget.from_settings(settings),
        index=index,
        leases=leases,
        progress=progress,
        planned=len(plan.todo),
        batch_size=batch_size,
    )
    if progress:
        progress(0, len(plan.todo))
    try:
        with leases, dispatcher:
            dispatcher.code(plan.todo)
    except BaseException as exc:
        stop_calls(coder, "the run was interrupted")
        dispatcher.close()
        # Ctrl-C or a stop signal ends the run as interrupted (re-run to resume); any
        # other escaping error is a failure
        stopped = isinstance(exc, (KeyboardInterrupt, SystemExit))
        status = "interrupted" if stopped else "failed"
        store.finish_run(run_id, status=status, usage=dispatcher.total.usage)
        raise
    return finish_run(
        store,
        run_id,
        key,
        plan,
        dispatcher.total,
        started=started,
        ingest_failures=ingest_failures,
        stopped_budget=dispatcher.total.skipped_budget or dispatcher.budget.exhausted,
        stopped_circuit=circuit_reason(coder),
        unit=unit,
        leases=leases,
    )


# ---------------------------------------------------------------------- reporting


def render_markdown(summary: RunSummary) -> str:
    """The run summary as Markdown (the Prefect artifact and ``qualflow code`` output)."""
    s = summary
    title = {
        "completed": "completed",
        "partial": "partial: some units failed or are left uncoded (re-run to resume)",
        "stopped_budget": "stopped: budget reached (re-run to resume)",
        "failed": "failed (see failures; re-run to resume)",
        "interrupted": "interrupted (re-run to resume)",
        "running": "running",
    }[s.status]
    rows = [
        ("Run", str(s.run_id) if s.run_id is not None else "-"),
        ("Status", title),
        ("Coder", f"{s.coder} / {s.model}"),
        ("Prompt version", s.prompt_version or "-"),
        ("Codebook version", s.codebook_version),
        ("Unit of a coder call", s.unit or "-"),
        ("Transcripts", str(s.transcripts)),
        ("Units in scope", str(s.passages)),
        ("Already coded (skipped)", str(s.already_coded)),
        ("of them carried from an earlier transcript version", str(s.carried)),
        ("Coded by this run", str(s.coded)),
        ("Still uncoded", str(s.remaining)),
        ("Held by another worker", str(s.elsewhere)),
        ("Span proposals (valid)", str(s.proposals)),
        ("Distinct codes applied", str(s.codes_applied)),
        ("No code applies", str(s.no_code)),
        ("Needs human", str(s.needs_human)),
        ("Invalid proposals", f"{s.invalid_proposals} ({s.invalid_rate:.1%})"),
        ("Coder calls", str(s.calls)),
        ("Tokens (prompt + completion)", f"{s.prompt_tokens} + {s.completion_tokens}"),
        ("Estimated cost", f"${s.cost_usd:.4f}"),
        ("Wall time", f"{s.wall_seconds:.1f} s"),
    ]
    lines = ["# qualflow coding run", "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", f"## Failures ({len(s.failures)})", ""]
    if s.failures:
        lines += ["| stage | subject | reason |", "| --- | --- | --- |"]
        lines += [f"| {f.stage} | {_cell(f.subject)} | {_cell(f.reason)} |" for f in s.failures]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def _cell(text: str, limit: int = 300) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------- from files to proposals


def ingest(
    store: Store, paths: Sequence[str | Path], settings: Settings
) -> tuple[list[str], list[Failure]]:
    """Ingest files and folders; returns the transcript ids in scope and the bad files.

    Unchanged files count as in scope (their passages may still be uncoded after an
    interrupted run). A bad file is recorded by ingest and listed, never fatal.
    """
    from qualflow.ingest import ingest_paths

    report = ingest_paths(store, paths, settings)
    failures = [
        Failure(stage="ingest", subject=f.path, reason=f.reason or "unreadable")
        for f in report.errors
    ]
    return report.transcript_ids, failures


def sources_of(settings: Settings, inbox: str | Path | None = None) -> list[Path]:
    """The inbox folder (relative paths are under the workspace), or nothing."""
    folder = inbox or settings.inbox
    if not folder:
        return []
    path = Path(folder)
    return [path if path.is_absolute() else settings.workspace / path]


def run_codebook(settings: Settings, codebook: str | None = None) -> Codebook:
    from qualflow.codebook import load_codebook

    return load_codebook(codebook or settings.codebook)


def open_index(codebook: Codebook, settings: Settings) -> Any:
    """The codebook's vector index (built when its version is new, reused otherwise)."""
    from qualflow.index import CodeIndex

    return CodeIndex.ensure(codebook, settings)


def code_paths(
    settings: Settings,
    store: Store,
    *,
    paths: Sequence[str | Path] | None = None,
    coder: str | None = None,
    codebook: str | None = None,
    progress: Progress | None = None,
    batch_size: int | None = None,
) -> RunSummary:
    """Ingest ``paths`` (or the settings' inbox; none = every stored transcript) and
    code their uncoded passages with the named coder, without Prefect."""
    from qualflow.coders.factory import needs_index, open_coder

    started = time.monotonic()
    kind = coder or settings.coder
    sources = list(paths or sources_of(settings))
    transcript_ids: list[str] | None = None
    failures: list[Failure] = []
    if sources:
        transcript_ids, failures = ingest(store, sources, settings)
    book = run_codebook(settings, codebook)
    index = open_index(book, settings) if needs_index(kind, settings) else None
    with open_coder(kind, settings, store, index, codebook=book) as opened:
        return run_coding(
            store,
            opened,
            book,
            settings,
            index=index,
            transcript_ids=transcript_ids,
            batch_size=batch_size,
            progress=progress,
            ingest_failures=failures,
            params={"sources": [str(s) for s in sources], "coder": kind},
            started=started,
        )
