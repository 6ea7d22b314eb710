"""Segmentation: a transcript's turns cut into passages, the unit that gets coded.

Modes: ``sentence`` (default; the seed study coded mostly single sentences), ``turn``
(one passage per turn) and ``window:N`` (N consecutive sentences of one turn,
overlapping with stride 1). Passages never cross a turn. Every passage's offsets point
into ``Transcript.text`` so that highlights, evidence quotes and exports line up.

The sentence splitter is written for transcribed speech rather than edited prose:
pauses written as ellipses, bracketed insertions ("[inaudible]", "[crosstalk]"),
numbers ("3.5", "70 to 80%") and abbreviations ("Dr.", "e.g.") do not end a sentence.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from qualflow.models import Passage, Transcript, Turn

MODES = ("sentence", "turn", "window:N")

# A run of terminal punctuation (spaced or unspaced ellipses, "?!"), with closing
# quotes/brackets that belong to the sentence it ends.
_TERMINATOR = re.compile(r"(?:\.(?:[ \u00a0]?\.){2,}|…|[.?!])+[\"”’')\]]*")
_ELLIPSIS = re.compile(r"\.[ \u00a0]?\.|…")
# Never end a sentence: titles before a name and Latin abbreviations inside one.
# ("etc." and "a.m." end a sentence when a capital follows, like any other period.)
_ABBREVIATIONS = {
    *("dr", "mr", "mrs", "ms", "prof", "st", "jr", "sr", "vs", "cf", "approx", "viz"),
    *("e.g", "i.e", "eg", "ie"),
}
_INITIALISM = re.compile(r"^(?:[A-Z]\.)+[A-Z]$")  # U.S, U.K (the final dot is the terminator)
_ENUMERATION = re.compile(r"^(?:\(?\d{1,3}|[a-zA-Z])[.)]$")  # "1." "a)" "(2)" opening a list item
_FIRST_PERSON = {"I", "I'm", "I’m", "I'd", "I’d", "I've", "I’ve", "I'll", "I’ll"}
_BRACKETS = {")": "(", "]": "[", "}": "{"}
_BRACKETED = re.compile(r"\[[^\]]*\]")
_WORD = re.compile(r"[^\W_]")
_NEXT_WORD = re.compile(r"\s*(\S+)")
_LAST_TOKEN = re.compile(r"(\S*)$")


def parse_mode(mode: str) -> tuple[str, int]:
    """'sentence' -> ('sentence', 1), 'turn' -> ('turn', 0), 'window:3' -> ('window', 3)."""
    raw = mode
    mode = mode.strip().lower()
    if mode == "sentence":
        return "sentence", 1
    if mode == "turn":
        return "turn", 0
    kind, sep, arg = mode.partition(":")
    if kind == "window" and sep:
        try:
            n = int(arg.strip())
        except ValueError:
            n = 0
        if n >= 1:
            return "window", n
        raise ValueError(
            f"bad segmentation mode {raw!r}: the window size must be a whole number >= 1, "
            "e.g. 'window:3'"
        )
    raise ValueError(
        f"unknown segmentation mode {raw!r}: expected 'sentence', 'turn' or 'window:N' (N >= 1)"
    )


def mode_name(mode: str) -> str:
    """The canonical spelling recorded on passages ('Window: 3' -> 'window:3')."""
    kind, n = parse_mode(mode)
    return f"window:{n}" if kind == "window" else kind


def segment(
    transcript: Transcript,
    mode: str = "sentence",
    *,
    interviewer_speakers: Sequence[str] = (),
    code_interviewer: bool = False,
) -> list[Passage]:
    """Cut a transcript into passages; interviewer turns are kept but not codable."""
    kind, n = parse_mode(mode)
    name = mode_name(mode)
    interviewers = {s.strip().casefold() for s in interviewer_speakers}
    passages: list[Passage] = []
    for turn in transcript.turns:
        codable = code_interviewer or not is_interviewer(turn.speaker, interviewers)
        for start, end in _turn_spans(turn, kind, n):
            passages.append(
                Passage(
                    id=Passage.make_id(transcript.content_hash, name, start, end),
                    transcript_id=transcript.id,
                    index=len(passages),
                    turn_index=turn.index,
                    speaker=turn.speaker,
                    char_start=start,
                    char_end=end,
                    text=transcript.text[start:end],
                    codable=codable,
                    segmentation=name,
                )
            )
    return passages


def is_interviewer(speaker: str | None, interviewers: Collection[str] = frozenset()) -> bool:
    """Named in ``interviewers`` (case-insensitive) or labelled interviewer/moderator."""
    if not speaker:
        return False
    folded = speaker.strip().casefold()
    return folded in interviewers or "interviewer" in folded or "moderator" in folded


def _turn_spans(turn: Turn, kind: str, n: int) -> list[tuple[int, int]]:
    """Spans (offsets into the transcript text) of the passages of one turn."""
    if kind == "turn":
        return [(turn.char_start, turn.char_end)]
    sentences = [(turn.char_start + s, turn.char_start + e) for s, e in sentence_spans(turn.text)]
    if kind == "sentence" or not sentences:
        return sentences
    if len(sentences) <= n:
        return [(sentences[0][0], sentences[-1][1])]
    return [(sentences[i][0], sentences[i + n - 1][1]) for i in range(len(sentences) - n + 1)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence in ``text``, whitespace trimmed, none empty.

    Pieces without words (a lone "...", "[inaudible].") join the sentence before them
    (or after them, at the start of a turn).
    """
    protected = _inside_brackets(text)
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _TERMINATOR.finditer(text):
        end = m.end()
        if end < len(text) and not text[end].isspace():
            continue
        if (end - 1) in protected or not _is_boundary(text, start, m):
            continue
        spans.append((start, end))
        start = end
    spans.append((start, len(text)))
    trimmed = [_trim(text, s, e) for s, e in spans]
    return _merge_fillers(text, [sp for sp in trimmed if sp[0] < sp[1]])


