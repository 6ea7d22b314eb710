"""Domain models: the data that flows one way through qualflow.

transcript -> passage -> candidates -> proposal -> decision -> agreement

These pydantic models are the contract between modules (and with the LLM, see
``coders/llm.py``). The database rows in ``db.py`` mirror them; ``store.py`` converts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


def short_hash(*parts: object, length: int = 16) -> str:
    """A stable hex digest of the parts (used for ids derived from content)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:length]


# --------------------------------------------------------------------------- transcripts


class Turn(BaseModel):
    """One speaker turn; offsets are into ``Transcript.text`` (code points)."""

    index: int
    speaker: str | None = None
    text: str
    char_start: int
    char_end: int
    start_time: float | None = Field(default=None, description="Seconds from the start.")
    end_time: float | None = None


class Transcript(BaseModel):
    """A transcript as read from one file: normalized text plus ordered turns.

    ``text`` is the normalized plain text that every offset in qualflow refers to:
    turns joined by a blank line, without speaker labels.
    """

    id: str = Field(description="'<name>@<content_hash[:12]>': one id per file version.")
    name: str = Field(description="Stable name (file stem); versions share it.")
    source_path: str
    content_hash: str = Field(description="sha256 of the file's bytes.")
    format: str
    text: str
    turns: list[Turn]
    participant_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @staticmethod
    def make_id(name: str, content_hash: str) -> str:
        return f"{name}@{content_hash[:12]}"


class Participant(BaseModel):
    id: str
    attributes: dict[str, str] = Field(default_factory=dict)


# --------------------------------------------------------------------------- passages


class Piece(BaseModel):
    """A stretch of one turn inside a unit of coding, and whether it may be coded.

    Offsets are into ``Transcript.text``. Interviewer turns (and, where a study marks
    them, interview-guide lines read aloud) are context: shown to a coder, never coded.
    """

    turn_index: int
    speaker: str | None = None
    char_start: int
    char_end: int
    codable: bool = True


class Passage(BaseModel):
    """A unit of a transcript's text: a sentence (or turn, or window) of one turn, the
    grid agreement is measured on, or a chunk of consecutive turns, the unit a coder
    call sees (``segmentation`` ``chunk:<words>``, see ``chunk.py``)."""

    id: str
    transcript_id: str
    index: int = Field(description="Order within the transcript.")
    turn_index: int = Field(description="The (first) turn the passage lies in.")
    turn_end: int | None = Field(
        default=None, description="The last turn a chunk touches; None: only turn_index."
    )
    speaker: str | None = None
    char_start: int
    char_end: int
    text: str
    codable: bool = Field(default=True, description="False for interviewer turns by default.")
    segmentation: str = "sentence"
    pieces: list[Piece] = Field(
        default_factory=list,
        description="A chunk's stretches of turns with their codability; empty for a "
        "passage inside one turn (the passage itself is its one piece).",
    )

    @staticmethod
    def make_id(content_hash: str, segmentation: str, char_start: int, char_end: int) -> str:
        return short_hash(content_hash, segmentation, char_start, char_end)

    @property
    def last_turn(self) -> int:
        return self.turn_index if self.turn_end is None else self.turn_end

    @property
    def is_chunk(self) -> bool:
        return self.segmentation.startswith("chunk")

    def layout(self) -> list[Piece]:
        """The unit's pieces: a chunk's own, or the passage as the one piece it is."""
        if self.pieces:
            return list(self.pieces)
        return [
            Piece(
                turn_index=self.turn_index,
                speaker=self.speaker,
                char_start=self.char_start,
                char_end=self.char_end,
                codable=self.codable,
            )
        ]

    def codable_pieces(self) -> list[Piece]:
        return [p for p in self.layout() if p.codable]


class ContextTurn(BaseModel):
    speaker: str | None
    text: str


