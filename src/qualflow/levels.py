"""Agreement at three levels for a report: span, sentence and turn, side by side.

``qualflow.evaluate`` computes the sentence level (its ``agreement`` section, on the
sentence grid, as before spans). This module adds the span and turn levels, read from
the coders' spans (``SpanCoding``), never from their sentence projections, over exactly
the text the sentence level rests on:

- **The evaluated text** (``region``) is the union of the reference's grid units the
  report counts (the codable sentences of the held-out transcripts, say). Characters
  between sentences, interviewer turns and guide lines read aloud are outside it.
- **Span level**: ``spans.span_agreement`` with both coders' scopes cut to the region.
  Headline: the coder's scope is the whole region, so text it never answered (a failed
  or ``needs_human`` chunk) carries no code and every reference character there is a
  miss. Answered only: the coder's own scope inside the region.
- **Turn level**: the turns that overlap the region; spans cut to the region (so a
  highlight on a guide line does not code its turn); ``spans.to_turns`` (a span of C
  overlaps the turn). Headline: every such turn, unanswered text as no code. Answered
  only: the turns whose evaluated text the coder answered in full.
- **Human baseline**: where two or more human coders coded the same text, human-human
  agreement (mean over pairs) next to machine-human (mean over the humans as
  reference) on the text they all coded, the machine's unanswered text counted as no
  code, with the non-inferiority reading of ``agreement.human_baseline``. Turn level:
  ``agreement.human_baseline`` on the turn projections. Span level: the same reading
  on character and highlight F1, from per-transcript counts resampled with
  ``agreement.bootstrap_weights`` (participants when the report clusters by them).

Intervals: the span level resamples transcripts (or their clusters); the turn level
resamples turns (or their clusters), as the sentence level resamples sentences.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

from qualflow import agreement as ag
from qualflow import spans as sp
from qualflow.models import Coding, Range, Span, SpanCoding

if TYPE_CHECKING:
    from qualflow.store import Store

Region = dict[str, list[Range]]
"""Transcript id -> merged ranges: the evaluated text."""

DEFAULT_MIN_SHARE = 0.5
"""Highlight matching: a reference span is found when one coder span of the same code
overlaps at least this share of it (experiment key ``min_share``)."""

SENTENCE_THRESHOLD = 0.5
"""The sentence rule (``spans.to_sentences``): spans of a code cover at least half of
the sentence, or one lies inside it. Fixed: the sentence figures stay comparable."""

SPAN_READ_ON = ("micro_char_f1", "micro_highlight_f1", "macro_char_f1")
"""Span-level figures the human baseline is read on."""

_COUNT_FIELDS = sp.SPAN_COUNTS


# --------------------------------------------------------------------------- grid


@dataclass
class Grid:
    """Where a report's grid units lie: sentence units by id, turns per transcript."""

    sentences: dict[str, sp.Unit]
    turns: dict[str, list[sp.Unit]]

    @classmethod
    def from_store(cls, store: Store, unit_ids: Iterable[str]) -> Grid:
        """The positions of these grid passages and the turns of their transcripts."""
        ids = list(dict.fromkeys(unit_ids))
        sentences: dict[str, sp.Unit] = {}
        for i in range(0, len(ids), 500):
            for p in store.passages(ids=ids[i : i + 500]):
                sentences[p.id] = sp.Unit(p.id, p.transcript_id, p.char_start, p.char_end)
        turns = {}
        for tid in sorted({u.transcript_id for u in sentences.values()}):
            transcript = store.transcript(tid)
            if transcript is not None:
                turns[tid] = sp.turn_units(transcript)
        return cls(sentences, turns)

    def region(self, unit_ids: Iterable[str]) -> Region:
        """The text of these units (merged ranges per transcript)."""
        ranges: dict[str, list[Range]] = defaultdict(list)
        for uid in unit_ids:
            u = self.sentences.get(uid)
            if u is not None:
                ranges[u.transcript_id].append((u.char_start, u.char_end))
        return {tid: sp.merge_ranges(rs) for tid, rs in sorted(ranges.items())}

    def turns_over(self, region: Region) -> list[sp.Unit]:
        """The turns that overlap the region."""
        return [
            t
            for tid, ranges in region.items()
            for t in self.turns.get(tid, [])
            if sp.overlap_with(ranges, t.char_start, t.char_end) > 0
        ]


