"""Agreement figures pinned to reference libraries and published worked examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from qualflow import agreement as ag

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", reliability data
# with missing values: 4 observers x 12 units. Published: alpha nominal = 0.743.
# Gwet (Handbook of Inter-Rater Reliability) uses the same data: AC1 = 0.7754,
# Fleiss' kappa (generalised for missing ratings) = 0.7612 (irrCAC documentation).
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]

# Fleiss (1971) as worked in the Wikipedia article "Fleiss' kappa": 10 subjects,
# 14 raters, 5 categories, counts per category. Published: kappa = 0.210.
FLEISS_EXAMPLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


def _random_pair(seed: int, n: int = 300, prevalences=(0.03, 0.1, 0.3, 0.5, 0.8)):
    rng = np.random.default_rng(seed)
    a = rng.random((n, len(prevalences))) < np.array(prevalences)
    b = a ^ (rng.random(a.shape) < 0.12)
    return a, b


def _codings(a: np.ndarray, b: np.ndarray) -> tuple[dict, dict, list[str]]:
    codes = [f"c{j}" for j in range(a.shape[1])]

    def to(m):
        return {
            f"p{i}": frozenset(c for j, c in enumerate(codes) if m[i, j]) for i in range(len(m))
        }

    return to(a), to(b), codes


# --------------------------------------------------------------------------- worked examples


def test_krippendorff_2011_published_alpha():
    table, _ = ag.counts_table(list(zip(*KRIPPENDORFF_2011, strict=True)))
    assert ag.krippendorff_alpha_counts(table)[0] == pytest.approx(0.743, abs=5e-4)


def test_gwet_ac1_and_fleiss_on_published_data():
    table, _ = ag.counts_table(list(zip(*KRIPPENDORFF_2011, strict=True)))
    assert ag.gwet_ac1_counts(table)[0] == pytest.approx(0.77544, abs=1e-5)
    assert ag.fleiss_kappa_counts(table)[0] == pytest.approx(0.76117, abs=1e-5)


def test_fleiss_1971_worked_example():
    assert ag.fleiss_kappa_counts(FLEISS_EXAMPLE)[0] == pytest.approx(0.210, abs=5e-4)


def test_cohen_kappa_textbook_example():
    # Wikipedia "Cohen's kappa": 50 grant proposals; yes/yes 20, yes/no 5, no/yes 10,
    # no/no 15 -> p_o = 0.7, p_e = 0.5, kappa = 0.4.
    m = ag.table_metrics(np.array([20]), np.array([5]), np.array([10]), np.array([15]))
    assert m["kappa"][0] == pytest.approx(0.4)
    assert m["po"][0] == pytest.approx(0.7)
    assert m["precision"][0] == pytest.approx(20 / 30)
    assert m["recall"][0] == pytest.approx(20 / 25)


# --------------------------------------------------------------------------- reference libraries


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_code_figures_match_reference_libraries(seed):
    import krippendorff
    from irrCAC.raw import CAC
    from sklearn.metrics import cohen_kappa_score, f1_score, precision_score, recall_score

    a, b = _random_pair(seed)
    ca, cb, codes = _codings(a, b)
    result = ag.compare(ca, cb, codes=codes, n_boot=0)
    for j, code in enumerate(codes):
        x, y = a[:, j].astype(int), b[:, j].astype(int)
        row = result.code(code)
        assert row.metrics["kappa"].value == pytest.approx(cohen_kappa_score(x, y), abs=1e-12)
        ref_alpha = krippendorff.alpha(np.vstack([x, y]), level_of_measurement="nominal")
        assert row.metrics["alpha"].value == pytest.approx(ref_alpha, abs=1e-12)
        ref_ac1 = CAC(pd.DataFrame({"a": x, "b": y})).gwet()["est"]["coefficient_value"]
        assert row.metrics["ac1"].value == pytest.approx(ref_ac1, abs=1e-5)  # irrCAC rounds
        assert row.metrics["precision"].value == pytest.approx(precision_score(x, y))
        assert row.metrics["recall"].value == pytest.approx(recall_score(x, y))
        assert row.metrics["f1"].value == pytest.approx(f1_score(x, y))
        assert row.prevalence_a == pytest.approx(x.mean())
        assert row.n == len(x)


def test_micro_macro_match_sklearn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    a, b = _random_pair(5)
    ca, cb, codes = _codings(a, b)
    o = ag.compare(ca, cb, codes=codes, n_boot=0).overall
    for avg in ("micro", "macro"):
        assert o[f"{avg}_precision"].value == pytest.approx(precision_score(a, b, average=avg))
        assert o[f"{avg}_recall"].value == pytest.approx(recall_score(a, b, average=avg))
    assert o["micro_f1"].value == pytest.approx(f1_score(a, b, average="micro"))
    # our macro F1 is the mean of per-code F1 (sklearn's definition too)
    assert o["macro_f1"].value == pytest.approx(f1_score(a, b, average="macro"))


def test_pooled_kappa_is_de_vries_definition_and_ignores_unused_codes():
    a, b = _random_pair(3)
    ca, cb, codes = _codings(a, b)
    po = ((a == b).mean(axis=0)).mean()
    pa, pb = a.mean(axis=0), b.mean(axis=0)
    pe = (pa * pb + (1 - pa) * (1 - pb)).mean()
    expected = (po - pe) / (1 - pe)
    with_unused = ag.compare(ca, cb, codes=[*codes, "never"], n_boot=0)
    assert with_unused.overall["pooled_kappa"].value == pytest.approx(expected)
    without = ag.compare(ca, cb, codes=codes, n_boot=0)
    assert without.overall["pooled_kappa"].value == pytest.approx(expected)


def test_multi_coder_matches_statsmodels_and_krippendorff():
    import krippendorff
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    rng = np.random.default_rng(7)
    truth = rng.random(150) < 0.25
    raters = np.array([truth ^ (rng.random(150) < 0.1) for _ in range(4)]).T  # units x raters
    codings = {
        f"r{k}": {f"p{i}": frozenset({"x"} if raters[i, k] else set()) for i in range(150)}
        for k in range(4)
    }
    result = ag.compare_many(codings, n_boot=200)
    row = next(r for r in result.codes if r["code"] == "x")
    table, _ = aggregate_raters(raters.astype(int))
    assert row["fleiss_kappa"]["value"] == pytest.approx(fleiss_kappa(table), abs=1e-12)
    ref = krippendorff.alpha(raters.T.astype(int), level_of_measurement="nominal")
    assert row["alpha"]["value"] == pytest.approx(ref, abs=1e-12)
    assert row["fleiss_kappa"]["low"] < row["fleiss_kappa"]["value"] < row["fleiss_kappa"]["high"]
    mean = result.overall["mean_fleiss_kappa"]
    assert mean.value == pytest.approx(row["fleiss_kappa"]["value"])  # one code: its own figure
    assert mean.low == pytest.approx(row["fleiss_kappa"]["low"])


def test_multi_coder_missing_passages_match_krippendorff():
    import krippendorff

    rng = np.random.default_rng(8)
    data = (rng.random((3, 80)) < 0.3).astype(float)
    data[0, :10] = np.nan  # coder 0 did not code the first ten passages
    codings = {
        f"r{k}": {
            f"p{i}": frozenset({"x"} if data[k, i] == 1 else set())
            for i in range(80)
            if not math.isnan(data[k, i])
        }
        for k in range(3)
    }
    row = ag.compare_many(codings, n_boot=0).codes[0]
    ref = krippendorff.alpha(data, level_of_measurement="nominal")
    assert row["alpha"]["value"] == pytest.approx(ref, abs=1e-12)


def test_masi_distance_values():
    f = frozenset
    assert ag.masi_distance(f(), f()) == 0.0
    assert ag.masi_distance(f("a"), f("a")) == 0.0
    assert ag.masi_distance(f("a"), f("ab")) == pytest.approx(1 - 0.5 * 0.67)
    assert ag.masi_distance(f("ab"), f("bc")) == pytest.approx(1 - (1 / 3) * 0.33)
    assert ag.masi_distance(f("a"), f("b")) == 1.0
    assert ag.masi_distance(f(), f("a")) == 1.0
    sets = [f(), f("a"), f("ab"), f("bc"), f("b")]
    matrix = ag._masi_matrix(sets)
    for i, x in enumerate(sets):
        for j, y in enumerate(sets):
            assert matrix[i, j] == pytest.approx(ag.masi_distance(x, y))


def test_set_alpha_reduces_to_nominal_alpha_for_single_labels():
    """With one label per unit, MASI distance is the nominal 0/1 distance."""
    import krippendorff

    rng = np.random.default_rng(4)
    x = rng.integers(0, 4, 60)
    y = np.where(rng.random(60) < 0.7, x, rng.integers(0, 4, 60))
    units = [[frozenset({str(p)}), frozenset({str(q)})] for p, q in zip(x, y, strict=True)]
    ref = krippendorff.alpha(np.vstack([x, y]), level_of_measurement="nominal")
    assert ag.set_alpha(units) == pytest.approx(ref, abs=1e-12)


# --------------------------------------------------------------------------- undefined and roll-up


def test_undefined_cases_are_reported_not_one():
    a = {"p1": frozenset({"x"}), "p2": frozenset(), "p3": frozenset()}
    b = {"p1": frozenset(), "p2": frozenset(), "p3": frozenset()}
    r = ag.compare(a, b, codes=["x", "never"], n_boot=50)
    never = r.code("never")
    for m in ag.PER_CODE_METRICS:
        assert never.metrics[m].value is None
        assert never.metrics[m].note == ag.NEVER_USED
    x = r.code("x")
    assert x.metrics["precision"].value is None  # B never applied x
    assert "never applied" in x.metrics["precision"].note
    assert x.metrics["recall"].value == 0.0
    assert x.metrics["kappa"].value == pytest.approx(0.0)
    assert never.few and x.few


def test_empty_overlap_does_not_crash():
    r = ag.compare({"p1": frozenset({"x"})}, {"p2": frozenset({"x"})}, n_boot=20)
    assert r.n_passages == 0
    assert r.overall["pooled_kappa"].value is None
    assert r.only_a == 1 and r.only_b == 1


def test_rollup_child_counts_for_parent():
    a = {"p1": frozenset({"01.use.daily"}), "p2": frozenset({"02.trust"})}
    rolled = ag.rollup(a)
    assert rolled == {"p1": frozenset({"01"}), "p2": frozenset({"02"})}
    b = {"p1": frozenset({"01.use.weekly"}), "p2": frozenset({"02.trust.low"})}
    r = ag.compare(a, b, n_boot=0, categories=True)
    assert r.overall["micro_f1"].value == 0.0  # disagree on every leaf code
    assert r.categories is not None
    assert r.categories.overall["micro_f1"].value == 1.0  # agree on every category
    assert [c.code for c in r.categories.codes] == ["01", "02"]


def test_rollup_with_codebook():
    from qualflow.models import Code, Codebook

    cb = Codebook(name="t", codes=[Code(title="a.x"), Code(title="a.y"), Code(title="b")])
    coding = {"p": frozenset({"a.x", "a.y", "b"})}
    assert ag.rollup(coding, cb) == {"p": frozenset({"a", "b"})}
    assert ag.rollup(coding, lambda c: c.upper()) == {"p": frozenset({"A.X", "A.Y", "B"})}
