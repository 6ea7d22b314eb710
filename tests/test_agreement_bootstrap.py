"""Bootstrap intervals, paired comparisons, the human baseline and calibration."""

from __future__ import annotations

import numpy as np
import pytest

from qualflow import agreement as ag


def _coder(rng, truth: dict, flip: float, codes: list[str]) -> dict:
    out = {}
    for pid, codes_true in truth.items():
        s = set(codes_true)
        for c in codes:
            if rng.random() < flip:
                s ^= {c}
        out[pid] = frozenset(s)
    return out


def _truth(rng, n: int, codes: list[str], p: float = 0.15) -> dict:
    return {f"p{i}": frozenset(c for c in codes if rng.random() < p) for i in range(n)}


CODES = ["a.1", "a.2", "b.1", "b.2"]


def test_bootstrap_is_deterministic_for_a_seed_and_changes_with_it():
    rng = np.random.default_rng(0)
    t = _truth(rng, 200, CODES)
    x, y = _coder(rng, t, 0.05, CODES), _coder(rng, t, 0.05, CODES)
    r1 = ag.compare(x, y, n_boot=300, seed=11).to_dict()
    r2 = ag.compare(x, y, n_boot=300, seed=11).to_dict()
    r3 = ag.compare(x, y, n_boot=300, seed=12).to_dict()
    assert r1 == r2
    assert r1["overall"]["pooled_kappa"]["low"] != r3["overall"]["pooled_kappa"]["low"]
    o = r1["overall"]
    for m in ag.OVERALL_METRICS:
        assert o[m]["low"] <= o[m]["value"] <= o[m]["high"], m


def test_bootstrap_interval_coverage_is_near_nominal():
    """Simulated coders with a known per-passage agreement: the 95% interval of the
    exact-match share covers the true rate in roughly 95% of replications."""
    rng = np.random.default_rng(42)
    true_rate = 0.8
    covered = 0
    reps = 120
    for r in range(reps):
        n = 150
        a = {f"p{i}": frozenset({"x"}) for i in range(n)}
        b = {
            f"p{i}": frozenset({"x"}) if rng.random() < true_rate else frozenset() for i in range(n)
        }
        est = ag.compare(a, b, n_boot=400, seed=r).overall["exact_match"]
        covered += est.low <= true_rate <= est.high
    assert 0.88 <= covered / reps <= 0.99


def test_interval_narrows_with_more_passages():
    rng = np.random.default_rng(1)
    small_t = _truth(rng, 60, CODES)
    big_t = _truth(rng, 1200, CODES)

    def width(t):
        e = ag.compare(t, _coder(rng, t, 0.05, CODES), n_boot=300).overall["pooled_kappa"]
        return e.high - e.low

    assert width(big_t) < width(small_t) / 2


def test_compare_runs_flags_a_regression_and_not_noise():
    rng = np.random.default_rng(2)
    t = _truth(rng, 400, CODES)
    good = _coder(rng, t, 0.03, CODES)
    worse_on_a1 = {p: (s ^ {"a.1"}) if rng.random() < 0.3 else s for p, s in good.items()}
    cmp = ag.compare_runs(t, worse_on_a1, good, n_boot=400, seed=0)
    verdicts = {(d.subject, d.metric): d.verdict for d in cmp.codes}
    assert verdicts[("a.1", "kappa")] == "worse"
    assert verdicts[("b.1", "kappa")] == "within noise"  # identical on b.1
    assert any(d.subject == "a.1" for d in cmp.regressions)
    same = ag.compare_runs(t, good, good, n_boot=200)
    assert not same.regressions


def test_human_baseline_non_inferiority_reading():
    rng = np.random.default_rng(3)
    t = _truth(rng, 500, CODES)
    h1, h2 = _coder(rng, t, 0.04, CODES), _coder(rng, t, 0.04, CODES)
    as_good = _coder(rng, t, 0.04, CODES)
    much_worse = _coder(rng, t, 0.25, CODES)
    ok = ag.human_baseline({"h1": h1, "h2": h2}, as_good, margin=0.1, n_boot=300)
    bad = ag.human_baseline({"h1": h1, "h2": h2}, much_worse, margin=0.1, n_boot=300)
    read_ok = {r["metric"]: r["reading"] for r in ok.overall}
    read_bad = {r["metric"]: r["reading"] for r in bad.overall}
    assert read_ok["pooled_kappa"] == "non-inferior"
    assert read_bad["pooled_kappa"] == "inferior"
    # human-human is the same figure as a plain compare of the two humans
    plain = ag.compare(h1, h2, n_boot=0).overall["pooled_kappa"].value
    hh = next(r for r in ok.overall if r["metric"] == "pooled_kappa")["human_human"]["value"]
    assert hh == pytest.approx(plain)
    with pytest.raises(ValueError, match="two human"):
        ag.human_baseline({"h1": h1}, as_good)


def test_calibration_bins_and_auroc():
    rng = np.random.default_rng(4)
    conf = rng.random(2000)
    correct = rng.random(2000) < conf  # perfectly calibrated by construction
    cal = ag.calibration(zip(conf, correct, strict=True), bins=5, n_boot=200)
    assert cal.n == 2000
    assert sum(b["n"] for b in cal.bins) == 2000
    for b in cal.bins:
        assert b["accuracy_low"] <= (b["low"] + b["high"]) / 2 + 0.05
        assert abs(b["accuracy"] - b["mean_confidence"]) < 0.06
    assert cal.ece < 0.05
    assert cal.auroc.value > 0.7 and cal.auroc.low > 0.5
    flat = ag.calibration([(0.9, True), (0.9, True)], n_boot=10)
    assert flat.auroc.value is None


def test_cluster_bootstrap_widens_intervals_for_correlated_passages():
    """Passages of one interview share a coder's habits: resampling participants
    gives wider (more honest) intervals than resampling passages."""
    rng = np.random.default_rng(5)
    truth, machine, clusters = {}, {}, {}
    for person in range(12):
        miss = rng.choice([0.0, 0.7])  # the machine fails on some people entirely
        for i in range(40):
            pid = f"P{person}-{i}"
            truth[pid] = frozenset({"x"}) if rng.random() < 0.4 else frozenset()
            machine[pid] = truth[pid] if rng.random() > miss else frozenset({"x"}) - truth[pid]
            clusters[pid] = f"P{person}"
    flat = ag.compare(truth, machine, n_boot=400).overall["pooled_kappa"]
    clustered = ag.compare(truth, machine, n_boot=400, clusters=clusters).overall["pooled_kappa"]
    assert clustered.value == flat.value  # the point estimate does not change
    assert (clustered.high - clustered.low) > 1.5 * (flat.high - flat.low)
    w = ag.bootstrap_weights(4, 3, 0, ["a", "a", "b", "b"])
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 2] == w[:, 3]).all()  # whole clusters
    assert (w.sum(axis=1) == 4).all()
