"""Caption files: WebVTT (Zoom, Teams, Otter) and SubRip.

Cues are read with their times and speaker (a ``<v Name>`` voice tag, or a 'Name:'
prefix as Zoom writes it); consecutive cues of one speaker merge into one turn.

Speech is never dropped for bad timing: a cue whose timing line cannot be parsed,
that has no timing line, that ends before it starts or that names an impossible time
(``99:99:99.999``) keeps its text without times, and each such cue is reported in
``problems`` as ``"<line>: <reason>"``.
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
_ARROW = re.compile(r"-->|->|—>|→")
_STAMP_PARTS = re.compile(r"^(?:(?P<h>\d+):)?(?P<m>\d{1,2}):(?P<s>\d{2})[.,]\d{1,3}$")
_VOICE = re.compile(r"<v(?:\.[^\s>]*)?(?:\s+(?P<name>[^>]*))?>")
_TAG = re.compile(r"</?[a-zA-Z][^>]*>|<\d+:[\d:.]+>|\{\\[^}]*\}")

# Without any speaker labels, a pause this long (seconds) between cues starts a new turn.
PAUSE_SECONDS = 2.0


@dataclass
class Cue:
    start: float | None
    end: float | None
    speaker: str | None
    text: str


def is_vtt(text: str) -> bool:
    return text.lstrip("\ufeff").startswith("WEBVTT")


def is_srt(text: str) -> bool:
    """The first block is 'index' (optional) then a SubRip timing line."""
    lines = [ln for ln in text.lstrip("\ufeff").splitlines() if ln.strip()][:2]
    return any(_TIMING.match(ln) and "," in ln for ln in lines)


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Blank-line separated blocks with the (1-based) line number of their first line."""
    out: list[tuple[int, list[str]]] = []
    current: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not current:
                out.append((number, current))
            current.append(line)
        else:
            current = []
    return out


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


def parse_cues(
    text: str, *, notes: list[str] | None = None, problems: list[str] | None = None
) -> list[Cue]:
    """Cues of a VTT or SRT file (NOTE/STYLE/REGION blocks are skipped, notes kept).

    Cues with unusable timing keep their text without times; each is reported in
    ``problems`` (``"<line>: <reason>"``, the timing line quoted, never the speech).
    """
    cues: list[Cue] = []
    found: list[str] = [] if problems is None else problems
    for first, block in _blocks(text.lstrip("\ufeff")):
        head = block[0].strip()
        if head.startswith("WEBVTT"):
            continue
        if head.startswith(("NOTE", "STYLE", "REGION")):
            if head.startswith("NOTE") and notes is not None:
                notes.append(" ".join([head[4:].strip(), *block[1:]]).strip())
            continue
        start, end, payload_at = _timing(block, first, found)
        payload = "\n".join(block[payload_at:])
        for voice, seg in _payload_segments(payload):
            cues.append(Cue(start, end, voice, seg))
    _apply_prefix_labels(cues)
    return cues


def _timing(
    block: list[str], first: int, problems: list[str]
) -> tuple[float | None, float | None, int]:
    """(start, end, index of the first payload line) of a cue block; times are None
    (and the cue reported) when they cannot be used."""
    timing_at = next((i for i, ln in enumerate(block[:3]) if _TIMING.match(ln)), None)
    if timing_at is None:
        arrow_at = next((i for i, ln in enumerate(block[:3]) if _ARROW.search(ln)), None)
        if arrow_at is not None:
            line = block[arrow_at].strip()
            problems.append(
                f"{first + arrow_at}: unparseable timing line '{line[:80]}' (expected "
                "'hh:mm:ss.mmm --> hh:mm:ss.mmm'); its text is kept without times"
            )
            return None, None, arrow_at + 1
        text_at = 1 if len(block) > 1 and block[0].strip().isdigit() else 0
        if text_at >= len(block):
            problems.append(f"{first}: cue '{block[0].strip()}' has no timing line and no text")
        else:
            problems.append(f"{first}: cue without a timing line; its text is kept without times")
        return None, None, text_at
    m = _TIMING.match(block[timing_at])
    assert m is not None
    line = first + timing_at
    bad = [t for t in (m.group("start"), m.group("end")) if not _valid_stamp(t)]
    if bad:
        problems.append(
            f"{line}: impossible time '{bad[0]}' (minutes and seconds run to 59); "
            "the cue's text is kept without times"
        )
        return None, None, timing_at + 1
    start, end = seconds(m.group("start")), seconds(m.group("end"))
    if end < start:
        problems.append(
            f"{line}: the cue ends ({m.group('end')}) before it starts ({m.group('start')}); "
            "its text is kept without times"
        )
        return None, None, timing_at + 1
    return start, end, timing_at + 1


def _valid_stamp(stamp: str) -> bool:
    parts = _STAMP_PARTS.match(stamp.strip())
    return bool(parts) and int(parts.group("m")) < 60 and int(parts.group("s")) < 60


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
                and c.start is not None
                and c.start - last.end_time < PAUSE_SECONDS
            )
        )
        if same and last is not None:
            last.text += " " + c.text
            if c.end is not None:
                last.end_time = max(c.end, last.end_time) if last.end_time is not None else c.end
        else:
            turns.append(RawTurn(c.speaker, c.text, start_time=c.start, end_time=c.end))
    return turns
