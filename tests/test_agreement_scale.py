"""Agreement at scale: grouped passages and blockwise resampling give the same numbers.

The figures resample *groups* of passages with the same code sets, a block of
resamples at a time, and compute the MASI-distance alpha from shared-subset moments
instead of a dense values x values matrix. These tests pin that nothing changed: the
draws are those of the dense resample matrix, alpha equals the dense formula (kept
here as the reference), and a seeded comparison reproduces the figures measured with
the dense implementation before the change.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from qualflow import agreement as ag

# --------------------------------------------------------------------------- references


def dense_bootstrap_weights(n, n_boot, seed, clusters=None):
    """The resample matrix as it was built before (n_boot x n, all at once)."""
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


def dense_set_alpha(units, distance=ag.masi_distance, weights=None):
    """Krippendorff's alpha on sets with a dense units x values table (the definition)."""
    values: dict = {}
    rows = [[values.setdefault(v, len(values)) for v in u if v is not None] for u in units]
    keys = list(values)
    dmat = np.array([[distance(x, y) for y in keys] for x in keys]).reshape(len(keys), len(keys))
    counts = np.zeros((len(rows), len(keys)))
    within = np.zeros(len(rows))
    for i, present in enumerate(rows):
        if len(present) < 2:
            continue
        for v in present:
            counts[i, v] += 1
        d = sum(dmat[x, y] for k, x in enumerate(present) for j, y in enumerate(present) if k != j)
        within[i] = d / (len(present) - 1)
    w = np.ones((1, len(rows))) if weights is None else weights
    c = w @ counts
    big_n = c.sum(axis=1)
    expected = ((c @ dmat) * c).sum(axis=1)
    alpha = 1 - (big_n - 1) * (w @ within) / expected
    return float(alpha[0]) if weights is None else alpha


def random_sets(rng, n, n_codes=9, top=7, p_empty=0.3):
    codes = [f"c{k}" for k in range(n_codes)]
    out = []
    for _ in range(n):
        size = 0 if rng.random() < p_empty else int(rng.integers(1, top + 1))
        out.append(frozenset(rng.choice(codes, size, replace=False)))
    return out


def pair_codings(n, seed, n_codes=12):
    """Reference and a noisy copy over n passages (constructed data)."""
    rng = np.random.default_rng(seed)
    codes = [f"c{k:02d}" for k in range(n_codes)]
    p = 1 / np.arange(1, n_codes + 1)
    p /= p.sum()
    a, b = {}, {}
    for i in range(n):
        k = min(int(rng.geometric(0.5)), 6) if rng.random() < 0.6 else 0
        ref = {codes[j] for j in rng.choice(n_codes, k, replace=False, p=p)} if k else set()
        other = {c for c in sorted(ref) if rng.random() < 0.7}
        if rng.random() < 0.3:
            other.add(codes[rng.choice(n_codes, p=p)])
        a[f"p{i:06d}"], b[f"p{i:06d}"] = frozenset(ref), frozenset(other)
    return a, b


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(
    ("n", "n_boot", "seed", "clustered"),
    [(7, 5, 0, False), (101, 37, 3, False), (50, 13, 1, True), (1, 4, 2, False), (0, 3, 0, False)],
)
def test_group_weights_are_the_dense_draws_summed_per_group(n, n_boot, seed, clustered):
    rng = np.random.default_rng(seed + 100)
    member = rng.integers(0, 4, n)
    member[: min(n, 4)] = np.arange(min(n, 4))  # every group non-empty when n >= 4
    groups = max(4, int(member.max(initial=0)) + 1)
    clusters = [f"P{i % 6}" for i in range(n)] if clustered else None
    dense = dense_bootstrap_weights(n, n_boot, seed, clusters)
    expected = dense @ np.eye(groups)[member] if n else np.zeros((n_boot, groups))
    # tiny blocks: the generator is consumed a few rows at a time, odd sizes included
    for cells in (1, 3 * max(n, 1) + 1, 1 << 22):
        blocks = list(ag._weight_blocks(member, groups, n_boot, seed, clusters, cells))
        assert np.array_equal(np.vstack(blocks), expected)
    assert np.array_equal(ag.bootstrap_weights(n, n_boot, seed, clusters), dense)


# --------------------------------------------------------------------------- set alpha


def test_set_alpha_equals_the_dense_definition_with_and_without_resamples():
    rng = np.random.default_rng(7)
    a = random_sets(rng, 400)
    b = [s if rng.random() < 0.5 else random_sets(rng, 1)[0] for s in a]
    c = [s if rng.random() < 0.8 else None for s in random_sets(rng, 400)]  # a third coder
    units = [list(u) for u in zip(a, b, c, strict=True)]
    units += [[frozenset({"c1"}), None, None]]  # not pairable
    w = dense_bootstrap_weights(len(units), 60, 5)
    assert ag.set_alpha(units) == pytest.approx(dense_set_alpha(units), abs=1e-12)
    assert ag.set_alpha(units, weights=w) == pytest.approx(
        dense_set_alpha(units, weights=w), abs=1e-12
    )
    # any other distance takes the dense path, same definition
    units2 = [list(u) for u in zip(a, b, strict=True)]
    dist = lambda x, y: 1.0 - ag.jaccard(x, y)  # noqa: E731
    assert ag.set_alpha(units2, dist) == pytest.approx(dense_set_alpha(units2, dist), abs=1e-12)


