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


class Passage(BaseModel):
    """The unit that gets coded: a span of one turn (or of one window of sentences)."""

    id: str
    transcript_id: str
    index: int = Field(description="Order within the transcript.")
    turn_index: int
    speaker: str | None = None
    char_start: int
    char_end: int
    text: str
    codable: bool = Field(default=True, description="False for interviewer turns by default.")
    segmentation: str = "sentence"

    @staticmethod
    def make_id(content_hash: str, segmentation: str, char_start: int, char_end: int) -> str:
        return short_hash(content_hash, segmentation, char_start, char_end)


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
    """What a coder gets for one passage: the passage in context and its candidates."""

    context: PassageContext
    candidates: list[Candidate]

    @property
    def passage(self) -> Passage:
        return self.context.passage


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
    """One proposed code for one passage, validated against codebook and passage."""

    code: str
    rationale: str
    evidence: str
    evidence_start: int | None = Field(default=None, description="Offset in the passage text.")
    evidence_end: int | None = None
    confidence: float = Field(ge=0.0, le=1.0)
    in_candidates: bool = True
    valid: bool = True
    invalid_reason: str | None = None


ProposalStatus = Literal["ok", "needs_human", "failed"]


class ProposalSet(BaseModel):
    """A coder's answer for one passage, with its provenance.

    ``proposals`` holds valid proposals (empty means "no code applies" when status
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
