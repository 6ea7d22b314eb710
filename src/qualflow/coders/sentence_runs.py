"""Spans from coders that decide sentence by sentence (the similarity and learned
baselines): a run of adjacent codable sentences of a unit with the same code becomes
one span, so every coder answers a unit with spans, like a researcher's highlight.

Two sentences are adjacent when nothing but blanks lies between them in the unit's
text (consecutive sentences of one turn, or the last sentence of a turn and the first
of the next participant turn); an interviewer turn in between breaks the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qualflow.models import CodeProposal, CodingRequest, PassageContext

Rationale = Callable[[str, float, int], str]
"""``rationale(code, best score in the run, sentences in the run)``."""


def unit_sentences(request: CodingRequest) -> list[PassageContext]:
    """The sentences a per-sentence coder decides on: the request's, or, for a unit
    inside one turn given without them, the unit itself (a passage is its own
    sentence)."""
    if request.sentences or request.unit.is_chunk:
        return list(request.sentences)
    return [request.context]


def runs_to_proposals(
    request: CodingRequest,
    decisions: Sequence[dict[str, float]],
    rationale: Rationale,
) -> list[CodeProposal]:
    """Proposals for one unit from per-sentence decisions (code -> score for each of
    ``unit_sentences(request)``, in order). A run's confidence is its best sentence
    score."""
    sentences = unit_sentences(request)
    if len(decisions) != len(sentences):
        raise ValueError(f"{len(decisions)} decisions for {len(sentences)} sentences")
    open_runs: dict[str, tuple[int, int, float, int]] = {}  # code -> start, end, best, n
    out: list[CodeProposal] = []
    previous: PassageContext | None = None
    for ctx, codes in zip(sentences, decisions, strict=True):
        joined = previous is not None and _adjacent(request, previous, ctx)
        for code in list(open_runs):
            if code not in codes or not joined:
                out.append(_proposal(request, code, open_runs.pop(code), rationale))
        p = ctx.passage
        for code, score in codes.items():
            start, _, best, n = open_runs.get(code, (p.char_start, p.char_end, score, 0))
            open_runs[code] = (start, p.char_end, max(best, score), n + 1)
        previous = ctx
    out += [_proposal(request, code, run, rationale) for code, run in open_runs.items()]
    return sorted(out, key=lambda q: (q.start or 0, -(q.confidence), q.code))


def _adjacent(request: CodingRequest, a: PassageContext, b: PassageContext) -> bool:
    unit = request.unit
    gap = unit.text[a.passage.char_end - unit.char_start : b.passage.char_start - unit.char_start]
    return b.passage.char_start >= a.passage.char_end and not gap.strip()


def _proposal(
    request: CodingRequest, code: str, run: tuple[int, int, float, int], rationale: Rationale
) -> CodeProposal:
    start, end, best, n = run
    unit = request.unit
    text = unit.text[start - unit.char_start : end - unit.char_start]
    return CodeProposal(
        code=code,
        rationale=rationale(code, best, n),
        evidence=text,
        start=start,
        end=end,
        evidence_start=start,
        evidence_end=end,
        confidence=min(1.0, max(0.0, float(best))),
        located="sentences",
    )
