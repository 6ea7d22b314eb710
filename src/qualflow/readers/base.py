"""What every reader shares: the error, text normalization, speaker labels, assembly.

A reader turns file content into ``RawTurn`` objects; ``build_transcript`` normalizes
them and computes the offsets every later stage relies on.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qualflow.models import Transcript, Turn


class ReadError(ValueError):
    """A file that cannot be read as a transcript; the message names file and reason."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class RawTurn:
    """A turn as a reader found it, before normalization."""

    speaker: str | None
    text: str
    start_time: float | None = None
    end_time: float | None = None


# Invisible characters that carry no meaning in a transcript (zero-width space, word
# joiner, BOM, soft hyphen, direction marks). ZWJ/ZWNJ are kept: they matter in some
# scripts and in emoji.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u00ad\u200e\u200f"), None)


def normalize(text: str) -> str:
    """NFC, line endings unified, invisible characters dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return " ".join(text.translate(_INVISIBLE).split())


def build_transcript(
    path: Path,
    data: bytes,
    fmt: str,
    raw_turns: Iterable[RawTurn],
    *,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Transcript:
    """Normalize turns, join them by blank lines and record each turn's offsets."""
    turns: list[Turn] = []
    parts: list[str] = []
    pos = 0
    for raw in raw_turns:
        text = normalize(raw.text)
        if not text:
            continue
        if parts:
            pos += 2  # the "\n\n" separator
        speaker = normalize(raw.speaker or "") or None
        turns.append(
            Turn(
                index=len(turns),
                speaker=speaker,
                text=text,
                char_start=pos,
                char_end=pos + len(text),
                start_time=raw.start_time,
                end_time=raw.end_time,
            )
        )
        parts.append(text)
        pos += len(text)
    if not turns:
        raise ReadError(path, f"no text after parsing (read as {fmt})")
    content_hash = hashlib.sha256(data).hexdigest()
    stem = name or path.stem
    return Transcript(
        id=Transcript.make_id(stem, content_hash),
        name=stem,
        source_path=str(path),
        content_hash=content_hash,
        format=fmt,
        text="\n\n".join(parts),
        turns=turns,
        metadata=metadata or {},
    )


# --------------------------------------------------------------------------- speaker labels

# "Name: text" at the start of a line, optionally in Markdown bold ("**Name:** text").
_LABEL_RE = re.compile(
    r"^[ \t]*(?:\*\*|__)?(?P<label>[^:*_\n]{1,48}?)(?:\*\*|__)?[ \t]*:(?:\*\*|__)?(?:[ \t]+|$)"
)
_ROLE_WORDS = {
    "interviewer",
    "moderator",
    "facilitator",
    "participant",
    "respondent",
    "interviewee",
    "speaker",
    "researcher",
    "host",
    "q",
    "a",
}
_WORD_RE = re.compile(r"^[A-Z0-9][\w'’.\-]*$")
# Lowercase name particles allowed inside a speaker name ("Ludwig van Beethoven").
_PARTICLES = {"de", "van", "von", "der", "den", "da", "di", "du", "la", "le", "bin", "al", "&"}


def looks_like_speaker(label: str) -> bool:
    """True for 'Jane Doe', 'Speaker 1', 'I-5', 'MODERATOR', 'Interviewer (Sam)'.

    Rejects ordinary sentence starts such as 'Case study' or 'The point is': every
    main word must be capitalized (name particles like 'de', 'van' allowed inside).
    """
    label = label.strip()
    if not label or len(label) > 40 or any(c in label for c in ',;?!"“”'):
        return False
    main = re.sub(r"\s*\([^()]*\)\s*$", "", label)  # "Interviewer (Sam)" -> "Interviewer"
    words = main.split()
    if not 1 <= len(words) <= 4:
        return False
    return all(_WORD_RE.match(w) or w in _PARTICLES for w in words[:-1]) and bool(
        _WORD_RE.match(words[-1])
    )


_PARTICIPANT_ID = re.compile(r"^[A-Z]{1,3}-?\d{1,4}$")  # P1, I-5, R12


def is_role(label: str) -> bool:
    """A role word ('Interviewer', 'Speaker 2', 'Q') or a participant id ('P1', 'I-5')."""
    main = re.sub(r"\s*\([^()]*\)\s*$", "", label.strip())
    if _PARTICIPANT_ID.match(main):
        return True
    return main.lower() in _ROLE_WORDS or main.lower().split(" ")[0] in _ROLE_WORDS


def split_label(line: str) -> tuple[str, str] | None:
    """('Name', rest) when the line starts with a plausible 'Name:' label."""
    m = _LABEL_RE.match(line)
    if not m or not looks_like_speaker(m.group("label")):
        return None
    return m.group("label").strip(), line[m.end() :]


def accepted_labels(lines: Iterable[str]) -> set[str]:
    """Labels that are speakers: seen at least twice, a role word or a participant id.

    One-off 'Title: text' lines in prose are not taken for speakers.
    """
    counts: Counter[str] = Counter()
    for line in lines:
        hit = split_label(line)
        if hit:
            counts[hit[0]] += 1
    return {lab for lab, n in counts.items() if n >= 2 or is_role(lab)}


def label_of(line: str, labels: set[str]) -> tuple[str, str] | None:
    hit = split_label(line)
    if hit and hit[0] in labels:
        return hit
    return None


def turns_from_blocks(blocks: Sequence[Sequence[str]]) -> list[RawTurn]:
    """Turns from paragraphs (blocks of lines), with or without 'Name:' labels.

    When most paragraphs open with a speaker label the text is a dialogue: a label
    starts a turn, unlabelled lines continue it and an unlabelled paragraph is a new
    turn of the same speaker. Otherwise each paragraph is a turn and only a paragraph
    that opens with a label gets a speaker (SERDIF: occasional "MODERATOR:" lines
    between unlabelled think-aloud paragraphs).
    """
    blocks = [[ln for ln in b if ln.strip()] for b in blocks]
    blocks = [b for b in blocks if b]
    labels = accepted_labels(ln for b in blocks for ln in b)
    if not labels:
        return [RawTurn(None, " ".join(b)) for b in blocks]
    opening = sum(1 for b in blocks if label_of(b[0], labels))
    if opening * 2 >= len(blocks):
        return _dialogue(blocks, labels)
    turns = []
    for b in blocks:
        hit = label_of(b[0], labels)
        if hit:
            turns.append(RawTurn(hit[0], " ".join([hit[1], *b[1:]])))
        else:
            turns.append(RawTurn(None, " ".join(b)))
    return turns


def _dialogue(blocks: Sequence[Sequence[str]], labels: set[str]) -> list[RawTurn]:
    turns: list[RawTurn] = []
    speaker: str | None = None
    for block in blocks:
        current: RawTurn | None = None
        for line in block:
            hit = label_of(line, labels)
            if hit:
                speaker = hit[0]
                current = RawTurn(speaker, hit[1])
                turns.append(current)
            elif current is None:
                current = RawTurn(speaker, line)
                turns.append(current)
            else:
                current.text += " " + line
    return turns