class PassageContext(BaseModel):
    """A passage with the neighbouring turns a coder (or reviewer) sees."""

    passage: Passage
    before: list[ContextTurn] = Field(default_factory=list)
    after: list[ContextTurn] = Field(default_factory=list)
    participant_id: str | None = None


# --------------------------------------------------------------------------- codebooks


class Code(BaseModel):
    title: str = Field(description="Hierarchical, dot-separated (e.g. 01.use.frequency.daily).")
    description: str = ""
    inclusion: str = ""
    exclusion: str = ""
    examples: list[str] = Field(default_factory=list)
    count: int | None = Field(default=None, description="Times applied in the source study.")

    @property
    def path(self) -> list[str]:
        return self.title.split(".")

    @property
    def category(self) -> str:
        """Top-level category: the first dot-separated segment."""
        return self.path[0]

    def embedding_text(self) -> str:
        parts = [self.title.replace(".", " > "), self.description]
        if self.inclusion:
            parts.append(f"Include: {self.inclusion}")
        if self.exclusion:
            parts.append(f"Exclude: {self.exclusion}")
        parts.extend(self.examples)
        return "\n".join(p for p in parts if p)


class Codebook(BaseModel):
    name: str
    source: str = ""
    codes: list[Code]

    model_config = ConfigDict(frozen=False)

    @property
    def version(self) -> str:
        """Hash of the normalized content (order-independent, whitespace-normalized)."""
        rows = sorted(
            (
                c.title,
                " ".join(c.description.split()),
                " ".join(c.inclusion.split()),
                " ".join(c.exclusion.split()),
                tuple(" ".join(e.split()) for e in c.examples),
            )
            for c in self.codes
        )
        return short_hash(*rows, length=16)

    def get(self, title: str) -> Code | None:
        return next((c for c in self.codes if c.title == title), None)

    def titles(self) -> list[str]:
        return [c.title for c in self.codes]

    def parent_of(self, title: str) -> str | None:
        """Nearest ancestor title (code or implicit category node), None at top level."""
        head, _, _ = title.rpartition(".")
        return head or None

    def children(self, title: str) -> list[Code]:
        prefix = title + "."
        return [c for c in self.codes if c.title.startswith(prefix)]

    def categories(self) -> list[str]:
        seen: dict[str, None] = {}
        for c in self.codes:
            seen.setdefault(c.category, None)
        return list(seen)


# --------------------------------------------------------------------------- retrieval


class Candidate(BaseModel):
    code: Code
    score: float = Field(description="Similarity in [0, 1] (higher is closer).")


class CodingRequest(BaseModel):
    """What a coder gets for one unit: the unit (a chunk, or a passage) in context, its
    candidate codes, and its codable sentences each in context (for coders that decide
    sentence by sentence and join runs of sentences into spans)."""

    context: PassageContext
    candidates: list[Candidate]
    sentences: list[PassageContext] = Field(default_factory=list)

    @property
    def passage(self) -> Passage:
        return self.context.passage

    @property
    def unit(self) -> Passage:
        return self.context.passage

    def piece_text(self, piece: Piece) -> str:
        """The text of one of the unit's pieces."""
        unit = self.context.passage
        return unit.text[piece.char_start - unit.char_start : piece.char_end - unit.char_start]


# --------------------------------------------------------------------------- proposals


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            calls=self.calls + other.calls,
            cost_usd=self.cost_usd + other.cost_usd,
        )


class CodeProposal(BaseModel):
    """One proposed code on one span of a unit, validated against codebook and text.

    ``start``/``end`` are the span, as offsets into ``Transcript.text`` (None when the
    proposal could not be placed: then it is invalid with the reason). ``evidence`` is
    the quote as the coder gave it and ``evidence_start``/``evidence_end`` where it was
    found (the span itself for a located LLM quote; inside the span for proposals
    carried over from passage-level releases, whose span is the whole passage).
    """

    code: str
    rationale: str
    evidence: str
    start: int | None = Field(default=None, description="Span start in the transcript text.")
    end: int | None = Field(default=None, description="Span end (exclusive).")
    evidence_start: int | None = Field(default=None, description="Quote start (transcript).")
    evidence_end: int | None = None
    confidence: float = Field(ge=0.0, le=1.0)
    in_candidates: bool = True
    valid: bool = True
    invalid_reason: str | None = None
    located: str | None = Field(
        default=None,
        description="How the quote was found: 'exact', 'tolerant' (whitespace, quotes, "
        "dashes, ellipses normalised), 'sentences' (a baseline coder's sentence run).",
    )


