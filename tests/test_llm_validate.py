"""Validation of proposals (pure functions)."""

from __future__ import annotations

import math

from qualflow.validate import RawProposal, check, check_all, find_evidence
from tests.llm_helpers import CODEBOOK

PASSAGE = "Well,\n  we   check\tMMLU every day.  And “HELM” too."


def raw(code="01.use.daily", evidence="check MMLU", confidence=0.5, rationale="why"):
    return RawProposal(code=code, rationale=rationale, evidence=evidence, confidence=confidence)


def test_evidence_offsets_after_whitespace_normalization():
    start, end = find_evidence("we check MMLU every\n day", PASSAGE)
    assert PASSAGE[start:end] == "we   check\tMMLU every day"
    start, end = find_evidence('"check MMLU"', PASSAGE)  # outer quotes the model added
    assert PASSAGE[start:end] == "check\tMMLU"
    start, end = find_evidence("“HELM”", PASSAGE)  # quotes that are in the passage
    assert PASSAGE[start:end] == "HELM"
    assert find_evidence("check mmlu", PASSAGE) is None  # case matters: verbatim
    assert find_evidence("", PASSAGE) is None and find_evidence('""', PASSAGE) is None


def test_check_reports_every_problem():
    p = check(
        raw(code="nope", evidence="made up", confidence=-0.2, rationale=""),
        PASSAGE,
        CODEBOOK,
        set(),
    )
    assert not p.valid and p.confidence == 0.0
    for part in ("'nope' does not exist", "rationale", "not a verbatim quote", "-0.2, outside"):
        assert part in p.invalid_reason
    nan = check(raw(confidence=math.nan), PASSAGE, CODEBOOK, {"01.use.daily"})
    assert not nan.valid and "not a number" in nan.invalid_reason


def test_check_all_splits_and_flags_repeats():
    valid, invalid = check_all(
        [raw(), raw(evidence="every day"), raw(code="01.use.rarely", evidence="Well,")],
        PASSAGE,
        CODEBOOK,
        {"01.use.daily"},
    )
    assert [p.code for p in valid] == ["01.use.daily", "01.use.rarely"]
    assert valid[1].in_candidates is False and valid[0].in_candidates is True
    assert [p.invalid_reason for p in invalid] == ["'01.use.daily' repeated"]