# --------------------------------------------------------------------------- span codings


def intersect_region(a: Mapping[str, Sequence[Range]], b: Region) -> Region:
    """Ranges inside both (per transcript; transcripts with nothing left dropped)."""
    out = {}
    for tid in sorted(a.keys() & b.keys()):
        both = sp.intersect_ranges(sp.merge_ranges(a[tid]), b[tid])
        if both:
            out[tid] = both
    return out


def region_chars(region: Mapping[str, Sequence[Range]]) -> int:
    return sum(sp.ranges_length(rs) for rs in region.values())


def with_scope(coding: SpanCoding, scope: Region) -> SpanCoding:
    """The same spans with another scope (e.g. the whole evaluated text: unanswered
    text then carries no code)."""
    return SpanCoding(coder=coding.coder, spans=list(coding.spans), scope=dict(scope))


def clip_spans(spans: Iterable[Span], region: Region) -> list[Span]:
    """The parts of the spans inside the region."""
    out = []
    for s in spans:
        for a, b in sp.intersect_ranges([(s.start, s.end)], region.get(s.transcript_id, [])):
            out.append(Span(s.transcript_id, a, b, s.code))
    return out


def spans_from_units(name: str, coding: Coding, grid: Grid) -> SpanCoding:
    """A unit coding as spans: each coded unit a span of each of its codes, the units
    its scope. For coders that coded grid units (passage-level runs and reviews made
    before spans); a unit the grid does not know is left out."""
    out = SpanCoding(coder=name)
    scope: dict[str, list[Range]] = defaultdict(list)
    for uid, codes in coding.items():
        u = grid.sentences.get(uid)
        if u is None:
            continue
        scope[u.transcript_id].append((u.char_start, u.char_end))
        out.spans += [Span(u.transcript_id, u.char_start, u.char_end, c) for c in sorted(codes)]
    out.scope = {tid: sp.merge_ranges(rs) for tid, rs in sorted(scope.items())}
    return out


# --------------------------------------------------------------------------- turns


def _answered_turns(coding: SpanCoding, region: Region, turns: Sequence[sp.Unit]) -> list[sp.Unit]:
    """Turns whose evaluated text lies wholly inside the coder's scope."""
    scope = sp.normalize(coding).scope
    out = []
    for t in turns:
        evaluated = sp.intersect_ranges(
            region.get(t.transcript_id, []), [(t.char_start, t.char_end)]
        )
        answered = sp.intersect_ranges(evaluated, scope.get(t.transcript_id, []))
        if sp.ranges_length(evaluated) and sp.ranges_length(answered) == sp.ranges_length(
            evaluated
        ):
            out.append(t)
    return out


def turn_coding(
    coding: SpanCoding, region: Region, turns: Sequence[sp.Unit], *, unanswered_as_no_code: bool
) -> Coding:
    """Turn id -> codes from the spans inside the region (a span of C overlaps the turn).

    ``unanswered_as_no_code``: every turn is listed (text the coder never answered
    carries no code); otherwise only the turns it answered in full."""
    keep = list(turns) if unanswered_as_no_code else _answered_turns(coding, region, turns)
    scope: dict[str, list[Range]] = defaultdict(list)
    for t in keep:
        scope[t.transcript_id].append((t.char_start, t.char_end))
    clipped = SpanCoding(
        coder=coding.coder,
        spans=clip_spans(coding.spans, region),
        scope={tid: sp.merge_ranges(rs) for tid, rs in scope.items()},
    )
    return sp.to_turns(clipped, keep)


# --------------------------------------------------------------------------- the section