def _is_boundary(text: str, start: int, m: re.Match[str]) -> bool:
    nxt = _NEXT_WORD.match(text, m.end())
    if nxt is None:  # end of the turn
        return True
    if m.end() - start <= 8 and _ENUMERATION.match(text[start : m.end()].strip()):
        return False
    word = nxt.group(1)
    following = word[0]
    if following.islower():
        return False
    term = m.group(0)
    if _ELLIPSIS.search(term) and "?" not in term and "!" not in term:
        return following.isupper() and word.rstrip(",.;:!?") not in _FIRST_PERSON
    if term[0] == "." and len(term.rstrip("\"”’')]")) == 1:
        before = _LAST_TOKEN.search(text, max(0, m.start() - 40), m.start())
        token = (before.group(1) if before else "").lstrip("\"“‘'([")
        if token.lower() in _ABBREVIATIONS or _INITIALISM.match(token):
            return False
    return True


def _inside_brackets(text: str) -> set[int]:
    """Positions strictly inside matched (), [] or {}; unmatched brackets are ignored."""
    inside: set[int] = set()
    stack: list[tuple[str, int]] = []
    for i, c in enumerate(text):
        if c in "([{":
            stack.append((c, i))
        elif c in _BRACKETS:
            for depth in range(len(stack) - 1, max(-1, len(stack) - 11), -1):
                if stack[depth][0] == _BRACKETS[c]:
                    inside.update(range(stack[depth][1] + 1, i))
                    del stack[depth:]
                    break
    return inside


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _merge_fillers(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    pending_start: int | None = None
    for s, e in spans:
        if not _WORD.search(_BRACKETED.sub("", text[s:e])):
            if merged:
                merged[-1] = (merged[-1][0], e)
            elif pending_start is None:
                pending_start = s
            continue
        if pending_start is not None:
            s, pending_start = pending_start, None
        merged.append((s, e))
    if pending_start is not None:  # nothing but fillers in the whole turn
        merged.append((pending_start, spans[-1][1]))
    return merged
