"""Caption files: WebVTT (Zoom, Teams, Otter) and SubRip.

Cues are read with their times and speaker (a ``<v Name>`` voice tag, or a 'Name:'
prefix as Zoom writes it); consecutive cues of one speaker merge into one turn.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from qualflow.readers.base import RawTurn, accepted_labels, label_of
from qualflow.readers.text import seconds

_TIMING = re.compile(
    r"^\s*(?P<start>(?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})\s*-->\s*"
    r"(?P<end>(?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})(?:\s+.*)?$"
)
_VOICE = re.compile(r"<v(?:\.[^\s>]*)?(?:\s+(?P<name>[^>]*))?>")
_TAG = re.compile(r"</?[a-zA-Z][^>]*>|<\d+:[\d:.]+>|\{\\[^}]*\}")

# Without any speaker labels, a pause this long (seconds) between cues starts a new turn.
PAUSE_SECONDS = 2.0


@dataclass
class Cue:
    start: float
    end: float
    speaker: str | None
    text: str


def is_vtt(text: str) -> bool:
    return text.lstrip("\ufeff").startswith("WEBVTT")


def is_srt(text: str) -> bool:
    """The first block is 'index' (optional) then a SubRip timing line."""
    lines = [ln for ln in text.lstrip("\ufeff").splitlines() if ln.strip()][:2]
    return any(_TIMING.match(ln) and "," in ln for ln in lines)


def _blocks(text: str) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            out[-1].append(line)
        elif out[-1]:
            out.append([])
    return [b for b in out if b]


def _payload_segments(payload: str) -> list[tuple[str | None, str]]:
    """Split a cue payload by voice tags: [(voice or None, text)]."""
    segments: list[tuple[str | None, str]] = []
    voice: str | None = None
    pos = 0
    for m in _VOICE.finditer(payload):
        if m.start() > pos:
            segments.append((voice, payload[pos : m.start()]))
        voice = (m.group("name") or "").strip() or None
        pos = m.end()
    segments.append((voice, payload[pos:]))
    cleaned = [(v, html.unescape(_TAG.sub("", t)).strip()) for v, t in segments]
    return [(v, t) for v, t in cleaned if t]


def parse_cues(text: str, *, notes: list[str] | None = None) -> list[Cue]:
    """Cues of a VTT or SRT file (NOTE/STYLE/REGION blocks are skipped, notes kept)."""
    cues: list[Cue] = []
    for block in _blocks(text.lstrip("\ufeff")):
        head = block[0].strip()
        if head.startswith("WEBVTT"):
            continue
        if head.startswith(("NOTE", "STYLE", "REGION")):
            if head.startswith("NOTE") and notes is not None:
                notes.append(" ".join([head[4:].strip(), *block[1:]]).strip())
            continue
        timing_at = next((i for i, ln in enumerate(block[:3]) if _TIMING.match(ln)), None)
        if timing_at is None:
            continue
        m = _TIMING.match(block[timing_at])
        assert m is not None
        start, end = seconds(m.group("start")), seconds(m.group("end"))
        payload = "\n".join(block[timing_at + 1 :])
        for voice, seg in _payload_segments(payload):
            cues.append(Cue(start, end, voice, seg))
    _apply_prefix_labels(cues)
    return cues


def _apply_prefix_labels(cues: list[Cue]) -> None:
    """Zoom style 'Jane Doe: text' cues: move the label into the speaker."""
    labels = accepted_labels(c.text for c in cues if c.speaker is None)
    if not labels:
        return
    for c in cues:
        if c.speaker is None:
            hit = label_of(c.text, labels)
            if hit:
                c.speaker, c.text = hit


def merge_cues(cues: list[Cue]) -> list[RawTurn]:
    """Consecutive cues of one speaker become one turn.

    An unlabelled cue continues the current turn when the file names speakers (a
    caption split mid-utterance); in a file without any speaker, cues merge until a
    pause of ``PAUSE_SECONDS``.
    """
    any_speaker = any(c.speaker for c in cues)
    turns: list[RawTurn] = []
    for c in cues:
        last = turns[-1] if turns else None
        same = last is not None and (
            (c.speaker is None and any_speaker)
            or (c.speaker is not None and c.speaker == last.speaker)
            or (
                not any_speaker
                and last.end_time is not None
                and c.start - last.end_time < PAUSE_SECONDS
            )
        )
        if same and last is not None:
            last.text += " " + c.text
            last.end_time = max(c.end, last.end_time or c.end)
        else:
            turns.append(RawTurn(c.speaker, c.text, start_time=c.start, end_time=c.end))
    return turns
