"""The coding pipeline as plain functions: uncoded units -> requests -> batches ->
proposal sets in the store, with a run row, usage, a budget and a summary.

The unit of a coder call is a chunk of consecutive turns (``chunk.py``; or a grid
passage with ``coding_unit = "passage"``); its answer is a set of spans. A run first
cuts the transcripts in scope into chunks (stored as passages of segmentation
``chunk:<words>``, idempotently), then codes the chunks not coded yet.

No Prefect here: ``flows/`` wraps these functions in tasks, and ``qualflow code``
calls :func:`run_coding` directly. The guarantees of a batch run live here:

- incremental: a passage that already has a proposal set under the run's
  :class:`~qualflow.store.ProposalKey` is never sent to the coder again;
- resumable: each proposal set is written as soon as its batch returns, and the
  store refuses a second set under the same key, so a killed run loses at most the
  batches in flight and a re-run never duplicates;
- isolated failures: a batch whose coder call raises is recorded per passage and
  left uncoded (a later run retries it); a passage whose answer never validates is
  stored as ``needs_human`` with its reason and listed as a failure;
- bounded cost: a :class:`Budget` stops the run cleanly between batches
  (status ``stopped_budget``); the next run carries on where it stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
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
    from qualflow.settings import Settings

log = logging.getLogger(__name__)

RunStatus = Literal["running", "completed", "partial", "stopped_budget", "failed", "interrupted"]
Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each batch (passages, this run)."""


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

    Checked before each batch: a run overshoots by at most the batches in flight.
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
    chunks added.
    """
    if settings.coding_unit != "chunk":
        return 0
    from qualflow.chunk import chunks_for

    name = unit_segmentation(settings)
    ids = list(dict.fromkeys(transcript_ids)) if transcript_ids is not None else None
    missing = store.transcripts_without(name, ids)
    added = 0
    for tid in missing:
        transcript = store.transcript(tid)
        if transcript is not None:
            added += store.add_passages(chunks_for(transcript, settings))
    return added


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
    """The passages without a proposal set under ``key`` (order kept)."""
    done = store.coded_passage_ids(key)
    return [p for p in passages if p.id not in done]


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
    sentence), cut on demand with the study's segmentation rules and kept per run."""

    def __init__(self, store: Store, settings: Settings | None):
        self.store = store
        self.settings = settings
        self._cache: dict[str, list[Passage]] = {}

    def __call__(self, transcript_id: str) -> list[Passage]:
        if transcript_id not in self._cache:
            from qualflow.chunk import sentences_for

            transcript = self.store.transcript(transcript_id)
            self._cache[transcript_id] = (
                sentences_for(transcript, self.settings) if transcript is not None else []
            )
        return self._cache[transcript_id]


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

    if unit.is_chunk:
        return sentences_in(unit, source(unit.transcript_id))
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
    """Passages per coder call of the pipeline: enough to keep the coder's own
    concurrency busy, small enough that a kill loses little."""
    return max(1, settings.llm_concurrency) * max(1, settings.llm_batch_size)


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
        return BatchResult(
            passages=self.passages + other.passages,
            written=self.written + other.written,
            duplicates=self.duplicates + other.duplicates,
            proposals=self.proposals + other.proposals,
            no_code=self.no_code + other.no_code,
            needs_human=self.needs_human + other.needs_human,
            invalid=self.invalid + other.invalid,
            codes=sorted(set(self.codes) | set(other.codes)),
            usage=self.usage + other.usage,
            failures=[*self.failures, *other.failures],
            skipped_budget=self.skipped_budget or other.skipped_budget,
        )


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


def process_batch(
    store: Store,
    coder: Coder,
    requests: Sequence[CodingRequest],
    codebook: Codebook,
    *,
    run_id: int | None = None,
    budget: Budget | None = None,
) -> BatchResult:
    """Code one batch and persist it; skipped (``skipped_budget``) once the budget is used.

    Exceptions of the coder propagate (a flow task retries them); see
    :func:`record_batch_failure` for what to do when retries are exhausted.
    """
    if budget is not None and budget.exhausted:
        return BatchResult(skipped_budget=True)
    sets = code_batch(coder, requests, codebook)
    result = persist(store, sets, run_id=run_id)
    if budget is not None:
        budget.add(result.usage)
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
    units' (``unit_segmentation``; chunks must be stored first, see ``ensure_chunks``)."""
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
) -> RunSummary:
    """Close the run row with its summary (remaining = still uncoded in scope).

    ``stopped_circuit``: why the LLM endpoint's circuit breaker stopped the run.
    """
    remaining = len(select_uncoded(store, key, passages_by_id(store, plan.todo)))
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
    """Code every uncoded passage in scope, batch by batch, in this process.

    ``started`` (a ``time.monotonic()`` value) lets a caller that ingested and built
    the index first count that in the summary's wall time.
    """
    from qualflow.llm_calls import circuit_reason

    started = started if started is not None else time.monotonic()
    store.save_codebook(codebook)
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
    budget = budget or Budget.from_settings(settings)
    sentences = SentenceSource(store, settings)
    total = BatchResult()
    stopped = False
    try:
        todo = passages_by_id(store, plan.todo)
        done = 0
        if progress:
            progress(0, len(todo))
        for chunk in batches(todo, batch_size or default_batch_size(settings)):
            if budget.exhausted:
                stopped = True
                break
            requests = build_requests(
                store, chunk, codebook, index=index, k=settings.retrieval_k, sentences=sentences
            )
            try:
                total = total + process_batch(
                    store, coder, requests, codebook, run_id=run_id, budget=budget
                )
            except Exception as exc:  # the coder failed for the whole batch
                ids = [p.id for p in chunk]
                total = total + record_batch_failure(store, ids, exc, run_id=run_id)
            done += len(chunk)
            if progress:
                progress(done, len(todo))
            if circuit_reason(coder):  # the endpoint is down: stop, resumable
                break
    except BaseException:
        store.finish_run(run_id, status="failed", usage=total.usage)
        raise
    return finish_run(
        store,
        run_id,
        key,
        plan,
        total,
        started=started,
        ingest_failures=ingest_failures,
        stopped_budget=stopped,
        stopped_circuit=circuit_reason(coder),
        unit=unit,
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
