"""Gold codings as spans: what the exchange readers give and the REFI-QDA writer takes.

A Taguette or REFI-QDA coder is a ``SpanCoding``: the coder's exact highlights as
``Span`` objects plus its scope (the text it answered for). Readers build them from
the file, without any passage in between; the writer turns them back into selections
with the same offsets. So no coding crosses the sentence grid on its way in or out.

The store wiring is one function per direction, ``save_gold_spans`` and
``load_gold_spans``. Today they keep spans in the ``highlights`` table (source = the
gold set), each coder's scope with the import record (``exchange_imports``), and, for
the modules that still read passage codings, the spans projected onto the passages of
the scope (``qualflow.highlights.map_highlights``) in ``gold_codings``. When gold moves
to span tables, only these two functions change.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from qualflow.db import GoldCodingRow
from qualflow.highlights import Highlight, load_highlights, map_highlights, save_highlights
from qualflow.models import Passage, Range, Span, SpanCoding, Transcript
from qualflow.store import Store

# ---------------------------------------------------------------------- span helpers


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sorted ranges with overlapping ones joined (touching ones stay apart, so that
    passage ranges keep their identity)."""
    out: list[Range] = []
    for start, end in sorted(ranges):
        if out and start < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def whole_texts(transcripts: Iterable[Transcript]) -> dict[str, list[Range]]:
    """A scope covering the whole text of each transcript."""
    return {t.id: [(0, len(t.text))] for t in transcripts}


def overlaps(a: Range, b: Range) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def span_of(h: Highlight) -> Span | None:
    """The span of a coded highlight (None for a highlight without a code)."""
    if h.code is None:
        return None
    return Span(h.transcript_id, h.char_start, h.char_end, h.code)


def codings_from_highlights(
    highlights: Iterable[Highlight], scopes: dict[str, dict[str, list[Range]]]
) -> list[SpanCoding]:
    """One ``SpanCoding`` per coder: the coded highlights as spans (in order) and the
    coder's scope from ``scopes`` (coder -> transcript -> ranges). A coder in
    ``scopes`` without highlights is a coder who coded nothing there."""
    by_coder: dict[str, list[Span]] = defaultdict(list)
    for h in highlights:
        span = span_of(h)
        if span is not None:
            by_coder[h.coder].append(span)
        else:
            by_coder.setdefault(h.coder, [])
    return [
        SpanCoding(coder=coder, spans=by_coder.get(coder, []), scope=dict(scopes.get(coder, {})))
        for coder in sorted(set(by_coder) | set(scopes))
    ]


def retarget(coding: SpanCoding, moved: dict[str, str]) -> SpanCoding:
    """The coding with transcript ids replaced (``moved``: old id -> new id)."""
    return SpanCoding(
        coder=coding.coder,
        spans=[
            Span(moved.get(s.transcript_id, s.transcript_id), s.start, s.end, s.code)
            for s in coding.spans
        ],
        scope={moved.get(tid, tid): list(r) for tid, r in coding.scope.items()},
    )


def restrict(coding: SpanCoding, transcript_ids: set[str]) -> SpanCoding:
    """The coding on the given transcripts only."""
    return SpanCoding(
        coder=coding.coder,
        spans=[s for s in coding.spans if s.transcript_id in transcript_ids],
        scope={tid: r for tid, r in coding.scope.items() if tid in transcript_ids},
    )


# ---------------------------------------------------------------------- store: in


def save_gold_spans(
    store: Store,
    gold_set: str,
    codings: list[SpanCoding],
    highlights: list[Highlight],
    *,
    codebook_version: str | None,
    segmentation: str,
    min_overlap: float = 0.5,
) -> dict[str, int]:
    """Store a gold set given as spans; returns coder -> passages carrying a code.

    ``highlights`` are the rows behind the spans (with the tool's ids, snippets and
    memos; uncoded ones too); they replace the set's highlights on the transcripts they
    touch. Each coder's scope is kept with the import record (``scope_record``), and
    the spans are projected onto the passages of ``segmentation`` that the scope
    touches, for the passage-level readers of ``gold_codings``.
    """
    save_highlights(store, gold_set, highlights)
    passages: dict[str, list[Passage]] = {}
    coded: dict[str, int] = {}
    for coding in codings:
        scoped: list[Passage] = []
        for tid, ranges in coding.scope.items():
            if tid not in passages:
                passages[tid] = store.passages(transcript_id=tid, segmentation=segmentation)
            scoped += [
                p
                for p in passages[tid]
                if any(overlaps((p.char_start, p.char_end), r) for r in ranges)
            ]
        mine = [
            Highlight(
                transcript_id=s.transcript_id, char_start=s.start, char_end=s.end, code=s.code
            )
            for s in coding.spans
        ]
        passage_coding = map_highlights(scoped, mine, min_overlap=min_overlap)
        store.save_gold(gold_set, coding.coder, passage_coding, codebook_version)
        coded[coding.coder] = sum(1 for codes in passage_coding.values() if codes)
    return coded


