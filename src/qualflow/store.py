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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qualflow.db import (
    CodebookRow,
    CodeRow,
    FailureRow,
    GoldScopeRow,
    GoldSpanRow,
    ParticipantRow,
    PassageRow,
    ProposalRow,
    ProposalSetRow,
    ReviewStateRow,
    RunRow,
    TranscriptRow,
    TurnRow,
    WorkspaceMetaRow,
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
    Piece,
    ProposalSet,
    Range,
    Span,
    SpanCoding,
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


@dataclass
class CodedExamples:
    """Few-shot examples (code title -> passage texts) and their provenance."""

    per_code: int
    examples: dict[str, list[str]] = field(default_factory=dict)
    passages: list[str] = field(default_factory=list)
    transcripts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def provenance(self) -> dict | None:
        """``runs.params["few_shot"]``: None when no example is shown."""
        if not self.examples:
            return None
        return {
            "per_code": self.per_code,
            "sources": list(self.sources),
            "transcripts": list(self.transcripts),
            "passages": list(self.passages),
        }


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
        """Stored passages in transcript order. Without ``segmentation`` (and ``ids``)
        only grid passages (sentence, turn, window); chunks are listed by their
        segmentation name (``chunk:<words>``)."""
        with self.session() as s:
            q = select(PassageRow).join(TranscriptRow, TranscriptRow.id == PassageRow.transcript_id)
            if transcript_id:
                q = q.where(PassageRow.transcript_id == transcript_id)
            if segmentation:
                q = q.where(PassageRow.segmentation == segmentation)
            elif ids is None:  # the grid: chunks only when asked for by name
                q = q.where(PassageRow.segmentation.not_like("chunk%"))
            if codable_only:
                q = q.where(PassageRow.codable.is_(True))
            if current_only and not transcript_id and ids is None:
                q = q.where(TranscriptRow.is_current.is_(True))
            if ids is not None:
                q = q.where(PassageRow.id.in_(list(ids)))
            q = q.order_by(TranscriptRow.name, PassageRow.segmentation, PassageRow.index)
            return [_passage(r) for r in s.scalars(q).all()]

    def transcripts_without(
        self, segmentation: str, transcript_ids: Iterable[str] | None = None
    ) -> list[str]:
        """Ids of transcripts (the given ones, or every current one) that have no
        passage of ``segmentation`` stored yet."""
        with self.session() as s:
            q = select(TranscriptRow.id)
            if transcript_ids is None:
                q = q.where(TranscriptRow.is_current.is_(True))
            else:
                wanted = list(transcript_ids)
                if not wanted:
                    return []
                q = q.where(TranscriptRow.id.in_(wanted))
            have = select(PassageRow.transcript_id).where(PassageRow.segmentation == segmentation)
            return list(
                s.scalars(q.where(TranscriptRow.id.not_in(have)).order_by(TranscriptRow.name))
            )

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
        # turn index -> position, once per transcript (a scan per passage made a batch
        # cost grow with the transcript's length)
        positions = {
            tid: {t.index: i for i, t in reversed(list(enumerate(turns)))}
            for tid, turns in by_transcript.items()
        }
        out = []
        for p in passages:
            turns = by_transcript[p.transcript_id]
            first = positions[p.transcript_id].get(p.turn_index, 0)
            last = positions[p.transcript_id].get(p.last_turn, first)
            before = turns[max(0, first - turns_before) : first]
            after = turns[last + 1 : last + 1 + turns_after]
            ctx_before = [ContextTurn(speaker=t.speaker, text=t.text) for t in before]
            own_first = turns[first] if turns else None
            if own_first is not None and own_first.char_start < p.char_start:
                prefix = own_first.text[: p.char_start - own_first.char_start].strip()
                if prefix:
                    ctx_before.append(ContextTurn(speaker=own_first.speaker, text=prefix))
            ctx_after = []
            own_last = turns[last] if turns else None
            if own_last is not None and p.char_end < own_last.char_end:
                suffix = own_last.text[p.char_end - own_last.char_start :].strip()
                if suffix:
                    ctx_after.append(ContextTurn(speaker=own_last.speaker, text=suffix))
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
        """A run's valid codes per unit (chunk or passage) it answered."""
        return {
            ps.passage_id: ps.codes for ps in self.proposal_sets(run_id=run_id) if ps.status == "ok"
        }

    def span_coding(
        self, coder: str, *, run_id: int | None = None, key: ProposalKey | None = None
    ) -> SpanCoding:
        """A coder's proposals (one run, or every run under a key) as a span coding.

        The scope is the codable text of the units answered ``ok``; units that ended
        ``needs_human`` (or failed, and so were never stored) are outside it: not
        answered, which agreement reports count as misses.
        """
        sets = self.proposal_sets(run_id=run_id, key=key)
        units = {p.id: p for p in self.passages(ids=[ps.passage_id for ps in sets])}
        coding = SpanCoding(coder=coder)
        for ps in sets:
            unit = units.get(ps.passage_id)
            if ps.status != "ok" or unit is None:
                continue
            ranges = coding.scope.setdefault(unit.transcript_id, [])
            ranges += [(p.char_start, p.char_end) for p in unit.codable_pieces()]
            coding.spans += ps.spans(unit.transcript_id)
        coding.scope = {tid: _merged(r) for tid, r in coding.scope.items()}
        return coding

    # ------------------------------------------------------------------ gold

    def save_gold_coding(
        self, gold_set: str, coding: SpanCoding, codebook_version: str | None = None
    ) -> int:
        """Store (or replace) one gold coder's spans and scope on the transcripts its
        scope names; returns the spans written. Re-importing the same coding is a no-op
        in effect (the coder's rows on those transcripts are replaced)."""
        transcripts = sorted(coding.transcripts())
        with self.session() as s:
            for table in (GoldSpanRow, GoldScopeRow):
                s.execute(
                    delete(table).where(
                        table.gold_set == gold_set,
                        table.coder == coding.coder,
                        table.transcript_id.in_(transcripts),
                    )
                )
            s.add_all(
                GoldScopeRow(
                    gold_set=gold_set,
                    coder=coding.coder,
                    transcript_id=tid,
                    char_start=a,
                    char_end=b,
                    codebook_version=codebook_version,
                )
                for tid, ranges in sorted(coding.scope.items())
                for a, b in ranges
            )
            s.add_all(
                GoldSpanRow(
                    gold_set=gold_set,
                    coder=coding.coder,
                    transcript_id=sp.transcript_id,
                    char_start=sp.start,
                    char_end=sp.end,
                    code=sp.code,
                    codebook_version=codebook_version,
                )
                for sp in sorted(coding.spans)
            )
        return len(coding.spans)

    def save_gold(
        self,
        gold_set: str,
        coder: str,
        coding: Coding,
        codebook_version: str | None = None,
    ) -> int:
        """Store passage-level gold codings (passage id -> codes; an empty set means "no
        code applies"): each passage joins the coder's scope and each code becomes a
        span over the passage. Passages coded before by this coder are replaced, the
        coder's other gold stays. Returns the passages written."""
        passages = {p.id: p for p in self.passages(ids=list(coding))}
        missing = sorted(set(coding) - set(passages))
        if missing:
            raise KeyError(f"gold codings name unknown passages: {missing[:5]}")
        with self.session() as s:
            for p in passages.values():
                for table in (GoldSpanRow, GoldScopeRow):
                    s.execute(
                        delete(table).where(
                            table.gold_set == gold_set,
                            table.coder == coder,
                            table.transcript_id == p.transcript_id,
                            table.char_start == p.char_start,
                            table.char_end == p.char_end,
                        )
                    )
            for pid, codes in coding.items():
                p = passages[pid]
                place = dict(
                    gold_set=gold_set,
                    coder=coder,
                    transcript_id=p.transcript_id,
                    char_start=p.char_start,
                    char_end=p.char_end,
                    codebook_version=codebook_version,
                )
                s.add(GoldScopeRow(**place))
                s.add_all(GoldSpanRow(**place, code=code) for code in sorted(codes))
        return len(coding)

    def gold_codings(self, gold_set: str, coder: str | None = None) -> dict[str, SpanCoding]:
        """A gold set's coders as span codings: coder -> spans and scope."""
        out: dict[str, SpanCoding] = {}
        with self.session() as s:
            q = select(GoldScopeRow).where(GoldScopeRow.gold_set == gold_set)
            if coder:
                q = q.where(GoldScopeRow.coder == coder)
            for r in s.scalars(q.order_by(GoldScopeRow.id)):
                c = out.setdefault(r.coder, SpanCoding(coder=r.coder))
                c.scope.setdefault(r.transcript_id, []).append((r.char_start, r.char_end))
            q = select(GoldSpanRow).where(GoldSpanRow.gold_set == gold_set)
            if coder:
                q = q.where(GoldSpanRow.coder == coder)
            for r in s.scalars(q.order_by(GoldSpanRow.id)):
                c = out.setdefault(r.coder, SpanCoding(coder=r.coder))
                c.spans.append(Span(r.transcript_id, r.char_start, r.char_end, r.code))
        for c in out.values():
            c.scope = {tid: _merged(ranges) for tid, ranges in c.scope.items()}
        return out

    def gold(
        self, gold_set: str, coder: str | None = None, *, segmentation: str | None = None
    ) -> dict[str, Coding]:
        """Gold codings of a set on the passage grid: coder -> passage id -> codes.

        Every grid passage inside a coder's scope is listed (an empty set where no span
        carries a code to it); spans are projected onto passages by the sentence rule
        (``spans.to_sentences``: spans of a code cover at least half of the passage, or
        one lies inside it). The grid is ``segmentation``, or the transcript's stored grid
        (``sentence`` when it has several). Passage-level gold comes back exactly as it
        was stored.
        """
        from qualflow.spans import to_sentences

        out: dict[str, Coding] = {}
        for name, coding in sorted(self.gold_codings(gold_set, coder).items()):
            grid = [
                p
                for tid, ranges in coding.scope.items()
                for p in self.passages(
                    transcript_id=tid, segmentation=segmentation or self.grid_of(tid)
                )
                if _inside(p.char_start, p.char_end, ranges)
            ]
            out[name] = to_sentences(coding, grid) if grid else {}
        return out

    def grid_of(self, transcript_id: str) -> str:
        """The grid segmentation stored for a transcript: ``sentence`` when present,
        else the one (or first) other non-chunk segmentation."""
        with self.session() as s:
            found = set(
                s.scalars(
                    select(PassageRow.segmentation)
                    .where(PassageRow.transcript_id == transcript_id)
                    .where(PassageRow.segmentation.not_like("chunk%"))
                    .distinct()
                )
            )
        if "sentence" in found or not found:
            return "sentence"
        return sorted(found)[0]

    def gold_sets(self) -> list[str]:
        with self.session() as s:
            return sorted(s.scalars(select(GoldScopeRow.gold_set).distinct()))

    def coded_examples(
        self,
        per_code: int,
        *,
        gold_sets: Iterable[str] = (),
        reviews: bool = True,
        max_chars: int = 400,
    ) -> CodedExamples:
        """Human-coded text per code title, for few-shot prompts, with where it came
        from (so a run can record it and a report can refuse a leak).

        Sources: reviewers' current codings (``review_states``, the reviewed unit's
        text, unless ``reviews`` is false) and the spans of the gold sets named in
        ``gold_sets`` only (none by default: a gold set evaluated against must not feed
        the prompt); a gold example is the highlighted text itself. Only codable text
        counts (an interviewer's question is no example of a participant's code). The
        shortest texts (up to ``max_chars``) come first, ties by text, so the choice
        (and with it an LLM response-cache key) is stable.
        """
        wanted_sets = sorted(set(gold_sets))
        sources = (["reviews"] if reviews else []) + [f"gold:{g}" for g in wanted_sets]
        if per_code <= 0:
            return CodedExamples(per_code=per_code, sources=sources)
        by_code: dict[str, set[tuple]] = {}
        with self.session() as s:
            refs: dict[tuple, str] = {}  # example ref -> transcript id
            if reviews:
                reviewed = select(
                    ReviewStateRow.passage_id, ReviewStateRow.codes, PassageRow.transcript_id
                )
                for pid, codes, tid in s.execute(
                    reviewed.join(PassageRow, PassageRow.id == ReviewStateRow.passage_id).where(
                        PassageRow.codable.is_(True)
                    )
                ):
                    for code in codes or []:
                        if isinstance(code, str):
                            by_code.setdefault(code, set()).add(("passage", pid))
                            refs[("passage", pid)] = tid
            if wanted_sets:
                for row in s.execute(
                    select(
                        GoldSpanRow.code,
                        GoldSpanRow.transcript_id,
                        GoldSpanRow.char_start,
                        GoldSpanRow.char_end,
                    ).where(GoldSpanRow.gold_set.in_(wanted_sets))
                ):
                    ref = ("span", row.transcript_id, row.char_start, row.char_end)
                    if self._in_codable_text(s, ref):
                        by_code.setdefault(row.code, set()).add(ref)
                        refs[ref] = row.transcript_id
            texts = self._example_texts(s, set(refs))
            names = dict(
                s.execute(
                    select(TranscriptRow.id, TranscriptRow.name).where(
                        TranscriptRow.id.in_(sorted(set(refs.values())))
                    )
                )
                .tuples()
                .all()
            )
        out: dict[str, list[str]] = {}
        shown: set[tuple] = set()
        for code, found in sorted(by_code.items()):
            fitting = [r for r in found if 0 < len(texts.get(r, "")) <= max_chars]
            ranked = sorted((len(texts[r]), texts[r], r) for r in fitting)
            chosen: list[str] = []
            for _, text, ref in ranked:
                if text not in chosen:
                    chosen.append(text)
                    shown.add(ref)
                if len(chosen) == per_code:
                    break
            if chosen:
                out[code] = chosen
        return CodedExamples(
            per_code=per_code,
            examples=out,
            passages=sorted(_example_ref(r) for r in shown),
            transcripts=sorted({names.get(refs[r], refs[r]) for r in shown}),
            sources=sources,
        )

    def _in_codable_text(self, s: Session, ref: tuple) -> bool:
        """Whether a span overlaps a codable grid passage of its transcript."""
        _, tid, start, end = ref
        return bool(
            s.scalar(
                select(func.count())
                .select_from(PassageRow)
                .where(
                    PassageRow.transcript_id == tid,
                    PassageRow.codable.is_(True),
                    PassageRow.segmentation.not_like("chunk%"),
                    PassageRow.char_start < end,
                    PassageRow.char_end > start,
                )
            )
        )

    def run_params(self, run_id: int) -> dict:
        """The params a run was started with (what its coder learned from, ...)."""
        with self.session() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise KeyError(run_id)
            return dict(row.params or {})

    @staticmethod
    def _example_texts(s: Session, refs: set[tuple]) -> dict[tuple, str]:
        passage_ids = [r[1] for r in refs if r[0] == "passage"]
        texts: dict[tuple, str] = {}
        for i in range(0, len(passage_ids), 500):
            for pid, text in s.execute(
                select(PassageRow.id, PassageRow.text).where(
                    PassageRow.id.in_(passage_ids[i : i + 500])
                )
            ):
                texts[("passage", pid)] = " ".join(text.split())
        spans = [r for r in refs if r[0] == "span"]
        for tid in {r[1] for r in spans}:
            row = s.get(TranscriptRow, tid)
            if row is None:
                continue
            for r in spans:
                if r[1] == tid:
                    texts[r] = " ".join(row.text[r[2] : r[3]].split())
        return texts

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

    # ------------------------------------------------------------------ workspace facts

    ACTIVE_CODEBOOK = "active_codebook"

    def meta(self, key: str, default: object = None) -> object:
        """A workspace fact (JSON value) by key, or ``default``."""
        with self.session() as s:
            row = s.get(WorkspaceMetaRow, key)
            return default if row is None else row.value

    def set_meta(self, key: str, value: object) -> None:
        with self.session() as s:
            row = s.get(WorkspaceMetaRow, key)
            if row is None:
                s.add(WorkspaceMetaRow(key=key, value=value, updated_at=utcnow()))
            else:
                row.value = value
                row.updated_at = utcnow()

    def active_codebook(self) -> Codebook | None:
        """The workspace's active codebook (what every command codes against), if set."""
        version = self.meta(self.ACTIVE_CODEBOOK)
        return self.codebook(str(version)) if version else None

    def set_active_codebook(self, codebook: Codebook | str) -> str:
        """Make a codebook (stored first if given as one) or a stored version active."""
        if isinstance(codebook, Codebook):
            version = self.save_codebook(codebook)
        else:
            version = codebook
            with self.session() as s:
                if s.get(CodebookRow, version) is None:
                    raise KeyError(f"no codebook version {version} in the store")
        self.set_meta(self.ACTIVE_CODEBOOK, version)
        return version

    def codebook_versions(self) -> list[tuple[str, str, int]]:
        """Stored codebooks, oldest first: (version, name, number of codes)."""
        with self.session() as s:
            counts = dict(
                s.execute(
                    select(CodeRow.codebook_version, func.count()).group_by(
                        CodeRow.codebook_version
                    )
                ).all()
            )
            rows = s.scalars(select(CodebookRow).order_by(CodebookRow.created_at)).all()
            return [(r.version, r.name, int(counts.get(r.version, 0))) for r in rows]

    @staticmethod
    def _gold_origin_key(gold_set: str, coder: str) -> str:
        import json

        return "gold_origin:" + json.dumps([gold_set, coder], ensure_ascii=False)

    def gold_origin(self, gold_set: str, coder: str) -> str | None:
        """'constructed' when the gold data declared the coder constructed, else None."""
        value = self.meta(self._gold_origin_key(gold_set, coder))
        return str(value) if value else None

    def set_gold_origin(self, gold_set: str, coder: str, origin: str | None) -> None:
        key = self._gold_origin_key(gold_set, coder)
        if origin:
            self.set_meta(key, origin)
        else:
            with self.session() as s:
                s.execute(delete(WorkspaceMetaRow).where(WorkspaceMetaRow.key == key))

    def delete_gold_set(self, gold_set: str) -> int:
        """Remove a gold set (every coder's spans and scope) and what is noted about it;
        returns the spans deleted."""
        with self.session() as s:
            coders = set(
                s.scalars(select(GoldScopeRow.coder).where(GoldScopeRow.gold_set == gold_set))
            )
            result = s.execute(delete(GoldSpanRow).where(GoldSpanRow.gold_set == gold_set))
            s.execute(delete(GoldScopeRow).where(GoldScopeRow.gold_set == gold_set))
            keys = [self._gold_origin_key(gold_set, c) for c in coders]
            if keys:
                s.execute(delete(WorkspaceMetaRow).where(WorkspaceMetaRow.key.in_(keys)))
            return int(result.rowcount or 0)

    def human_coded_codes(self) -> dict[str, set[str]]:
        """Codes applied by the workspace's gold sets and reviewers: source -> codes."""
        out: dict[str, set[str]] = {}
        with self.session() as s:
            for gold_set, code in s.execute(select(GoldSpanRow.gold_set, GoldSpanRow.code)):
                out.setdefault(f"gold set '{gold_set}'", set()).add(str(code))
            for (codes,) in s.execute(select(ReviewStateRow.codes)):
                out.setdefault("reviewed codings", set()).update(map(str, codes or []))
        return out


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the store configured by a ``Settings``."""
    return Store.open(settings.db_url)


def _example_ref(ref: tuple) -> str:
    """A few-shot example's source as recorded: a passage id, or transcript:start-end."""
    if ref[0] == "passage":
        return ref[1]
    return f"{ref[1]}:{ref[2]}-{ref[3]}"


def _merged(ranges: list[Range]) -> list[Range]:
    """Sorted ranges with overlapping and touching ones joined."""
    out: list[Range] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _inside(start: int, end: int, ranges: list[Range]) -> bool:
    return any(a <= start and end <= b for a, b in ranges)


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
        turn_end=p.turn_end,
        pieces=[_piece_list(x) for x in p.pieces] or None,
    )


