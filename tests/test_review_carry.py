"""An edited transcript re-ingested: the reviewers' spans and finished states, the
assignments and the machine's answers move to the new version's unchanged units; what
changed is counted as needing review again (ingest output and ``qualflow status``), and a
coding run asks only for the changed text."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from qualflow import pipeline
from qualflow.cli import app as cli
from qualflow.db import ProposalSetRow
from qualflow.ingest import ingest_paths
from qualflow.review import auth, decisions, queue
from qualflow.review.sample import sample_codebook
from tests.coders_fixture import ScriptedCoder
from tests.conftest import EXAMPLES

EDIT = ("the question ministers actually ask.", "the question ministers always ask.")


@pytest.fixture
def reviewed(settings, store, tmp_path):
    """I-3 (invented interview) in small chunks, coded, with ann's review under way."""
    settings = settings.model_copy(update={"chunk_words": 40})
    source = tmp_path / "in" / "I-3_interview.txt"
    source.parent.mkdir()
    shutil.copy(EXAMPLES / "I-3_interview.txt", source)
    assert ingest_paths(store, [source], settings).count("new") == 1
    book = sample_codebook()
    first = pipeline.run_coding(store, ScriptedCoder(), book, settings)
    assert first.coded == first.passages > 4
    ann = auth.add_user(store, "ann", "a long password 1")
    queue.assign(store, ["ann"])
    units = [
        store.passage(i.passage_id)
        for i in queue.items(store, ann, queue.Filters(order="transcript"))
    ]
    return settings, store, source, ann, units, book


def _finish(store, uid: int, unit, *, memo: str | None = None) -> None:
    """Accept the first proposal, reject the others, add a span of one's own, done."""
    st = decisions.state(store, uid, unit.id)
    for k, p in enumerate(decisions.unit_proposals(store, unit.id)):
        action = "accept" if k == 0 else "reject"
        st = decisions.decide(store, uid, unit.id, action, version=st.version, proposal_id=p.id)
    piece = unit.codable_pieces()[-1]
    st = decisions.decide(
        store, uid, unit.id, "add", version=st.version, code="06.risks.rewards.risks",
        start=piece.char_start, end=piece.char_start + 8,
    )  # fmt: skip
    if memo:
        st = decisions.decide(store, uid, unit.id, "memo", version=st.version, memo=memo)
    decisions.decide(store, uid, unit.id, "done", version=st.version)


def _edited(source) -> None:
    text = source.read_text()
    assert text.count(EDIT[0]) == 1
    source.write_text(text.replace(*EDIT))