def scope_record(codings: Iterable[SpanCoding]) -> dict[str, dict[str, list[list[int]]]]:
    """Each coder's scope as JSON for the import record (coder -> transcript -> ranges)."""
    return {
        c.coder: {tid: [[a, b] for a, b in ranges] for tid, ranges in c.scope.items()}
        for c in codings
    }


# ---------------------------------------------------------------------- store: out


@dataclass
class GoldCoderSpans:
    """One coder of a gold set as spans, with the stored rows behind them.

    ``highlights[i]`` is the row behind ``coding.spans[i]`` when the set came from a
    span format (Taguette, REFI-QDA); ``uncoded`` holds that coder's highlights without
    a code. A gold set given by passages (JSONL) has a span over each coded passage,
    its passages as scope, and no highlight rows. ``created_at`` is when the set was
    stored.
    """

    gold_set: str
    coding: SpanCoding
    highlights: list[Highlight] = field(default_factory=list)
    uncoded: list[Highlight] = field(default_factory=list)
    created_at: datetime | None = None

    @property
    def from_highlights(self) -> bool:
        return bool(self.highlights or self.uncoded)


def load_gold_spans(
    store: Store, gold_set: str, scopes: dict[str, dict[str, list[list[int]]]] | None = None
) -> list[GoldCoderSpans]:
    """Every coder of a gold set as spans: the stored highlights when the set has them
    (exact offsets), else a span over each coded passage. ``scopes`` is the scope kept
    by the import (``scope_record``); without it a highlight coder's scope is the whole
    text of the transcripts its passages lie in."""
    with store.session() as s:
        rows = s.execute(
            select(
                GoldCodingRow.coder,
                GoldCodingRow.passage_id,
                GoldCodingRow.codes,
                GoldCodingRow.created_at,
            ).where(GoldCodingRow.gold_set == gold_set)
        ).all()
    by_coder: dict[str, dict[str, list[str]]] = defaultdict(dict)
    created: dict[str, datetime] = {}
    for coder, pid, codes, when in rows:
        by_coder[coder][pid] = list(codes or [])
        if when is not None and (coder not in created or when < created[coder]):
            created[coder] = when
    highlights: dict[str, list[Highlight]] = defaultdict(list)
    for h in load_highlights(store, source=gold_set):
        highlights[h.coder].append(h)
    from qualflow.highlights import passages_by_ids

    wanted = {pid for coding in by_coder.values() for pid in coding}
    passages = {p.id: p for p in passages_by_ids(store, wanted)}
    lengths = _text_lengths(store, {p.transcript_id for p in passages.values()})
    out: list[GoldCoderSpans] = []
    for coder in sorted(set(by_coder) | set(highlights)):
        mine = highlights.get(coder, [])
        coded = [h for h in mine if h.code is not None]
        if mine:
            scope = _stored_scope((scopes or {}).get(coder))
            if scope is None:
                tids = {passages[pid].transcript_id for pid in by_coder[coder] if pid in passages}
                tids |= {h.transcript_id for h in mine}
                scope = {tid: [(0, lengths[tid])] for tid in tids if tid in lengths}
            coding = SpanCoding(coder, [s for h in coded if (s := span_of(h))], scope)
            out.append(
                GoldCoderSpans(
                    gold_set,
                    coding,
                    coded,
                    [h for h in mine if h.code is None],
                    created.get(coder),
                )
            )
        else:
            out.append(
                GoldCoderSpans(
                    gold_set,
                    _passage_spans(coder, by_coder[coder], passages),
                    created_at=created.get(coder),
                )
            )
    return out


def _stored_scope(raw: dict[str, list[list[int]]] | None) -> dict[str, list[Range]] | None:
    if raw is None:
        return None
    return {tid: [(int(a), int(b)) for a, b in ranges] for tid, ranges in raw.items()}


def _passage_spans(
    coder: str, coding: dict[str, list[str]], passages: dict[str, Passage]
) -> SpanCoding:
    """A passage coding as spans: one span per (passage, code), the passages as scope."""
    spans: list[Span] = []
    scope: dict[str, list[Range]] = defaultdict(list)
    for pid, codes in coding.items():
        p = passages.get(pid)
        if p is None:
            continue
        scope[p.transcript_id].append((p.char_start, p.char_end))
        spans += [Span(p.transcript_id, p.char_start, p.char_end, c) for c in sorted(codes)]
    spans.sort()
    return SpanCoding(coder, spans, {tid: merge_ranges(r) for tid, r in scope.items()})


def _text_lengths(store: Store, transcript_ids: set[str]) -> dict[str, int]:
    from sqlalchemy import func

    from qualflow.db import TranscriptRow

    if not transcript_ids:
        return {}
    with store.session() as s:
        return dict(
            s.execute(
                select(TranscriptRow.id, func.length(TranscriptRow.text)).where(
                    TranscriptRow.id.in_(sorted(transcript_ids))
                )
            )
            .tuples()
            .all()
        )