def _piece_list(p: Piece) -> list:
    return [p.turn_index, p.speaker, p.char_start, p.char_end, p.codable]


def _piece(row: list) -> Piece:
    turn, speaker, start, end, codable = row
    return Piece(turn_index=turn, speaker=speaker, char_start=start, char_end=end, codable=codable)


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
        turn_end=r.turn_end,
        pieces=[_piece(x) for x in r.pieces or []],
    )


def _proposal_row(set_id: int, passage_id: str, p: CodeProposal) -> ProposalRow:
    return ProposalRow(
        set_id=set_id,
        passage_id=passage_id,
        code=p.code,
        rationale=p.rationale,
        evidence=p.evidence,
        start=p.start,
        end=p.end,
        evidence_start=p.evidence_start,
        evidence_end=p.evidence_end,
        confidence=p.confidence,
        in_candidates=p.in_candidates,
        valid=p.valid,
        invalid_reason=p.invalid_reason,
        located=p.located,
    )


def _proposal_set(r: ProposalSetRow, props: list[ProposalRow]) -> ProposalSet:
    def conv(p: ProposalRow) -> CodeProposal:
        return CodeProposal(
            code=p.code,
            rationale=p.rationale,
            evidence=p.evidence,
            start=p.start,
            end=p.end,
            evidence_start=p.evidence_start,
            evidence_end=p.evidence_end,
            confidence=p.confidence,
            in_candidates=p.in_candidates,
            valid=p.valid,
            invalid_reason=p.invalid_reason,
            located=p.located,
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
