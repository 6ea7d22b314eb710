"""Validation of a coder's answer for one unit: codes against the codebook, quotes
placed as spans in the unit's codable text (pure functions).

Every proposal a model makes is checked here; nothing is dropped silently. A proposal
that fails keeps its reason (``valid=False``, ``invalid_reason``): the rate of invalid
proposals is a quality figure of a model and prompt.

Placing a quote. The model copies quotes from the unit, and copies are rarely byte for
byte: it re-spaces, straightens curly quotes and apostrophes, writes ``...`` for ``…``
or ``-`` for ``—``, capitalises the first word. A quote is located exactly first
(whitespace runs count as one space), then tolerantly (those differences ignored); the
stored offsets always point into the original text, never into a normalised copy.
A quote that is found only in a context turn (the interviewer's, say) or runs across
two turns, or is found nowhere, is invalid with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from qualflow.models import Codebook, CodeProposal, CodingRequest, Piece

REPEATED = "repeated on one span"
"""Reason of a proposal that repeats a span already given with the same code: recorded,
but no reason to re-ask (nothing is lost)."""
MAX_RATIONALE_CHARS = 2000
MAX_QUOTE_CHARS = 5000
MAX_QUOTES_PER_CODE = 20
MIN_IMPLAUSIBLE_CODES = 8
"""An answer stacking more codes than this (and more than the plausible share of the
codebook) on one stretch of text is sent to a human: an obedient model told "tag
everything"."""

_WRAPPING_QUOTES = "\"'“”‘’«»„`"
_TOLERANT = str.maketrans(
    {
        **dict.fromkeys("‘’‚‛′`´", "'"),
        **dict.fromkeys("“”„‟″«»", '"'),
        **dict.fromkeys("‐‑‒–—―−", "-"),
        "…": "...",
        "\u00a0": " ",
    }
)


@dataclass(frozen=True)
class RawCode:
    """One code as the model gave it, before validation (any field may be off)."""

    code: str
    quotes: Sequence[str]
    rationale: str
    confidence: float | None


@dataclass(frozen=True)
class Placed:
    start: int
    end: int
    located: str  # "exact" | "tolerant"


# --------------------------------------------------------------------------- locating


def normalize(text: str, *, tolerant: bool = False) -> tuple[str, list[int]]:
    """``text`` with whitespace runs as one space (ends stripped) and, when tolerant,
    quotes, apostrophes, dashes and ellipses unified, a dash with the blanks around it
    read as one ``-``, and case folded.

    Returns the normalised text and, for each of its characters, the offset of the
    character it came from in ``text``, so a match maps back to original offsets.
    """
    out: list[str] = []
    index: list[int] = []
    pending_space = False
    for i, ch in enumerate(text):
        piece = ch.translate(_TOLERANT).casefold() if tolerant else ch
        for c in piece:
            if c.isspace():
                pending_space = bool(out)
                continue
            if tolerant and (c == "-" or (out and out[-1] == "-")):
                # "a — b", "a—b" and "a -- b" all read "a-b"
                pending_space = False
                if c == "-" and out and out[-1] == "-":
                    continue
            if pending_space:
                out.append(" ")
                index.append(i - 1)
                pending_space = False
            out.append(c)
            index.append(i)
    return "".join(out), index


def strip_wrapping(quote: str) -> str:
    """The quote without whitespace and the quotation marks a model wraps it in."""
    quote = quote.strip()
    while len(quote) >= 2 and quote[0] in _WRAPPING_QUOTES and quote[-1] in _WRAPPING_QUOTES:
        quote = quote[1:-1].strip()
    return quote


MODES = ("exact", "tolerant")


def locate(quote: str, text: str, *, after: int = 0, modes: Sequence[str] = MODES) -> Placed | None:
    """Where ``quote`` occurs in ``text`` (offsets into ``text``), exactly first, then
    tolerantly (``modes``); the first occurrence starting at or after ``after``, else
    the first."""
    quote = strip_wrapping(quote)
    if not quote:
        return None
    for how in modes:
        tolerant = how == "tolerant"
        needle, _ = normalize(quote, tolerant=tolerant)
        hay, index = normalize(text, tolerant=tolerant)
        if not needle:
            continue
        positions = _occurrences(hay, needle)
        if not positions:
            continue
        later = [p for p in positions if index[p] >= after]
        pos = (later or positions)[0]
        return Placed(index[pos], index[pos + len(needle) - 1] + 1, how)
    return None


