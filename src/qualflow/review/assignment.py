"""Assignment strategies: who reviews which passage. Pure functions, no web, no DB.

A strategy takes the passage ids to hand out (in queue order), the reviewer names and,
optionally, how many passages each reviewer already holds, and returns one
``Assignment`` per (passage, reviewer). ``plan_assignments`` adds double coding on top:
a seeded share of the passages also goes to a second, different reviewer; both copies
are marked ``double_coded`` and, when asked, ``blind_to_machine`` (the passage view then
hides the machine proposals from both reviewers, so human-human agreement is measured
without the machine's anchoring). Reviewers never see each other's decisions anyway.

``make_strategy(name)`` is the factory (the doccano shape): ``round_robin`` or
``balanced``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Split = Callable[[Sequence[str], Sequence[str], Mapping[str, int]], dict[str, str]]
"""(passage ids, reviewers, existing load per reviewer) -> passage id -> reviewer."""


@dataclass(frozen=True)
class Assignment:
    passage_id: str
    reviewer: str
    double_coded: bool = False
    blind_to_machine: bool = False


def round_robin(
    passage_ids: Sequence[str], reviewers: Sequence[str], load: Mapping[str, int] | None = None
) -> dict[str, str]:
    """Passage i goes to reviewer i mod n (ignores existing load)."""
    _check_reviewers(reviewers)
    return {pid: reviewers[i % len(reviewers)] for i, pid in enumerate(passage_ids)}


def balanced(
    passage_ids: Sequence[str], reviewers: Sequence[str], load: Mapping[str, int] | None = None
) -> dict[str, str]:
    """Each passage goes to the reviewer holding the fewest passages so far, counting
    what they already hold (ties go to the earlier reviewer in the given order)."""
    _check_reviewers(reviewers)
    counts = {r: int((load or {}).get(r, 0)) for r in reviewers}
    order = {r: i for i, r in enumerate(reviewers)}
    out: dict[str, str] = {}
    for pid in passage_ids:
        who = min(reviewers, key=lambda r: (counts[r], order[r]))
        out[pid] = who
        counts[who] += 1
    return out


STRATEGIES: dict[str, Split] = {"round_robin": round_robin, "balanced": balanced}


def make_strategy(name: str) -> Split:
    """The split function called ``name``; ValueError names the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise ValueError(f"unknown assignment strategy '{name}' (known: {known})") from None


def double_code_sample(passage_ids: Sequence[str], share: float, seed: int) -> set[str]:
    """A seeded random sample of round(share * n) passages to double-code."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"double-coding share must be between 0 and 1, got {share}")
    ids = list(dict.fromkeys(passage_ids))
    k = round(share * len(ids))
    return set(random.Random(seed).sample(ids, k))


def plan_assignments(
    passage_ids: Sequence[str],
    reviewers: Sequence[str],
    *,
    strategy: str = "balanced",
    double_share: float = 0.0,
    seed: int = 0,
    blind_machine: bool = False,
    load: Mapping[str, int] | None = None,
) -> list[Assignment]:
    """Split the passages among reviewers and double-code a seeded share of them.

    The second reviewer of a double-coded passage is the least loaded reviewer other
    than the first, so the extra work is spread evenly. ``blind_machine`` applies to
    the double-coded passages (the ones human-human agreement is computed on).
    """
    _check_reviewers(reviewers)
    ids = list(dict.fromkeys(passage_ids))
    first = make_strategy(strategy)(ids, reviewers, load or {})
    doubles = double_code_sample(ids, double_share, seed) if double_share else set()
    if doubles and len(reviewers) < 2:
        raise ValueError("double coding needs at least two reviewers")
    counts = {r: int((load or {}).get(r, 0)) for r in reviewers}
    for r in first.values():
        counts[r] += 1
    order = {r: i for i, r in enumerate(reviewers)}
    out: list[Assignment] = []
    for pid in ids:
        is_double = pid in doubles
        blind = blind_machine and is_double
        out.append(Assignment(pid, first[pid], is_double, blind))
        if is_double:
            others = [r for r in reviewers if r != first[pid]]
            second = min(others, key=lambda r: (counts[r], order[r]))
            counts[second] += 1
            out.append(Assignment(pid, second, True, blind))
    return out


def _check_reviewers(reviewers: Sequence[str]) -> None:
    if not reviewers:
        raise ValueError("no reviewers given")
    if len(set(reviewers)) != len(reviewers):
        raise ValueError(f"reviewer names repeat: {', '.join(reviewers)}")
