"""Span codings: normal form, projection onto sentence and turn grids, span-level agreement.

Pure functions on ``qualflow.models.Span`` / ``SpanCoding`` (see ``docs/spans.md``).
Offsets are code points into one transcript version's text, end exclusive.

**Normal form.** Spans of one code that overlap or touch are one stretch of coded
text: ``normalize`` merges them, sorts everything and merges the scope ranges the
same way. Every other function here reads a coding through ``normalize``, so two
codings that cover the same characters with the same codes give the same figures
however their spans were cut.

**Scope.** A coder answered for the text in its scope; text it covers with no span of
a code was judged not to carry that code; text outside its scope was never judged.
So a grid unit (sentence, turn) outside the coder's scope is *absent* from its
projection (not "no code"), and span-level figures count only characters inside both
coders' scopes.

**Sentence projection.** A sentence carries code C when the spans of C together cover
at least ``threshold`` (default 0.5) of its characters, or a span of C lies inside
it; a stretch of C that meets neither condition on any sentence (it straddles a
boundary, under half of each side) carries C to the sentence it overlaps most, so no
coded stretch vanishes from the sentence grid. Every character of the sentence
counts, blanks included (sentences from ``qualflow.segment`` have no blanks at their
ends, so only the blanks between words count, on both sides of the ratio). A grid
unit is in scope when the scope covers all of its characters.

**Turn projection.** A turn carries code C when a span of C overlaps it (at least
one character).

**Span-level agreement** (coder B read against reference A, per code):

- character overlap: precision = |A_C ∩ B_C| / |B_C|, recall = |A_C ∩ B_C| / |A_C|,
  F1 = 2 |A_C ∩ B_C| / (|A_C| + |B_C|), over the characters inside both scopes;
- highlight matching: a reference span (after merging) is *found* when one span of
  the same code of B overlaps it by at least ``min_share`` of the reference span's
  length (both measured inside both scopes); a span of B is *matched* likewise from
  the other side. Recall = found / reference spans, precision = matched / B's spans,
  F1 their harmonic mean.

Micro figures pool the counts over codes, macro figures average the defined per-code
figures. Intervals: percentile bootstrap resampling transcripts (or the clusters a
``clusters`` map gives them, e.g. participants), seeded, with
``qualflow.agreement.bootstrap_weights`` as every other figure.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from qualflow.agreement import NEVER_USED, Estimate, bootstrap_weights, compare
from qualflow.models import Coding, Range, Span, SpanCoding

if TYPE_CHECKING:
    from qualflow.agreement import PairAgreement
    from qualflow.models import Transcript

SPAN_METRICS = (
    "char_precision",
    "char_recall",
    "char_f1",
    "highlight_precision",
    "highlight_recall",
    "highlight_f1",
)
"""Per-code span-level figures; the overall ones are ``micro_*`` and ``macro_*`` of these."""


# --------------------------------------------------------------------------- ranges


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sorted ranges with overlapping or touching ones merged; empty ones dropped."""
    out: list[list[int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def intersect_ranges(a: Sequence[Range], b: Sequence[Range]) -> list[Range]:
    """Intersection of two merged range lists (merged result)."""
    out: list[Range] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return out


def ranges_length(ranges: Iterable[Range]) -> int:
    """Characters in a list of non-overlapping ranges."""
    return sum(end - start for start, end in ranges)


def overlap_with(ranges: Sequence[Range], start: int, end: int) -> int:
    """Characters of ``[start, end)`` inside a merged range list."""
    if end <= start or not ranges:
        return 0
    i = max(0, bisect.bisect_right(ranges, (start, math.inf)) - 1)
    total = 0
    while i < len(ranges) and ranges[i][0] < end:
        total += max(0, min(end, ranges[i][1]) - max(start, ranges[i][0]))
        i += 1
    return total


def _contains(ranges: Sequence[Range], start: int, end: int) -> bool:
    """Whether one range of a merged list holds all of ``[start, end)``."""
    i = bisect.bisect_right(ranges, (start, math.inf)) - 1
    return i >= 0 and ranges[i][0] <= start and end <= ranges[i][1]


# --------------------------------------------------------------------------- normal form


def normalize(coding: SpanCoding) -> SpanCoding:
    """The same coding with same-code spans merged where they overlap or touch.

    Spans come out sorted by (transcript, start, end, code), scope ranges sorted and
    merged; empty spans and transcripts with an empty scope are dropped.
    """
    by_key: dict[tuple[str, str], list[Range]] = defaultdict(list)
    for s in coding.spans:
        by_key[(s.transcript_id, s.code)].append((s.start, s.end))
    spans = sorted(
        Span(tid, start, end, code)
        for (tid, code), ranges in by_key.items()
        for start, end in merge_ranges(ranges)
    )
    scope = {tid: merged for tid, rs in coding.scope.items() if (merged := merge_ranges(rs))}
    return SpanCoding(coder=coding.coder, spans=spans, scope=dict(sorted(scope.items())))


def code_ranges(coding: SpanCoding) -> dict[str, dict[str, list[Range]]]:
    """Transcript id -> code -> merged ranges that code covers (the normal form)."""
    out: dict[str, dict[str, list[Range]]] = defaultdict(dict)
    for s in normalize(coding).spans:
        out[s.transcript_id].setdefault(s.code, []).append((s.start, s.end))
    return dict(out)


def code_coverage(coding: SpanCoding) -> dict[str, int]:
    """Characters each code covers (overlapping spans of one code counted once)."""
    totals: dict[str, int] = defaultdict(int)
    for s in normalize(coding).spans:
        totals[s.code] += s.length
    return dict(sorted(totals.items()))


def scope_length(coding: SpanCoding) -> int:
    """Characters in the coder's scope."""
    return sum(ranges_length(merge_ranges(rs)) for rs in coding.scope.values())


# --------------------------------------------------------------------------- grids


class GridUnit(Protocol):
    """What a grid cell needs: a ``Passage`` (sentence or turn passages) qualifies."""

    @property
    def id(self) -> str: ...

    @property
    def transcript_id(self) -> str: ...

    @property
    def char_start(self) -> int: ...

    @property
    def char_end(self) -> int: ...


@dataclass(frozen=True)
class Unit:
    """A grid cell that is not a stored passage (e.g. a turn)."""

    id: str
    transcript_id: str
    char_start: int
    char_end: int


def turn_units(transcript: Transcript, *, indices: Iterable[int] | None = None) -> list[Unit]:
    """The transcript's turns as grid units (``indices``: only those turns)."""
    keep = set(indices) if indices is not None else None
    return [
        Unit(f"{transcript.id}#turn-{t.index}", transcript.id, t.char_start, t.char_end)
        for t in transcript.turns
        if keep is None or t.index in keep
    ]


def units_in_scope(coding: SpanCoding, units: Iterable[GridUnit]) -> list[GridUnit]:
    """The units whose every character lies inside the coder's scope."""
    scope = normalize(coding).scope
    return [
        u
        for u in units
        if u.char_end > u.char_start
        and _contains(scope.get(u.transcript_id, []), u.char_start, u.char_end)
    ]


def _project(
    coding: SpanCoding,
    units: Iterable[GridUnit],
    carries: Callable[[list[Range], GridUnit], bool],
) -> Coding:
    """Unit id -> codes for the units in scope; ``carries(ranges, unit) -> bool``."""
    ranges = code_ranges(coding)
    out: Coding = {}
    for u in units_in_scope(coding, units):
        per_code = ranges.get(u.transcript_id, {})
        out[u.id] = frozenset(c for c, rs in per_code.items() if carries(rs, u))
    return out


def to_sentences(
    coding: SpanCoding,
    sentences: Iterable[GridUnit],
    *,
    threshold: float = 0.5,
    inside: bool = True,
    orphans: bool = True,
) -> Coding:
    """Sentence id -> codes: C when spans of C cover >= ``threshold`` of it or lie inside it.

    A stretch of C that meets neither condition on any sentence it overlaps gives C to
    the sentence it overlaps most (``orphans=False`` leaves it out). Sentences outside
    the coder's scope are absent from the result. Blanks inside the sentence count as
    characters (see the module docstring). ``inside=False`` drops the "lies inside"
    clause (coverage alone decides), for comparison with figures computed that way.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")

    def carries(rs: list[Range], u: GridUnit) -> bool:
        start, end = u.char_start, u.char_end
        if overlap_with(rs, start, end) >= threshold * (end - start):
            return True
        return inside and any(start <= a and b <= end for a, b in _touching(rs, start, end))

    units = list(sentences)
    out = _project(coding, units, carries)
    return _place_orphans(coding, units, out) if orphans else out


def _place_orphans(coding: SpanCoding, units: Sequence[GridUnit], out: Coding) -> Coding:
    """Give each stretch of a code that reached no unit to the unit it overlaps most.

    A highlight that straddles a sentence boundary, covering less than half of each
    sentence, or that runs on past a sentence into the blanks after it, would otherwise
    vanish from the sentence grid; this way every coded stretch carries its code to at
    least one sentence (ties: the earlier sentence).
    """
    by_transcript: dict[str, list[GridUnit]] = defaultdict(list)
    for u in units:
        if u.id in out:
            by_transcript[u.transcript_id].append(u)
    extra: dict[str, set[str]] = defaultdict(set)
    for tid, per_code in code_ranges(coding).items():
        cells = sorted(by_transcript.get(tid, []), key=lambda u: (u.char_start, u.char_end))
        starts = [u.char_start for u in cells]
        for code, ranges in per_code.items():
            for a, b in ranges:
                hit = cells[
                    max(0, bisect.bisect_right(starts, a) - 1) : bisect.bisect_left(starts, b)
                ]
                hit = [u for u in hit if u.char_start < b and a < u.char_end]
                if not hit or any(code in out[u.id] or code in extra[u.id] for u in hit):
                    continue
                best = max(
                    hit, key=lambda u: (min(b, u.char_end) - max(a, u.char_start), -u.char_start)
                )
                extra[best.id].add(code)
    for uid, codes in extra.items():
        out[uid] = out[uid] | codes
    return out


def to_turns(coding: SpanCoding, turns: Iterable[GridUnit]) -> Coding:
    """Turn id -> codes: C when a span of C overlaps the turn. Turns out of scope: absent."""
    return _project(coding, turns, lambda rs, u: overlap_with(rs, u.char_start, u.char_end) > 0)


def _touching(ranges: Sequence[Range], start: int, end: int) -> list[Range]:
    """The ranges of a merged list that overlap ``[start, end)``."""
    i = max(0, bisect.bisect_right(ranges, (start, math.inf)) - 1)
    out = []
    while i < len(ranges) and ranges[i][0] < end:
        if ranges[i][1] > start:
            out.append(ranges[i])
        i += 1
    return out


# --------------------------------------------------------------------------- coverage


@dataclass
class Coverage:
    """How much of the reference's scope the other coder answered."""

    reference_chars: int
    answered_chars: int
    char_share: float | None
    reference_units: int | None = None
    answered_units: int | None = None
    unit_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def common_scope(a: SpanCoding, b: SpanCoding) -> dict[str, list[Range]]:
    """Transcript id -> ranges inside both coders' scopes (transcripts with none left out)."""
    sa, sb = normalize(a).scope, normalize(b).scope
    both = {tid: intersect_ranges(sa[tid], sb[tid]) for tid in sa.keys() & sb.keys()}
    return {tid: rs for tid, rs in sorted(both.items()) if rs}


def coverage(
    reference: SpanCoding, other: SpanCoding, units: Iterable[GridUnit] | None = None
) -> Coverage:
    """Share of the reference's scope that ``other`` answered: characters, and grid units.

    A unit counts for the reference when it lies inside the reference's scope, and as
    answered when it lies inside the other's scope too.
    """
    ref_chars = scope_length(reference)
    both_chars = sum(ranges_length(rs) for rs in common_scope(reference, other).values())
    result = Coverage(ref_chars, both_chars, both_chars / ref_chars if ref_chars else None)
    if units is not None:
        in_ref = units_in_scope(reference, units)
        answered = units_in_scope(other, in_ref)
        result.reference_units = len(in_ref)
        result.answered_units = len(answered)
        result.unit_share = len(answered) / len(in_ref) if in_ref else None
    return result


# --------------------------------------------------------------------------- span agreement

# Counts kept per transcript and code; the figures are ratios of their (resampled) sums.
SPAN_COUNTS = (
    "chars_reference",
    "chars_other",
    "chars_both",
    "spans_reference",
    "spans_found",
    "spans_other",
    "spans_matched",
)


@dataclass
class SpanCodeAgreement:
    """One code's span-level agreement of coder B with reference A."""

    code: str
    chars_reference: int
    chars_other: int
    chars_both: int
    spans_reference: int
    spans_found: int
    spans_other: int
    spans_matched: int
    metrics: dict[str, Estimate]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "metrics"}
        d.update({k: v.to_dict() for k, v in self.metrics.items()})
        return d


@dataclass
class SpanAgreement:
    """Span-level agreement of coder B with reference A inside both scopes."""

    coder_a: str
    coder_b: str
    transcripts: list[str]
    scope_chars: int = field(metadata={"doc": "characters inside both scopes"})
    min_share: float
    codes: list[SpanCodeAgreement]
    overall: dict[str, Estimate]
    n_boot: int
    seed: int

    def code(self, title: str) -> SpanCodeAgreement:
        return next(c for c in self.codes if c.code == title)

    def to_dict(self) -> dict[str, Any]:
        return {
            "coder_a": self.coder_a,
            "coder_b": self.coder_b,
            "transcripts": self.transcripts,
            "scope_chars": self.scope_chars,
            "min_share": self.min_share,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "overall": {k: v.to_dict() for k, v in self.overall.items()},
            "codes": [c.to_dict() for c in self.codes],
        }


def _match_count(
    mine: Sequence[Range], theirs: Sequence[Range], scope: Sequence[Range], min_share: float
) -> tuple[int, int]:
    """(spans of ``mine`` with some length in scope, those one span of ``theirs`` overlaps
    by at least ``min_share`` of their in-scope length)."""
    counted = matched = 0
    for start, end in mine:
        length = overlap_with(scope, start, end)
        if length <= 0:
            continue
        counted += 1
        for a, b in _touching(theirs, start, end):
            if overlap_with(scope, max(a, start), min(b, end)) >= min_share * length:
                matched += 1
                break
    return counted, matched


def _transcript_counts(
    ref: dict[str, list[Range]],
    other: dict[str, list[Range]],
    scope: list[Range],
    codes: Sequence[str],
    min_share: float,
) -> np.ndarray:
    """codes x counts (in the order of ``SPAN_COUNTS``) for one transcript."""
    out = np.zeros((len(codes), len(SPAN_COUNTS)))
    for j, code in enumerate(codes):
        r, o = ref.get(code, []), other.get(code, [])
        if not r and not o:
            continue
        r_in, o_in = intersect_ranges(r, scope), intersect_ranges(o, scope)
        found = _match_count(r, o, scope, min_share)
        matched = _match_count(o, r, scope, min_share)
        out[j] = (
            ranges_length(r_in),
            ranges_length(o_in),
            ranges_length(intersect_ranges(r_in, o_in)),
            found[0],
            found[1],
            matched[0],
            matched[1],
        )
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _figures(totals: np.ndarray) -> dict[str, np.ndarray]:
    """Span figures from count totals (``...`` x len(SPAN_COUNTS)); NaN = undefined."""
    c = {name: totals[..., i] for i, name in enumerate(SPAN_COUNTS)}
    hp = _ratio(c["spans_matched"], c["spans_other"])
    hr = _ratio(c["spans_found"], c["spans_reference"])
    # Harmonic mean; 0 (not undefined) when one side has no span of the code: that
    # side's precision or recall is undefined, the other is then 0.
    used = (c["spans_reference"] + c["spans_other"]) > 0
    hf1 = np.where(used, np.nan_to_num(_ratio(2 * hp * hr, hp + hr), nan=0.0), np.nan)
    return {
        "char_precision": _ratio(c["chars_both"], c["chars_other"]),
        "char_recall": _ratio(c["chars_both"], c["chars_reference"]),
        "char_f1": _ratio(2 * c["chars_both"], c["chars_reference"] + c["chars_other"]),
        "highlight_precision": hp,
        "highlight_recall": hr,
        "highlight_f1": hf1,
    }


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _interval(samples: np.ndarray) -> tuple[float | None, float | None]:
    ok = samples[~np.isnan(samples)]
    if samples.size == 0 or ok.size < 0.5 * samples.size:
        return None, None
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return float(lo), float(hi)


def _estimate(point: float, samples: np.ndarray | None, note: str | None) -> Estimate:
    if math.isnan(point):
        return Estimate(None, note=note or "undefined")
    if samples is None:
        return Estimate(float(point))
    lo, hi = _interval(samples)
    return Estimate(float(point), lo, hi)


def _undefined_note(metric: str, counts: np.ndarray) -> str:
    c = dict(zip(SPAN_COUNTS, counts, strict=True))
    if not (c["chars_reference"] or c["chars_other"]):
        return NEVER_USED
    if metric.endswith("precision") and not c["chars_other"]:
        return "coder B never applied the code"
    if metric.endswith("recall") and not c["chars_reference"]:
        return "coder A never applied the code"
    return "undefined"


def span_agreement(
    reference: SpanCoding,
    other: SpanCoding,
    *,
    codes: Iterable[str] | None = None,
    min_share: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    clusters: Mapping[str, Any] | None = None,
) -> SpanAgreement:
    """Per-code and overall span-level agreement of ``other`` with ``reference``.

    Only text inside both scopes counts. ``codes``: codes to report even if unused
    (others either coder used are appended). ``clusters`` (transcript id -> label,
    e.g. the participant) resamples clusters instead of transcripts.
    """
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    scope = common_scope(reference, other)
    ref_ranges, other_ranges = code_ranges(reference), code_ranges(other)
    transcripts = list(scope)
    used = {
        code
        for tid in transcripts
        for side in (ref_ranges, other_ranges)
        for code, rs in side.get(tid, {}).items()
        if intersect_ranges(rs, scope[tid])
    }
    listed = list(dict.fromkeys(codes or []))
    code_list = listed + sorted(used - set(listed))
    per_transcript = (
        np.stack(
            [
                _transcript_counts(
                    ref_ranges.get(tid, {}),
                    other_ranges.get(tid, {}),
                    scope[tid],
                    code_list,
                    min_share,
                )
                for tid in transcripts
            ]
        )
        if transcripts
        else np.zeros((0, len(code_list), len(SPAN_COUNTS)))
    )
    totals = per_transcript.sum(axis=0)  # codes x counts
    point = _figures(totals)
    point_all = _overall(totals, point, axis=0)
    boot = boot_all = None
    if n_boot and transcripts:
        labels = [clusters.get(t, t) for t in transcripts] if clusters is not None else None
        w = bootstrap_weights(len(transcripts), n_boot, seed, labels)
        flat = per_transcript.reshape(len(transcripts), -1)
        resampled = (w @ flat).reshape(n_boot, len(code_list), len(SPAN_COUNTS))
        boot = _figures(resampled)
        boot_all = _overall(resampled, boot, axis=1)
    rows = []
    for j, code in enumerate(code_list):
        metrics = {
            m: _estimate(
                float(point[m][j]),
                boot[m][:, j] if boot is not None else None,
                _undefined_note(m, totals[j]),
            )
            for m in SPAN_METRICS
        }
        rows.append(SpanCodeAgreement(code, *(int(x) for x in totals[j]), metrics=metrics))
    overall = {
        m: _estimate(float(v), boot_all[m] if boot_all is not None else None, None)
        for m, v in point_all.items()
    }
    return SpanAgreement(
        coder_a=reference.coder,
        coder_b=other.coder,
        transcripts=transcripts,
        scope_chars=sum(ranges_length(rs) for rs in scope.values()),
        min_share=min_share,
        codes=rows,
        overall=overall,
        n_boot=n_boot if transcripts else 0,
        seed=seed,
    )


def _overall(totals: np.ndarray, per: dict[str, np.ndarray], axis: int) -> dict[str, np.ndarray]:
    """Micro (pooled counts) and macro (mean of defined per-code figures) figures."""
    micro = _figures(totals.sum(axis=axis))
    out = {f"micro_{m}": micro[m] for m in SPAN_METRICS}
    out.update({f"macro_{m}": _nanmean(per[m], axis=axis) for m in SPAN_METRICS})
    return out


# --------------------------------------------------------------------------- three levels


@dataclass
class LevelAgreement:
    """Agreement of B with reference A at span, sentence and turn level, side by side."""

    span: SpanAgreement
    sentence: PairAgreement
    turn: PairAgreement
    coverage: Coverage

    def to_dict(self) -> dict[str, Any]:
        return {
            "span": self.span.to_dict(),
            "sentence": self.sentence.to_dict(),
            "turn": self.turn.to_dict(),
            "coverage": self.coverage.to_dict(),
        }


def agreement_at_levels(
    reference: SpanCoding,
    other: SpanCoding,
    *,
    sentences: Sequence[GridUnit],
    turns: Sequence[GridUnit],
    codes: Iterable[str] | None = None,
    threshold: float = 0.5,
    min_share: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    clusters: Mapping[str, Any] | None = None,
) -> LevelAgreement:
    """Span-, sentence- and turn-level figures of ``other`` against ``reference``.

    Sentence and turn figures are ``qualflow.agreement.compare`` on the projections
    (over the units both coders answered). ``clusters`` maps transcript ids to
    cluster labels; every level resamples by it (grid units by their transcript).
    """
    code_list = list(codes) if codes is not None else None
    transcript_of = {u.id: u.transcript_id for u in (*sentences, *turns)}
    unit_clusters = {
        uid: (clusters.get(tid, tid) if clusters is not None else tid)
        for uid, tid in transcript_of.items()
    }

    def grid(
        units: Sequence[GridUnit], project: Callable[[SpanCoding, Sequence[GridUnit]], Coding]
    ) -> PairAgreement:
        return compare(
            project(reference, units),
            project(other, units),
            name_a=reference.coder,
            name_b=other.coder,
            codes=code_list,
            n_boot=n_boot,
            seed=seed,
            clusters=unit_clusters,
        )

    return LevelAgreement(
        span=span_agreement(
            reference,
            other,
            codes=code_list,
            min_share=min_share,
            n_boot=n_boot,
            seed=seed,
            clusters=clusters,
        ),
        sentence=grid(sentences, lambda c, u: to_sentences(c, u, threshold=threshold)),
        turn=grid(turns, to_turns),
        coverage=coverage(reference, other, sentences),
    )
