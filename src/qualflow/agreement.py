"""Agreement between coders: the figures researchers report, with bootstrap intervals.

Every function here is pure: it takes ``Coding`` dicts (passage id -> frozenset of
code titles) and returns plain dataclasses. Any two coders compare over the passages
*both* coded; a passage coded with no code is an empty set (it still counts).

Per code the unit is binary presence per passage (a 2x2 table per code). Coefficients
are computed from those tables with numpy so that the bootstrap (resampling passages,
seeded) evaluates many resamples as one matrix product. Passages with the same code
sets are one group with a weight (every figure depends on a passage only through its
sets), resamples are drawn a block at a time and summed per group, and the MASI alpha
avoids a values x values matrix, so time and memory grow with the passages, not with
passages x resamples or passages x distinct code sets. The closed forms
used for two coders without missing data are pinned in ``tests/test_agreement_*`` to
scikit-learn, ``krippendorff``, statsmodels and irrCAC, and to published examples.

Undefined is a value: a coefficient whose denominator vanishes (a code neither coder
used, a coder who never used the code for precision) is ``None`` with a note, never
1.0 and never an exception. Gwet's AC1 would be 1.0 for a code nobody used; we report
it as undefined like kappa and alpha, because that 1.0 says nothing about coding.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations, permutations
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


@dataclass
class _Grouped:
    """Passages grouped by the code sets the codings give them.

    Every figure here depends on a passage only through those sets, so a group of
    passages with the same sets counts like one passage with a weight: the number of
    passages in it (point estimates) or of draws from it (a bootstrap resample). Real
    codings have far fewer distinct set combinations than passages.
    """

    keys: list[tuple[frozenset[str], ...]]
    sizes: np.ndarray  # passages per group
    member: np.ndarray  # group of each passage, in passage order

    def column(self, i: int) -> list[frozenset[str]]:
        """Coding ``i``'s set for each group."""
        return [k[i] for k in self.keys]


def _group(codings: Sequence[Mapping[str, Any]], passages: Sequence[str]) -> _Grouped:
    index: dict[tuple[Any, ...], int] = {}
    member = np.empty(len(passages), dtype=np.intp)
    for n, pid in enumerate(passages):
        key = tuple(c.get(pid) for c in codings)
        member[n] = index.setdefault(key, len(index))
    sizes = np.bincount(member, minlength=len(index)).astype(float)
    return _Grouped(list(index), sizes, member)


_BLOCK_CELLS = 1 << 20
"""Random draws per block of resamples (bounds the memory of the bootstrap)."""


def _weight_blocks(
    member: np.ndarray,
    n_groups: int,
    n_boot: int,
    seed: int,
    clusters: Sequence[Any] | None = None,
    block_cells: int = _BLOCK_CELLS,
) -> Iterator[np.ndarray]:
    """Bootstrap resample counts per *group* (rows of resamples, in blocks).

    The draws are exactly those of ``bootstrap_weights(len(member), n_boot, seed,
    clusters)`` (the generator is consumed in the same order, a block of rows at a
    time), summed over the passages of each group: ``member[i]`` is passage i's group.
    Time is linear in n_boot x passages; memory is one block, never n_boot x passages.
    """
    n = len(member)
    rng = np.random.default_rng(seed)
    if n == 0 or n_boot == 0:
        yield np.zeros((n_boot, n_groups))
        return
    per_cluster = None
    if clusters is not None:
        labels = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
        cluster_of = np.array([labels[c] for c in clusters], dtype=np.intp)
        units = len(labels)
        per_cluster = _sparse_counts(cluster_of, member, units, n_groups)
    else:
        units = n
    rows = max(1, block_cells // units)
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        draws = rng.integers(0, units, size=(b, units))
        if per_cluster is None:
            draws = member[draws]
        width = units if per_cluster is not None else n_groups
        draws += width * np.arange(b)[:, None]  # one bincount for the whole block
        counts = np.bincount(draws.ravel(), minlength=b * width).reshape(b, width).astype(float)
        yield counts if per_cluster is None else np.asarray((per_cluster.T @ counts.T).T)


def _sparse_counts(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> Any:
    """Sparse n_rows x n_cols matrix counting the (rows[i], cols[i]) pairs."""
    from scipy.sparse import csr_matrix

    return csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_rows, n_cols))


