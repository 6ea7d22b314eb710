"""What the passage view shows: the passage in context, its proposals, the highlights."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from sqlalchemy import select

from qualflow.db import ProposalRow, ProposalSetRow, TranscriptRow
from qualflow.models import Codebook, ContextTurn, Passage
from qualflow.review.codes import REVIEWABLE
from qualflow.store import Store


@dataclass
class ProposalView:
    id: int
    code: str
    rationale: str
    evidence: str
    start: int | None
    end: int | None
    confidence: float
    in_candidates: bool
    coder: str
    model: str
    run_id: int | None
    set_status: str
    set_reason: str | None
    title_known: bool = True
    definition: str = ""
    inclusion: str = ""
    exclusion: str = ""
    number: int = 0


@dataclass
class Segment:
    text: str
    proposals: list[int] = field(default_factory=list)  # proposal numbers (1-based)


@dataclass
class PassageView:
    passage: Passage
    transcript: str
    participant: str | None
    before: list[ContextTurn]
    after: list[ContextTurn]
    proposals: list[ProposalView]
    segments: list[Segment]
    set_notes: list[str]


def proposals_for(
    store: Store, passage_id: str, *, run: int | None = None, coder: str | None = None
) -> tuple[list[ProposalView], list[str]]:
    """Valid proposals of the passage's reviewable sets (newest set first) and notes
    (e.g. why a set needs a human)."""
    with store.session() as s:
        q = (
            select(ProposalRow, ProposalSetRow)
            .join(ProposalSetRow, ProposalSetRow.id == ProposalRow.set_id)
            .where(
                ProposalRow.passage_id == passage_id,
                ProposalRow.valid.is_(True),
                ProposalSetRow.status.in_(REVIEWABLE),
            )
            .order_by(ProposalSetRow.id.desc(), ProposalRow.confidence.desc(), ProposalRow.id)
        )
        notes_q = select(ProposalSetRow).where(
            ProposalSetRow.passage_id == passage_id, ProposalSetRow.status.in_(REVIEWABLE)
        )
        if run is not None:
            q = q.where(ProposalSetRow.run_id == run)
            notes_q = notes_q.where(ProposalSetRow.run_id == run)
        if coder:
            q = q.where(ProposalSetRow.coder == coder)
            notes_q = notes_q.where(ProposalSetRow.coder == coder)
        out = [
            ProposalView(
                id=p.id,
                code=p.code,
                rationale=p.rationale,
                evidence=p.evidence,
                start=p.evidence_start,
                end=p.evidence_end,
                confidence=p.confidence,
                in_candidates=p.in_candidates,
                coder=ps.coder,
                model=ps.model,
                run_id=ps.run_id,
                set_status=ps.status,
                set_reason=ps.reason,
            )
            for p, ps in s.execute(q)
        ]
        notes = []
        for ps in s.scalars(notes_q):
            if ps.status == "needs_human":
                notes.append(
                    f"{ps.coder} ({ps.model}) asks for a human: {ps.reason or 'no reason'}"
                )
    for n, p in enumerate(out, start=1):
        p.number = n
    return out, notes


def describe(proposals: list[ProposalView], codebook: Codebook | None) -> None:
    """Attach the codebook definition of each proposed code."""
    for p in proposals:
        code = codebook.get(p.code) if codebook else None
        p.title_known = code is not None
        if code is not None:
            p.definition, p.inclusion, p.exclusion = (
                code.description,
                code.inclusion,
                code.exclusion,
            )


def evidence_span(text: str, p: ProposalView) -> tuple[int, int] | None:
    """The evidence quote's span in the passage: the stored offsets when they point at
    the quote, else the first verbatim occurrence, else None."""
    ok = p.start is not None and p.end is not None and 0 <= p.start < p.end <= len(text)
    if ok and (not p.evidence or text[p.start : p.end] == p.evidence):
        return p.start, p.end
    if p.evidence:
        at = text.find(p.evidence)
        if at >= 0:
            return at, at + len(p.evidence)
    return None


def segments(text: str, spans: dict[int, tuple[int, int]]) -> list[Segment]:
    """Cut the passage at every span boundary; each piece lists the proposals covering it."""
    cuts = sorted({0, len(text), *(x for span in spans.values() for x in span)})
    out = []
    for a, b in pairwise(cuts):
        if a == b:
            continue
        covering = sorted(n for n, (s, e) in spans.items() if s <= a and b <= e)
        out.append(Segment(text[a:b], covering))
    return out


def passage_view(
    store: Store,
    passage: Passage,
    *,
    codebook: Codebook | None,
    show_proposals: bool,
    run: int | None = None,
    coder: str | None = None,
) -> PassageView:
    ctx = store.contexts([passage], turns_before=1, turns_after=1)[0]
    with store.session() as s:
        t = s.get(TranscriptRow, passage.transcript_id)
        transcript = t.name if t else passage.transcript_id
    proposals, notes = (
        proposals_for(store, passage.id, run=run, coder=coder) if show_proposals else ([], [])
    )
    describe(proposals, codebook)
    spans = {p.number: sp for p in proposals if (sp := evidence_span(passage.text, p))}
    return PassageView(
        passage=passage,
        transcript=transcript,
        participant=ctx.participant_id,
        before=ctx.before,
        after=ctx.after,
        proposals=proposals,
        segments=segments(passage.text, spans),
        set_notes=notes,
    )
