"""Chunks: runs of consecutive turns, the unit one coder call sees.

Researchers highlight stretches of talk, and a highlight is only recognisable in its
episode: "It is fine." carries "System issue" because it sits inside a highlighted
account of a crash. So a coding run cuts each transcript version into chunks of
consecutive turns and asks for spans inside them (``docs/spans.md``).

The rule, a pure function of the transcript version and the budget (so chunk ids are
stable across runs, and incremental runs and the response cache keep working):

- a chunk holds codable (participant) speech up to ``budget`` words; a piece that would
  take it over the budget starts the next chunk;
- never inside a sentence: a codable turn longer than the budget is split at sentence
  boundaries into pieces of at most ``budget`` words (one sentence longer than the
  budget is a piece of its own);
- context is not coded and costs no budget: interviewer turns (and whatever the
  segmentation marked non-codable) belong to the chunk of the answer that follows, so
  the question before the first participant turn of a chunk is kept as its context;
  once a chunk holds half its budget, a question starts the next chunk (a new
  question is a natural episode boundary);
- leading context is capped at ``budget // 2`` words (the nearest turns kept), and
  context after the last codable piece of a transcript belongs to no chunk.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qualflow.models import Passage, Piece, Transcript

if TYPE_CHECKING:
    from qualflow.settings import Settings

DEFAULT_BUDGET = 200
"""Codable words per chunk; chosen by measurement (``docs/spans.md``)."""

PREFIX = "chunk"

_WORD = re.compile(r"\S+")


def segmentation_name(budget: int) -> str:
    """How chunks of this budget are recorded on passages: ``chunk:<budget>``."""
    return f"{PREFIX}:{int(budget)}"


def parse_budget(segmentation: str) -> int | None:
    """The budget of a ``chunk:<words>`` segmentation, None for other segmentations."""
    kind, sep, arg = segmentation.partition(":")
    if kind != PREFIX or not sep:
        return None
    try:
        return int(arg)
    except ValueError:
        return None


def words(text: str) -> int:
    return len(_WORD.findall(text))


@dataclass(frozen=True)
class _Piece:
    turn_index: int
    speaker: str | None
    start: int
    end: int
    codable: bool
    words: int

    def model(self) -> Piece:
        return Piece(
            turn_index=self.turn_index,
            speaker=self.speaker,
            char_start=self.start,
            char_end=self.end,
            codable=self.codable,
        )


def chunk(transcript: Transcript, sentences: Sequence[Passage], budget: int) -> list[Passage]:
    """Cut ``transcript`` into chunks of at most ``budget`` codable words.

    ``sentences`` are the transcript's sentence passages with their codability (from
    ``segment.segment(transcript, "sentence", ...)``); they give the sentence
    boundaries and which speech is codable. Returns chunk passages in order, each with
    its pieces; a transcript with no codable speech has no chunk.
    """
    if budget < 1:
        raise ValueError(f"chunk budget must be at least 1 word, got {budget}")
    groups = _group(_pieces(transcript, sentences, budget), budget)
    name = segmentation_name(budget)
    return [_passage(transcript, name, i, g) for i, g in enumerate(groups)]


def _pieces(transcript: Transcript, sentences: Sequence[Passage], budget: int) -> list[_Piece]:
    """Pieces in text order: runs of sentences of one turn with the same codability,
    codable runs split so that none holds more than ``budget`` words."""
    by_turn: dict[int, list[Passage]] = {}
    for s in sorted(sentences, key=lambda p: p.char_start):
        by_turn.setdefault(s.turn_index, []).append(s)
    pieces: list[_Piece] = []
    for turn in transcript.turns:
        run: list[Passage] = []
        for s in by_turn.get(turn.index, []):
            if run and (s.codable != run[-1].codable or _too_long(run, s, budget)):
                pieces.append(_make(turn.speaker, run))
                run = []
            run.append(s)
        if run:
            pieces.append(_make(turn.speaker, run))
    return pieces


def _too_long(run: list[Passage], nxt: Passage, budget: int) -> bool:
    return nxt.codable and sum(words(s.text) for s in run) + words(nxt.text) > budget


def _make(speaker: str | None, run: list[Passage]) -> _Piece:
    return _Piece(
        turn_index=run[0].turn_index,
        speaker=speaker,
        start=run[0].char_start,
        end=run[-1].char_end,
        codable=run[0].codable,
        words=sum(words(s.text) for s in run),
    )


def _group(pieces: list[_Piece], budget: int) -> list[list[_Piece]]:
    """Greedy grouping into chunks (the rule in the module docstring)."""
    chunks: list[list[_Piece]] = []
    current: list[_Piece] = []
    used = 0
    context: list[_Piece] = []
    for piece in pieces:
        if not piece.codable:
            context.append(piece)
            continue
        full = used + piece.words > budget
        new_question = bool(context) and used >= budget / 2
        if current and (full or new_question):
            chunks.append(current)
            current, used = [], 0
        current += _cap(context, budget // 2) if not current else context
        context = []
        current.append(piece)
        used += piece.words
    if current:
        chunks.append(current)
    return chunks


def _cap(context: list[_Piece], limit: int) -> list[_Piece]:
    """The nearest context pieces holding at most ``limit`` words (at least one)."""
    kept: list[_Piece] = []
    total = 0
    for piece in reversed(context):
        if kept and total + piece.words > limit:
            break
        kept.insert(0, piece)
        total += piece.words
    return kept


def _passage(transcript: Transcript, name: str, index: int, group: list[_Piece]) -> Passage:
    start, end = group[0].start, group[-1].end
    speakers = {p.speaker for p in group if p.codable}
    return Passage(
        id=Passage.make_id(transcript.content_hash, name, start, end),
        transcript_id=transcript.id,
        index=index,
        turn_index=group[0].turn_index,
        turn_end=group[-1].turn_index,
        speaker=speakers.pop() if len(speakers) == 1 else None,
        char_start=start,
        char_end=end,
        text=transcript.text[start:end],
        codable=True,
        segmentation=name,
        pieces=[p.model() for p in group],
    )


def sentences_in(unit: Passage, sentences: Sequence[Passage]) -> list[Passage]:
    """The codable sentences lying inside one of the unit's codable pieces."""
    ranges = [(p.char_start, p.char_end) for p in unit.codable_pieces()]
    return [
        s
        for s in sentences
        if s.codable and any(a <= s.char_start and s.char_end <= b for a, b in ranges)
    ]


def sentences_for(transcript: Transcript, settings: Settings | None) -> list[Passage]:
    """The transcript's sentence passages with the study's codability rules (interviewer
    speakers, whether the interviewer is coded, interview-guide lines read aloud);
    defaults without settings."""
    from qualflow.segment import Codability, segment

    if settings is None:
        return segment(transcript, "sentence")
    return segment(transcript, "sentence", codability=Codability.from_settings(settings))


def chunks_for(transcript: Transcript, settings: Settings) -> list[Passage]:
    """The transcript's chunks under ``settings`` (budget and codability rules)."""
    return chunk(transcript, sentences_for(transcript, settings), settings.chunk_words)