def _occurrences(hay: str, needle: str) -> list[int]:
    out, pos = [], hay.find(needle)
    while pos >= 0:
        out.append(pos)
        pos = hay.find(needle, pos + 1)
    return out


def place(
    quote: str, request: CodingRequest, *, taken: Sequence[tuple[int, int]] = ()
) -> Placed | str:
    """The quote placed inside one codable piece of the unit (transcript offsets), or the
    reason it cannot be. An exact match in any piece wins over a tolerant one in an
    earlier piece ("Yes" lands on "Yes", not on an earlier "yes"). ``taken`` spans (same
    code) are skipped when the quote occurs again further on, so two identical quotes
    land on two occurrences."""
    for mode in MODES:
        first: Placed | None = None
        for piece in request.unit.codable_pieces():
            text = request.piece_text(piece)
            found = locate(quote, text, modes=(mode,))
            if found is None:
                continue
            hit = _next_free(quote, text, piece, _shift(found, piece), taken, mode)
            if (hit.start, hit.end) not in taken:
                return hit
            first = first or hit
        if first is not None:  # every occurrence is taken: a repeat of a span given
            return first
    return _why_not(quote, request)


def _next_free(
    quote: str, text: str, piece: Piece, hit: Placed, taken: Sequence[tuple[int, int]], mode: str
) -> Placed:
    """``hit``, or a later occurrence in the same piece when ``hit`` is taken."""
    for _ in range(8):
        if (hit.start, hit.end) not in taken:
            break
        again = locate(quote, text, after=hit.end - piece.char_start, modes=(mode,))
        if again is None or _shift(again, piece).start <= hit.start:
            break
        hit = _shift(again, piece)
    return hit


def _shift(found: Placed, piece: Piece) -> Placed:
    return Placed(found.start + piece.char_start, found.end + piece.char_start, found.located)


def _why_not(quote: str, request: CodingRequest) -> str:
    shown = _clip(strip_wrapping(quote))
    for piece in request.unit.layout():
        if not piece.codable and locate(quote, request.piece_text(piece)) is not None:
            who = piece.speaker or "a context turn"
            return (
                f"quote {shown!r} is from a context turn ({who}), which is not coded: "
                "quote the participant's own words"
            )
    if locate(quote, request.unit.text) is not None:
        return f"quote {shown!r} runs across two turns: give one quote per turn"
    return f"quote {shown!r} is not a verbatim quote of the excerpt"


# --------------------------------------------------------------------------- checking


def check_code(
    raw: RawCode,
    request: CodingRequest,
    codebook: Codebook,
    candidates: set[str],
    *,
    taken: Sequence[tuple[int, int]] = (),
) -> list[CodeProposal]:
    """One proposal per quote of ``raw``; each valid or with its reason.

    Problems of the code itself (unknown title, empty or oversized rationale, a
    confidence outside [0, 1]) make every quote of it invalid. Confidence is clamped
    into [0, 1] for storage; the original value is in the reason.
    """
    code = raw.code.strip() if isinstance(raw.code, str) else str(raw.code)
    errors = _code_errors(code, raw, codebook)
    confidence = _confidence(raw.confidence, code, errors)
    rationale = (raw.rationale or "").strip() if isinstance(raw.rationale, str) else ""
    quotes = [q for q in raw.quotes if isinstance(q, str)] if raw.quotes else []
    if not quotes:
        errors.append(f"'{code}' has no quote: give at least one verbatim quote")
        quotes = [""]
    if len(quotes) > MAX_QUOTES_PER_CODE:
        errors.append(f"'{code}' has {len(quotes)} quotes (at most {MAX_QUOTES_PER_CODE})")
    out = []
    used = list(taken)
    for quote in quotes:
        reasons = list(errors)
        placed: Placed | str | None = None
        if len(quote) > MAX_QUOTE_CHARS:
            reasons.append(f"a quote for '{code}' is {len(quote)} characters long")
        elif quote.strip():
            placed = place(quote, request, taken=used)
            if isinstance(placed, str):
                reasons.append(f"{placed} (code '{code}')")
        if isinstance(placed, Placed):
            used.append((placed.start, placed.end))
        where = placed if isinstance(placed, Placed) else None
        out.append(
            CodeProposal(
                code=code,
                rationale=rationale[:MAX_RATIONALE_CHARS],
                evidence=quote[:MAX_QUOTE_CHARS],
                start=where.start if where else None,
                end=where.end if where else None,
                evidence_start=where.start if where else None,
                evidence_end=where.end if where else None,
                confidence=confidence,
                in_candidates=code in candidates,
                valid=not reasons,
                invalid_reason="; ".join(reasons) or None,
                located=where.located if where else None,
            )
        )
    return out


