"""A deterministic coder for pipeline and flow tests, plus test data builders.

``ScriptedCoder`` implements the ``Coder`` protocol without a model: it applies
every candidate code whose last title segment occurs in a codable turn of the unit
(a span on the first occurrence of that word), records every call, and can be told
to be slow, to raise, to never validate some units, or to report token usage. It is
also reachable as an importable coder spec (``tests.coders_fixture:scripted_coder``)
so a real flow process can be started with it; its behaviour then comes from environment
variables (``QF_TEST_DELAY``, ``QF_TEST_CALL_LOG``, ``QF_TEST_NEVER_VALID``,
``QF_TEST_NEVER_VALID_TEXT``, ``QF_TEST_TOKENS``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from qualflow.models import (
    Code,
    Codebook,
    CodeProposal,
    CodingRequest,
    Passage,
    ProposalSet,
    Transcript,
    Turn,
    Usage,
    short_hash,
)


class ScriptedCoder:
    kind = "scripted"
    model = "scripted-1"
    prompt_version = "p1"
    rate_limited = True  # take the Prefect global rate limit like an LLM coder would

    def __init__(
        self,
        *,
        delay: float = 0.0,
        never_valid: Sequence[str] = (),
        never_valid_text: str | None = None,
        raise_for: Sequence[str] = (),
        tokens_per_passage: int = 0,
        cost_per_passage: float = 0.0,
        call_log: Path | None = None,
    ):
        self.delay = delay
        self.never_valid = set(never_valid)
        self.never_valid_text = never_valid_text
        self.raise_for = set(raise_for)
        self.tokens_per_passage = tokens_per_passage
        self.cost_per_passage = cost_per_passage
        self.call_log = call_log
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    @property
    def passages_seen(self) -> list[str]:
        return [pid for call in self.calls for pid in call]

    def propose(self, requests: Sequence[CodingRequest], codebook: Codebook) -> list[ProposalSet]:
        ids = [r.passage.id for r in requests]
        with self._lock:
            self.calls.append(ids)
        if self.call_log is not None:
            with self.call_log.open("a") as fh:
                fh.write(json.dumps(ids) + "\n")
        if self.delay:
            time.sleep(self.delay)
        if self.raise_for & set(ids):
            raise ConnectionError("scripted outage for this batch")
        return [self._one(r, codebook) for r in requests]

    def _one(self, request: CodingRequest, codebook: Codebook) -> ProposalSet:
        passage = request.passage
        usage = Usage(
            prompt_tokens=self.tokens_per_passage,
            completion_tokens=0,
            calls=1,
            cost_usd=self.cost_per_passage,
        )
        base = ProposalSet(
            passage_id=passage.id,
            coder=self.kind,
            model=self.model,
            prompt_version=self.prompt_version,
            codebook_version=codebook.version,
            usage=usage,
        )
        text_hit = self.never_valid_text and self.never_valid_text in passage.text
        if passage.id in self.never_valid or text_hit:
            bad = CodeProposal(
                code="not.in.codebook",
                rationale="scripted",
                evidence="invented words",
                confidence=0.5,
                valid=False,
                invalid_reason="code not in codebook; evidence not in passage",
            )
            return base.model_copy(
                update={
                    "status": "needs_human",
                    "invalid": [bad],
                    "reason": "answer failed validation twice: unknown code 'not.in.codebook'",
                    "raw_response": '{"codes": [{"code": "not.in.codebook"}]}',
                    "attempts": 2,
                }
            )
        proposals = []
        for cand in request.candidates:
            word = cand.code.title.split(".")[-1]
            for piece in passage.codable_pieces():
                pos = request.piece_text(piece).lower().find(word.lower())
                if pos < 0:
                    continue
                start = piece.char_start + pos
                proposals.append(
                    CodeProposal(
                        code=cand.code.title,
                        rationale=f"mentions {word}",
                        evidence=request.piece_text(piece)[pos : pos + len(word)],
                        start=start,
                        end=start + len(word),
                        evidence_start=start,
                        evidence_end=start + len(word),
                        confidence=0.9,
                    )
                )
                break
        return base.model_copy(update={"proposals": proposals})


def scripted_coder(settings, store, index) -> ScriptedCoder:
    """Coder spec for subprocess tests, configured from the environment."""
    log = os.environ.get("QF_TEST_CALL_LOG")
    never = os.environ.get("QF_TEST_NEVER_VALID", "")
    return ScriptedCoder(
        delay=float(os.environ.get("QF_TEST_DELAY", "0")),
        never_valid=[p for p in never.split(",") if p],
        never_valid_text=os.environ.get("QF_TEST_NEVER_VALID_TEXT") or None,
        call_log=Path(log) if log else None,
        tokens_per_passage=int(os.environ.get("QF_TEST_TOKENS", "0")),
    )


# ---------------------------------------------------------------------- test data

WORDS = ["leaderboard", "baseline", "reproduce", "cost", "latency", "trust"]


def small_codebook() -> Codebook:
    return Codebook(
        name="test-book",
        codes=[
            Code(title=f"cat.{w}", description=f"The participant talks about {w}.") for w in WORDS
        ],
    )


def make_transcript(name: str, n_turns: int = 6) -> tuple[Transcript, list[Passage]]:
    """A transcript alternating interviewer and participant; one passage per turn."""
    turns: list[Turn] = []
    texts: list[str] = []
    pos = 0
    for i in range(n_turns):
        speaker = "Interviewer" if i % 2 == 0 else "P1"
        text = (
            f"Question {i} from {name}?"
            if i % 2 == 0
            else f"In {name} turn {i} we look at the {WORDS[i % len(WORDS)]} first."
        )
        turns.append(
            Turn(index=i, speaker=speaker, text=text, char_start=pos, char_end=pos + len(text))
        )
        texts.append(text)
        pos += len(text) + 2
    full = "\n\n".join(texts)
    content_hash = short_hash(name, full, length=64)
    tid = Transcript.make_id(name, content_hash)
    transcript = Transcript(
        id=tid,
        name=name,
        source_path=f"/data/{name}.txt",
        content_hash=content_hash,
        format="txt",
        text=full,
        turns=turns,
    )
    passages = [
        Passage(
            id=Passage.make_id(content_hash, "sentence", t.char_start, t.char_end),
            transcript_id=tid,
            index=t.index,
            turn_index=t.index,
            speaker=t.speaker,
            char_start=t.char_start,
            char_end=t.char_end,
            text=t.text,
            codable=t.speaker != "Interviewer",
            segmentation="sentence",
        )
        for t in turns
    ]
    return transcript, passages


def write_transcript_file(folder: Path, name: str, n_turns: int = 6) -> Path:
    """A plain-text transcript file with 'Speaker: text' turns."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_turns):
        if i % 2 == 0:
            lines.append(f"Interviewer: Question {i} about your work in {name}?")
        else:
            word = WORDS[i % len(WORDS)]
            lines.append(f"P1: In {name} turn {i} we look at the {word} first. It matters.")
    path = folder / f"{name}.txt"
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    return path
