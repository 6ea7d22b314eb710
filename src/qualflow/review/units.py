"""Review spans and where they may lie in a unit of review.

A reviewer's coding of a unit (a chunk, or a sentence passage of a store made before
chunks) is a set of spans: a code on exact offsets into the transcript text, each with
where it came from (``accepted`` machine proposal, ``adjusted`` proposal, ``added`` by
the reviewer). A span lies inside one *codable range* of its unit: a codable piece, or
consecutive codable pieces of one turn with nothing but whitespace between them (a long
answer split at a sentence boundary is still one stretch of talk). Context (an
interviewer's question, a guide line read aloud) is never coded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from qualflow.models import Passage, Range

Origin = Literal["accepted", "adjusted", "added"]
ORIGINS: tuple[str, ...] = ("accepted", "adjusted", "added")


class SpanError(ValueError):
    """A span that cannot lie where it was asked to (names the reason)."""


@dataclass(frozen=True, order=True)
class ReviewSpan:
    """One coded span of a review track (offsets into the transcript text, end
    exclusive). ``proposal_id`` names the machine proposal it came from, if any."""

    code: str
    start: int
    end: int
    origin: str = "added"
    proposal_id: int | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        """What identifies a span within a track: code and boundaries."""
        return (self.code, self.start, self.end)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "start": self.start,
            "end": self.end,
            "origin": self.origin,
            "proposal_id": self.proposal_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReviewSpan:
        pid = data.get("proposal_id")
        return cls(
            code=str(data["code"]),
            start=int(data["start"]),
            end=int(data["end"]),
            origin=str(data.get("origin") or "added"),
            proposal_id=int(pid) if pid is not None else None,
        )


def spans_from_json(rows: Iterable[Mapping[str, Any]] | None) -> list[ReviewSpan]:
    return sorted(ReviewSpan.from_json(r) for r in rows or [])


def spans_to_json(spans: Iterable[ReviewSpan]) -> list[dict[str, Any]]:
    return [s.to_json() for s in sorted(spans)]


def codes_of(spans: Iterable[ReviewSpan]) -> list[str]:
    return sorted({s.code for s in spans})


def codable_ranges(unit: Passage) -> list[Range]:
    """The unit's codable stretches of talk: its codable pieces, joined where pieces of
    one turn follow each other with only whitespace between them."""
    out: list[tuple[int, int, int]] = []  # (turn, start, end)
    for piece in sorted(unit.codable_pieces(), key=lambda p: p.char_start):
        if out and out[-1][0] == piece.turn_index:
            gap = _text(unit, out[-1][2], piece.char_start)
            if not gap.strip():
                out[-1] = (piece.turn_index, out[-1][1], max(out[-1][2], piece.char_end))
                continue
        out.append((piece.turn_index, piece.char_start, piece.char_end))
    return [(a, b) for _, a, b in out]


def _text(unit: Passage, start: int, end: int) -> str:
    return unit.text[start - unit.char_start : end - unit.char_start]


def place(unit: Passage, start: int, end: int) -> tuple[int, int]:
    """The span ``start``-``end`` trimmed of surrounding whitespace, checked to lie
    inside one codable range of the unit; ``SpanError`` with the reason otherwise."""
    if start >= end:
        raise SpanError(f"the span {start}-{end} is empty (start must be before end)")
    if start < unit.char_start or end > unit.char_end:
        raise SpanError(
            f"the span {start}-{end} is outside this unit ({unit.char_start}-{unit.char_end})"
        )
    text = _text(unit, start, end)
    stripped = text.strip()
    if not stripped:
        raise SpanError("the selection holds only whitespace")
    start += len(text) - len(text.lstrip())
    end -= len(text) - len(text.rstrip())
    for a, b in codable_ranges(unit):
        if a <= start and end <= b:
            return start, end
    if not any(a < end and start < b for a, b in codable_ranges(unit)):
        raise SpanError(
            "the selection lies in context (an interviewer's turn or a guide line), "
            "which is not coded"
        )
    raise SpanError(
        "a span must lie inside one participant turn: the selection runs into context "
        "or into another turn; select within one turn"
    )


def whole_unit(unit: Passage) -> list[tuple[int, int]]:
    """The spans covering all of a unit's codable text (a code given to the whole
    unit, as passage-level reviews did)."""
    return [(a, b) for a, b in codable_ranges(unit)]


def scope_of(unit: Passage) -> list[Range]:
    """The text a finished review of this unit answers for: its codable ranges."""
    return codable_ranges(unit)