def bootstrap_weights(
    n: int, n_boot: int, seed: int, clusters: Sequence[Any] | None = None
) -> np.ndarray:
    """Resample counts (n_boot x n): row r says how often passage i was drawn.

    Deterministic for (n, n_boot, seed), so separate calls on the same passages
    share resamples (paired comparisons rely on that). With ``clusters`` (one label
    per passage, e.g. the participant), whole clusters are resampled instead of
    passages: passages of one interview are not independent, and this interval says so.
    The figures themselves never build this matrix: they resample groups of passages
    with the same draws (``_weight_blocks``).
    """
    if n == 0 or n_boot == 0:
        return np.zeros((n_boot, n))
    blocks = _weight_blocks(np.arange(n), n, n_boot, seed, clusters)
    return np.vstack(list(blocks))


def _cluster_labels(
    passages: Sequence[str], clusters: Mapping[str, Any] | None
) -> list[Any] | None:
    return [clusters.get(p, p) for p in passages] if clusters is not None else None


def _bootstrap(
    grouped: _Grouped,
    passages: Sequence[str],
    n_boot: int,
    seed: int,
    clusters: Mapping[str, Any] | None,
    figures: Callable[[np.ndarray], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """``figures(group weights)`` over every block of resamples, joined along axis 0."""
    parts: dict[str, list[np.ndarray]] = {}
    labels = _cluster_labels(passages, clusters)
    for w in _weight_blocks(grouped.member, len(grouped.keys), n_boot, seed, labels):
        for name, value in figures(w).items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values, axis=0) for name, values in parts.items()}


