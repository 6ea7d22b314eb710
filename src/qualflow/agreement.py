"""Agreement between coders: the figures researchers report, with bootstrap intervals.

Every function here is pure: it takes ``Coding`` dicts (passage id -> frozenset of
code titles) and returns plain dataclasses. Any two coders compare over the passages
*both* coded; a passage coded with no code is an empty set (it still counts).

Per code the unit is binary presence per passage (a 2x2 table per code). Coefficients
are computed from those tables with numpy so that the bootstrap (resampling passages,
seeded) can evaluate a thousand resamples as one matrix product. The closed forms
used for two coders without missing data are pinned in ``tests/test_agreement_*`` to
scikit-learn, ``krippendorff``, statsmodels and irrCAC, and to published examples.

Undefined is a value: a coefficient whose denominator vanishes (a code neither coder
used, a coder who never used the code for precision) is ``None`` with a note, never
1.0 and never an exception. Gwet's AC1 would be 1.0 for a code nobody used; we report
it as undefined like kappa and alpha, because that 1.0 says nothing about coding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from qualflow.models import Codebook, Coding

PER_CODE_METRICS = ("kappa", "alpha", "ac1", "precision", "recall", "f1")
"""Per-code figures; each is an ``Estimate`` with a bootstrap interval."""

OVERALL_METRICS = (
    "pooled_kappa",
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "macro_kappa",
    "macro_alpha",
    "macro_ac1",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "jaccard",
    "masi_alpha",
    "exact_match",
)
"""Across-code figures; each is an ``Estimate`` with a bootstrap interval."""

NEVER_USED = "code used by neither coder"


# --------------------------------------------------------------------------- results


@dataclass
class Estimate:
    """A figure with its bootstrap 95% interval; ``value`` None means undefined."""

    value: float | None
    low: float | None = None
    high: float | None = None
    note: str | None = None

    @property
    def defined(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CodeAgreement:
    """One code's agreement between coder A (reference) and coder B."""

    code: str
    n: int = field(metadata={"doc": "passages both coders coded"})
    positives_a: int
    positives_b: int
    both: int
    support: int = field(metadata={"doc": "passages where either coder applied the code"})
    prevalence_a: float
    prevalence_b: float
    few: bool = field(metadata={"doc": "support below min_support: read with care"})
    metrics: dict[str, Estimate]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "metrics"}
        d.update({k: v.to_dict() for k, v in self.metrics.items()})
        return d


@dataclass
class PairAgreement:
    """Agreement of coder B with reference coder A over the passages both coded."""

    coder_a: str
    coder_b: str
    n_passages: int
    codes: list[CodeAgreement]
    overall: dict[str, Estimate]
    n_boot: int
    seed: int
    min_support: int
    categories: PairAgreement | None = None
    only_a: int = 0
    only_b: int = 0

    def code(self, title: str) -> CodeAgreement:
        return next(c for c in self.codes if c.code == title)

    def to_dict(self) -> dict[str, Any]:
        return {
            "coder_a": self.coder_a,
            "coder_b": self.coder_b,
            "n_passages": self.n_passages,
            "passages_only_a": self.only_a,
            "passages_only_b": self.only_b,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "min_support": self.min_support,
            "overall": {k: v.to_dict() for k, v in self.overall.items()},
            "codes": [c.to_dict() for c in self.codes],
            "categories": self.categories.to_dict() if self.categories else None,
        }


# --------------------------------------------------------------------------- helpers


def shared_passages(*codings: Mapping[str, Any]) -> list[str]:
    """Passage ids every coding covers, in a stable order."""
    if not codings:
        return []
    common = set(codings[0])
    for c in codings[1:]:
        common &= set(c)
    return sorted(common)


def category_of(code: str) -> str:
    """Top-level category of a hierarchical code title: its first dot segment."""
    return code.split(".", 1)[0]


def rollup(coding: Coding, to: Callable[[str], str] | Codebook | None = None) -> Coding:
    """The coding with every code replaced by its category (a child counts for its parent).

    ``to`` is a function code -> category, or a ``Codebook`` (its codes' ``category``;
    codes not in the codebook fall back to the first dot segment). Default: first dot
    segment.
    """
    fn = _category_function(to)
    return {pid: frozenset(fn(c) for c in codes) for pid, codes in coding.items()}


def _category_function(to: Callable[[str], str] | Codebook | None) -> Callable[[str], str]:
    if to is None:
        return category_of
    if callable(to):
        return to
    known = {c.title: c.category for c in to.codes}
    return lambda code: known.get(code, category_of(code))


