"""The workspace store: domain models in, domain models out.

``Store`` wraps an engine and converts between the pydantic models of
``qualflow.models`` and the rows of ``qualflow.db``. Modules further down the data
path (review, agreement, exchange) may run their own queries on ``store.session()``
against the tables in ``db.py``; this module holds the operations several of them
share.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qualflow.db import (
    CodebookRow,
    CodeRow,
    FailureRow,
    GoldCodingRow,
    ParticipantRow,
    PassageRow,
    ProposalRow,
    ProposalSetRow,
    ReviewStateRow,
    RunRow,
    TranscriptRow,
    TurnRow,
    make_engine,
    migrate,
    session_factory,
)
from qualflow.models import (
    Code,
    Codebook,
    CodeProposal,
    Coding,
    ContextTurn,
    Participant,
    Passage,
    PassageContext,
    ProposalSet,
    Transcript,
    Turn,
    Usage,
    utcnow,
)

if TYPE_CHECKING:
    from qualflow.settings import Settings

SaveOutcome = Literal["new", "new_version", "unchanged"]


class DuplicateTranscriptError(ValueError):
    """The same content is already stored under another transcript name."""


@dataclass(frozen=True)
class ProposalKey:
    """What makes a passage 'already coded': re-running with the same key is a no-op."""

    coder: str
    model: str
    prompt_version: str
    codebook_version: str


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = session_factory(engine)

    @classmethod
    def open(cls, url: str, *, run_migrations: bool = True) -> Store:
        engine = make_engine(url)
        if run_migrations:
            migrate(engine)
        return cls(engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ transcripts

    def save_transcript(self, transcript: Transcript, passages: list[Passage]) -> SaveOutcome:
        """Store a transcript version with its turns and passages, atomically.

        Unchanged content (same name and hash) is a no-op; new content under a known
        name becomes the next version (the previous one stays, marked not current);
        the same content under another name is refused as a duplicate. Insert-or-get:
        when another process stores the same version at the same moment, the loser's
        insert fails on the unique key and it reports ``unchanged``.
        """
        try:
            return self._save_transcript(transcript, passages)
        except IntegrityError:
            with self.session() as s:
                stored = s.scalar(
                    select(TranscriptRow.id).where(
                        TranscriptRow.name == transcript.name,
                        TranscriptRow.content_hash == transcript.content_hash,
                    )
                )
                if stored is None:
                    raise
                self._add_missing_passages(s, passages)
            return "unchanged"

    def _save_transcript(self, transcript: Transcript, passages: list[Passage]) -> SaveOutcome:
        with self.session() as s:
            existing = s.scalars(
                select(TranscriptRow).where(TranscriptRow.content_hash == transcript.content_hash)
            ).all()
            for row in existing:
                if row.name == transcript.name:
                    self._add_missing_passages(s, passages)
                    return "unchanged"
            if existing:
                raise DuplicateTranscriptError(
                    f"same content as transcript '{existing[0].name}' "
                    f"(from {existing[0].source_path})"
                )
            previous = s.scalar(
                select(func.max(TranscriptRow.version)).where(TranscriptRow.name == transcript.name)
            )
            if previous:
                s.execute(
                    update(TranscriptRow)
                    .where(TranscriptRow.name == transcript.name)
                    .values(is_current=False)
                )
            s.add(_transcript_row(transcript, version=(previous or 0) + 1))
            s.flush()
            s.add_all(_turn_row(transcript.id, t) for t in transcript.turns)
            s.add_all(_passage_row(p) for p in passages)
            return "new_version" if previous else "new"

    def _add_missing_passages(self, s: Session, passages: list[Passage]) -> None:
        """Re-ingesting with another segmentation adds that segmentation's passages."""
        if not passages:
            return
        ids = {p.id for p in passages}
        known = set(s.scalars(select(PassageRow.id).where(PassageRow.id.in_(ids))))
        s.add_all(_passage_row(p) for p in passages if p.id not in known)

    def add_passages(self, passages: list[Passage]) -> int:
        """Add passages (e.g. another segmentation) that are not stored yet."""
        with self.session() as s:
            before = s.scalar(select(func.count()).select_from(PassageRow)) or 0
            self._add_missing_passages(s, passages)
            s.flush()
            after = s.scalar(select(func.count()).select_from(PassageRow)) or 0
            return after - before

    def transcripts(self, *, current_only: bool = True) -> list[Transcript]:
        with self.session() as s:
            q = select(TranscriptRow).order_by(TranscriptRow.name, TranscriptRow.version)
            if current_only:
                q = q.where(TranscriptRow.is_current.is_(True))
            rows = s.scalars(q).all()
            return [self._transcript(s, r) for r in rows]

    def transcript(self, transcript_id: str) -> Transcript | None:
        with self.session() as s:
            row = s.get(TranscriptRow, transcript_id)
            return self._transcript(s, row) if row else None

    def _transcript(self, s: Session, row: TranscriptRow) -> Transcript:
        turns = s.scalars(
            select(TurnRow).where(TurnRow.transcript_id == row.id).order_by(TurnRow.index)
        ).all()
        return Transcript(
            id=row.id,
            name=row.name,
            source_path=row.source_path,
            content_hash=row.content_hash,
            format=row.format,
            text=row.text,
            turns=[
                Turn(
                    index=t.index,
                    speaker=t.speaker,
                    text=t.text,
                    char_start=t.char_start,
                    char_end=t.char_end,
                    start_time=t.start_time,
                    end_time=t.end_time,
                )
                for t in turns
            ],
            participant_id=row.participant_id,
            metadata=dict(row.meta or {}),
        )

    def set_participant(self, transcript_id: str, participant_id: str | None) -> None:
        with self.session() as s:
            row = s.get(TranscriptRow, transcript_id)
            if row is None:
                raise KeyError(transcript_id)
            row.participant_id = participant_id

    # ------------------------------------------------------------------ participants

    def save_participants(self, participants: Iterable[Participant]) -> int:
        n = 0
        with self.session() as s:
            for p in participants:
                row = s.get(ParticipantRow, p.id)
                if row is None:
                    s.add(ParticipantRow(id=p.id, attributes=dict(p.attributes)))
                else:
                    row.attributes = dict(p.attributes)
                n += 1
        return n

    def participants(self) -> list[Participant]:
        with self.session() as s:
            rows = s.scalars(select(ParticipantRow).order_by(ParticipantRow.id)).all()
            return [Participant(id=r.id, attributes=dict(r.attributes or {})) for r in rows]

    # ------------------------------------------------------------------ passages

    def passages(
        self,
        *,
        transcript_id: str | None = None,
        segmentation: str | None = None,
        codable_only: bool = False,
        current_only: bool = True,
        ids: Iterable[str] | None = None,
    ) -> list[Passage]:
        with self.session() as s:
            q = select(PassageRow).join(TranscriptRow, TranscriptRow.id == PassageRow.transcript_id)
            if transcript_id:
                q = q.where(PassageRow.transcript_id == transcript_id)
            if segmentation:
                q = q.where(PassageRow.segmentation == segmentation)
            if codable_only:
                q = q.where(PassageRow.codable.is_(True))
            if current_only and not transcript_id and ids is None:
                q = q.where(TranscriptRow.is_current.is_(True))
            if ids is not None:
                q = q.where(PassageRow.id.in_(list(ids)))
            q = q.order_by(TranscriptRow.name, PassageRow.segmentation, PassageRow.index)
            return [_passage(r) for r in s.scalars(q).all()]

    def passage(self, passage_id: str) -> Passage | None:
        with self.session() as s:
            row = s.get(PassageRow, passage_id)
            return _passage(row) if row else None

    def contexts(
        self, passages: list[Passage], *, turns_before: int = 1, turns_after: int = 1
    ) -> list[PassageContext]:
        """Passages with their neighbouring turns (and the passage's own turn before it)."""
        by_transcript: dict[str, list[TurnRow]] = {}
        participant: dict[str, str | None] = {}
        with self.session() as s:
            for tid in {p.transcript_id for p in passages}:
                by_transcript[tid] = list(
                    s.scalars(
                        select(TurnRow).where(TurnRow.transcript_id == tid).order_by(TurnRow.index)
                    )
                )
                row = s.get(TranscriptRow, tid)
                participant[tid] = row.participant_id if row else None
        out = []
        for p in passages:
            turns = by_transcript[p.transcript_id]
            pos = next((i for i, t in enumerate(turns) if t.index == p.turn_index), 0)
            before = turns[max(0, pos - turns_before) : pos]
            after = turns[pos + 1 : pos + 1 + turns_after]
            own = turns[pos] if turns else None
            ctx_before = [ContextTurn(speaker=t.speaker, text=t.text) for t in before]
            if own is not None and own.char_start < p.char_start:
                prefix = own.text[: p.char_start - own.char_start].strip()
                if prefix:
                    ctx_before.append(ContextTurn(speaker=own.speaker, text=prefix))
            ctx_after = []
            if own is not None and p.char_end < own.char_end:
                suffix = own.text[p.char_end - own.char_start :].strip()
                if suffix:
                    ctx_after.append(ContextTurn(speaker=own.speaker, text=suffix))
            ctx_after += [ContextTurn(speaker=t.speaker, text=t.text) for t in after]
            out.append(
                PassageContext(
                    passage=p,
                    before=ctx_before,
                    after=ctx_after,
                    participant_id=participant[p.transcript_id],
                )
            )
        return out

    # ------------------------------------------------------------------ codebooks

    def save_codebook(self, codebook: Codebook) -> str:
        """Store a codebook version (idempotent); returns the version."""
        version = codebook.version
        with self.session() as s:
            if s.get(CodebookRow, version) is not None:
                return version
            s.add(CodebookRow(version=version, name=codebook.name, source=codebook.source))
            s.flush()
            s.add_all(
                CodeRow(
                    codebook_version=version,
                    position=i,
                    title=c.title,
                    description=c.description,
                    inclusion=c.inclusion,
                    exclusion=c.exclusion,
                    examples=list(c.examples),
                    count=c.count,
                )
                for i, c in enumerate(codebook.codes)
            )
        return version

    def codebook(self, version: str | None = None, *, name: str | None = None) -> Codebook | None:
        """A stored codebook by version, or the newest one (optionally by name)."""
        with self.session() as s:
            if version:
                row = s.get(CodebookRow, version)
            else:
                q = select(CodebookRow).order_by(CodebookRow.created_at.desc())
                if name:
                    q = q.where(CodebookRow.name == name)
                row = s.scalars(q).first()
            if row is None:
                return None
            codes = s.scalars(
                select(CodeRow)
                .where(CodeRow.codebook_version == row.version)
                .order_by(CodeRow.position)
            ).all()
            return Codebook(
                name=row.name,
                source=row.source,
                codes=[
                    Code(
                        title=c.title,
                        description=c.description,
                        inclusion=c.inclusion,
                        exclusion=c.exclusion,
                        examples=list(c.examples or []),
                        count=c.count,
                    )
                    for c in codes
                ],
            )

    # ------------------------------------------------------------------ runs and proposals

    def start_run(self, key: ProposalKey, params: dict | None = None) -> int:
        """A new run row (status running), recording which process runs it.

        Runs left 'running' by a process of this machine that no longer exists (killed
        mid-way) are marked 'interrupted' first; their stored proposals stay, and the
        new run resumes where they stopped.
        """
        self.mark_interrupted_runs()
        with self.session() as s:
            row = RunRow(
                coder=key.coder,
                model=key.model,
                prompt_version=key.prompt_version,
                codebook_version=key.codebook_version,
                params={**(params or {}), "host": socket.gethostname(), "pid": os.getpid()},
            )
            s.add(row)
            s.flush()
            return row.id

    def mark_interrupted_runs(self) -> list[int]:
        """Mark 'running' runs whose process on this machine is gone as 'interrupted'."""
        host = socket.gethostname()
        marked = []
        with self.session() as s:
            for row in s.scalars(select(RunRow).where(RunRow.status == "running")):
                params = row.params or {}
                if params.get("host") == host and not _process_alive(params.get("pid")):
                    row.status = "interrupted"
                    row.finished_at = utcnow()
                    marked.append(row.id)
        return marked

    def finish_run(
        self, run_id: int, *, status: str, usage: Usage | None = None, summary: dict | None = None
    ) -> None:
        with self.session() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise KeyError(run_id)
            row.status = status
            row.finished_at = utcnow()
            if usage is not None:
                row.prompt_tokens = usage.prompt_tokens
                row.completion_tokens = usage.completion_tokens
                row.calls = usage.calls
                row.cost_usd = usage.cost_usd
            if summary is not None:
                row.summary = summary

    def coded_passage_ids(self, key: ProposalKey) -> set[str]:
        """Passages that already have a proposal set under this key."""
        with self.session() as s:
            return set(
                s.scalars(
                    select(ProposalSetRow.passage_id).where(
                        ProposalSetRow.coder == key.coder,
                        ProposalSetRow.model == key.model,
                        ProposalSetRow.prompt_version == key.prompt_version,
                        ProposalSetRow.codebook_version == key.codebook_version,
                    )
                )
            )

    def save_proposal_set(self, ps: ProposalSet, run_id: int | None = None) -> bool:
        """Store one passage's proposal set; False (and nothing written) if already stored."""
        try:
            with self.session() as s:
                row = ProposalSetRow(
                    run_id=run_id,
                    passage_id=ps.passage_id,
                    coder=ps.coder,
                    model=ps.model,
                    prompt_version=ps.prompt_version,
                    codebook_version=ps.codebook_version,
                    status=ps.status,
                    reason=ps.reason,
                    raw_response=ps.raw_response,
                    attempts=ps.attempts,
                    prompt_tokens=ps.usage.prompt_tokens,
                    completion_tokens=ps.usage.completion_tokens,
                    cost_usd=ps.usage.cost_usd,
                    created_at=ps.created_at,
                )
                s.add(row)
                s.flush()
                s.add_all(
                    _proposal_row(row.id, ps.passage_id, p) for p in [*ps.proposals, *ps.invalid]
                )
            return True
        except IntegrityError:
            return False

    def proposal_sets(
        self, *, run_id: int | None = None, key: ProposalKey | None = None
    ) -> list[ProposalSet]:
        with self.session() as s:
            q = select(ProposalSetRow).order_by(ProposalSetRow.id)
            if run_id is not None:
                q = q.where(ProposalSetRow.run_id == run_id)
            if key is not None:
                q = q.where(
                    ProposalSetRow.coder == key.coder,
                    ProposalSetRow.model == key.model,
                    ProposalSetRow.prompt_version == key.prompt_version,
                    ProposalSetRow.codebook_version == key.codebook_version,
                )
            sets = s.scalars(q).all()
            props: dict[int, list[ProposalRow]] = {}
            if sets:
                for p in s.scalars(
                    select(ProposalRow).where(ProposalRow.set_id.in_([r.id for r in sets]))
                ):
                    props.setdefault(p.set_id, []).append(p)
            return [_proposal_set(r, props.get(r.id, [])) for r in sets]

    def run_coding(self, run_id: int) -> Coding:
        """A run's valid codes per passage (the run as a coder, for agreement)."""
        return {
            ps.passage_id: ps.codes for ps in self.proposal_sets(run_id=run_id) if ps.status == "ok"
        }

    # ------------------------------------------------------------------ gold

    def save_gold(
        self,
        gold_set: str,
        coder: str,
        coding: Coding,
        codebook_version: str | None = None,
    ) -> int:
        """Store (or replace) a gold coder's code sets; returns rows written."""
        with self.session() as s:
            existing = {
                r.passage_id: r
                for r in s.scalars(
                    select(GoldCodingRow).where(
                        GoldCodingRow.gold_set == gold_set, GoldCodingRow.coder == coder
                    )
                )
            }
            for pid, codes in coding.items():
                row = existing.get(pid)
                if row is None:
                    s.add(
                        GoldCodingRow(
                            gold_set=gold_set,
                            coder=coder,
                            passage_id=pid,
                            codes=sorted(codes),
                            codebook_version=codebook_version,
                        )
                    )
                else:
                    row.codes = sorted(codes)
                    row.codebook_version = codebook_version
        return len(coding)

    def gold(self, gold_set: str, coder: str | None = None) -> dict[str, Coding]:
        """Gold codings of a set: coder -> passage id -> codes."""
        with self.session() as s:
            q = select(GoldCodingRow).where(GoldCodingRow.gold_set == gold_set)
            if coder:
                q = q.where(GoldCodingRow.coder == coder)
            out: dict[str, Coding] = {}
            for r in s.scalars(q):
                out.setdefault(r.coder, {})[r.passage_id] = frozenset(r.codes or [])
            return out

    def gold_sets(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(GoldCodingRow.gold_set).distinct()))

    def coded_examples(self, per_code: int, *, max_chars: int = 400) -> dict[str, list[str]]:
        """Human-coded passages per code title, for few-shot prompts.

        Sources: reviewers' current codings (``review_states``) and gold codings. The
        shortest passages (up to ``max_chars``) come first, ties by passage id, so the
        choice (and with it an LLM response-cache key) is stable. When evaluating
        against a gold set, remember that its other passages may appear as examples.
        """
        if per_code <= 0:
            return {}
        by_code: dict[str, set[str]] = {}
        with self.session() as s:
            for table in (ReviewStateRow, GoldCodingRow):
                for pid, codes in s.execute(select(table.passage_id, table.codes)):
                    for code in codes or []:
                        by_code.setdefault(str(code), set()).add(pid)
            wanted = set().union(*by_code.values()) if by_code else set()
            texts = (
                dict(
                    s.execute(
                        select(PassageRow.id, PassageRow.text).where(PassageRow.id.in_(wanted))
                    )
                    .tuples()
                    .all()
                )
                if wanted
                else {}
            )
        out: dict[str, list[str]] = {}
        for code, pids in by_code.items():
            ranked = sorted(
                (len(texts[p]), p) for p in pids if p in texts and len(texts[p]) <= max_chars
            )
            if chosen := [texts[p] for _, p in ranked[:per_code]]:
                out[code] = chosen
        return out

    # ------------------------------------------------------------------ failures

    def record_failure(
        self, stage: str, subject: str, reason: str, run_id: int | None = None
    ) -> None:
        with self.session() as s:
            s.add(FailureRow(run_id=run_id, stage=stage, subject=subject, reason=reason))

    def failures(self, run_id: int | None = None) -> list[tuple[str, str, str]]:
        with self.session() as s:
            q = select(FailureRow).order_by(FailureRow.id)
            if run_id is not None:
                q = q.where(FailureRow.run_id == run_id)
            return [(r.stage, r.subject, r.reason) for r in s.scalars(q)]


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the store configured by a ``Settings``."""
    return Store.open(settings.db_url)


def _process_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: leave the run alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------- row converters


def _transcript_row(t: Transcript, *, version: int) -> TranscriptRow:
    return TranscriptRow(
        id=t.id,
        name=t.name,
        version=version,
        is_current=True,
        source_path=t.source_path,
        content_hash=t.content_hash,
        format=t.format,
        text=t.text,
        participant_id=t.participant_id,
        meta=dict(t.metadata),
    )


def _turn_row(transcript_id: str, t: Turn) -> TurnRow:
    return TurnRow(
        transcript_id=transcript_id,
        index=t.index,
        speaker=t.speaker,
        text=t.text,
        char_start=t.char_start,
        char_end=t.char_end,
        start_time=t.start_time,
        end_time=t.end_time,
    )


def _passage_row(p: Passage) -> PassageRow:
    return PassageRow(
        id=p.id,
        transcript_id=p.transcript_id,
        segmentation=p.segmentation,
        index=p.index,
        turn_index=p.turn_index,
        speaker=p.speaker,
        char_start=p.char_start,
        char_end=p.char_end,
        text=p.text,
        codable=p.codable,
    )


def _passage(r: PassageRow) -> Passage:
    return Passage(
        id=r.id,
        transcript_id=r.transcript_id,
        index=r.index,
        turn_index=r.turn_index,
        speaker=r.speaker,
        char_start=r.char_start,
        char_end=r.char_end,
        text=r.text,
        codable=r.codable,
        segmentation=r.segmentation,
    )


def _proposal_row(set_id: int, passage_id: str, p: CodeProposal) -> ProposalRow:
    return ProposalRow(
        set_id=set_id,
        passage_id=passage_id,
        code=p.code,
        rationale=p.rationale,
        evidence=p.evidence,
        evidence_start=p.evidence_start,
        evidence_end=p.evidence_end,
        confidence=p.confidence,
        in_candidates=p.in_candidates,
        valid=p.valid,
        invalid_reason=p.invalid_reason,
    )


def _proposal_set(r: ProposalSetRow, props: list[ProposalRow]) -> ProposalSet:
    def conv(p: ProposalRow) -> CodeProposal:
        return CodeProposal(
            code=p.code,
            rationale=p.rationale,
            evidence=p.evidence,
            evidence_start=p.evidence_start,
            evidence_end=p.evidence_end,
            confidence=p.confidence,
            in_candidates=p.in_candidates,
            valid=p.valid,
            invalid_reason=p.invalid_reason,
        )

    return ProposalSet(
        passage_id=r.passage_id,
        coder=r.coder,
        model=r.model,
        prompt_version=r.prompt_version,
        codebook_version=r.codebook_version,
        status=r.status,  # type: ignore[arg-type]
        proposals=[conv(p) for p in props if p.valid],
        invalid=[conv(p) for p in props if not p.valid],
        reason=r.reason,
        raw_response=r.raw_response,
        attempts=r.attempts,
        usage=Usage(
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            cost_usd=r.cost_usd,
            calls=r.attempts,
        ),
        created_at=r.created_at,
    )