def _bootstrap_pairs(
    grouped: _Grouped,
    pairs: Sequence[_Pair],
    passages: Sequence[str],
    n_boot: int,
    seed: int,
    clusters: Mapping[str, Any] | None,
) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Per-resample (per-code, overall) figures of several coder pairs on the same draws."""

    def figures(w: np.ndarray) -> dict[str, np.ndarray]:
        return {
            f"{k}|{name}": value
            for k, pair in enumerate(pairs)
            for name, value in pair.resampled(w).items()
        }

    flat = _bootstrap(grouped, passages, n_boot, seed, clusters, figures)
    out = []
    for k in range(len(pairs)):
        prefix = f"{k}|"
        out.append(_split({n[len(prefix) :]: v for n, v in flat.items() if n.startswith(prefix)}))
    return out


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


def _masi_similarity(a: int, b: int, k: int) -> float:
    """1 - MASI distance of two sets of sizes a and b sharing k members."""
    if a == b == k:
        return 1.0
    if k == min(a, b):  # one set inside the other (the empty set is inside any)
        return 0.67 * k / max(a, b)
    return 0.33 * k / (a + b - k) if k else 0.0


class _MasiSums:
    """sum over ordered pairs of values (v, w) of c_v c_w (1 - MASI(v, w)), for many c.

    The similarity depends only on the two sizes and the size of the intersection.
    Counting pairs by the subsets T they share gives, for every j, the sum over pairs
    of c_v c_w C(|v & w|, j) as sum over |T| = j of g(T, |v|) g(T, |w|) with
    g(T, a) = sum of c_v over values of size a containing T; a binomial inversion
    turns those moments into the similarity sum. Cost: the subsets of each value
    (2^|v|, small for code sets) instead of a values x values matrix. A subset held by
    one value only contributes c_v^2 times a constant, folded into a per-value term.
    """

    LIMIT = 1 << 21  # subsets to enumerate before falling back to the dense matrix

    def __init__(self, values: Sequence[frozenset[str]]):
        self.values = list(values)
        self.dense = None
        if sum(2 ** len(v) for v in values) > self.LIMIT:
            self.dense = _masi_matrix(self.values)
            return
        top = max((len(v) for v in values), default=0)
        self.coef = _moment_coefficients(top)
        holders: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for vi, v in enumerate(self.values):
            items = sorted(v)
            for j in range(len(items) + 1):
                for subset in combinations(items, j):
                    holders[subset].append(vi)
        self.diagonal = np.zeros(len(self.values))
        columns: dict[tuple[tuple[str, ...], int], int] = {}
        rows, cols, pairs = [], [], []
        for subset, held_by in holders.items():
            j = len(subset)
            if len(held_by) == 1:
                a = len(self.values[held_by[0]])
                self.diagonal[held_by[0]] += self.coef[j, a, a]
                continue
            mine: dict[int, int] = {}
            for vi in held_by:
                a = len(self.values[vi])
                col = mine.setdefault(a, columns.setdefault((subset, a), len(columns)))
                rows.append(vi)
                cols.append(col)
            for a, ca in mine.items():
                for b, cb in mine.items():
                    if self.coef[j, a, b]:
                        pairs.append((ca, cb, self.coef[j, a, b]))
        from scipy.sparse import csr_matrix

        n_cols = len(columns)
        # subset-column x value incidence, and the moment weights between columns
        self.gather = _sparse_counts(np.array(cols), np.array(rows), n_cols, len(values))
        left = np.array([p[0] for p in pairs], dtype=np.intp)
        right = np.array([p[1] for p in pairs], dtype=np.intp)
        weight = np.array([p[2] for p in pairs], dtype=float)
        self.kernel = csr_matrix((weight, (left, right)), shape=(n_cols, n_cols))

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """One sum per column of ``counts`` (values x resamples)."""
        if self.dense is not None:
            return ((1.0 - self.dense) @ counts * counts).sum(axis=0)
        out = self.diagonal @ counts**2
        step = max(1, _BLOCK_CELLS // max(1, self.kernel.nnz, self.gather.shape[0]))
        for start in range(0, counts.shape[1], step):
            g = self.gather @ counts[:, start : start + step]  # subset columns x resamples
            out[start : start + step] += np.asarray(self.kernel @ g * g).sum(axis=0)
        return out


def _moment_coefficients(top: int) -> np.ndarray:
    """coef[j, a, b] = sum_k (-1)^(j-k) C(j, k) s(a, b, k): the weight of the j-th
    shared-subset moment of sizes (a, b) in the similarity sum (binomial inversion)."""
    coef = np.zeros((top + 1, top + 1, top + 1))
    for a in range(top + 1):
        for b in range(top + 1):
            for j in range(min(a, b) + 1):
                coef[j, a, b] = sum(
                    (-1) ** (j - k) * math.comb(j, k) * _masi_similarity(a, b, k)
                    for k in range(j + 1)
                )
    return coef


class _SetAlpha:
    """Krippendorff's alpha on set values for units given once, weights given many times.

    ``units`` are the distinct units (each a tuple of the values its coders gave, missing
    left out); ``__call__(weights)`` takes how often each unit counts (resamples x
    units) and returns one alpha per row, without a units x values dense matrix.
    """

    def __init__(
        self,
        units: Sequence[Sequence[frozenset[str]]],
        distance: Callable[[frozenset[str], frozenset[str]], float] = masi_distance,
    ):
        values: dict[frozenset[str], int] = {}
        rows, cols = [], []
        self.within = np.zeros(len(units))  # sum over ordered pairs of d / (m_u - 1)
        for i, unit in enumerate(units):
            present = [values.setdefault(v, len(values)) for v in unit]
            if len(present) < 2:
                continue
            rows.extend([i] * len(present))
            cols.extend(present)
            d = sum(distance(x, y) for x, y in permutations(unit, 2))  # ordered pairs
            self.within[i] = d / (len(present) - 1)
        keys = list(values)
        # values x units: how many of a unit's coders gave the value
        self.by_value = _sparse_counts(
            np.array(cols, dtype=np.intp), np.array(rows, dtype=np.intp), len(keys), len(units)
        )
        self.similarity = None
        self.dmat = None
        if distance is masi_distance:
            self.similarity = _MasiSums(keys)
        else:
            n = len(keys)
            self.dmat = np.array([[distance(x, y) for y in keys] for x in keys]).reshape(n, n)

    def __call__(self, weights: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        """Alpha per row of ``weights``; ``columns``: the same weights transposed, if at hand."""
        if columns is None:
            columns = np.ascontiguousarray(weights.T)
        counts = np.asarray(self.by_value @ columns)  # values x resamples
        big_n = counts.sum(axis=0)
        observed = weights @ self.within
        if self.similarity is not None:  # ordered pairs: N^2 minus the similarity sum
            expected = big_n**2 - self.similarity(counts)
        else:  # the diagonal of dmat is 0
            expected = (self.dmat @ counts * counts).sum(axis=0)
        return 1 - _div((big_n - 1) * observed, expected)


def set_alpha(
    units: Sequence[Sequence[frozenset[str] | None]],
    distance: Callable[[frozenset[str], frozenset[str]], float] = masi_distance,
    weights: np.ndarray | None = None,
) -> np.ndarray | float:
    """Krippendorff's alpha on set-valued codings (default MASI distance).

    ``units`` is a list of units, each a list of one value per coder (None = missing).
    With ``weights`` (resamples x units) returns one alpha per resample.
    """
    index: dict[tuple[frozenset[str], ...], int] = {}
    member = np.array(
        [index.setdefault(tuple(v for v in u if v is not None), len(index)) for u in units],
        dtype=np.intp,
    )
    alpha = _SetAlpha(list(index), distance)
    if weights is None:
        return float(alpha(np.bincount(member, minlength=len(index))[None, :].astype(float))[0])
    grouped = _sparse_counts(np.arange(len(member)), member, len(member), len(index))
    return alpha(np.asarray((grouped.T @ np.asarray(weights, dtype=float).T).T))


# --------------------------------------------------------------------------- two coders


def _code_list(a: Coding, b: Coding, passages: Sequence[str], codes: Iterable[str] | None):
    used = sorted({c for pid in passages for c in (*a[pid], *b[pid])})
    if codes is None:
        return used
    listed = list(dict.fromkeys(codes))
    return listed + [c for c in used if c not in set(listed)]


def _indicator(sets: Sequence[frozenset[str]], codes: Sequence[str]) -> np.ndarray:
    """Boolean matrix sets x codes: code in set."""
    col = {c: j for j, c in enumerate(codes)}
    out = np.zeros((len(sets), len(codes)), dtype=bool)
    for i, codes_here in enumerate(sets):
        for c in codes_here:
            j = col.get(c)
            if j is not None:
                out[i, j] = True
    return out


class _Pair:
    """Coder pair (column i as A, column j as B of a grouping): what its figures need per
    group of passages, prepared once; ``figures(w)`` for group weights w."""

    def __init__(self, grouped: _Grouped, i: int, j: int, codes: Sequence[str]):
        a, b = grouped.column(i), grouped.column(j)
        ma, mb = _indicator(a, codes), _indicator(b, codes)
        from scipy.sparse import csr_matrix

        # codes x groups, sparse: a group holds a handful of codes
        self.marks = tuple(csr_matrix(x.T.astype(float)) for x in (ma & mb, ma, mb))
        self.jaccard = np.array([jaccard(x, y) for x, y in zip(a, b, strict=True)])
        self.exact = np.array([float(x == y) for x, y in zip(a, b, strict=True)])
        self.alpha = _SetAlpha([(x, y) for x, y in zip(a, b, strict=True)])
        self.sizes = grouped.sizes

    def figures(
        self, w: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[np.ndarray, ...]]:
        """Per-code and overall figures: point (w None: every passage once) or one per
        row of w (resamples x groups)."""
        weights = self.sizes[None, :] if w is None else w
        total = weights.sum(axis=1)
        # resamples x codes; sums of whole numbers, so exact
        columns = np.ascontiguousarray(weights.T)  # groups x resamples, for sparse products
        n11, pos_a, pos_b = (np.asarray((m @ columns).T) for m in self.marks)
        n00 = total[:, None] - pos_a - pos_b + n11
        tables = (n11, pos_a - n11, pos_b - n11, n00)
        sets = {
            "jaccard": _div(weights @ self.jaccard, total),
            "exact_match": _div(weights @ self.exact, total),
            "masi_alpha": self.alpha(weights, columns),
        }
        if w is None:
            tables = tuple(t[0] for t in tables)
            sets = {k: v[0] for k, v in sets.items()}
        per = table_metrics(*tables)
        overall = _overall(tables, per, axis=0 if w is None else 1)
        overall.update(sets)
        return per, overall, tables

    def resampled(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Per-resample figures, flat: per-code ones as ``per:<metric>``."""
        per, overall, _ = self.figures(w)
        return {**{f"per:{k}": v for k, v in per.items()}, **overall}


