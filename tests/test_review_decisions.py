"""The decision log: append-only, derived state, undo, optimistic concurrency."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from qualflow.db import DecisionRow, ProposalRow, ReviewStateRow
from qualflow.review import auth, decisions
from qualflow.review.decisions import Conflict, DecisionError, decide
from tests.review_support import make_study


@pytest.fixture
def study(settings, store):
    return make_study(settings, store)


def _uid(store, name: str) -> int:
    return auth.user_by_name(store, name).id


def _proposals(store, pid: str) -> list[ProposalRow]:
    with store.session() as s:
        return list(s.scalars(select(ProposalRow).where(ProposalRow.passage_id == pid)))


def _rows(store) -> list[tuple]:
    with store.session() as s:
        return [
            (r.id, r.action, r.code, tuple(r.before), tuple(r.after), r.undoes_id, r.state_version)
            for r in s.scalars(select(DecisionRow).order_by(DecisionRow.id))
        ]


def test_accept_reject_replace_add_remove_change_the_codes(study):
    store = study.store
    pid = study.passage_ids[1]  # two proposals
    uid = _uid(store, "ann")
    p1, p2 = _proposals(store, pid)
    st = decide(store, uid, pid, "accept", version=0, proposal_id=p1.id)
    assert st.codes == [p1.code] and st.version == 1
    assert st.proposal_status == {p1.id: "accepted"}
    st = decide(store, uid, pid, "reject", version=1, proposal_id=p2.id)
    assert st.codes == [p1.code] and st.proposal_status[p2.id] == "rejected"
    st = decide(
        store, uid, pid, "replace", version=2, proposal_id=p1.id, code="01.use.impact.influence"
    )
    assert st.codes == ["01.use.impact.influence"]
    st = decide(store, uid, pid, "add", version=3, code="01.use.frequency.daily")
    assert st.codes == ["01.use.frequency.daily", "01.use.impact.influence"]
    st = decide(store, uid, pid, "remove", version=4, code="01.use.frequency.daily")
    assert st.codes == ["01.use.impact.influence"]
    st = decide(store, uid, pid, "no_code", version=5)
    assert st.codes == [] and st.version == 6
    rows = _rows(store)
    assert [r[1] for r in rows] == ["accept", "reject", "replace", "add", "remove", "no_code"]
    assert rows[2][3:5] == ((p1.code,), ("01.use.impact.influence",))  # before / after
    assert [r[6] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_flag_memo_done_and_their_undo(study):
    store, pid, uid = study.store, study.passage_ids[0], _uid(study.store, "ann")
    decide(store, uid, pid, "flag", version=0)
    decide(store, uid, pid, "memo", version=1, memo="  ask the team about this  ")
    st = decide(store, uid, pid, "done", version=2)
    assert st.flagged and st.done and st.memo == "ask the team about this"
    st = decide(store, uid, pid, "undo", version=3)
    assert not st.done and st.flagged
    st = decide(store, uid, pid, "undo", version=4)
    assert st.memo is None and st.flagged
    st = decide(store, uid, pid, "unflag", version=5)
    assert not st.flagged


def test_undo_appends_and_walks_back_without_rewriting_the_log(study):
    store, pid, uid = study.store, study.passage_ids[1], _uid(study.store, "ann")
    p1, p2 = _proposals(store, pid)
    decide(store, uid, pid, "accept", version=0, proposal_id=p1.id)
    decide(store, uid, pid, "accept", version=1, proposal_id=p2.id)
    before_undo = _rows(store)
    st = decide(store, uid, pid, "undo", version=2)
    assert st.codes == [p1.code] and p2.id not in st.proposal_status
    rows = _rows(store)
    assert rows[:2] == before_undo  # earlier rows untouched
    assert rows[2][1] == "undo" and rows[2][5] == before_undo[1][0]
    st = decide(store, uid, pid, "undo", version=3)  # the next undo cancels the accept before
    assert st.codes == [] and st.last_effective_id is None
    assert _rows(store)[3][5] == before_undo[0][0]
    with pytest.raises(DecisionError, match="nothing to undo"):
        decide(store, uid, pid, "undo", version=4)
    assert len(_rows(store)) == 4


def test_stale_version_is_a_conflict_and_writes_nothing(study):
    store, pid, uid = study.store, study.passage_ids[0], _uid(study.store, "ann")
    decide(store, uid, pid, "flag", version=0)
    with pytest.raises(Conflict) as exc:
        decide(store, uid, pid, "unflag", version=0)
    assert exc.value.seen == 0 and exc.value.current == 1
    assert "not saved" in str(exc.value)
    assert len(_rows(store)) == 1


@pytest.mark.parametrize("start", [0, 1])
def test_concurrent_changes_against_one_version_exactly_one_lands(study, start):
    store, pid, uid = study.store, study.passage_ids[0], _uid(study.store, "ann")
    if start:
        decide(store, uid, pid, "flag", version=0)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def act(i: int) -> None:
        barrier.wait()
        try:
            decide(store, uid, pid, "memo", version=start, memo=f"memo {i}")
            outcomes.append("ok")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=act, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1 and outcomes.count("conflict") == 7
    assert len(_rows(store)) == start + 1
    assert decisions.state(store, uid, pid).version == start + 1


def test_reviewers_have_separate_states_for_the_same_passage(study):
    store, pid = study.store, study.passage_ids[0]
    ann, bob = _uid(store, "ann"), _uid(store, "bob")
    (p,) = _proposals(store, pid)
    decide(store, ann, pid, "accept", version=0, proposal_id=p.id)
    st = decide(store, bob, pid, "reject", version=0, proposal_id=p.id)  # no conflict
    assert st.codes == [] and decisions.state(store, ann, pid).codes == [p.code]


def test_bad_decisions_are_refused_with_the_reason(study):
    store, uid = study.store, _uid(study.store, "ann")
    pid, other = study.passage_ids[0], study.passage_ids[1]
    foreign = _proposals(store, other)[0].id
    with pytest.raises(DecisionError, match="not a valid proposal of this passage"):
        decide(store, uid, pid, "accept", version=0, proposal_id=foreign)
    with pytest.raises(DecisionError, match="not in codebook 'benchmark-practices'"):
        decide(store, uid, pid, "add", version=0, code="99.made.up")
    with pytest.raises(DecisionError, match="not in this passage's coding"):
        decide(store, uid, pid, "remove", version=0, code="01.use.frequency.daily")
    with pytest.raises(DecisionError, match="must be one of"):
        decide(store, uid, pid, "delete", version=0)
    with pytest.raises(DecisionError, match="proposal_id missing"):
        decide(store, uid, pid, "accept", version=0)
    with pytest.raises(DecisionError, match="no passage 'nope'"):
        decide(store, uid, "nope", "flag", version=0)
    with pytest.raises(DecisionError, match="no user with id 999"):
        decide(store, 999, pid, "flag", version=0)
    assert _rows(store) == []


def test_review_states_cache_is_rebuilt_from_the_log(study):
    store, uid = study.store, _uid(study.store, "ann")
    pid = study.passage_ids[1]
    p1, _ = _proposals(store, pid)
    decide(store, uid, pid, "accept", version=0, proposal_id=p1.id)
    decide(store, uid, pid, "flag", version=1)
    decide(store, uid, pid, "done", version=2)
    decide(store, uid, study.passage_ids[2], "no_code", version=0)

    def cache():
        with store.session() as s:
            return sorted(
                (r.passage_id, r.user_id, r.version, tuple(r.codes), r.done, r.flagged)
                for r in s.scalars(select(ReviewStateRow))
            )

    written = cache()
    with store.session() as s:
        for r in s.scalars(select(ReviewStateRow)):
            r.codes, r.done, r.version = ["garbage"], False, 99
    assert decisions.rebuild_states(store) == 2
    assert cache() == written
    assert written[0][2:] in {(3, (p1.code,), True, True), (1, (), False, False)}


def test_reviewer_codings_hold_done_passages_only(study):
    store = study.store
    ann, bob = _uid(store, "ann"), _uid(store, "bob")
    a, b, c = study.passage_ids[:3]
    (pa,) = _proposals(store, a)
    decide(store, ann, a, "accept", version=0, proposal_id=pa.id)
    decide(store, ann, a, "done", version=1)
    decide(store, ann, b, "no_code", version=0)
    decide(store, ann, b, "done", version=1)
    decide(store, ann, c, "add", version=0, code="01.use.frequency.daily")  # not done
    decide(store, bob, a, "done", version=0)
    decide(store, bob, a, "undo", version=1)  # done undone -> not counted
    codings = decisions.reviewer_codings(store)
    assert codings == {"ann": {a: frozenset({pa.code}), b: frozenset()}}
    wip = decisions.reviewer_codings(store, include_unfinished=True)
    assert wip["ann"][c] == frozenset({"01.use.frequency.daily"})
    assert "bob" not in wip


def test_the_log_actions_are_the_domain_models_actions():
    from typing import get_args

    from qualflow.models import DecisionAction

    assert set(get_args(DecisionAction)) == set(decisions.ACTIONS)