def test_masi_similarity_sums_match_the_pairwise_matrix(monkeypatch):
    rng = np.random.default_rng(11)
    values = list(dict.fromkeys(random_sets(rng, 300, n_codes=10, top=8)))
    counts = rng.integers(0, 50, size=(len(values), 9)).astype(float)
    similarity = 1.0 - ag._masi_matrix(values)
    expected = ((similarity @ counts) * counts).sum(axis=0)
    assert ag._MasiSums(values)(counts) == pytest.approx(expected, rel=1e-12)
    monkeypatch.setattr(ag._MasiSums, "LIMIT", 10)  # too many subsets: the dense fallback
    fallback = ag._MasiSums(values)
    assert fallback.dense is not None
    assert fallback(counts) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- whole figures

# Measured with the dense implementation (passages x values matrix, n_boot x passages
# resample matrix) on pair_codings(300, 0) before the change: (value, low, high).
BEFORE = {
    "masi_alpha": (0.571171491031208, 0.5134935122545236, 0.6253058050562054),
    "pooled_kappa": (0.6965597216853497, 0.6544895750274365, 0.7344887540759053),
    "jaccard": (0.6967777777777778, 0.6540083333333334, 0.7401680555555555),
    "micro_f1": (0.7378964941569283, 0.6997738929861301, 0.7731727087899032),
    "exact_match": (0.5833333333333334, 0.5299166666666667, 0.64),
}
BEFORE_CLUSTERED_MASI = (0.571171491031208, 0.5259089719147778, 0.6230715546208446)
BEFORE_CATEGORIES_MASI = (0.6281674778570117, 0.5613509756271988, 0.6946824144527276)
BEFORE_C00_KAPPA = (0.6643544417095548, 0.5784435869112483, 0.7528630173698933)
BEFORE_RUNS_MICRO_F1 = (0.619902393861943, 0.5713196341882789, 0.6658545602133759)
BEFORE_BASELINE_KAPPA = (0.3774796457551294, 0.34089306810098735, 0.41171734815420663)
BEFORE_MANY = {
    "mean_alpha": (0.2036198462003734, 0.17662280429476584, 0.22837292963483338),
    "mean_fleiss_kappa": (0.20273399508380086, 0.1757069230982076, 0.2275146125376539),
}


def triple(e) -> tuple:
    return (e.value, e.low, e.high) if isinstance(e, ag.Estimate) else e


def test_figures_and_intervals_are_unchanged_from_the_dense_implementation():
    a, b = pair_codings(300, 0)
    clusters = {p: f"P{int(p[1:]) % 7}" for p in a}
    r = ag.compare(a, b, n_boot=200, seed=5, categories=lambda c: "x" if c < "c05" else "y")
    for m, expected in BEFORE.items():
        assert triple(r.overall[m]) == pytest.approx(expected, abs=1e-12), m
    assert triple(r.code("c00").metrics["kappa"]) == pytest.approx(BEFORE_C00_KAPPA, abs=1e-12)
    cats = r.categories.overall["masi_alpha"]
    assert triple(cats) == pytest.approx(BEFORE_CATEGORIES_MASI, abs=1e-12)
    clustered = ag.compare(a, b, n_boot=200, seed=5, clusters=clusters)
    assert triple(clustered.overall["masi_alpha"]) == pytest.approx(
        BEFORE_CLUSTERED_MASI, abs=1e-12
    )
    a2, _ = pair_codings(300, 1)
    runs = ag.compare_runs(a, b, a2, n_boot=150, seed=1)
    micro = next(d for d in runs.overall if d.metric == "micro_f1").diff
    assert triple(micro) == pytest.approx(BEFORE_RUNS_MICRO_F1, abs=1e-12)
    baseline = ag.human_baseline({"h1": a, "h2": a2}, b, n_boot=150, seed=2)
    diff = baseline.overall[0]["difference"]
    assert (diff["value"], diff["low"], diff["high"]) == pytest.approx(
        BEFORE_BASELINE_KAPPA, abs=1e-12
    )
    many = ag.compare_many({"h1": a, "h2": a2, "m": b}, n_boot=150, seed=3)
    for m, expected in BEFORE_MANY.items():
        assert triple(many.overall[m]) == pytest.approx(expected, abs=1e-12), m


def test_masi_alpha_interval_is_the_dense_formula_on_the_dense_draws():
    a, b = pair_codings(500, 4)
    passages = sorted(a)
    units = [[a[p], b[p]] for p in passages]
    w = dense_bootstrap_weights(len(passages), 300, 9)
    samples = dense_set_alpha(units, weights=w)
    low, high = np.percentile(samples, [2.5, 97.5])
    got = ag.compare(a, b, n_boot=300, seed=9).overall["masi_alpha"]
    assert got.value == pytest.approx(dense_set_alpha(units), abs=1e-12)
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)


def test_compare_memory_does_not_grow_with_resamples_times_passages():
    """20,000 passages x 1,000 resamples: the dense resample matrix alone was 160 MB
    and the passages x code-sets table several hundred more (669 MiB peak measured);
    the grouped, blockwise bootstrap stays near its block size."""
    import scipy.sparse  # noqa: F401  (imported before tracing: its import is not the call)

    a, b = pair_codings(20_000, 3, n_codes=40)
    tracemalloc.start()
    try:
        result = ag.compare(a, b, n_boot=1000, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.overall["masi_alpha"].low is not None
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"
