"""Assignment strategies: pure functions, no web, no database."""

from __future__ import annotations

from collections import Counter

import pytest

from qualflow.review.assignment import (
    balanced,
    double_code_sample,
    make_strategy,
    plan_assignments,
    round_robin,
)

IDS = [f"p{i:02d}" for i in range(20)]


def test_round_robin_cycles_through_reviewers_in_order():
    out = round_robin(IDS[:5], ["a", "b"])
    assert out == {"p00": "a", "p01": "b", "p02": "a", "p03": "b", "p04": "a"}


def test_balanced_fills_the_least_loaded_reviewer_first():
    out = balanced(IDS[:6], ["a", "b", "c"], {"a": 3, "b": 1})
    assert Counter(out.values()) == {"c": 3, "b": 2, "a": 1}
    totals = Counter(out.values()) + Counter({"a": 3, "b": 1})
    assert totals == {"a": 4, "b": 3, "c": 3}


def test_factory_knows_both_strategies_and_names_them_on_error():
    assert make_strategy("balanced") is balanced
    assert make_strategy("round_robin") is round_robin
    with pytest.raises(ValueError, match="balanced, round_robin"):
        make_strategy("alphabetical")


def test_double_code_sample_is_seeded_and_sized_by_share():
    a = double_code_sample(IDS, 0.2, seed=7)
    assert len(a) == 4 and a <= set(IDS)
    assert a == double_code_sample(IDS, 0.2, seed=7)
    assert any(double_code_sample(IDS, 0.2, seed=s) != a for s in range(8, 20))
    with pytest.raises(ValueError, match="between 0 and 1"):
        double_code_sample(IDS, 1.5, seed=0)


def test_plan_double_codes_a_share_with_two_different_reviewers():
    plan = plan_assignments(IDS, ["a", "b", "c"], double_share=0.25, seed=3)
    per_passage: dict[str, list[str]] = {}
    for a in plan:
        per_passage.setdefault(a.passage_id, []).append(a.reviewer)
    assert set(per_passage) == set(IDS)
    doubles = {pid for pid, rs in per_passage.items() if len(rs) == 2}
    assert len(doubles) == 5
    assert all(len(set(per_passage[pid])) == 2 for pid in doubles)
    assert all(len(rs) == 1 for pid, rs in per_passage.items() if pid not in doubles)
    assert {a.passage_id for a in plan if a.double_coded} == doubles
    load = Counter(a.reviewer for a in plan)
    assert max(load.values()) - min(load.values()) <= 1  # the extra work is spread evenly
    assert not any(a.blind_to_machine for a in plan)


def test_blind_machine_applies_to_double_coded_passages_only():
    plan = plan_assignments(IDS, ["a", "b"], double_share=0.5, seed=1, blind_machine=True)
    assert all(a.blind_to_machine == a.double_coded for a in plan)
    assert sum(a.blind_to_machine for a in plan) == 20  # 10 passages x 2 reviewers


def test_plan_is_deterministic_for_a_seed():
    one = plan_assignments(IDS, ["a", "b", "c"], double_share=0.2, seed=11)
    two = plan_assignments(IDS, ["a", "b", "c"], double_share=0.2, seed=11)
    assert one == two


def test_bad_reviewer_lists_are_refused():
    with pytest.raises(ValueError, match="no reviewers"):
        plan_assignments(IDS, [])
    with pytest.raises(ValueError, match="repeat"):
        plan_assignments(IDS, ["a", "a"])
    with pytest.raises(ValueError, match="at least two reviewers"):
        plan_assignments(IDS, ["a"], double_share=0.2)


def test_duplicate_passages_are_assigned_once():
    plan = plan_assignments(["x", "y", "x"], ["a", "b"], strategy="round_robin")
    assert [(a.passage_id, a.reviewer) for a in plan] == [("x", "a"), ("y", "b")]