def _split(flat: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    per = {k[4:]: v for k, v in flat.items() if k.startswith("per:")}
    return per, {k: v for k, v in flat.items() if not k.startswith("per:")}


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
    grouped = _group([a, b], passages)
    pair = _Pair(grouped, 0, 1, code_list)
    per, overall, tables = pair.figures()
    per_s = overall_s = None
    if n_boot:
        [(per_s, overall_s)] = _bootstrap_pairs(grouped, [pair], passages, n_boot, seed, clusters)
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
    grouped = _group(list(codings.values()), passages)
    tables = _presence_tables(grouped, code_list)  # codes x groups x (absent, present)
    sizes = grouped.sizes[None, :]
    supports = [int(grouped.sizes[tables[j][:, 1] > 0].sum()) for j in range(len(code_list))]
    used_j = [j for j, n in enumerate(supports) if n]

    def resampled(w: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for j in used_j:
            out[f"fleiss:{j}"] = fleiss_kappa_counts(tables[j], w)
            out[f"alpha:{j}"] = krippendorff_alpha_counts(tables[j], w)
        return out

    boot = _bootstrap(grouped, passages, n_boot, seed, clusters, resampled) if n_boot else None
    rows: list[dict[str, Any]] = []
    fleiss_pts, alpha_pts = [], []
    fleiss_boot, alpha_boot = [], []
    for j, code in enumerate(code_list):
        support = supports[j]
        fk = float(fleiss_kappa_counts(tables[j], sizes)[0]) if support else float("nan")
        ka = float(krippendorff_alpha_counts(tables[j], sizes)[0]) if support else float("nan")
        fk_s = boot[f"fleiss:{j}"] if boot is not None and support else None
        ka_s = boot[f"alpha:{j}"] if boot is not None and support else None
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


def _presence_tables(grouped: _Grouped, codes: Sequence[str]) -> list[np.ndarray]:
    """Per code, groups x 2: how many coders of the group's passages left the code out
    and how many applied it (coders missing on the passage do not count)."""
    tables = [np.zeros((len(grouped.keys), 2)) for _ in codes]
    col = {c: j for j, c in enumerate(codes)}
    for g, key in enumerate(grouped.keys):
        present = [s for s in key if s is not None]
        for t in tables:
            t[g, 0] = len(present)
        for s in present:
            for c in s:
                j = col.get(c)
                if j is not None:
                    tables[j][g, 0] -= 1
                    tables[j][g, 1] += 1
    return tables


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
    grouped = _group([reference, run, baseline], passages)
    pairs = [_Pair(grouped, 0, 1, code_list), _Pair(grouped, 0, 2, code_list)]
    per_r, all_r, _ = pairs[0].figures()
    per_b, all_b, _ = pairs[1].figures()
    (per_rs, all_rs), (per_bs, all_bs) = _bootstrap_pairs(
        grouped, pairs, passages, n_boot, seed, clusters
    )
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
    grouped = _group([*humans.values(), machine], passages)
    k = len(names)  # the machine's column in the grouping
    hh_pairs = [_Pair(grouped, x, y, code_list) for x, y in combinations(range(k), 2)]
    mh_pairs = [_Pair(grouped, x, k, code_list) for x in range(k)]
    resampled = _bootstrap_pairs(grouped, hh_pairs + mh_pairs, passages, n_boot, seed, clusters)
    hh_boot, mh_boot = resampled[: len(hh_pairs)], resampled[len(hh_pairs) :]

    def mean_of(figures: Sequence[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_mean = {m: np.nanmean([p[m] for p, _ in figures], axis=0) for m in metrics}
            all_mean = {m: np.nanmean([a[m] for _, a in figures], axis=0) for m in overall_metrics}
        return per_mean, all_mean

    hh, hh_all = mean_of([pair.figures()[:2] for pair in hh_pairs])
    mh, mh_all = mean_of([pair.figures()[:2] for pair in mh_pairs])
    hh_s, hh_all_s = mean_of(hh_boot)
    mh_s, mh_all_s = mean_of(mh_boot)

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