def test_unchanged_units_keep_their_reviews_and_answers(reviewed):
    settings, store, source, ann, units, book = reviewed
    changed = next(u for u in units if EDIT[0] in u.text)
    before = [u for u in units if u.char_start < changed.char_start]
    after = [u for u in units if u.char_start > changed.char_start]
    after.sort(key=lambda u: not decisions.unit_proposals(store, u.id))  # answered first
    assert before and after and decisions.unit_proposals(store, after[0].id)
    _finish(store, ann.id, before[0])
    _finish(store, ann.id, after[0], memo="ask about the safety benchmark")
    _finish(store, ann.id, changed)
    st = decisions.state(store, ann.id, after[-1].id)
    decisions.decide(store, ann.id, after[-1].id, "flag", version=st.version)  # in progress
    old_after = decisions.state(store, ann.id, after[0].id)

    _edited(source)
    report = ingest_paths(store, [source], settings)
    (outcome,) = report.files
    assert outcome.status == "new_version"
    carried = outcome.carried
    assert carried["units_with_work"] == len(units)
    assert carried["units_carried"] == len(units) - 1  # every unit but the edited one
    assert carried["finished_reviews"] == 2 and carried["reviews_in_progress"] == 1
    assert carried["review_again"] == 1 and carried["review_again_units"] == [changed.id]
    assert carried["proposal_sets"] == len(units) - 1
    assert carried["assignments"] == len(units) - 1

    # the new version's units are in ann's queue, the finished ones done, moved by the edit
    mine = queue.items(store, ann, queue.Filters(order="transcript"))
    assert {i.passage_id for i in mine}.isdisjoint(u.id for u in units)
    assert len(mine) == len(units) - 1  # the edited chunk has no answer yet: not in the queue
    assert sum(i.done for i in mine) == 2
    new_after = next(store.passage(i.passage_id) for i in mine if i.done and
                     store.passage(i.passage_id).text == after[0].text)  # fmt: skip
    shift = new_after.char_start - after[0].char_start
    assert shift == len(EDIT[1]) - len(EDIT[0]) != 0
    st = decisions.state(store, ann.id, new_after.id)
    assert st.done and st.carried_from == after[0].id
    assert st.memo == "ask about the safety benchmark"
    assert [(s.code, s.start - shift, s.end - shift, s.origin) for s in st.spans] == [
        (s.code, s.start, s.end, s.origin) for s in old_after.spans
    ]
    new_props = {p.id for p in decisions.unit_proposals(store, new_after.id)}
    assert set(st.proposal_status) == new_props  # every carried proposal still decided
    accepted = [s for s in st.spans if s.origin == "accepted"]
    assert accepted and all(s.proposal_id in new_props for s in accepted)
    # the old version's log is untouched and the reviewer's coding counts once
    assert decisions.state(store, ann.id, after[0].id) == old_after
    codings = decisions.reviewer_span_codings(store)
    tids = set(codings["ann"].scope)
    assert tids == {new_after.transcript_id}

    # a coding run asks only for the changed text, and says what was carried
    coder = ScriptedCoder()
    second = pipeline.run_coding(store, coder, book, settings)
    assert coder.passages_seen and len(coder.passages_seen) == 1
    assert second.coded == 1 and second.carried == len(units) - 1
    assert "of them carried from an earlier transcript version" in pipeline.render_markdown(second)
    with store.session() as s:
        sets = s.scalars(select(ProposalSetRow).where(ProposalSetRow.carried_from.is_not(None)))
        assert {r.carried_from for r in sets} == {u.id for u in units} - {changed.id}


def test_a_new_unit_with_decisions_is_never_overwritten(reviewed):
    settings, store, source, ann, units, _ = reviewed
    _finish(store, ann.id, units[0])
    _edited(source)
    first = ingest_paths(store, [source], settings).files[0].carried
    assert first["finished_reviews"] == 1
    from qualflow.review.carry import carry_over

    transcript = store.transcripts()[0]
    again = carry_over(store, transcript, settings)  # run twice: nothing doubled
    assert again.finished_reviews == 0 and again.proposal_sets == 0 and again.assignments == 0
    new = next(i.passage_id for i in queue.items(store, ann) if i.done)
    assert decisions.state(store, ann.id, new).version == 1


def test_ingest_and_status_say_what_was_carried(settings, store, tmp_path):
    runner = CliRunner()
    ws = settings.workspace
    assert runner.invoke(cli, ["init", str(ws)]).exit_code == 0
    source = tmp_path / "I-3_interview.txt"
    shutil.copy(EXAMPLES / "I-3_interview.txt", source)
    assert runner.invoke(cli, ["ingest", str(source), "-w", str(ws)]).exit_code == 0
    pipeline.run_coding(store, ScriptedCoder(), sample_codebook(), settings)
    ann = auth.add_user(store, "ann", "a long password 1")
    queue.assign(store, ["ann"])
    units = [store.passage(i.passage_id) for i in queue.items(store, ann)]
    for unit in units:
        if EDIT[0] not in unit.text:
            _finish(store, ann.id, unit)
    edited_unit = [u for u in units if EDIT[0] in u.text]
    if edited_unit:
        _finish(store, ann.id, edited_unit[0])
    _edited(source)
    out = runner.invoke(cli, ["ingest", str(source), "-w", str(ws)])
    assert out.exit_code == 0, out.output
    assert "carried over from the previous version, text unchanged" in out.output
    assert "reviewed units changed and need review again" in out.output
    status = runner.invoke(cli, ["status", "-w", str(ws)])
    assert "I-3_interview: carried over from the previous version" in status.output
    assert "need review again" in status.output
