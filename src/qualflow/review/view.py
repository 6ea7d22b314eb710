"""What the unit page shows: the chunk's turns (context marked), the machine's proposed
spans and the track's coded spans highlighted (a colour per code), the proposals."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from sqlalchemy import select

from qualflow.db import ProposalRow, ProposalSetRow, TranscriptRow
from qualflow.models import Codebook, ContextTurn, Passage
from qualflow.review.codes import REVIEWABLE
from qualflow.review.units import ReviewSpan, codable_ranges
from qualflow.store import Store

PALETTE = 12  # colour classes c0..c11 in review.css


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
    located: str | None = None
    title_known: bool = True
    definition: str = ""
    inclusion: str = ""
    exclusion: str = ""
    number: int = 0
    colour: int = 0
    quote: str = ""  # the text of the span


@dataclass
class SpanView:
    span: ReviewSpan
    number: int
    colour: int
    text: str
    definition: str = ""

    @property
    def code(self) -> str:
        return self.span.code


@dataclass
class Segment:
    text: str
    start: int
    end: int
    proposals: list[int] = field(default_factory=list)  # item numbers of proposed spans
    coded: list[int] = field(default_factory=list)  # item numbers of coded spans
    colour: int | None = None  # of the first coded span, else of the first proposal
    title: str = ""


@dataclass
class PieceView:
    speaker: str | None
    codable: bool
    turn_index: int
    start: int
    end: int
    segments: list[Segment]


@dataclass
class UnitView:
    unit: Passage
    transcript: str
    participant: str | None
    before: list[ContextTurn]
    after: list[ContextTurn]
    pieces: list[PieceView]
    proposals: list[ProposalView]
    spans: list[SpanView]
    set_notes: list[str]
    sentences: list[tuple[int, int]]  # codable sentences inside the unit (keyboard moves)
    ranges: list[tuple[int, int]]  # codable stretches (where a span may lie)

    @property
    def passage(self) -> Passage:
        return self.unit


def colour_of(code: str, codebook: Codebook | None) -> int:
    """A stable colour class per code: its place in the codebook (else a hash)."""
    if codebook is not None:
        for i, c in enumerate(codebook.codes):
            if c.title == code:
                return i % PALETTE
    return sum(code.encode()) % PALETTE


def proposals_for(
    store: Store, passage_id: str, *, run: int | None = None, coder: str | None = None
) -> tuple[list[ProposalView], list[str]]:
    """Valid proposals of the unit's reviewable sets (newest set first, then by span
    start) and notes (e.g. why a set needs a human)."""
    with store.session() as s:
        q = (
            select(ProposalRow, ProposalSetRow)
            .join(ProposalSetRow, ProposalSetRow.id == ProposalRow.set_id)
            .where(
                ProposalRow.passage_id == passage_id,
                ProposalRow.valid.is_(True),
                ProposalSetRow.status.in_(REVIEWABLE),
            )
            .order_by(ProposalSetRow.id.desc(), ProposalRow.start, ProposalRow.id)
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
                start=p.start,
                end=p.end,
                confidence=p.confidence,
                in_candidates=p.in_candidates,
                coder=ps.coder,
                model=ps.model,
                run_id=ps.run_id,
                set_status=ps.status,
                set_reason=ps.reason,
                located=p.located,
            )
            for p, ps in s.execute(q)
        ]
        notes = []
        for ps in s.scalars(notes_q):
            if ps.status == "needs_human":
                notes.append(
                    f"{ps.coder} ({ps.model}) asks for a human: {ps.reason or 'no reason'}"
                )
            if ps.carried_from:
                notes.append(
                    f"{ps.coder} ({ps.model}) coded this text in an earlier version of the "
                    "transcript; its answer was carried over (the text is unchanged)."
                )
    for n, p in enumerate(out, start=1):
        p.number = n
    return out, list(dict.fromkeys(notes))


def describe(proposals: list[ProposalView], codebook: Codebook | None) -> None:
    """Attach the codebook definition and colour of each proposed code."""
    for p in proposals:
        code = codebook.get(p.code) if codebook else None
        p.title_known = code is not None
        p.colour = colour_of(p.code, codebook)
        if code is not None:
            p.definition, p.inclusion, p.exclusion = (
                code.description,
                code.inclusion,
                code.exclusion,
            )


def _hover(code: str, codebook: Codebook | None) -> str:
    found = codebook.get(code) if codebook else None
    if found is None:
        return f"{code} (not in the codebook)"
    return f"{code}: {found.description}" if found.description else code


def cut(
    start: int,
    end: int,
    text: str,
    proposed: dict[int, tuple[int, int]],
    coded: dict[int, tuple[int, int]],
) -> list[tuple[int, int, list[int], list[int]]]:
    """Cut ``text`` (transcript offsets ``start``-``end``) at every span boundary
    inside it; each piece lists the proposed and coded items covering it."""
    inside = [x for r in [*proposed.values(), *coded.values()] for x in r if start < x < end]
    cuts = sorted({start, end, *inside})
    out = []
    for a, b in pairwise(cuts):
        if a == b:
            continue
        ps = sorted(n for n, (s, e) in proposed.items() if s <= a and b <= e)
        cs = sorted(n for n, (s, e) in coded.items() if s <= a and b <= e)
        out.append((a, b, ps, cs))
    return out


def unit_view(
    store: Store,
    unit: Passage,
    *,
    codebook: Codebook | None,
    show_proposals: bool,
    spans: list[ReviewSpan],
    run: int | None = None,
    coder: str | None = None,
) -> UnitView:
    """The page data of one unit for one track (its coded ``spans``)."""
    ctx = store.contexts([unit], turns_before=1, turns_after=1)[0]
    with store.session() as s:
        t = s.get(TranscriptRow, unit.transcript_id)
        transcript = t.name if t else unit.transcript_id
    proposals, notes = (
        proposals_for(store, unit.id, run=run, coder=coder) if show_proposals else ([], [])
    )
    describe(proposals, codebook)
    for p in proposals:
        if p.start is not None and p.end is not None:
            p.quote = _slice(unit, p.start, p.end)
    first_span = len(proposals) + 1
    span_views = [
        SpanView(
            span=sp,
            number=first_span + i,
            colour=colour_of(sp.code, codebook),
            text=_slice(unit, sp.start, sp.end),
            definition=_hover(sp.code, codebook),
        )
        for i, sp in enumerate(sorted(spans, key=lambda x: (x.start, x.end, x.code)))
    ]
    proposed = {
        p.number: (p.start, p.end) for p in proposals if p.start is not None and p.end is not None
    }
    coded = {v.number: (v.span.start, v.span.end) for v in span_views}
    colours = {p.number: p.colour for p in proposals} | {v.number: v.colour for v in span_views}
    titles = {p.number: _hover(p.code, codebook) for p in proposals}
    titles |= {v.number: v.definition for v in span_views}
    pieces = []
    for piece in unit.layout():
        text = _slice(unit, piece.char_start, piece.char_end)
        segs = []
        parts = (
            cut(piece.char_start, piece.char_end, text, proposed, coded)
            if piece.codable
            else [(piece.char_start, piece.char_end, [], [])]
        )
        for a, b, ps, cs in parts:
            first = (cs or ps or [None])[0]
            segs.append(
                Segment(
                    text=_slice(unit, a, b),
                    start=a,
                    end=b,
                    proposals=ps,
                    coded=cs,
                    colour=colours.get(first) if first is not None else None,
                    title="\n".join(dict.fromkeys(titles[n] for n in [*cs, *ps])),
                )
            )
        pieces.append(
            PieceView(
                speaker=piece.speaker,
                codable=piece.codable,
                turn_index=piece.turn_index,
                start=piece.char_start,
                end=piece.char_end,
                segments=segs,
            )
        )
    return UnitView(
        unit=unit,
        transcript=transcript,
        participant=ctx.participant_id,
        before=ctx.before,
        after=ctx.after,
        pieces=pieces,
        proposals=proposals,
        spans=span_views,
        set_notes=notes,
        sentences=_sentences(store, unit),
        ranges=codable_ranges(unit),
    )


def _slice(unit: Passage, start: int, end: int) -> str:
    return unit.text[max(0, start - unit.char_start) : max(0, end - unit.char_start)]


def _sentences(store: Store, unit: Passage) -> list[tuple[int, int]]:
    """Codable grid sentences inside the unit's codable stretches (else the stretches)."""
    ranges = codable_ranges(unit)
    grid = store.passages(
        transcript_id=unit.transcript_id, segmentation=store.grid_of(unit.transcript_id)
    )
    found = [
        (g.char_start, g.char_end)
        for g in grid
        if g.codable
        and any(a <= g.char_start and g.char_end <= b for a, b in ranges)
        and g.char_end - g.char_start < unit.char_end - unit.char_start + 1
    ]
    return sorted(found) or ranges
