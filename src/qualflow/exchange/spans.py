"""Gold codings as spans: what the exchange readers give and the REFI-QDA writer takes.

A Taguette or REFI-QDA coder is a ``SpanCoding``: the coder's exact highlights as
``Span`` objects plus its scope (the text it answered for). Readers build them from
the file, without any passage in between; the writer turns them back into selections
with the same offsets. So no coding crosses the sentence grid on its way in or out.

The store wiring is one function per direction, ``save_gold_spans`` and
``load_gold_spans``: a gold coder's spans and scope live in the store's span gold
(``gold_spans``, ``gold_scopes``), and the tool's own rows behind them (ids, snippets,
memos, highlights without a code) in the ``highlights`` table (source = the gold set),
so an export can give them back.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select

from qualflow.db import GoldScopeRow
from qualflow.highlights import Highlight, load_highlights, map_highlights, save_highlights
from qualflow.models import Coding, Passage, Range, Span, SpanCoding, Transcript
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


# ---------------------------------------------------------------------- sentences


def project_to_sentences(
    coding: SpanCoding, sentences: Iterable[Passage], *, threshold: float = 0.5
) -> Coding:
    """Sentence id -> codes by the sentence rule of ``docs/spans.md``
    (``qualflow.spans.to_sentences``): sentences outside the coding's scope are left out
    (never judged); sentences in scope that no span reaches carry ``frozenset()``."""
    from qualflow.spans import to_sentences

    return to_sentences(coding, sentences, threshold=threshold)


def _holds(ranges: list[Range], start: int, end: int) -> bool:
    """Whether one of some joined, sorted ranges holds all of ``[start, end)``."""
    i = bisect.bisect_right(ranges, (start, math.inf)) - 1
    return i >= 0 and ranges[i][0] <= start and end <= ranges[i][1]


def scope_sentences(store: Store, coding: SpanCoding) -> list[Passage]:
    """The grid passages (sentences, or the transcript's stored grid when it has no
    sentences) that lie inside the coding's scope, in transcript order."""
    out: list[Passage] = []
    for tid in sorted(coding.scope):
        scope = join_ranges(coding.scope[tid])
        grid = store.passages(transcript_id=tid, segmentation=store.grid_of(tid))
        out += [p for p in grid if _holds(scope, p.char_start, p.char_end)]
    return out


def join_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sorted ranges with overlapping and touching ones joined (for coverage; unlike
    ``merge_ranges``, which keeps touching ranges apart)."""
    out: list[Range] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


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
    """Store a gold set given as spans; returns coder -> grid passages carrying a code.

    Each coder's spans and scope go to the store's span gold; ``highlights`` are the
    rows behind the spans (with the tool's ids, snippets and memos; uncoded ones too)
    and replace the set's highlights on the transcripts they touch. The count is of
    the passages of ``segmentation`` that the spans code by ``map_highlights``'s rule.
    """
    save_highlights(store, gold_set, highlights)
    passages: dict[str, list[Passage]] = {}
    coded: dict[str, int] = {}
    for coding in codings:
        store.save_gold_coding(gold_set, coding, codebook_version)
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
    """Every coder of a gold set as spans, from the store's span gold. When the set came
    from a span format, the spans are those of its highlight rows, in their order, so
    ``highlights[i]`` stays the row behind ``coding.spans[i]``. ``scopes`` (the scope
    an import recorded) is used only for coders the store holds no scope for."""
    stored = store.gold_codings(gold_set)
    with store.session() as s:
        created = dict(
            s.execute(
                select(GoldScopeRow.coder, func.min(GoldScopeRow.created_at))
                .where(GoldScopeRow.gold_set == gold_set)
                .group_by(GoldScopeRow.coder)
            )
            .tuples()
            .all()
        )
    highlights: dict[str, list[Highlight]] = defaultdict(list)
    for h in load_highlights(store, source=gold_set):
        highlights[h.coder].append(h)
    out: list[GoldCoderSpans] = []
    for coder in sorted(set(stored) | set(highlights)):
        coding = stored.get(coder) or SpanCoding(coder=coder)
        if not coding.scope:
            coding.scope = _stored_scope((scopes or {}).get(coder)) or {}
        mine = highlights.get(coder, [])
        coded = [h for h in mine if h.code is not None]
        if mine:
            coding = SpanCoding(coder, [sp for h in coded if (sp := span_of(h))], coding.scope)
        out.append(
            GoldCoderSpans(
                gold_set,
                coding,
                coded,
                [h for h in mine if h.code is None],
                created.get(coder),
            )
        )
    return out


def _stored_scope(raw: dict[str, list[list[int]]] | None) -> dict[str, list[Range]] | None:
    if raw is None:
        return None
    return {tid: [(int(a), int(b)) for a, b in ranges] for tid, ranges in raw.items()}