@dataclass
class LevelSetup:
    """What every level of one report shares."""

    codes: list[str] | None
    n_boot: int
    seed: int
    min_support: int
    min_share: float
    margin: float
    transcript_clusters: dict[str, Any] | None
    """Transcript id -> cluster label (participant), or None: resample transcripts."""


def levels_section(
    reference: SpanCoding,
    coder: SpanCoding,
    region: Region,
    grid: Grid,
    setup: LevelSetup,
    humans: Mapping[str, SpanCoding] | None = None,
) -> dict[str, Any]:
    """The span and turn levels of a report (the sentence level is the report's own)."""
    ref = with_scope(reference, intersect_region(reference.scope, region))
    region = ref.scope  # text the reference did not code is not evaluated
    out: dict[str, Any] = {
        "span": span_level(ref, coder, region, setup),
        "turn": turn_level(ref, coder, region, grid, setup),
    }
    if humans and len(humans) >= 2:
        people = {n: with_scope(h, intersect_region(h.scope, region)) for n, h in humans.items()}
        out["span"].update(span_humans(people, coder, setup))
        out["turn"].update(turn_humans(people, coder, region, grid, setup))
    return out


def span_level(
    ref: SpanCoding, coder: SpanCoding, region: Region, setup: LevelSetup
) -> dict[str, Any]:
    """Span-level figures: headline (unanswered text = no code), then answered only."""
    answered_scope = intersect_region(coder.scope, region)
    cover = sp.coverage(ref, with_scope(coder, answered_scope))

    def figures(scope: Region) -> dict[str, Any]:
        return sp.span_agreement(
            ref,
            with_scope(coder, scope),
            codes=setup.codes,
            min_share=setup.min_share,
            n_boot=setup.n_boot,
            seed=setup.seed,
            clusters=setup.transcript_clusters,
        ).to_dict()

    full = region_chars(answered_scope) == region_chars(region)
    return {
        "scope_chars": region_chars(region),
        "coverage": cover.to_dict(),
        "agreement": figures(region),
        "answered_only": None if full else figures(answered_scope),
        "same_as_headline": full,
    }