def _indicator(coding: Coding, passages: Sequence[str], codes: Sequence[str]) -> np.ndarray:
    """Boolean matrix passages x codes: code present on passage."""
    col = {c: j for j, c in enumerate(codes)}
    out = np.zeros((len(passages), len(codes)), dtype=bool)
    for i, pid in enumerate(passages):
        for c in coding[pid]:
            j = col.get(c)
            if j is not None:
                out[i, j] = True
    return out


def bootstrap_weights(
    n: int, n_boot: int, seed: int, clusters: Sequence[Any] | None = None
) -> np.ndarray:
    """Resample counts (n_boot x n): row r says how often passage i was drawn.

    Deterministic for (n, n_boot, seed), so separate calls on the same passages
    share resamples (paired comparisons rely on that). With ``clusters`` (one label
    per passage, e.g. the participant), whole clusters are resampled instead of
    passages: passages of one interview are not independent, and this interval says so.
    """
    rng = np.random.default_rng(seed)
    if n == 0 or n_boot == 0:
        return np.zeros((n_boot, n))
    if clusters is not None:
        labels = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
        member = np.array([labels[c] for c in clusters])
        k = len(labels)
        draws = rng.integers(0, k, size=(n_boot, k))
        flat = (draws + k * np.arange(n_boot)[:, None]).ravel()
        per_cluster = np.bincount(flat, minlength=n_boot * k).reshape(n_boot, k)
        return per_cluster[:, member].astype(float)
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _weights(
    passages: Sequence[str], n_boot: int, seed: int, clusters: Mapping[str, Any] | None
) -> np.ndarray:
    labels = [clusters.get(p, p) for p in passages] if clusters is not None else None
    return bootstrap_weights(len(passages), n_boot, seed, labels)