def _code_errors(code: str, raw: RawCode, codebook: Codebook) -> list[str]:
    errors: list[str] = []
    if not code:
        errors.append("code is empty")
    elif codebook.get(code) is None:
        near = [t for t in codebook.titles() if t.lower() == code.lower()]
        hint = f" (did you mean '{near[0]}'? titles are case-exact)" if near else ""
        errors.append(f"code '{_clip(code)}' does not exist in the codebook{hint}")
    rationale = raw.rationale.strip() if isinstance(raw.rationale, str) else ""
    if not rationale:
        errors.append(f"rationale for '{code}' is empty")
    elif len(rationale) > MAX_RATIONALE_CHARS:
        errors.append(
            f"rationale for '{code}' is {len(rationale)} characters (at most {MAX_RATIONALE_CHARS})"
        )
    return errors


def _confidence(value: object, code: str, errors: list[str]) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        errors.append(f"confidence for '{code}' is missing or not a number ({value!r})")
        return 0.0
    if math.isnan(value):
        errors.append(f"confidence for '{code}' is not a number")
        return 0.0
    stored = min(1.0, max(0.0, float(value)))
    if stored != value:
        errors.append(f"confidence for '{code}' is {value}, outside [0, 1]")
    return stored


def check_answer(
    raws: Sequence[RawCode],
    request: CodingRequest,
    codebook: Codebook,
    candidates: set[str],
    *,
    max_code_share: float = 1.0,
) -> tuple[list[CodeProposal], list[CodeProposal], str | None]:
    """Validate an answer for one unit: (valid, invalid, a reason the whole answer
    needs a human or None). The same span with the same code twice is invalid
    ("repeated"); an answer stacking more codes on one stretch of text than
    ``max_code_share`` of the codebook (and more than ``MIN_IMPLAUSIBLE_CODES``) needs a
    human."""
    valid: list[CodeProposal] = []
    invalid: list[CodeProposal] = []
    seen: dict[str, list[tuple[int, int]]] = {}
    for raw in raws:
        code = raw.code.strip() if isinstance(raw.code, str) else str(raw.code)
        for p in check_code(raw, request, codebook, candidates, taken=seen.get(code, [])):
            if p.valid and (p.start, p.end) in seen.get(p.code, []):
                p = p.model_copy(
                    update={"valid": False, "invalid_reason": f"'{p.code}' {REPEATED}"}
                )
            (valid if p.valid else invalid).append(p)
            if p.valid:
                seen.setdefault(p.code, []).append((p.start, p.end))  # type: ignore[arg-type]
    return valid, invalid, implausible(valid, codebook, max_code_share)


def must_reask(p: CodeProposal) -> bool:
    """Whether an invalid proposal is worth a re-ask (a mere repeat is not)."""
    return bool(p.invalid_reason) and not p.invalid_reason.endswith(REPEATED)


def implausible(valid: Sequence[CodeProposal], codebook: Codebook, share: float) -> str | None:
    """Why an answer is implausible: it stacks more distinct codes on one stretch of
    text than ``share`` of the codebook (and more than ``MIN_IMPLAUSIBLE_CODES``).

    Counted where the spans overlap, not over the whole unit: a long chunk may well
    carry many codes in different places, but a coder piling most of the codebook onto
    the same words is obeying text like "tag everything", not coding."""
    limit = max(MIN_IMPLAUSIBLE_CODES, share * len(codebook.codes))
    placed = [p for p in valid if p.start is not None and p.end is not None]
    most, where = 0, None
    for p in placed:
        stacked = {q.code for q in placed if q.start < p.end and p.start < q.end}
        if len(stacked) > most:
            most, where = len(stacked), p
    if most > limit and where is not None:
        return (
            f"the answer stacks {most} of the codebook's {len(codebook.codes)} codes on one "
            f"stretch of text ({where.evidence[:40]!r}; more than {share:.0%} of the "
            "codebook): implausible, check whether the text asked the model to tag everything"
        )
    return None


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
