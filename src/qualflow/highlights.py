"""Character-span codings (highlights) and how they become passage codings.

Other tools (Taguette, NVivo, ATLAS.ti, QualCoder via REFI-QDA) code spans of text,
qualflow codes passages. ``map_highlights`` turns the first into the second with
one documented rule:

    a passage carries code C when some highlight with code C
    (a) covers at least ``min_overlap`` of the passage's characters, or
    (b) lies entirely inside the passage (a short highlight within a long passage;
        blanks at the highlight's ends do not count), or
    (c) overlaps the passage more than any other passage, when (a) and (b) hold for
        no passage at all (so every highlight lands on at least one passage).

Passages no highlight reaches carry ``frozenset()``: "no code", which is what an
unhighlighted sentence means in Taguette. Highlights without a code (Taguette allows
them) never produce a code; importers report them instead.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable

from pydantic import BaseModel, Field
from sqlalchemy import delete, select

from qualflow.db import HighlightRow
from qualflow.models import Coding, Passage
from qualflow.store import Store


class Highlight(BaseModel):
    """One coded span of a transcript's text; offsets are code points into ``text``."""

    transcript_id: str
    char_start: int = Field(ge=0)
    char_end: int = Field(ge=0)
    code: str | None = Field(default=None, description="None for a highlight with no code.")
    coder: str = "unknown"
    snippet: str = Field(default="", description="The highlighted text, as the tool stored it.")
    external_id: str | None = Field(default=None, description="Id in the source tool.")
    memo: str | None = None

    @property
    def length(self) -> int:
        return max(0, self.char_end - self.char_start)


def _core(h: Highlight) -> tuple[int, int]:
    """The highlight's span without the blanks at its ends (when the snippet says so)."""
    if len(h.snippet) != h.length:
        return h.char_start, h.char_end
    lead = len(h.snippet) - len(h.snippet.lstrip())
    trail = len(h.snippet) - len(h.snippet.rstrip())
    if lead + trail >= h.length:
        return h.char_start, h.char_end
    return h.char_start + lead, h.char_end - trail


def _overlap(h: Highlight, p: Passage) -> int:
    return min(h.char_end, p.char_end) - max(h.char_start, p.char_start)


def covers(highlight: Highlight, passage: Passage, min_overlap: float = 0.5) -> bool:
    """Whether ``highlight`` codes ``passage`` by rule (a) or (b) of the module docstring."""
    if highlight.transcript_id != passage.transcript_id:
        return False
    overlap = _overlap(highlight, passage)
    length = passage.char_end - passage.char_start
    if overlap <= 0 or length <= 0:
        return False
    if overlap >= min_overlap * length:
        return True
    start, end = _core(highlight)
    return passage.char_start <= start and end <= passage.char_end


def map_highlights(
    passages: list[Passage], highlights: list[Highlight], *, min_overlap: float = 0.5
) -> Coding:
    """Passage id -> codes carried, for every passage given (uncoded ones -> frozenset())."""
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    codes: dict[str, set[str]] = {p.id: set() for p in passages}
    by_transcript: dict[str, list[Passage]] = defaultdict(list)
    for p in passages:
        by_transcript[p.transcript_id].append(p)
    starts: dict[str, list[int]] = {}
    for tid, ps in by_transcript.items():
        ps.sort(key=lambda p: (p.char_start, p.char_end))
        starts[tid] = [p.char_start for p in ps]
    longest = {tid: max(p.char_end - p.char_start for p in ps) for tid, ps in by_transcript.items()}
    for h in highlights:
        ps = by_transcript.get(h.transcript_id)
        if h.code is None or h.char_end <= h.char_start or not ps:
            continue
        lo = bisect.bisect_left(starts[h.transcript_id], h.char_start - longest[h.transcript_id])
        hi = bisect.bisect_left(starts[h.transcript_id], h.char_end)
        touched = [p for p in ps[lo:hi] if _overlap(h, p) > 0]
        hits = [p for p in touched if covers(h, p, min_overlap)]
        if not hits and touched:
            hits = [max(touched, key=lambda p: _overlap(h, p))]
        for p in hits:
            codes[p.id].add(h.code)
    return {pid: frozenset(cs) for pid, cs in codes.items()}


def coding_by_coder(
    passages: list[Passage], highlights: list[Highlight], *, min_overlap: float = 0.5
) -> dict[str, Coding]:
    """``map_highlights`` per coder: coder -> passage id -> codes."""
    coders: dict[str, list[Highlight]] = defaultdict(list)
    for h in highlights:
        coders[h.coder].append(h)
    return {
        coder: map_highlights(passages, hs, min_overlap=min_overlap)
        for coder, hs in sorted(coders.items())
    }


# ---------------------------------------------------------------------- store


def save_highlights(store: Store, source: str, highlights: Iterable[Highlight]) -> int:
    """Replace the highlights of ``source`` on the transcripts they touch; returns rows."""
    items = list(highlights)
    transcript_ids = {h.transcript_id for h in items}
    with store.session() as s:
        if transcript_ids:
            s.execute(
                delete(HighlightRow).where(
                    HighlightRow.source == source,
                    HighlightRow.transcript_id.in_(transcript_ids),
                )
            )
        s.add_all(
            HighlightRow(
                source=source,
                external_id=h.external_id,
                coder=h.coder,
                transcript_id=h.transcript_id,
                char_start=h.char_start,
                char_end=h.char_end,
                code=h.code,
                snippet=h.snippet,
                memo=h.memo,
            )
            for h in items
        )
    return len(items)


def load_highlights(
    store: Store, *, source: str | None = None, transcript_id: str | None = None
) -> list[Highlight]:
    """Stored highlights, optionally of one source and/or one transcript."""
    with store.session() as s:
        q = select(HighlightRow).order_by(HighlightRow.id)
        if source is not None:
            q = q.where(HighlightRow.source == source)
        if transcript_id is not None:
            q = q.where(HighlightRow.transcript_id == transcript_id)
        return [
            Highlight(
                transcript_id=r.transcript_id,
                char_start=r.char_start,
                char_end=r.char_end,
                code=r.code,
                coder=r.coder,
                snippet=r.snippet,
                external_id=r.external_id,
                memo=r.memo,
            )
            for r in s.scalars(q)
        ]


def passages_by_ids(store: Store, ids: Iterable[str], *, chunk: int = 5000) -> list[Passage]:
    """Stored passages by id, queried in chunks (SQL engines cap bound parameters)."""
    wanted = list(dict.fromkeys(ids))
    out: list[Passage] = []
    for i in range(0, len(wanted), chunk):
        out.extend(store.passages(ids=wanted[i : i + chunk]))
    return out