def _interval(samples: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval over the defined resamples (None if most are undefined)."""
    samples = np.asarray(samples, dtype=float)
    ok = samples[~np.isnan(samples)]
    if samples.size == 0 or ok.size < 0.5 * samples.size:
        return None, None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(ok, [tail, 100 - tail])
    return float(lo), float(hi)


def _value(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _estimate(point: float, samples: np.ndarray | None, note: str | None = None) -> Estimate:
    value = _value(point)
    if value is None:
        return Estimate(None, note=note or "undefined")
    if samples is None:
        return Estimate(value, note=note)
    lo, hi = _interval(samples)
    return Estimate(value, lo, hi, note)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 1e-12)
    return out


# --------------------------------------------------------------------------- 2x2 tables


def table_metrics(
    n11: np.ndarray, n10: np.ndarray, n01: np.ndarray, n00: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-code coefficients from 2x2 counts (A present/absent x B present/absent).

    Works elementwise on arrays of any shape (codes, or resamples x codes); counts may
    be bootstrap-weighted (non-integer sums are fine). NaN marks undefined.
    """
    n11, n10, n01, n00 = (np.asarray(x, dtype=float) for x in (n11, n10, n01, n00))
    n = n11 + n10 + n01 + n00
    used = (n11 + n10 + n01) > 0
    po = _div(n11 + n00, n)
    pa = _div(n11 + n10, n)
    pb = _div(n11 + n01, n)
    pe_cohen = pa * pb + (1 - pa) * (1 - pb)
    kappa = _div(po - pe_cohen, 1 - pe_cohen)
    # Krippendorff's alpha, nominal, two coders, no missing values: from the
    # coincidence matrix, alpha = 1 - (N - 1) * D_o / (2 n_0 n_1), N = 2n values.
    v1 = 2 * n11 + n10 + n01
    v0 = 2 * n - v1
    alpha = 1 - _div((2 * n - 1) * (n10 + n01), v0 * v1)
    # Gwet's AC1, two categories: pe = 2 pi (1 - pi), pi = mean prevalence.
    pi = (pa + pb) / 2
    pe_gwet = 2 * pi * (1 - pi)
    ac1 = _div(po - pe_gwet, 1 - pe_gwet)
    precision = _div(n11, n11 + n01)
    recall = _div(n11, n11 + n10)
    f1 = _div(2 * n11, 2 * n11 + n10 + n01)
    for arr in (kappa, alpha, ac1):
        arr[~used] = np.nan
    return {
        "kappa": kappa,
        "alpha": alpha,
        "ac1": ac1,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "po": po,
        "pe": pe_cohen,
    }


def _tables(a: np.ndarray, b: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """2x2 counts per code; with weights (resamples x passages) per resample and code."""
    cells = (a & b, a & ~b, ~a & b, ~a & ~b)
    if w is None:
        return tuple(c.sum(axis=0).astype(float) for c in cells)
    return tuple(w @ c.astype(float) for c in cells)


def _overall(
    tables: tuple[np.ndarray, ...], per: dict[str, np.ndarray], axis: int
) -> dict[str, np.ndarray]:
    """Across-code figures from per-code tables (codes along ``axis``)."""
    n11, n10, n01, _ = (t.sum(axis=axis) for t in tables)
    po, pe = per["po"], per["pe"]
    # Pooled kappa (De Vries et al. 2008): mean p_o and mean p_e over codes. Codes no
    # coder used add 0 to both sums of (p_o - p_e) and (1 - p_e), so they do not count.
    pooled = _div(np.nansum(po - pe, axis=axis), np.nansum(1 - pe, axis=axis))
    out = {
        "pooled_kappa": pooled,
        "micro_precision": _div(n11, n11 + n01),
        "micro_recall": _div(n11, n11 + n10),
        "micro_f1": _div(2 * n11, 2 * n11 + n10 + n01),
    }
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for m in ("kappa", "alpha", "ac1", "precision", "recall", "f1"):
                out[f"macro_{m}"] = np.nanmean(per[m], axis=axis)
    return out


# --------------------------------------------------------------------------- code sets


def masi_distance(a: frozenset[str], b: frozenset[str]) -> float:
    """MASI distance (Passonneau 2006): 1 - Jaccard x monotonicity; equal sets -> 0."""
    if a == b:
        return 0.0
    inter = len(a & b)
    union = len(a | b)
    if a <= b or b <= a:
        m = 0.67
    elif inter:
        m = 0.33
    else:
        m = 0.0
    return 1.0 - (inter / union) * m


def _masi_matrix(sets: Sequence[frozenset[str]]) -> np.ndarray:
    """Pairwise MASI distances of many code sets at once (same values as masi_distance)."""
    items = sorted(set().union(*sets)) if sets else []
    col = {c: j for j, c in enumerate(items)}
    ind = np.zeros((len(sets), len(items)))
    for i, st in enumerate(sets):
        for c in st:
            ind[i, col[c]] = 1.0
    inter = ind @ ind.T
    size = ind.sum(axis=1)
    union = size[:, None] + size[None, :] - inter
    sub = (inter == size[:, None]) | (inter == size[None, :])
    m = np.where(sub, 0.67, np.where(inter > 0, 0.33, 0.0))
    jac = _div(inter, union)
    jac[union == 0] = 1.0
    dist = 1.0 - jac * m
    equal = sub & (size[:, None] == size[None, :])
    dist[equal] = 0.0
    return dist


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard similarity of two code sets; two empty sets agree (1.0)."""
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


def set_alpha(
    units: Sequence[Sequence[frozenset[str] | None]],
    distance: Callable[[frozenset[str], frozenset[str]], float] = masi_distance,
    weights: np.ndarray | None = None,
) -> np.ndarray | float:
    """Krippendorff's alpha on set-valued codings (default MASI distance).

    ``units`` is a list of units, each a list of one value per coder (None = missing).
    With ``weights`` (resamples x units) returns one alpha per resample.
    """
    values: dict[frozenset[str], int] = {}
    rows = []
    for unit in units:
        present = [values.setdefault(v, len(values)) for v in unit if v is not None]
        rows.append(present)
    nv = len(values)
    keys = list(values)
    if distance is masi_distance:
        dmat = _masi_matrix(keys)
    else:
        dmat = np.array([[distance(x, y) for y in keys] for x in keys]).reshape(nv, nv)
    counts = np.zeros((len(rows), nv))  # pairable values per unit
    within = np.zeros(len(rows))  # sum over ordered pairs in the unit of d / (m_u - 1)
    for i, present in enumerate(rows):
        m = len(present)
        if m < 2:
            continue
        for v in present:
            counts[i, v] += 1
        d = sum(dmat[x, y] for k, x in enumerate(present) for j, y in enumerate(present) if k != j)
        within[i] = d / (m - 1)
    w = np.ones((1, len(rows))) if weights is None else weights
    c = w @ counts  # resamples x values
    big_n = c.sum(axis=1)
    observed = w @ within
    expected = ((c @ dmat) * c).sum(axis=1)  # ordered pairs; the diagonal of dmat is 0
    alpha = 1 - _div((big_n - 1) * observed, expected)
    return float(alpha[0]) if weights is None else alpha


def _set_figures(
    a: Sequence[frozenset[str]], b: Sequence[frozenset[str]], w: np.ndarray | None
) -> dict[str, np.ndarray]:
    jac = np.array([jaccard(x, y) for x, y in zip(a, b, strict=True)])
    exact = np.array([float(x == y) for x, y in zip(a, b, strict=True)])
    units = [[x, y] for x, y in zip(a, b, strict=True)]
    if w is None:
        n = max(len(jac), 1)
        return {
            "jaccard": np.array(jac.sum() / n if len(jac) else np.nan),
            "exact_match": np.array(exact.sum() / n if len(exact) else np.nan),
            "masi_alpha": np.array(set_alpha(units)),
        }
    tot = w.sum(axis=1)
    return {
        "jaccard": _div(w @ jac, tot),
        "exact_match": _div(w @ exact, tot),
        "masi_alpha": set_alpha(units, weights=w),
    }


# --------------------------------------------------------------------------- two coders


def _code_list(a: Coding, b: Coding, passages: Sequence[str], codes: Iterable[str] | None):
    used = sorted({c for pid in passages for c in (*a[pid], *b[pid])})
    if codes is None:
        return used
    listed = list(dict.fromkeys(codes))
    return listed + [c for c in used if c not in set(listed)]


def _pair_figures(
    a: Coding, b: Coding, passages: Sequence[str], codes: Sequence[str], w: np.ndarray | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[np.ndarray, ...]]:
    """Per-code and overall figures (point when w is None, else per resample)."""
    ma = _indicator(a, passages, codes)
    mb = _indicator(b, passages, codes)
    tables = _tables(ma, mb, w)
    per = table_metrics(*tables)
    axis = 0 if w is None else 1
    overall = _overall(tables, per, axis)
    overall.update(_set_figures([a[p] for p in passages], [b[p] for p in passages], w))
    return per, overall, tables


def compare(
    a: Coding,
    b: Coding,
    *,
    name_a: str = "A",
    name_b: str = "B",
    codes: Iterable[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    min_support: int = 5,
    categories: Callable[[str], str] | Codebook | bool | None = None,
    passages: Sequence[str] | None = None,
    clusters: Mapping[str, Any] | None = None,
) -> PairAgreement:
    """Agreement of coder B with reference A over the passages both coded.

    ``codes``: the codes to report (e.g. the codebook's titles, so unused codes show as
    undefined); codes either coder used that are not listed are appended. Precision
    and recall read B against A. ``categories``: also roll up to top-level categories
    (True = first dot segment; or a function / Codebook). ``passages`` restricts the
    comparison (it must be a subset of the shared passages). ``clusters`` (passage id ->
    e.g. participant) makes the bootstrap resample clusters instead of passages.
    """
    shared = shared_passages(a, b)
    if passages is not None:
        shared_set = set(shared)
        passages = [p for p in passages if p in shared_set]
    else:
        passages = shared
    code_list = _code_list(a, b, passages, codes)
    per, overall, tables = _pair_figures(a, b, passages, code_list, None)
    w = _weights(passages, n_boot, seed, clusters) if n_boot else None
    per_s, overall_s, _ = (
        _pair_figures(a, b, passages, code_list, w) if w is not None else (None, None, None)
    )
    n = len(passages)
    rows = []
    for j, code in enumerate(code_list):
        n11, n10, n01 = (int(np.rint(t[j])) for t in tables[:3])
        pos_a, pos_b, support = n11 + n10, n11 + n01, n11 + n10 + n01
        metrics = {}
        for m in PER_CODE_METRICS:
            note = NEVER_USED if support == 0 else _undefined_reason(m, pos_a, pos_b)
            samples = per_s[m][:, j] if per_s is not None else None
            metrics[m] = _estimate(per[m][j], samples, note if math.isnan(per[m][j]) else None)
        rows.append(
            CodeAgreement(
                code=code,
                n=n,
                positives_a=pos_a,
                positives_b=pos_b,
                both=n11,
                support=support,
                prevalence_a=pos_a / n if n else 0.0,
                prevalence_b=pos_b / n if n else 0.0,
                few=support < min_support,
                metrics=metrics,
            )
        )
    result = PairAgreement(
        coder_a=name_a,
        coder_b=name_b,
        n_passages=n,
        codes=rows,
        overall={
            m: _estimate(float(overall[m]), overall_s[m] if overall_s else None)
            for m in OVERALL_METRICS
        },
        n_boot=n_boot,
        seed=seed,
        min_support=min_support,
        only_a=len(set(a) - set(b)),
        only_b=len(set(b) - set(a)),
    )
    if categories is not None and categories is not False:
        to = None if categories is True else categories
        fn = _category_function(to)  # type: ignore[arg-type]
        cat_codes = list(dict.fromkeys(fn(c) for c in code_list))
        if cat_codes == code_list:  # a flat codebook: the roll-up would repeat the table
            return result
        result.categories = compare(
            rollup({p: a[p] for p in passages}, fn),
            rollup({p: b[p] for p in passages}, fn),
            name_a=name_a,
            name_b=name_b,
            codes=cat_codes,
            n_boot=n_boot,
            seed=seed,
            min_support=min_support,
            clusters=clusters,
        )
    return result


def _undefined_reason(metric: str, pos_a: int, pos_b: int) -> str:
    if metric == "precision" and pos_b == 0:
        return f"coder B never applied the code (A: {pos_a})"
    if metric == "recall" and pos_a == 0:
        return f"coder A never applied the code (B: {pos_b})"
    if metric in {"kappa", "alpha"}:
        return "no variation: both coders constant on this code"
    return "undefined"


# --------------------------------------------------------------------------- many coders


def _observed_and_shares(
    counts: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Observed agreement p_a and category shares pi (per resample) of a count table.

    Shared by Fleiss' kappa and Gwet's AC1, which differ only in chance agreement.
    Units with fewer than two ratings do not count towards p_a.
    """
    r = counts.sum(axis=1)
    ok = r >= 2
    w = np.ones((1, len(counts))) if weights is None else weights
    w_ok = w * ok
    pa_u = _div((counts * (counts - 1)).sum(axis=1), r * (r - 1))
    pa_u[~ok] = 0.0
    pa = _div(w_ok @ pa_u, w_ok.sum(axis=1))
    share = _div(counts, r[:, None])
    share[~(r > 0)] = 0.0
    w_any = w * (r > 0)
    pi = _div(w_any @ share, w_any.sum(axis=1)[:, None])
    return pa, pi


def fleiss_kappa_counts(counts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Fleiss' kappa from a units x categories table of rater counts.

    Units may have different numbers of raters (Gwet's generalisation, as in irrCAC);
    units with fewer than two ratings are left out. With ``weights`` (resamples x
    units), one kappa per resample.
    """
    pa, pi = _observed_and_shares(np.asarray(counts, dtype=float), weights)
    pe = (pi**2).sum(axis=1)
    out = _div(pa - pe, 1 - pe)
    return out if weights is not None else out[:1]


def gwet_ac1_counts(counts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Gwet's AC1 from a units x categories table of rater counts (missing allowed).

    Gwet (2008, 2014): p_a as Fleiss; p_e = sum_k pi_k (1 - pi_k) / (Q - 1) with Q the
    number of categories.
    """
    counts = np.asarray(counts, dtype=float)
    pa, pi = _observed_and_shares(counts, weights)
    pe = (pi * (1 - pi)).sum(axis=1) / max(counts.shape[1] - 1, 1)
    out = _div(pa - pe, 1 - pe)
    return out if weights is not None else out[:1]


def krippendorff_alpha_counts(counts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Krippendorff's alpha (nominal) from a units x values table of counts.

    Units with fewer than two values are not pairable and are left out.
    """
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(axis=1)
    ok = m >= 2
    w = np.ones((1, len(counts))) if weights is None else weights
    # observed disagreement per unit: ordered pairs of different values / (m_u - 1)
    diff_pairs = m**2 - (counts**2).sum(axis=1)
    d_u = _div(diff_pairs, m - 1)
    d_u[~ok] = 0.0
    c = (w * ok) @ counts  # pairable value totals per resample
    big_n = c.sum(axis=1)
    expected = big_n**2 - (c**2).sum(axis=1)  # ordered pairs of different values
    out = 1 - _div((big_n - 1) * (w @ d_u), expected)
    return out if weights is not None else out[:1]


def counts_table(units: Sequence[Sequence[Any]]) -> tuple[np.ndarray, list[Any]]:
    """Units x categories count table from per-unit ratings (None / NaN = missing)."""
    cats: dict[Any, int] = {}
    for unit in units:
        for v in unit:
            if not _missing(v):
                cats.setdefault(v, len(cats))
    table = np.zeros((len(units), len(cats)))
    for i, unit in enumerate(units):
        for v in unit:
            if not _missing(v):
                table[i, cats[v]] += 1
    return table, list(cats)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


@dataclass
class MultiCoderAgreement:
    """Per-code Fleiss' kappa and Krippendorff's alpha among several coders."""

    coders: list[str]
    n_passages: int
    codes: list[dict[str, Any]]
    overall: dict[str, Estimate]
    n_boot: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "coders": self.coders,
            "n_passages": self.n_passages,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "overall": {k: v.to_dict() for k, v in self.overall.items()},
            "codes": self.codes,
        }


def compare_many(
    codings: Mapping[str, Coding],
    *,
    codes: Iterable[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    min_support: int = 5,
    clusters: Mapping[str, Any] | None = None,
) -> MultiCoderAgreement:
    """Fleiss' kappa and Krippendorff's alpha per code over passages >= 2 coders coded.

    A passage a coder did not code is missing for that coder (not "no code").
    """
    names = list(codings)
    every = set().union(*map(set, codings.values())) if codings else set()
    passages = sorted(p for p in every if sum(p in cd for cd in codings.values()) >= 2)
    used = sorted({c for cd in codings.values() for p in passages if p in cd for c in cd[p]})
    code_list = list(dict.fromkeys([*(codes or []), *used]))
    w = _weights(passages, n_boot, seed, clusters) if n_boot else None
    rows: list[dict[str, Any]] = []
    fleiss_pts, alpha_pts = [], []
    fleiss_boot, alpha_boot = [], []
    for code in code_list:
        table = np.zeros((len(passages), 2))
        for i, p in enumerate(passages):
            for cd in codings.values():
                if p in cd:
                    table[i, int(code in cd[p])] += 1
        support = int((table[:, 1] > 0).sum())
        fk = float(fleiss_kappa_counts(table)[0]) if support else float("nan")
        ka = float(krippendorff_alpha_counts(table)[0]) if support else float("nan")
        fk_s = fleiss_kappa_counts(table, w) if w is not None and support else None
        ka_s = krippendorff_alpha_counts(table, w) if w is not None and support else None
        note = NEVER_USED if not support else None
        fleiss_pts.append(fk)
        alpha_pts.append(ka)
        if fk_s is not None and ka_s is not None:
            fleiss_boot.append(fk_s)
            alpha_boot.append(ka_s)
        rows.append(
            {
                "code": code,
                "n": len(passages),
                "support": support,
                "few": support < min_support,
                "fleiss_kappa": _estimate(fk, fk_s, note).to_dict(),
                "alpha": _estimate(ka, ka_s, note).to_dict(),
            }
        )
    overall = {
        "mean_fleiss_kappa": _estimate(_nanmean(fleiss_pts), _mean_samples(fleiss_boot)),
        "mean_alpha": _estimate(_nanmean(alpha_pts), _mean_samples(alpha_boot)),
    }
    return MultiCoderAgreement(names, len(passages), rows, overall, n_boot, seed)


def _mean_samples(samples: list[np.ndarray]) -> np.ndarray | None:
    """Per-resample mean over codes (codes undefined in a resample left out)."""
    if not samples:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.vstack(samples), axis=0)


def _nanmean(xs: Sequence[float]) -> float:
    ok = [x for x in xs if not math.isnan(x)]
    return sum(ok) / len(ok) if ok else float("nan")


# --------------------------------------------------------------------------- comparisons


@dataclass
class Difference:
    """A paired difference (run minus baseline) with its bootstrap interval."""

    metric: str
    subject: str
    run: float | None
    baseline: float | None
    diff: Estimate
    verdict: str  # better | worse | within noise | undefined

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["diff"] = self.diff.to_dict()
        return d


def _diff_estimate(
    point_a: float, point_b: float, samples_a: np.ndarray, samples_b: np.ndarray
) -> Estimate:
    diff = point_a - point_b
    if math.isnan(diff):
        return Estimate(None, note="undefined in run or baseline")
    lo, hi = _interval(samples_a - samples_b)
    return Estimate(float(diff), lo, hi)


def _verdict(est: Estimate) -> str:
    if est.value is None or est.low is None or est.high is None:
        return "undefined"
    if est.low > 0:
        return "better"
    if est.high < 0:
        return "worse"
    return "within noise"


@dataclass
class RunComparison:
    """A run against a baseline run, both read against the same reference."""

    reference: str
    run: str
    baseline: str
    n_passages: int
    overall: list[Difference]
    codes: list[Difference]

    @property
    def regressions(self) -> list[Difference]:
        return [d for d in self.codes + self.overall if d.verdict == "worse"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "run": self.run,
            "baseline": self.baseline,
            "n_passages": self.n_passages,
            "overall": [d.to_dict() for d in self.overall],
            "codes": [d.to_dict() for d in self.codes],
            "regressions": [f"{d.subject}: {d.metric}" for d in self.regressions],
        }


def compare_runs(
    reference: Coding,
    run: Coding,
    baseline: Coding,
    *,
    names: tuple[str, str, str] = ("reference", "run", "baseline"),
    codes: Iterable[str] | None = None,
    metrics: Sequence[str] = ("kappa", "f1"),
    overall_metrics: Sequence[str] = ("pooled_kappa", "micro_f1", "macro_f1"),
    n_boot: int = 1000,
    seed: int = 0,
    clusters: Mapping[str, Any] | None = None,
) -> RunComparison:
    """Per-code and overall differences (run minus baseline, each vs reference).

    Paired bootstrap over the passages all three coded: a difference whose 95%
    interval excludes 0 is "better" or "worse" (a regression); otherwise "within noise".
    """
    passages = shared_passages(reference, run, baseline)
    code_list = _code_list(reference, {p: run[p] | baseline[p] for p in passages}, passages, codes)
    w = _weights(passages, n_boot, seed, clusters)
    per_r, all_r, _ = _pair_figures(reference, run, passages, code_list, None)
    per_b, all_b, _ = _pair_figures(reference, baseline, passages, code_list, None)
    per_rs, all_rs, _ = _pair_figures(reference, run, passages, code_list, w)
    per_bs, all_bs, _ = _pair_figures(reference, baseline, passages, code_list, w)
    code_diffs = []
    for j, code in enumerate(code_list):
        for m in metrics:
            est = _diff_estimate(per_r[m][j], per_b[m][j], per_rs[m][:, j], per_bs[m][:, j])
            code_diffs.append(
                Difference(m, code, _value(per_r[m][j]), _value(per_b[m][j]), est, _verdict(est))
            )
    overall = []
    for m in overall_metrics:
        est = _diff_estimate(float(all_r[m]), float(all_b[m]), all_rs[m], all_bs[m])
        overall.append(
            Difference(m, "all codes", _value(all_r[m]), _value(all_b[m]), est, _verdict(est))
        )
    return RunComparison(names[0], names[1], names[2], len(passages), overall, code_diffs)


@dataclass
class BaselineReading:
    """Machine-human next to human-human agreement on the same passages."""

    humans: list[str]
    machine: str
    n_passages: int
    margin: float
    overall: list[dict[str, Any]]
    codes: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _non_inferiority(diff: Estimate, margin: float) -> str:
    if diff.value is None or diff.low is None or diff.high is None:
        return "undefined"
    if diff.low > -margin:
        return "non-inferior"
    if diff.high < -margin:
        return "inferior"
    return "inconclusive"


def human_baseline(
    humans: Mapping[str, Coding],
    machine: Coding,
    *,
    machine_name: str = "machine",
    codes: Iterable[str] | None = None,
    metrics: Sequence[str] = ("kappa", "ac1", "f1"),
    overall_metrics: Sequence[str] = ("pooled_kappa", "micro_f1", "macro_f1"),
    margin: float = 0.1,
    n_boot: int = 1000,
    seed: int = 0,
    clusters: Mapping[str, Any] | None = None,
) -> BaselineReading:
    """Human-human vs machine-human agreement on the passages all of them coded.

    Human-human is the mean over pairs of humans; machine-human the mean over humans
    of (human as reference, machine as coder). The non-inferiority reading asks
    whether the lower 95% bound of (machine-human minus human-human) lies above
    ``-margin`` (paired bootstrap over passages).
    """
    names = list(humans)
    if len(names) < 2:
        raise ValueError("a human baseline needs at least two human coders")
    passages = shared_passages(*humans.values(), machine)
    union = {p: frozenset().union(*(h[p] for h in humans.values()), machine[p]) for p in passages}
    code_list = _code_list(union, union, passages, codes)
    w = _weights(passages, n_boot, seed, clusters)

    def mean_of(pairs: list[tuple[Coding, Coding]], weights: np.ndarray | None):
        pers, alls = [], []
        for x, y in pairs:
            per, overall, _ = _pair_figures(x, y, passages, code_list, weights)
            pers.append(per)
            alls.append(overall)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_mean = {m: np.nanmean([p[m] for p in pers], axis=0) for m in metrics}
            all_mean = {m: np.nanmean([a[m] for a in alls], axis=0) for m in overall_metrics}
        return per_mean, all_mean

    hh_pairs = [(humans[x], humans[y]) for x, y in combinations(names, 2)]
    mh_pairs = [(humans[x], machine) for x in names]
    hh, hh_all = mean_of(hh_pairs, None)
    mh, mh_all = mean_of(mh_pairs, None)
    hh_s, hh_all_s = mean_of(hh_pairs, w)
    mh_s, mh_all_s = mean_of(mh_pairs, w)

    def row(subject: str, m: str, hp, mp, hs, ms) -> dict[str, Any]:
        diff = _diff_estimate(float(mp), float(hp), ms, hs)
        return {
            "subject": subject,
            "metric": m,
            "human_human": _estimate(float(hp), hs).to_dict(),
            "machine_human": _estimate(float(mp), ms).to_dict(),
            "difference": diff.to_dict(),
            "reading": _non_inferiority(diff, margin),
        }

    overall = [
        row("all codes", m, hh_all[m], mh_all[m], hh_all_s[m], mh_all_s[m]) for m in overall_metrics
    ]
    code_rows = [
        row(code, m, hh[m][j], mh[m][j], hh_s[m][:, j], mh_s[m][:, j])
        for j, code in enumerate(code_list)
        for m in metrics
    ]
    return BaselineReading(names, machine_name, len(passages), margin, overall, code_rows)


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """Accuracy (or acceptance) per confidence bin."""

    bins: list[dict[str, Any]]
    n: int
    accuracy: float | None
    ece: float | None = field(metadata={"doc": "expected calibration error"})
    auroc: Estimate | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["auroc"] = self.auroc.to_dict() if self.auroc else None
        return d


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """Wilson score interval for a proportion k/n."""
    if n == 0:
        return None, None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def calibration(
    pairs: Iterable[tuple[float, bool]], *, bins: int = 5, n_boot: int = 1000, seed: int = 0
) -> Calibration:
    """Accuracy per confidence bin (equal-width on [0, 1]), ECE and AUROC.

    ``pairs`` are (confidence, correct) for each machine tag: correct means the
    reference agrees (gold has the code) or a reviewer accepted it. AUROC > 0.5
    means low-confidence tags are more often wrong, i.e. "lowest confidence first"
    is a sensible review order.
    """
    data = [(float(c), bool(ok)) for c, ok in pairs]
    conf = np.array([c for c, _ in data])
    hit = np.array([ok for _, ok in data], dtype=bool)
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    ece = 0.0
    for i in range(bins):
        lo, hi = edges[i], edges[i + 1]
        sel = (conf >= lo) & ((conf < hi) if i < bins - 1 else (conf <= hi))
        k, n = int(hit[sel].sum()), int(sel.sum())
        acc = k / n if n else None
        mean_conf = float(conf[sel].mean()) if n else None
        ci = wilson(k, n)
        if n:
            ece += n / len(data) * abs(acc - mean_conf)  # type: ignore[operator]
        rows.append(
            {
                "low": float(lo),
                "high": float(hi),
                "n": n,
                "correct": k,
                "mean_confidence": mean_conf,
                "accuracy": acc,
                "accuracy_low": ci[0],
                "accuracy_high": ci[1],
            }
        )
    auroc = _auroc(conf, hit, n_boot, seed)
    return Calibration(
        rows,
        len(data),
        float(hit.mean()) if data else None,
        ece if data else None,
        auroc,
    )


def _auroc(conf: np.ndarray, hit: np.ndarray, n_boot: int, seed: int) -> Estimate:
    from scipy.stats import rankdata

    def auc(c: np.ndarray, h: np.ndarray) -> float:
        pos, neg = int(h.sum()), int((~h).sum())
        if pos == 0 or neg == 0:
            return float("nan")
        ranks = rankdata(c)
        return (ranks[h].sum() - pos * (pos + 1) / 2) / (pos * neg)

    point = auc(conf, hit)
    if math.isnan(point):
        return Estimate(None, note="needs both correct and wrong tags")
    rng = np.random.default_rng(seed)
    samples = np.array(
        [
            auc(conf[i], hit[i])
            for i in (rng.integers(0, len(conf), len(conf)) for _ in range(n_boot))
        ]
    )
    lo, hi = _interval(samples)
    return Estimate(float(point), lo, hi)
