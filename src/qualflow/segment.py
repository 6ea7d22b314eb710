"""Segmentation: a transcript's turns cut into passages, the unit that gets coded.

Modes: ``sentence`` (default; the seed study coded mostly single sentences), ``turn``
(one passage per turn) and ``window:N`` (N consecutive sentences of one turn,
overlapping with stride 1). Passages never cross a turn. Every passage's offsets point
into ``Transcript.text`` so that highlights, evidence quotes and exports line up.

The sentence splitter is written for transcribed speech rather than edited prose:
pauses written as ellipses, bracketed insertions ("[inaudible]", "[crosstalk]"),
numbers ("3.5", "70 to 80%") and abbreviations ("Dr.", "e.g.") do not end a sentence.

Codability (what gets coded, what is only context) is decided here, once, for every
unit built on top of it: interviewer turns are context unless the study codes them
(``code_interviewer``), and lines of an interview guide or task sheet read aloud
(``Codability.guide_patterns``, ``Codability.guide_lines``) are context whoever reads
them. ``turn_pieces`` gives the codable and non-codable stretches of a turn.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from qualflow.models import Passage, Transcript, Turn

if TYPE_CHECKING:
    from qualflow.settings import Settings

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


PieceKind = Literal["speech", "interviewer", "guide"]


class GuideError(ValueError):
    """A guide pattern or interview guide file that cannot be used (names which, and why)."""


_GUIDE_NUMBERING = re.compile(
    r"^\s*(?:[-*+]\s+)?(?:\(?\d{1,3}(?:\.[a-z0-9]{1,3})*[.)]?\s+|[a-z][.)]\s+)"
)
_NON_WORD = re.compile(r"[^\w]+")


def _normalized(text: str) -> tuple[str, list[int]]:
    """Casefolded words joined by single spaces, with the offset in ``text`` where each
    normalized character ends (so a normalized prefix maps back to the original)."""
    out: list[str] = []
    ends: list[int] = []
    for m in re.finditer(r"\w+", text):
        if out:
            out.append(" ")
            ends.append(m.start())
        for i, ch in enumerate(m.group().casefold()):
            out.append(ch)
            ends.append(m.start() + i + 1)
    return "".join(out), ends


def read_guide(path: Path) -> list[str]:
    """The lines of an interview guide or task sheet (Markdown or plain text) that an
    interviewer might read aloud: list items and plain lines, their bullets and
    numbering ("- (1)", "3.b", "a)") removed; headings, blank lines and lines of fewer
    than three words are left out."""
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GuideError(f"interview_guide {path}: cannot read it ({exc})") from exc
    lines = []
    for line in raw.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "|", "```", "---")):
            continue
        text = _GUIDE_NUMBERING.sub("", stripped).strip().strip("*_").strip()
        if len(text.split()) >= 3:
            lines.append(text)
    if not lines:
        raise GuideError(f"interview_guide {path}: no guide lines found (one question per line)")
    return lines


@dataclass(frozen=True)
class Codability:
    """Which stretches of a transcript are coded and which are only context.

    ``interviewers``: speaker names (case-insensitive) of interviewer turns, in addition
    to any speaker labelled interviewer/moderator; their turns are context unless
    ``code_interviewer``. ``guide_patterns``: regular expressions; a sentence whose text
    matches one at its start is a guide line read aloud (context). ``guide_lines``: the
    lines of an interview guide; a sentence that begins with one (compared word by
    word, ignoring case, punctuation and numbering) is cut after it, and that stretch
    is a guide line (context) while the rest of the sentence stays speech.
    """

    interviewers: frozenset[str] = frozenset()
    code_interviewer: bool = False
    guide_patterns: tuple[re.Pattern[str], ...] = ()
    guide_lines: tuple[str, ...] = field(default=())

    @classmethod
    def build(
        cls,
        *,
        interviewer_speakers: Iterable[str] = (),
        code_interviewer: bool = False,
        guide_patterns: Iterable[str] = (),
        guide_lines: Iterable[str] = (),
    ) -> Codability:
        compiled = []
        for pattern in guide_patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise GuideError(
                    f"guide_patterns: {pattern!r} is not a regular expression ({exc})"
                ) from exc
        normalized = {_normalized(_GUIDE_NUMBERING.sub("", line))[0] for line in guide_lines}
        return cls(
            interviewers=frozenset(s.strip().casefold() for s in interviewer_speakers),
            code_interviewer=code_interviewer,
            guide_patterns=tuple(compiled),
            guide_lines=tuple(sorted((n for n in normalized if n), key=len, reverse=True)),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Codability:
        """The study's codability: interviewer settings, ``guide_patterns`` and the
        ``interview_guide`` file (relative paths are under the workspace)."""
        lines: list[str] = []
        if settings.interview_guide:
            path = Path(settings.interview_guide)
            if not path.is_absolute():
                path = settings.workspace / path
            lines = read_guide(path)
        return cls.build(
            interviewer_speakers=settings.interviewer_speakers,
            code_interviewer=settings.code_interviewer,
            guide_patterns=settings.guide_patterns,
            guide_lines=lines,
        )

    @property
    def marks_guide(self) -> bool:
        return bool(self.guide_patterns or self.guide_lines)

    def speaker_codable(self, speaker: str | None) -> bool:
        return self.code_interviewer or not is_interviewer(speaker, self.interviewers)

    def guide_end(self, text: str) -> int | None:
        """Where the guide line that opens ``text`` ends (``len(text)`` when all of it
        is one), or None when ``text`` does not open with a guide line."""
        stripped = text.lstrip()
        if any(p.match(stripped) for p in self.guide_patterns):
            return len(text)
        if not self.guide_lines:
            return None
        offset = 0
        numbering = _GUIDE_NUMBERING.match(text)
        if numbering:
            offset = numbering.end()
        norm, ends = _normalized(text[offset:])
        for line in self.guide_lines:  # longest first
            if norm == line or norm.startswith(line + " "):
                end = offset + ends[len(line) - 1]
                rest = text[end:]
                # keep the punctuation closing the guide line with it
                closing = re.match(r"[\s]*[?.!:;,…\"”’')\]]*", rest)
                return end + (len(closing.group().rstrip()) if closing else 0)
        return None


NO_GUIDE = Codability()


def turn_pieces(turn: Turn, codability: Codability = NO_GUIDE) -> list[tuple[int, int, PieceKind]]:
    """The sentences of a turn as (start, end, kind) in transcript offsets: ``speech``
    (codable), ``interviewer`` (context: an interviewer turn the study does not code) or
    ``guide`` (context: a guide line read aloud). A sentence that opens with a guide
    line followed by more words is cut in two: the guide line, then the speech."""
    sentences = [(turn.char_start + s, turn.char_start + e) for s, e in sentence_spans(turn.text)]
    speaker_kind: PieceKind = (
        "speech" if codability.speaker_codable(turn.speaker) else "interviewer"
    )
    if not codability.marks_guide:
        return [(s, e, speaker_kind) for s, e in sentences]
    pieces: list[tuple[int, int, PieceKind]] = []
    for s, e in sentences:
        text = turn.text[s - turn.char_start : e - turn.char_start]
        cut = codability.guide_end(text)
        if cut is None:
            pieces.append((s, e, speaker_kind))
            continue
        rest = text[cut:]
        lead = len(rest) - len(rest.lstrip())
        if rest.strip() and _WORD.search(_BRACKETED.sub("", rest)):
            pieces.append((s, s + cut, "guide"))
            pieces.append((s + cut + lead, e, speaker_kind))
        else:
            pieces.append((s, e, "guide"))
    return pieces


def segment(
    transcript: Transcript,
    mode: str = "sentence",
    *,
    interviewer_speakers: Sequence[str] = (),
    code_interviewer: bool = False,
    codability: Codability | None = None,
) -> list[Passage]:
    """Cut a transcript into passages; interviewer turns and guide lines are kept as
    passages but not codable.

    ``codability`` (see :class:`Codability`, e.g. ``Codability.from_settings``) wins
    over ``interviewer_speakers``/``code_interviewer``, which remain for callers that
    only know about interviewers.
    """
    kind, n = parse_mode(mode)
    name = mode_name(mode)
    policy = codability or Codability.build(
        interviewer_speakers=interviewer_speakers, code_interviewer=code_interviewer
    )
    passages: list[Passage] = []
    for turn in transcript.turns:
        for start, end, codable in _turn_spans(turn, kind, n, policy):
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


def study_segmenter(settings: Settings) -> Callable[..., list[Passage]]:
    """``segment`` with the study's codability (interviewers, guide lines) fixed, for
    importers that take a segmenter (e.g. ``import_taguette(segmenter=...)``)."""
    return functools.partial(segment, codability=Codability.from_settings(settings))


def is_interviewer(speaker: str | None, interviewers: Collection[str] = frozenset()) -> bool:
    """Named in ``interviewers`` (case-insensitive) or labelled interviewer/moderator."""
    if not speaker:
        return False
    folded = speaker.strip().casefold()
    return folded in interviewers or "interviewer" in folded or "moderator" in folded


def _turn_spans(
    turn: Turn, kind: str, n: int, codability: Codability = NO_GUIDE
) -> list[tuple[int, int, bool]]:
    """(start, end, codable) of the passages of one turn, in transcript offsets.

    A turn or window passage is codable when any of its pieces is speech."""
    if kind == "turn":
        pieces = turn_pieces(turn, codability)
        codable = (
            any(k == "speech" for _, _, k in pieces)
            if pieces
            else (codability.speaker_codable(turn.speaker))
        )
        return [(turn.char_start, turn.char_end, codable)]
    pieces = turn_pieces(turn, codability)
    if kind == "sentence" or not pieces:
        return [(s, e, k == "speech") for s, e, k in pieces]
    if len(pieces) <= n:
        return [(pieces[0][0], pieces[-1][1], any(k == "speech" for *_, k in pieces))]
    return [
        (pieces[i][0], pieces[i + n - 1][1], any(k == "speech" for *_, k in pieces[i : i + n]))
        for i in range(len(pieces) - n + 1)
    ]


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
