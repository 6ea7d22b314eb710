"""The decision log on spans: append-only, derived state, undo, optimistic concurrency,
where a span may lie, when a unit may be done, reviewer codings as spans."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from qualflow.db import AssignmentRow, DecisionRow, ProposalRow, ReviewStateRow
from qualflow.review import auth, decisions
from qualflow.review.decisions import Conflict, DecisionError, decide
from qualflow.review.units import ReviewSpan
from tests.review_support import make_study


@pytest.fixture
def study(settings, store):
    return make_study(settings, store)


def _uid(store, name: str) -> int:
    return auth.user_by_name(store, name).id


def _proposals(store, pid: str) -> list[ProposalRow]:
    with store.session() as s:
        return list(s.scalars(select(ProposalRow).where(ProposalRow.passage_id == pid)))


def _assign(store, pid: str, *names: str, double: bool = False) -> None:
    with store.session() as s:
        for name in names:
            s.add(AssignmentRow(passage_id=pid, user_id=_uid(store, name), double_coded=double))


def _rows(store) -> list[tuple]:
    with store.session() as s:
        return [
            (r.id, r.action, r.code, tuple(r.before), tuple(r.after), r.undoes_id, r.state_version)
            for r in s.scalars(select(DecisionRow).order_by(DecisionRow.id))
        ]


def _answer(store, pid: str) -> tuple[int, int]:
    """The codable stretch (the participant's answer) of a sample unit."""
    (piece,) = store.passage(pid).codable_pieces()
    return piece.char_start, piece.char_end


def _span(st, code: str) -> ReviewSpan:
    (found,) = [sp for sp in st.spans if sp.code == code]
    return found


def test_accept_reject_replace_add_remove_on_spans(study):
    store = study.store
    pid = study.passage_ids[1]  # two proposals on overlapping quotes
    uid = _uid(store, "ann")
    p1, p2 = _proposals(store, pid)
    st = decide(store, uid, pid, "accept", version=0, proposal_id=p1.id)
    assert st.spans == [ReviewSpan(p1.code, p1.start, p1.end, "accepted", p1.id)]
    assert st.codes == [p1.code] and st.version == 1
    assert st.proposal_status == {p1.id: "accepted"}
    st = decide(store, uid, pid, "reject", version=1, proposal_id=p2.id)
    assert st.codes == [p1.code] and st.proposal_status[p2.id] == "rejected"
    st = decide(
        store, uid, pid, "replace", version=2, proposal_id=p1.id, code="01.use.impact.influence"
    )
    assert st.spans == [ReviewSpan("01.use.impact.influence", p1.start, p1.end, "adjusted", p1.id)]
    a, _ = _answer(store, pid)
    st = decide(
        store, uid, pid, "add", version=3, code="01.use.frequency.daily", start=a, end=a + 9
    )
    assert _span(st, "01.use.frequency.daily") == ReviewSpan(
        "01.use.frequency.daily", a, a + 9, "added", None
    )
    st = decide(
        store, uid, pid, "remove", version=4, code="01.use.frequency.daily", start=a, end=a + 9
    )
    assert st.codes == ["01.use.impact.influence"]
    st = decide(store, uid, pid, "no_code", version=5)
    assert st.spans == [] and st.no_code and st.version == 6
    rows = _rows(store)
    assert [r[1] for r in rows] == ["accept", "reject", "replace", "add", "remove", "no_code"]
    assert rows[2][3:5] == ((p1.code,), ("01.use.impact.influence",))  # codes before / after
    assert [r[6] for r in rows] == [1, 2, 3, 4, 5, 6]
    with store.session() as s:  # each row holds the spans after it and the span it acted on
        logged = s.scalars(select(DecisionRow).order_by(DecisionRow.id)).all()
        assert logged[3].spans[0]["origin"] == "added" or logged[3].spans[1]["origin"] == "added"
        assert (logged[3].span_start, logged[3].span_end) == (a, a + 9)
        assert logged[5].spans == []


def test_adjust_moves_a_proposal_or_a_span_and_records_where_it_came_from(study):
    store, uid = study.store, _uid(study.store, "ann")
    pid = study.passage_ids[1]
    p1, p2 = _proposals(store, pid)
    a, b = _answer(store, pid)
    # a pending proposal adjusted: the reviewer's span, from that proposal
    st = decide(
        store, uid, pid, "adjust", version=0, proposal_id=p1.id, new_start=a, new_end=p1.end + 5
    )
    assert st.spans == [ReviewSpan(p1.code, a, p1.end + 5, "adjusted", p1.id)]
    assert st.proposal_status == {p1.id: "adjusted"}
    # an accepted proposal's span adjusted: origin becomes "adjusted"
    decide(store, uid, pid, "accept", version=1, proposal_id=p2.id)
    st = decide(
        store, uid, pid, "adjust", version=2, code=p2.code, start=p2.start, end=p2.end,
        new_start=p2.start + 4, new_end=p2.end,
    )  # fmt: skip
    assert _span(st, p2.code) == ReviewSpan(p2.code, p2.start + 4, p2.end, "adjusted", p2.id)
    # the reviewer's own span adjusted stays "added"; whitespace at the edges is trimmed
    decide(store, uid, pid, "add", version=3, code="01.use.frequency.daily", start=a, end=a + 5)
    text = store.passage(pid).text
    offset = store.passage(pid).char_start
    space = text.index(" ", a - offset + 3) + offset  # a space inside the answer
    st = decide(
        store, uid, pid, "adjust", version=4, code="01.use.frequency.daily", start=a, end=a + 5,
        new_start=space, new_end=b,
    )  # fmt: skip
    assert _span(st, "01.use.frequency.daily") == ReviewSpan(
        "01.use.frequency.daily", space + 1, b, "added", None
    )
    with store.session() as s:
        row = s.scalars(select(DecisionRow).order_by(DecisionRow.id.desc())).first()
    assert (row.span_start, row.span_end, row.new_start, row.new_end) == (a, a + 5, space + 1, b)


def test_a_span_lies_inside_one_codable_stretch(study):
    store, uid = study.store, _uid(study.store, "ann")
    pid = study.passage_ids[0]
    unit = store.passage(pid)
    question, answer = unit.pieces
    code = "01.use.frequency.daily"
    cases = [
        (question.char_start, question.char_end, "lies in context"),
        (question.char_start + 5, answer.char_start + 10, "runs into context"),
        (answer.char_start + 10, answer.char_start + 10, "is empty"),
        (answer.char_end - 3, answer.char_end + 40, "outside this unit"),
        (question.char_end, answer.char_start, "only whitespace"),
    ]
    for start, end, reason in cases:
        with pytest.raises(DecisionError, match=reason):
            decide(store, uid, pid, "add", version=0, code=code, start=start, end=end)
    with pytest.raises(DecisionError, match="both start and end"):
        decide(store, uid, pid, "add", version=0, code=code, start=answer.char_start)
    assert _rows(store) == []
    # a code without a range covers all of the unit's codable text (what a passage code was)
    st = decide(store, uid, pid, "add", version=0, code=code)
    assert st.spans == [ReviewSpan(code, answer.char_start, answer.char_end, "added", None)]


def test_a_span_may_not_cross_from_one_answer_into_the_next(settings, store):
    from qualflow.review.sample import build_sample_study

    study = build_sample_study(store, transcripts=1, answers_per_transcript=4, chunk_words=70)
    unit = store.passage(study.passage_ids[0])
    first, second = unit.codable_pieces()  # two answers, a question between them
    uid = auth.add_user(store, "ann", "a long password 1").id
    with pytest.raises(DecisionError, match="inside one participant turn"):
        decide(
            store, uid, unit.id, "add", version=0, code="01.use.frequency.daily",
            start=first.char_end - 10, end=second.char_start + 10,
        )  # fmt: skip
    st = decide(store, uid, unit.id, "add", version=0, code="01.use.frequency.daily")
    assert [(sp.start, sp.end) for sp in st.spans] == [
        (first.char_start, first.char_end),
        (second.char_start, second.char_end),
    ]


def test_done_never_turns_undecided_proposals_into_no_code(study):
    store, uid = study.store, _uid(study.store, "ann")
    pid = study.passage_ids[1]
    p1, p2 = _proposals(store, pid)
    with pytest.raises(DecisionError, match="2 machine proposals are still undecided"):
        decide(store, uid, pid, "done", version=0)
    decide(store, uid, pid, "accept", version=0, proposal_id=p1.id)
    with pytest.raises(DecisionError, match="1 machine proposal is still undecided"):
        decide(store, uid, pid, "done", version=1)
    decide(store, uid, pid, "reject", version=1, proposal_id=p2.id)
    st = decide(store, uid, pid, "done", version=2)
    assert st.done and st.codes == [p1.code] and not st.no_code
    # rejecting everything is not "no code applies" either: that is said explicitly
    other = study.passage_ids[0]
    (p,) = _proposals(store, other)
    decide(store, uid, other, "reject", version=0, proposal_id=p.id)
    with pytest.raises(DecisionError, match="nothing is coded here yet"):
        decide(store, uid, other, "done", version=1)
    decide(store, uid, other, "no_code", version=1)
    assert decide(store, uid, other, "done", version=2).no_code
    # "no code applies" is a judgement on the whole unit, pending proposals included
    third = study.passage_ids[2]
    decide(store, uid, third, "no_code", version=0)
    assert decide(store, uid, third, "done", version=1).done


def test_a_blind_coder_is_not_held_up_by_proposals_they_cannot_see(study):
    store, pid = study.store, study.passage_ids[1]
    with store.session() as s:
        s.add(
            AssignmentRow(
                passage_id=pid, user_id=_uid(store, "ann"), double_coded=True,
                blind_to_machine=True,
            )
        )  # fmt: skip
    uid = _uid(store, "ann")
    with pytest.raises(DecisionError, match="nothing is coded here yet"):
        decide(store, uid, pid, "done", version=0)
    decide(store, uid, pid, "add", version=0, code="01.use.frequency.daily")
    assert decide(store, uid, pid, "done", version=1).done


def test_flag_memo_done_and_their_undo(study):
    store, pid, uid = study.store, study.passage_ids[0], _uid(study.store, "ann")
    decide(store, uid, pid, "flag", version=0)
    decide(store, uid, pid, "memo", version=1, memo="  ask the team about this  ")
    decide(store, uid, pid, "no_code", version=2)
    st = decide(store, uid, pid, "done", version=3)
    assert st.flagged and st.done and st.memo == "ask the team about this"
    st = decide(store, uid, pid, "undo", version=4)
    assert not st.done and st.flagged
    st = decide(store, uid, pid, "undo", version=5)  # the no_code
    st = decide(store, uid, pid, "undo", version=6)
    assert st.memo is None and st.flagged
    st = decide(store, uid, pid, "unflag", version=7)
    assert not st.flagged


def test_an_empty_memo_clears_the_memo(study):
    store, pid, uid = study.store, study.passage_ids[0], _uid(study.store, "ann")
    decide(store, uid, pid, "memo", version=0, memo="first thoughts")
    assert decide(store, uid, pid, "memo", version=1, memo="   ").memo is None
    decide(store, uid, pid, "memo", version=2, memo="again")
    assert decide(store, uid, pid, "memo", version=3).memo is None  # no text at all


def test_undo_appends_and_walks_back_without_rewriting_the_log(study):
    store, pid, uid = study.store, study.passage_ids[1], _uid(study.store, "ann")
    p1, p2 = _proposals(store, pid)
    decide(store, uid, pid, "accept", version=0, proposal_id=p1.id)
    decide(store, uid, pid, "accept", version=1, proposal_id=p2.id)
    before_undo = _rows(store)
    st = decide(store, uid, pid, "undo", version=2)
    assert st.codes == [p1.code] and p2.id not in st.proposal_status
    assert st.spans == [ReviewSpan(p1.code, p1.start, p1.end, "accepted", p1.id)]
    rows = _rows(store)
    assert rows[:2] == before_undo  # earlier rows untouched
    assert rows[2][1] == "undo" and rows[2][5] == before_undo[1][0]
    st = decide(store, uid, pid, "undo", version=3)  # the next undo cancels the accept before
    assert st.codes == [] and st.spans == [] and st.last_effective_id is None
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
    """Eight writers (ann, bob and the admin, all on ann's shared track) race."""
    store, pid, uid = study.store, study.passage_ids[0], _uid(study.store, "ann")
    _assign(store, pid, "ann")
    users = [_uid(store, n) for n in ("ann", "bob", "admin")]
    if start:
        decide(store, uid, pid, "flag", version=0)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def act(i: int) -> None:
        barrier.wait()
        try:
            decide(store, users[i % 3], pid, "memo", version=start, memo=f"memo {i}")
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


def test_double_coders_have_separate_blind_tracks(study):
    store, pid = study.store, study.passage_ids[0]
    _assign(store, pid, "ann", "bob", double=True)
    ann, bob = _uid(store, "ann"), _uid(store, "bob")
    (p,) = _proposals(store, pid)
    decide(store, ann, pid, "accept", version=0, proposal_id=p.id)
    st = decide(store, bob, pid, "reject", version=0, proposal_id=p.id)  # no conflict
    assert st.codes == [] and st.user_id == bob
    assert decisions.state(store, ann, pid).codes == [p.code]
    assert decisions.tracks(store, pid) == [ann, bob]


def test_everybody_else_shares_one_track_and_a_stale_version_names_who_changed_it(study):
    store, pid = study.store, study.passage_ids[0]
    _assign(store, pid, "ann")
    _assign(store, pid, "bob")  # a second, non-double assignment shares ann's coding
    ann, bob, admin = (_uid(store, n) for n in ("ann", "bob", "admin"))
    (p,) = _proposals(store, pid)
    decide(store, ann, pid, "accept", version=0, proposal_id=p.id)
    for who in (bob, admin):
        with pytest.raises(Conflict) as exc:
            decide(store, who, pid, "reject", version=0, proposal_id=p.id)
        assert exc.value.by == ["ann"] and (exc.value.seen, exc.value.current) == (0, 1)
        assert "changed by ann" in str(exc.value) and "not saved" in str(exc.value)
    with pytest.raises(Conflict) as exc:  # the same user in another window
        decide(store, ann, pid, "flag", version=0)
    assert exc.value.by == ["you (in another window)"]
    assert decisions.state(store, ann, pid).codes == [p.code]  # nothing overwritten
    st = decide(store, admin, pid, "reject", version=1, proposal_id=p.id)  # adjudicates
    assert st.user_id == ann and st.codes == [] and st.version == 2
    assert decisions.state(store, bob, pid) == st == decisions.state(store, admin, pid)
    with store.session() as s:  # who acted stays in the log; the track is ann's
        rows = s.execute(
            select(DecisionRow.user_id, DecisionRow.track_user_id).order_by(DecisionRow.id)
        ).all()
        cached = s.execute(select(ReviewStateRow.user_id, ReviewStateRow.version)).all()
    assert rows == [(ann, ann), (admin, ann)]
    assert cached == [(ann, 2)]
    assert decisions.tracks(store, pid) == [ann]


def test_an_admin_starts_the_shared_track_of_an_unassigned_passage(study):
    store, pid = study.store, study.passage_ids[0]
    admin, ann, bob = (_uid(store, n) for n in ("admin", "ann", "bob"))
    assert decisions.track_owner(store, admin, pid) == admin
    decide(store, admin, pid, "flag", version=0)
    with pytest.raises(Conflict):  # anybody else acting on it joins the admin's track
        decide(store, ann, pid, "no_code", version=0)
    assert decisions.track_owner(store, ann, pid) == admin
    _assign(store, pid, "bob", double=True)  # a blind reviewer still codes on their own
    assert decisions.track_owner(store, bob, pid) == bob
    assert decide(store, bob, pid, "no_code", version=0).version == 1


def test_choose_track_rule():
    choose = decisions.choose_track
    assert choose(7, []) == 7  # unassigned, nothing started: the actor starts it
    assert choose(7, [], [(5, 3), (9, 4)]) == 3  # the first started track
    assert choose(7, [(1, 2, False)]) == 2  # the primary assignee's
    assert choose(7, [(4, 2, False), (3, 5, False)], [(1, 9)]) == 5  # lowest assignment
    assert choose(2, [(1, 2, True), (2, 5, True)]) == 2  # double coders: their own
    assert choose(5, [(1, 2, True), (2, 5, True)]) == 5
    assert choose(7, [(1, 2, True), (2, 5, True)], [(1, 2), (3, 5), (4, 8)]) == 8
    assert choose(7, [(1, 2, True), (2, 5, True)], [(1, 2)]) == 7  # never a blind track
    assert choose(2, [(1, 2, True), (2, 3, False)]) == 2
    assert choose(7, [(1, 2, True), (2, 3, False)]) == 3


def test_bad_decisions_are_refused_with_the_reason(study):
    store, uid = study.store, _uid(study.store, "ann")
    pid, other = study.passage_ids[0], study.passage_ids[1]
    foreign = _proposals(store, other)[0].id
    with pytest.raises(DecisionError, match="not a valid proposal of this unit"):
        decide(store, uid, pid, "accept", version=0, proposal_id=foreign)
    with pytest.raises(DecisionError, match="not in codebook 'benchmark-practices'"):
        decide(store, uid, pid, "add", version=0, code="99.made.up")
    with pytest.raises(DecisionError, match="not in this unit's coding"):
        decide(store, uid, pid, "remove", version=0, code="01.use.frequency.daily")
    with pytest.raises(DecisionError, match="must be one of"):
        decide(store, uid, pid, "delete", version=0)
    with pytest.raises(DecisionError, match="proposal_id missing"):
        decide(store, uid, pid, "accept", version=0)
    with pytest.raises(DecisionError, match="no unit 'nope'"):
        decide(store, uid, "nope", "flag", version=0)
    with pytest.raises(DecisionError, match="no user with id 999"):
        decide(store, 999, pid, "flag", version=0)
    assert _rows(store) == []


def test_review_states_cache_is_rebuilt_from_the_log(study):
    store, uid = study.store, _uid(study.store, "ann")
    pid = study.passage_ids[1]
    p1, p2 = _proposals(store, pid)
    decide(store, uid, pid, "accept", version=0, proposal_id=p1.id)
    decide(store, uid, pid, "reject", version=1, proposal_id=p2.id)
    decide(store, uid, pid, "flag", version=2)
    decide(store, uid, pid, "memo", version=3, memo="see p2")
    decide(store, uid, pid, "done", version=4)
    decide(store, uid, study.passage_ids[2], "no_code", version=0)
    written = _cache(store)
    with store.session() as s:
        for r in s.scalars(select(ReviewStateRow)):
            r.codes, r.done, r.version, r.spans, r.memo = ["garbage"], False, 99, [], "x"
    assert decisions.rebuild_states(store) == 2
    assert _cache(store) == written
    span = (p1.code, p1.start, p1.end, "accepted", p1.id)
    status = ((str(p1.id), "accepted"), (str(p2.id), "rejected"))
    assert (5, (p1.code,), True, True, (span,), "see p2", False, status) in [w[2:] for w in written]
    assert (1, (), False, False, (), None, True, ()) in [w[2:] for w in written]


def test_reviewer_codings_hold_done_passages_only(study):
    store = study.store
    ann, bob = _uid(store, "ann"), _uid(store, "bob")
    a, b, c = study.passage_ids[:3]
    (pa,) = _proposals(store, a)
    _assign(store, a, "ann", "bob", double=True)
    decide(store, ann, a, "accept", version=0, proposal_id=pa.id)
    decide(store, ann, a, "done", version=1)
    decide(store, ann, b, "no_code", version=0)
    decide(store, ann, b, "done", version=1)
    decide(store, ann, c, "add", version=0, code="01.use.frequency.daily")  # not done
    decide(store, bob, a, "no_code", version=0)
    decide(store, bob, a, "done", version=1)
    decide(store, bob, a, "undo", version=2)  # done undone -> not counted
    codings = decisions.reviewer_codings(store)
    assert codings == {"ann": {a: frozenset({pa.code}), b: frozenset()}}
    wip = decisions.reviewer_codings(store, include_unfinished=True)
    assert wip["ann"][c] == frozenset({"01.use.frequency.daily"})
    assert wip["bob"] == {a: frozenset()}  # bob's "no code applies", still in effect


def test_reviewer_codings_attribute_a_shared_coding_to_its_owner(study):
    store = study.store
    ann, bob, admin = (_uid(store, n) for n in ("ann", "bob", "admin"))
    shared, double = study.passage_ids[:2]
    _assign(store, shared, "ann")
    _assign(store, double, "ann", "bob", double=True)
    (p,) = _proposals(store, shared)
    decide(store, ann, shared, "reject", version=0, proposal_id=p.id)
    decide(store, ann, shared, "add", version=1, code="01.use.frequency.daily")
    decide(store, admin, shared, "done", version=2)  # the admin finishes ann's coding
    decide(store, ann, double, "no_code", version=0)
    decide(store, ann, double, "done", version=1)
    for i, q in enumerate(_proposals(store, double)):
        decide(store, bob, double, "reject", version=i, proposal_id=q.id)
    decide(store, bob, double, "add", version=2, code="01.use.frequency.weekly")
    decide(store, bob, double, "done", version=3)
    assert decisions.reviewer_codings(store) == {
        "ann": {shared: frozenset({"01.use.frequency.daily"}), double: frozenset()},
        "bob": {double: frozenset({"01.use.frequency.weekly"})},
    }
    written = _cache(store)
    decisions.rebuild_states(store)
    assert _cache(store) == written


def _cache(store) -> list[tuple]:
    with store.session() as s:
        return sorted(
            (
                r.passage_id, r.user_id, r.version, tuple(r.codes), r.done, r.flagged,
                tuple(tuple(sp.values()) for sp in r.spans or []), r.memo, r.no_code,
                tuple(sorted((r.proposal_status or {}).items())),
            )
            for r in s.scalars(select(ReviewStateRow))
        )  # fmt: skip


def test_migration_backfills_the_track_of_existing_decisions(tmp_path):
    """A store at revision 0001 with decisions in it upgrades: each old row is its
    actor's own track, and the review code reads it."""
    from alembic import command
    from alembic.config import Config

    from qualflow.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(decisions.__file__).parents[1] / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # a bare log row, no passage needed
        conn.exec_driver_sql(
            "INSERT INTO users (id, username, password_hash, role, active, created_at) "
            "VALUES (4, 'old', 'x', 'reviewer', 1, '2026-01-01')"
        )
        conn.exec_driver_sql(
            "INSERT INTO decisions (passage_id, user_id, action, before, after, "
            "state_version, created_at) VALUES ('p1', 4, 'flag', '[]', '[]', 1, '2026-01-01')"
        )
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT user_id, track_user_id FROM decisions").all()
        fks = conn.exec_driver_sql("PRAGMA foreign_key_list(decisions)").all()
    assert rows == [(4, 4)]
    assert any(fk[3] == "track_user_id" and fk[2] == "users" for fk in fks)
    engine.dispose()


def test_the_log_actions_cover_the_domain_models_actions():
    """The domain model's actions are all in the log; the log adds the span actions
    ``adjust`` and ``carry`` (``models.DecisionAction`` is another area's file)."""
    from typing import get_args

    from qualflow.models import DecisionAction

    assert set(get_args(DecisionAction)) <= set(decisions.ACTIONS)
    assert set(decisions.ACTIONS) - set(get_args(DecisionAction)) <= {"adjust", "carry"}


def test_reviewer_span_codings_hold_spans_and_the_codable_text_of_finished_units(study):
    from qualflow.models import Span

    store = study.store
    ann, bob = _uid(store, "ann"), _uid(store, "bob")
    double, single, open_ = study.passage_ids[0], study.passage_ids[2], study.passage_ids[4]
    with store.session() as s:
        for name in ("ann", "bob"):
            s.add(
                AssignmentRow(
                    passage_id=double, user_id=_uid(store, name), double_coded=True,
                    blind_to_machine=True,
                )
            )  # fmt: skip
    a, b = _answer(store, double)
    decide(store, ann, double, "add", version=0, code="01.use.frequency.daily", start=a, end=a + 30)
    decide(store, ann, double, "done", version=1)
    decide(
        store, bob, double, "add", version=0, code="01.use.frequency.weekly", start=a + 10, end=b
    )
    decide(store, bob, double, "done", version=1)
    (p,) = _proposals(store, single)
    decide(store, ann, single, "accept", version=0, proposal_id=p.id)
    decide(store, ann, single, "done", version=1)
    decide(store, ann, open_, "no_code", version=0)  # not finished: outside the scope
    codings = decisions.reviewer_span_codings(store)
    assert sorted(codings) == ["ann", "bob"]
    tid = store.passage(double).transcript_id
    assert codings["ann"].spans == sorted(
        [Span(tid, a, a + 30, "01.use.frequency.daily"), Span(tid, p.start, p.end, p.code)]
    )
    assert codings["ann"].scope == {tid: [_answer(store, double), _answer(store, single)]}
    assert codings["bob"].spans == [Span(tid, a + 10, b, "01.use.frequency.weekly")]
    assert codings["bob"].scope == {tid: [(a, b)]}  # the question before it is not coded
    assert decisions.reviewer_span_codings(store, reviewers=["bob"]).keys() == {"bob"}
    wip = decisions.reviewer_span_codings(store, include_unfinished=True)
    assert _answer(store, open_) in wip["ann"].scope[tid]
