"""A capable model, replayed: the fake endpoint answers each excerpt with the spans a
strong language model wrote for that text.

``../shared/corpora/serdif-usability/model-spans/spans.jsonl`` holds span codings of three
SERDIF development transcripts by a strong general-purpose model (one line per span:
transcript, turn index in qualflow's ODT reading, code, verbatim quote, rationale,
confidence). ``ModelReplay`` is a responder for ``tests.fake_openai.FakeOpenAI``: it
reads the excerpt a request shows (the coded turns, in the prompt qualflow renders),
finds where that text lies in the transcripts, and answers with every model span whose
text lies inside one of the excerpt's coded turns, quoting it exactly as the model did.
So the real coding path (chunking, prompt, structured answer, quote placement,
validation, storage) runs on a capable model's answers, with no model here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qualflow.models import Transcript
from qualflow.validate import locate
from tests.fake_openai import Answer

_EXCERPT = re.compile(r'<excerpt id="([^"]+)">\n(.*?)</excerpt>', re.S)
_TURN = re.compile(r'<turn speaker="[^"]*"( role="context")?>\n(.*?)\n</turn>', re.S)
_FENCED = re.compile(r"&lt;(/?)(excerpt|turn|passage|context|previous_answer)", re.I)


@dataclass(frozen=True)
class ModelSpan:
    transcript: str  # transcript name
    start: int
    end: int
    code: str
    quote: str
    rationale: str
    confidence: float


@dataclass
class Replayed:
    """What the replay saw: spans it could place in their turn, and the rest."""

    spans: list[ModelSpan]
    unplaced: list[dict]


def load_model_spans(path: Path, transcripts: Iterable[Transcript]) -> Replayed:
    """The file's spans placed at their offsets in qualflow's reading of each transcript
    (the quote located inside its turn, exactly or tolerantly)."""
    by_name = {t.name: t for t in transcripts}
    placed, unplaced = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        t = by_name.get(rec["transcript"])
        if t is None or not 0 <= rec["turn_index"] < len(t.turns):
            unplaced.append(rec)
            continue
        turn = t.turns[rec["turn_index"]]
        found = locate(rec["quote"], turn.text)
        if found is None:
            unplaced.append(rec)
            continue
        placed.append(
            ModelSpan(
                transcript=t.name,
                start=turn.char_start + found.start,
                end=turn.char_start + found.end,
                code=rec["code"],
                quote=rec["quote"],
                rationale=rec["rationale"],
                confidence=float(rec["confidence"]),
            )
        )
    return Replayed(placed, unplaced)


class ModelReplay:
    """A ``FakeOpenAI`` responder answering excerpts with the model's spans."""

    def __init__(self, spans: list[ModelSpan], transcripts: Iterable[Transcript]):
        self.spans = spans
        self.transcripts = list(transcripts)
        self.answered: list[ModelSpan] = []
        self.excerpts = 0

    def __call__(self, body: dict) -> Answer:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        excerpts = _EXCERPT.findall(user)
        answers = {label: self._codes(text) for label, text in excerpts}
        self.excerpts += len(answers)
        if len(answers) == 1:
            return Answer({"codes": next(iter(answers.values()))})
        return Answer({"excerpts": [{"excerpt_id": k, "codes": v} for k, v in answers.items()]})

    def _codes(self, excerpt: str) -> list[dict]:
        pieces = [(not ctx, _unfence(text)) for ctx, text in _TURN.findall(excerpt)]
        where = self._place(pieces)
        if where is None:
            return []
        name, ranges = where
        chosen = [
            s
            for s in self.spans
            if s.transcript == name and any(a <= s.start and s.end <= b for a, b in ranges)
        ]
        self.answered += chosen
        return [
            {
                "code": s.code,
                "quotes": [s.quote],
                "rationale": s.rationale,
                "confidence": s.confidence,
            }
            for s in chosen
        ]

    def _place(self, pieces: list[tuple[bool, str]]) -> tuple[str, list[tuple[int, int]]] | None:
        """The transcript and the offsets of the excerpt's coded pieces: the first piece
        found where every later piece follows it with only blanks in between."""
        if not pieces:
            return None
        for t in self.transcripts:
            pos = t.text.find(pieces[0][1])
            while pos >= 0:
                ranges = _follow(t.text, pos, pieces)
                if ranges is not None:
                    return t.name, ranges
                pos = t.text.find(pieces[0][1], pos + 1)
        return None


def _follow(text: str, pos: int, pieces: list[tuple[bool, str]]) -> list[tuple[int, int]] | None:
    ranges, at = [], pos
    for i, (coded, piece) in enumerate(pieces):
        if i:
            gap = len(text[at:]) - len(text[at:].lstrip())
            at += gap
        if not text.startswith(piece, at):
            return None
        if coded:
            ranges.append((at, at + len(piece)))
        at += len(piece)
    return ranges


def _unfence(text: str) -> str:
    return _FENCED.sub(lambda m: f"<{m.group(1)}{m.group(2)}", text) if "&lt;" in text else text


__all__ = ["ModelReplay", "ModelSpan", "Replayed", "load_model_spans"]
