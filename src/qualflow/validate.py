"""Validation of proposed codes against the codebook and the passage (pure functions).

Every proposal a model makes is checked here; nothing is dropped silently. A
proposal that fails keeps its reason (``valid=False``, ``invalid_reason``): the
rate of invalid proposals is a quality figure of a model and prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qualflow.models import Codebook, CodeProposal

_QUOTES = "\"'“”‘’«»„`"


@dataclass(frozen=True)
class RawProposal:
    """A proposal as the model gave it, before validation (any field may be off)."""

    code: str
    rationale: str
    evidence: str
    confidence: float | None


def normalize_ws(text: str) -> tuple[str, list[int]]:
    """Collapse whitespace runs to one space and strip the ends.

    Returns the normalized text and, for each of its characters, the offset of the
    character it came from in ``text`` (so a match maps back to original offsets).
    """
    out: list[str] = []
    index: list[int] = []
    pending_space = False
    for i, ch in enumerate(text):
        if ch.isspace():
            pending_space = bool(out)
            continue
        if pending_space:
            out.append(" ")
            index.append(i - 1)
            pending_space = False
        out.append(ch)
        index.append(i)
    return "".join(out), index


def find_evidence(evidence: str, passage_text: str) -> tuple[int, int] | None:
    """Offsets ``(start, end)`` of ``evidence`` in ``passage_text``, whitespace-normalized.

    Quotation marks the model wrapped around the whole quote are ignored; the
    quote itself must be verbatim. Returns None when it is not a substring.
    """
    quote, _ = normalize_ws(evidence)
    while len(quote) >= 2 and quote[0] in _QUOTES and quote[-1] in _QUOTES:
        quote = quote[1:-1].strip()
    if not quote:
        return None
    norm, index = normalize_ws(passage_text)
    pos = norm.find(quote)
    if pos < 0:
        return None
    return index[pos], index[pos + len(quote) - 1] + 1


def check(
    raw: RawProposal, passage_text: str, codebook: Codebook, candidates: set[str]
) -> CodeProposal:
    """Validate one proposal; the result has ``valid`` and, if not, ``invalid_reason``.

    Confidence is clamped into [0, 1] for storage; an out-of-range or missing
    value is reported in the reason with the original value.
    """
    errors: list[str] = []
    code = raw.code.strip() if isinstance(raw.code, str) else str(raw.code)
    in_codebook = codebook.get(code) is not None
    if not code:
        errors.append("code is empty")
    elif not in_codebook:
        near = [t for t in codebook.titles() if t.lower() == code.lower()]
        hint = f" (did you mean '{near[0]}'? titles are case-exact)" if near else ""
        errors.append(f"code '{code}' does not exist in the codebook{hint}")
    rationale = (raw.rationale or "").strip()
    if not rationale:
        errors.append(f"rationale for '{code}' is empty")
    span = find_evidence(raw.evidence or "", passage_text)
    if span is None:
        if not (raw.evidence or "").strip():
            errors.append(f"evidence for '{code}' is empty")
        else:
            errors.append(
                f"evidence for '{code}' is not a verbatim quote of the passage: "
                f"{_clip(raw.evidence)!r}"
            )
    confidence = raw.confidence
    if confidence is None or not isinstance(confidence, int | float) or math.isnan(confidence):
        errors.append(f"confidence for '{code}' is missing or not a number ({confidence!r})")
        stored = 0.0
    else:
        stored = min(1.0, max(0.0, float(confidence)))
        if stored != confidence:
            errors.append(f"confidence for '{code}' is {confidence}, outside [0, 1]")
    return CodeProposal(
        code=code,
        rationale=rationale,
        evidence=raw.evidence or "",
        evidence_start=span[0] if span else None,
        evidence_end=span[1] if span else None,
        confidence=stored,
        in_candidates=code in candidates,
        valid=not errors,
        invalid_reason="; ".join(errors) or None,
    )


def check_all(
    raws: list[RawProposal], passage_text: str, codebook: Codebook, candidates: set[str]
) -> tuple[list[CodeProposal], list[CodeProposal]]:
    """Validate an answer for one passage: (valid, invalid). A repeated code is invalid."""
    valid: list[CodeProposal] = []
    invalid: list[CodeProposal] = []
    seen: set[str] = set()
    for raw in raws:
        p = check(raw, passage_text, codebook, candidates)
        if p.valid and p.code in seen:
            p = p.model_copy(update={"valid": False, "invalid_reason": f"'{p.code}' repeated"})
        (valid if p.valid else invalid).append(p)
        if p.valid:
            seen.add(p.code)
    return valid, invalid


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