ProposalStatus = Literal["ok", "needs_human", "failed"]


class ProposalSet(BaseModel):
    """A coder's answer for one unit (a chunk, or a passage), with its provenance.

    ``proposals`` holds valid span proposals (empty means "no code applies" when status
    is ok); ``invalid`` keeps what failed validation, with the reason.
    """

    passage_id: str
    coder: str = Field(description="Coder kind: llm, similarity, learned, ...")
    model: str
    prompt_version: str = ""
    codebook_version: str
    status: ProposalStatus = "ok"
    proposals: list[CodeProposal] = Field(default_factory=list)
    invalid: list[CodeProposal] = Field(default_factory=list)
    reason: str | None = None
    raw_response: str | None = None
    attempts: int = 1
    usage: Usage = Field(default_factory=Usage)
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(p.code for p in self.proposals)

    def spans(self, transcript_id: str) -> list[Span]:
        """The valid proposals as spans of ``transcript_id`` (the unit's transcript)."""
        return [
            Span(transcript_id, p.start, p.end, p.code)
            for p in self.proposals
            if p.start is not None and p.end is not None
        ]


# --------------------------------------------------------------------------- decisions

DecisionAction = Literal[
    "accept", "reject", "replace", "add", "remove", "no_code",
    "flag", "unflag", "memo", "done", "undo",
]  # fmt: skip


class Decision(BaseModel):
    """One entry of the append-only review log."""

    passage_id: str
    reviewer: str
    action: DecisionAction
    proposal_id: int | None = None
    code: str | None = None
    before: list[str] = Field(default_factory=list, description="Passage codes before.")
    after: list[str] = Field(default_factory=list, description="Passage codes after.")
    memo: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- coders as sets

Coding = dict[str, frozenset[str]]
"""What any coder produced over passages: passage id -> set of code titles."""


# --------------------------------------------------------------------------- spans


@dataclass(frozen=True, slots=True, order=True)
class Span:
    """A stretch of a transcript's text carrying one code: what researchers highlight.

    ``start``/``end`` are code-point offsets into ``Transcript.text`` of the transcript
    version ``transcript_id`` (end exclusive). The unit every coder produces, every
    reviewer decides on and every exchange format carries; sentences and turns are
    grids that spans are projected onto for sentence- and turn-level agreement.
    """

    transcript_id: str
    start: int
    end: int
    code: str

    @property
    def length(self) -> int:
        return max(0, self.end - self.start)


Range = tuple[int, int]
"""A half-open ``(start, end)`` range of offsets into one transcript's text."""


@dataclass
class SpanCoding:
    """What one coder did over some text: its coded spans and the text it coded.

    ``scope`` (transcript id -> sorted, non-overlapping ranges) is the text the coder
    answered for: every chunk a machine run answered, every passage a gold coder coded,
    the whole transcript for a Taguette or REFI-QDA coder. Text inside the scope that
    no span covers was judged to carry no code; text outside it was not coded at all
    (a failed or ``needs_human`` chunk, a passage the reviewer has not finished). The
    difference matters for honest figures: an unanswered chunk is a miss, not a gap.
    """

    coder: str
    spans: list[Span] = field(default_factory=list)
    scope: dict[str, list[Range]] = field(default_factory=dict)

    def transcripts(self) -> set[str]:
        return set(self.scope) | {s.transcript_id for s in self.spans}
