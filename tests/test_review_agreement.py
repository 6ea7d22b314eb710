"""Reviewer codings for agreement: spans read on the sentence grid, and the human-human
baseline from the review app's blind double-coded share, end to end."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from qualflow import agreement as ag
from qualflow import evaluate as ev
from qualflow.chunk import sentences_in
from qualflow.db import AssignmentRow
from qualflow.models import Span, SpanCoding
from qualflow.review import auth, decisions, queue
from qualflow.review.app import create_app
from tests.review_support import csrf_of, login, make_study, version_of

DAILY, WEEKLY, ISSUES = "01.use.frequency.daily", "01.use.frequency.weekly", "05.gaps.issues"


def _sentences(store, pid: str) -> list:
    unit = store.passage(pid)
    return sentences_in(unit, store.passages(transcript_id=unit.transcript_id))


def _post(c: TestClient, pid: str, action: str, **fields) -> None:
    page = c.get(f"/passages/{pid}").text
    data = {"csrf": csrf_of(page), "version": str(version_of(page)), "action": action}
    data.update({k: str(v) for k, v in fields.items()})
    r = c.post(f"/passages/{pid}/decide", data=data, follow_redirects=False)
    assert r.status_code == 303, r.text[:400]


@pytest.fixture
def double_coded(settings, store):
    """Six units coded blind by ann and bob through the app, spans by sentence."""
    study = make_study(settings, store)
    ids = study.passage_ids[:6]
    with store.session() as s:
        for pid in ids:
            for name in ("ann", "bob"):
                uid = auth.user_by_name(store, name).id
                s.add(
                    AssignmentRow(
                        passage_id=pid, user_id=uid, double_coded=True, blind_to_machine=True
                    )
                )
    app = create_app(settings, store)
    clients = {}
    for name in ("ann", "bob"):
        clients[name] = TestClient(app)
        assert login(clients[name], name).status_code == 303
    for i, pid in enumerate(ids):
        first = _sentences(store, pid)[0]
        # ann codes the first sentence of every answer "daily"; bob the whole answer,
        # "daily" on even units and "issues" on odd ones
        _post(clients["ann"], pid, "add", code=DAILY, start=first.char_start, end=first.char_end)
        _post(clients["bob"], pid, "add", code=DAILY if i % 2 == 0 else ISSUES)
        for name in ("ann", "bob"):
            _post(clients[name], pid, "done")
    open_unit = study.passage_ids[6]
    with store.session() as s:
        s.add(AssignmentRow(passage_id=open_unit, user_id=auth.user_by_name(store, "ann").id))
    _post(clients["ann"], open_unit, "no_code")  # not finished: no part of the coding
    return study, ids, open_unit


def test_a_reviewer_spec_reads_the_spans_on_the_sentence_grid(double_coded, store):
    _study, ids, open_unit = double_coded
    ann = ev.resolve(store, "reviewer:ann")
    assert ann.origin == "reviewer" and ann.is_human
    expected = {}
    for pid in ids:
        sentences = _sentences(store, pid)
        expected[sentences[0].id] = frozenset({DAILY})
        expected.update({s.id: frozenset() for s in sentences[1:]})  # answered: no code
    assert ann.coding == expected
    assert not set(ann.coding) & {s.id for s in _sentences(store, open_unit)}
    bob = ev.resolve(store, "reviewer:bob")
    assert set(bob.coding) == set(expected)
    assert all(len(codes) == 1 for codes in bob.coding.values())
    with pytest.raises(ev.EvalError, match="no finished review by 'carl'"):
        ev.resolve(store, "reviewer:carl")


def test_two_reviewers_give_the_human_baseline_end_to_end(double_coded, store):
    _study, ids, _ = double_coded
    sentences = [s for pid in ids for s in _sentences(store, pid)]
    # a reference over the same text, declared constructed (invented for the test), so
    # the two reviewers are the only human coders: "daily" everywhere
    gold = SpanCoding(
        coder="made-up",
        spans=[Span(s.transcript_id, s.char_start, s.char_end, DAILY) for s in sentences],
    )
    for s in sentences:
        gold.scope.setdefault(s.transcript_id, []).append((s.char_start, s.char_end))
    store.save_gold_coding("constructed", gold)
    store.set_gold_origin("constructed", "made-up", "constructed")
    ann, bob = ev.resolve(store, "reviewer:ann"), ev.resolve(store, "reviewer:bob")
    results = ev.evaluate(
        ev.resolve(store, "gold:constructed:made-up"),
        ev.resolve(store, "proposals:llm"),
        humans=[ann, bob],
        n_boot=20,
    )
    baseline = results["human_baseline"]
    assert baseline["humans"] == ["reviewer:ann", "reviewer:bob"]
    assert baseline["n_passages"] == len(sentences) > len(ids)
    assert results["scope"]["human_baseline"] == (
        f"measured: reviewer:ann, reviewer:bob on {len(sentences)} passages they all coded"
    )
    # the human-human figure is the agreement of the two independent codings
    pair = results["human_agreement"]
    assert (pair["coder_a"], pair["coder_b"]) == ("reviewer:ann", "reviewer:bob")
    assert pair["n_passages"] == len(sentences)
    direct = ag.compare(ann.coding, bob.coding, passages=sorted(s.id for s in sentences), n_boot=20)
    f1 = direct.overall["micro_f1"].value
    assert pair["overall"]["micro_f1"]["value"] == pytest.approx(f1)
    assert 0 < f1 < 1  # they agree on some sentences, not all
    assert decisions.reviewer_codings(store).keys() == {"ann", "bob"}
    assert queue.study_progress(store).done == len(ids)