def _turn_clusters(
    turns: Sequence[sp.Unit], transcript_clusters: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    if transcript_clusters is None:
        return None
    return {t.id: transcript_clusters.get(t.transcript_id, t.transcript_id) for t in turns}


def turn_level(
    ref: SpanCoding, coder: SpanCoding, region: Region, grid: Grid, setup: LevelSetup
) -> dict[str, Any]:
    """Turn-level figures: headline over every evaluated turn, then answered turns only."""
    turns = grid.turns_over(region)
    reference = turn_coding(ref, region, turns, unanswered_as_no_code=True)
    full = turn_coding(coder, region, turns, unanswered_as_no_code=True)
    answered = sorted(turn_coding(coder, region, turns, unanswered_as_no_code=False))
    clusters = _turn_clusters(turns, setup.transcript_clusters)

    def figures(units: Sequence[str]) -> dict[str, Any]:
        return ag.compare(
            reference,
            full,
            name_a=ref.coder,
            name_b=coder.coder,
            codes=setup.codes,
            n_boot=setup.n_boot,
            seed=setup.seed,
            min_support=setup.min_support,
            passages=list(units),
            clusters=clusters,
        ).to_dict()

    same = len(answered) == len(turns)
    return {
        "coverage": {
            "reference_units": len(turns),
            "answered": len(answered),
            "share": len(answered) / len(turns) if turns else None,
        },
        "agreement": figures(sorted(reference)) if turns else None,
        "answered_only": None if same or not answered else figures(answered),
        "same_as_headline": same,
    }


# --------------------------------------------------------------------------- humans


def turn_humans(
    humans: Mapping[str, SpanCoding],
    machine: SpanCoding,
    region: Region,
    grid: Grid,
    setup: LevelSetup,
) -> dict[str, Any]:
    """Human-human and machine-human agreement on the turns every human coded in full."""
    turns = grid.turns_over(region)
    codings = {
        n: turn_coding(h, region, turns, unanswered_as_no_code=False) for n, h in humans.items()
    }
    shared = ag.shared_passages(*codings.values())
    if not shared:
        return {"human_baseline": None, "human_agreement": None}
    machine_turns = turn_coding(machine, region, turns, unanswered_as_no_code=True)
    clusters = _turn_clusters(turns, setup.transcript_clusters)
    baseline = ag.human_baseline(
        {n: {t: c[t] for t in shared} for n, c in codings.items()},
        {t: machine_turns[t] for t in shared},
        machine_name=machine.coder,
        codes=setup.codes,
        margin=setup.margin,
        n_boot=setup.n_boot,
        seed=setup.seed,
        clusters=clusters,
    )
    (n1, c1), (n2, c2) = list(codings.items())[:2]
    pair = ag.compare(
        c1,
        c2,
        name_a=n1,
        name_b=n2,
        codes=setup.codes,
        n_boot=setup.n_boot,
        seed=setup.seed,
        min_support=setup.min_support,
        passages=shared,
        clusters=clusters,
    )
    return {"human_baseline": baseline.to_dict(), "human_agreement": pair.to_dict()}


def span_humans(
    humans: Mapping[str, SpanCoding], machine: SpanCoding, setup: LevelSetup
) -> dict[str, Any]:
    """Span-level human baseline on the text every human coded (the machine's
    unanswered text there counts as no code), with the non-inferiority reading."""
    shared: Region | None = None
    for h in humans.values():
        shared = dict(h.scope) if shared is None else intersect_region(shared, h.scope)
    if not shared:
        return {"human_baseline": None, "human_agreement": None}
    people = {n: with_scope(h, shared) for n, h in humans.items()}
    h1, h2 = list(people.values())[:2]
    pair = sp.span_agreement(
        h1,
        h2,
        codes=setup.codes,
        min_share=setup.min_share,
        n_boot=setup.n_boot,
        seed=setup.seed,
        clusters=setup.transcript_clusters,
    )
    reading = span_baseline(people, with_scope(machine, shared), shared, setup)
    return {"human_baseline": reading, "human_agreement": pair.to_dict()}


def _pair_counts(
    a: SpanCoding, b: SpanCoding, transcripts: Sequence[str], codes: Sequence[str], min_share: float
) -> np.ndarray:
    """transcripts x codes x SPAN_COUNTS: span-level counts of B against A, per transcript."""
    out = np.zeros((len(transcripts), len(codes), len(_COUNT_FIELDS)))
    for i, tid in enumerate(transcripts):
        one = [_one_transcript(c, tid) for c in (a, b)]
        result = sp.span_agreement(*one, codes=codes, min_share=min_share, n_boot=0)
        row = {c.code: c for c in result.codes}
        for j, code in enumerate(codes):
            c = row.get(code)
            if c is not None:
                out[i, j] = [getattr(c, name) for name in _COUNT_FIELDS]
    return out


def _one_transcript(coding: SpanCoding, tid: str) -> SpanCoding:
    return SpanCoding(
        coder=coding.coder,
        spans=[s for s in coding.spans if s.transcript_id == tid],
        scope={tid: coding.scope.get(tid, [])},
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def span_figures(totals: np.ndarray) -> dict[str, np.ndarray]:
    """Micro character F1, micro highlight F1, macro character F1 and per-code character
    F1 from count totals (``... x codes x SPAN_COUNTS``), as ``spans.span_agreement``."""
    c = {name: totals[..., i] for i, name in enumerate(_COUNT_FIELDS)}
    per_code = _ratio(2 * c["chars_both"], c["chars_reference"] + c["chars_other"])
    pooled = {name: v.sum(axis=-1) for name, v in c.items()}
    hp = _ratio(pooled["spans_matched"], pooled["spans_other"])
    hr = _ratio(pooled["spans_found"], pooled["spans_reference"])
    used = (pooled["spans_reference"] + pooled["spans_other"]) > 0
    hf1 = np.where(used, np.nan_to_num(_ratio(2 * hp * hr, hp + hr), nan=0.0), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        macro = np.nanmean(per_code, axis=-1)
    return {
        "micro_char_f1": _ratio(
            2 * pooled["chars_both"], pooled["chars_reference"] + pooled["chars_other"]
        ),
        "micro_highlight_f1": hf1,
        "macro_char_f1": macro,
        "char_f1": per_code,
    }


def _mean(values: Sequence[np.ndarray]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(values), axis=0)


def _estimate(point: float, samples: np.ndarray) -> dict[str, Any]:
    if math.isnan(point):
        return ag.Estimate(None, note="undefined").to_dict()
    ok = samples[~np.isnan(samples)]
    if samples.size == 0 or ok.size < 0.5 * samples.size:
        return ag.Estimate(float(point)).to_dict()
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return ag.Estimate(float(point), float(lo), float(hi)).to_dict()


def non_inferiority(difference: Mapping[str, Any], margin: float) -> str:
    """The reading of ``agreement.human_baseline``: non-inferior when the lower 95% bound
    of (machine-human minus human-human) lies above ``-margin``, inferior when the upper
    bound lies below it, else inconclusive."""
    low, high = difference.get("low"), difference.get("high")
    if difference.get("value") is None or low is None or high is None:
        return "undefined"
    if low > -margin:
        return "non-inferior"
    if high < -margin:
        return "inferior"
    return "inconclusive"


def span_baseline(
    humans: Mapping[str, SpanCoding], machine: SpanCoding, shared: Region, setup: LevelSetup
) -> dict[str, Any]:
    """Human-human (mean over pairs) vs machine-human (mean over humans as reference)
    span figures, paired bootstrap over transcripts (or their clusters)."""
    transcripts = sorted(shared)
    used = {s.code for c in (*humans.values(), machine) for s in c.spans}
    codes = list(dict.fromkeys([*(setup.codes or []), *sorted(used)]))
    names = list(humans)
    hh = [
        _pair_counts(humans[x], humans[y], transcripts, codes, setup.min_share)
        for x, y in combinations(names, 2)
    ]
    mh = [_pair_counts(humans[x], machine, transcripts, codes, setup.min_share) for x in names]
    labels = (
        [setup.transcript_clusters.get(t, t) for t in transcripts]
        if setup.transcript_clusters is not None
        else None
    )
    w = ag.bootstrap_weights(len(transcripts), setup.n_boot, setup.seed, labels)

    def point(counts: list[np.ndarray]) -> dict[str, np.ndarray]:
        figs = [span_figures(c.sum(axis=0)) for c in counts]
        return {k: _mean([f[k] for f in figs]) for k in figs[0]}

    def resampled(counts: list[np.ndarray]) -> dict[str, np.ndarray]:
        figs = [span_figures(np.einsum("bt,tcx->bcx", w, c)) for c in counts]
        return {k: _mean([f[k] for f in figs]) for k in figs[0]}

    hp, mp, hs, ms = point(hh), point(mh), resampled(hh), resampled(mh)

    def row(subject: str, metric: str, h: float, m: float, h_s, m_s) -> dict[str, Any]:
        diff = _estimate(m - h, m_s - h_s)
        return {
            "subject": subject,
            "metric": metric,
            "human_human": _estimate(h, h_s),
            "machine_human": _estimate(m, m_s),
            "difference": diff,
            "reading": non_inferiority(diff, setup.margin),
        }

    overall = [row("all codes", m, float(hp[m]), float(mp[m]), hs[m], ms[m]) for m in SPAN_READ_ON]
    per_code = [
        row(
            code,
            "char_f1",
            float(hp["char_f1"][j]),
            float(mp["char_f1"][j]),
            hs["char_f1"][:, j],
            ms["char_f1"][:, j],
        )
        for j, code in enumerate(codes)
        if not math.isnan(hp["char_f1"][j]) or not math.isnan(mp["char_f1"][j])
    ]
    return {
        "humans": names,
        "machine": machine.coder,
        "scope_chars": region_chars(shared),
        "transcripts": len(transcripts),
        "margin": setup.margin,
        "min_share": setup.min_share,
        "overall": overall,
        "codes": per_code,
    }
