"""The review queue in the database: keyset pages, neighbours and "done, next" from
indexed queries agree with the queue's order; the reviewer's own coding in the queue;
review progress in ``qualflow status``; the admin's and the study's progress agree or
say why not; the codebook search and the codebook a unit is reviewed against."""

from __future__ import annotations

import random
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from qualflow.db import AssignmentRow, ProposalRow
from qualflow.models import Code, Codebook
from qualflow.review import auth, codes, decisions, queue
from qualflow.review.app import create_app
from qualflow.review.sample import build_sample_study
from tests.review_support import csrf_of, login, make_study, version_of


def _uid(store, name: str) -> int:
    return auth.user_by_name(store, name).id


def _finish(store, uid: int, pid: str, *, code: str | None = None) -> None:
    """Decide every proposal (reject), then code or say no code, then done."""
    st = decisions.state(store, uid, pid)
    with store.session() as s:
        ids = list(s.scalars(select(ProposalRow.id).where(ProposalRow.passage_id == pid)))
    blind = queue.assignment_for(store, uid, pid)
    for pid_ in ids if not (blind and blind.blind_to_machine) else []:
        st = decisions.decide(store, uid, pid, "reject", version=st.version, proposal_id=pid_)
    if code:
        st = decisions.decide(store, uid, pid, "add", version=st.version, code=code)
    else:
        st = decisions.decide(store, uid, pid, "no_code", version=st.version)
    decisions.decide(store, uid, pid, "done", version=st.version)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """250 units, three reviewers, some decisions, some flags (built once: the tests
    using it only read)."""
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    settings = load_settings(tmp_path_factory.mktemp("big") / "ws")
    store = open_store(settings)
    make_study(settings, store, transcripts=0)
    build_sample_study(store, transcripts=25, answers_per_transcript=10, seed=3)
    auth.add_user(store, "cleo", "a long password 3")
    queue.assign(store, ["ann", "bob", "cleo"], double_share=0.1, seed=2)
    ann = _uid(store, "ann")
    rng = random.Random(1)
    mine = queue.items(store, auth.user_by_name(store, "ann"))
    for item in rng.sample(mine, 20):
        _finish(store, ann, item.passage_id)
    for item in rng.sample(mine, 6):
        st = decisions.state(store, ann, item.passage_id)
        decisions.decide(store, ann, item.passage_id, "flag", version=st.version)
    yield store
    store.close()


FILTERS = [
    queue.Filters(),
    queue.Filters(order="transcript"),
    queue.Filters(order="random", seed=7),
    queue.Filters(order="random", seed=8, limit=30),
    queue.Filters(show="done"),
    queue.Filters(show="all", code="01.use"),
    queue.Filters(show="flagged", transcript="interview-03"),
    queue.Filters(participant="P4", show="all"),
]


@pytest.mark.parametrize("who", ["ann", "admin"])
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: repr(f.query()))
def test_keyset_pages_walk_the_whole_queue_once_in_order(big, who, filters):
    store = big
    user = auth.user_by_name(store, who)
    everything = queue.items(store, user, filters)  # all states, no sample cut
    keep = {
        "pending": lambda i: not i.done,
        "done": lambda i: i.done,
        "flagged": lambda i: i.flagged,
        "all": lambda i: True,
    }[filters.show]
    expected = [i.passage_id for i in everything if keep(i)]
    if filters.limit:
        sample = {i.passage_id for i in everything[: filters.limit]}
        expected = [p for p in expected if p in sample]
    seen: list[str] = []
    after = None
    while True:
        page = queue.rows(store, user, filters, after=after, size=17)
        seen += [i.passage_id for i in page.rows]
        assert page.shown == len(expected)
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == expected


def test_neighbours_and_done_next_follow_the_queue_order(big):
    store = big
    user = auth.user_by_name(store, "ann")
    for filters in (queue.Filters(), queue.Filters(order="random", seed=3, limit=40)):
        order = queue.items(store, user, filters)
        walk = order[: filters.limit] if filters.limit else order
        ids = [i.passage_id for i in walk]
        for k in (0, 1, len(ids) // 2, len(ids) - 1):
            prev, nxt = queue.neighbours(store, user, filters, ids[k])
            assert prev == (ids[k - 1] if k > 0 else None)
            assert nxt == (ids[k + 1] if k + 1 < len(ids) else None)
            after = [i for i in walk[k + 1 :] + walk[:k] if not i.done]
            assert queue.next_pending(store, user, filters, ids[k]) == (
                after[0].passage_id if after else None
            )
        progress = queue.progress(store, user, filters)
        assert (progress.done, progress.total) == (sum(i.done for i in walk), len(walk))


def test_the_queue_follows_new_runs_assignments_and_transcript_versions(settings, store):
    study = make_study(settings, store)
    admin = auth.user_by_name(store, "admin")
    assert queue.progress(store, admin).total == 10
    ann = auth.user_by_name(store, "ann")
    assert queue.progress(store, ann).total == 0
    with store.session() as s:  # an assignment written by any means is seen
        s.add(AssignmentRow(passage_id=study.passage_ids[0], user_id=ann.id))
    assert [i.passage_id for i in queue.rows(store, ann).rows] == [study.passage_ids[0]]
    # a new run on edited transcripts: interview-01 and -02 get new versions (their old
    # units leave the queue), interview-03 is new; the new run's units join
    build_sample_study(store, transcripts=3, answers_per_transcript=2, seed=9)
    assert queue.progress(store, admin).total == 6
    assert queue.rows(store, ann).rows == []
    names = {i.transcript for i in queue.items(store, admin)}
    assert names == {"interview-01", "interview-02", "interview-03"}


def test_the_queue_shows_the_reviewers_own_coding_also_when_done(settings, store):
    study = make_study(settings, store)
    queue.assign(store, ["ann", "bob"], strategy="round_robin")
    app = create_app(settings, store)
    c = TestClient(app)
    login(c, "ann")
    ann = _uid(store, "ann")
    coded, empty = [i.passage_id for i in queue.items(store, auth.user_by_name(store, "ann"))][:2]
    _finish(store, ann, coded, code="01.use.frequency.weekly")
    _finish(store, ann, empty)
    st = decisions.state(store, ann, study.passage_ids[4])
    decisions.decide(store, ann, study.passage_ids[4], "no_code", version=st.version)

    def row(html: str, pid: str) -> str:
        return html.split(f'<a href="/passages/{pid}')[1].split("</tr>")[0]

    done = c.get("/queue?show=done").text
    mine = row(done, coded).split('class="mine"')[1]
    assert "01.use.frequency.weekly" in mine and "mine-chip" in mine
    assert "no code applies" in row(done, empty).split('class="mine"')[1]
    pending = c.get("/queue").text
    assert "no code applies" in row(pending, study.passage_ids[4])
    assert coded not in pending  # done: not in the to-do list


def test_progress_of_admin_and_study_agree_or_say_why(settings, store):
    study = make_study(settings, store)
    ids = study.passage_ids
    ann, bob, admin = (_uid(store, n) for n in ("ann", "bob", "admin"))
    with store.session() as s:
        for name in ("ann", "bob"):  # one unit double-coded, blind to each other
            s.add(AssignmentRow(passage_id=ids[0], user_id=_uid(store, name), double_coded=True))
        s.add(AssignmentRow(passage_id=ids[1], user_id=ann))
    _finish(store, ann, ids[0])
    _finish(store, bob, ids[0], code="01.use.frequency.daily")
    _finish(store, ann, ids[1])
    _finish(store, admin, ids[2])  # unassigned, finished by the admin
    rec = queue.reconcile(store)
    assert (rec.study.done, rec.study.total) == (3, 10)
    loads = {load.username: load.done for load in queue.reviewer_loads(store)}
    assert loads == {"admin": 1, "ann": 2, "bob": 1, "carl": 0}
    assert rec.tracks_done == sum(loads.values()) == 4 and rec.extra_blind == 1
    text = " ".join(rec.lines())
    assert "3 of 10 queue units are done" in text
    assert "counts 4 finished codings" in text and "1 of them are second blind codings" in text
    assert "8 queue units are assigned to nobody (1 of them finished by an admin)" in text
    app = create_app(settings, store)
    c = TestClient(app)
    login(c, "admin")
    page = c.get("/admin").text
    assert 'id="study-progress">3 / 10' in page
    assert "second blind codings of double-coded units" in page.split('id="reconcile"')[1]


def test_qualflow_status_reports_review_progress(settings, store):
    from typer.testing import CliRunner

    from qualflow.cli import app as cli

    study = make_study(settings, store)
    queue.assign(store, ["ann", "bob"], strategy="round_robin", double_share=0.2, seed=1)
    ann = _uid(store, "ann")
    mine = [i.passage_id for i in queue.items(store, auth.user_by_name(store, "ann"))]
    _finish(store, ann, mine[0])
    made = CliRunner().invoke(cli, ["init", str(settings.workspace)])
    assert made.exit_code == 0, made.output
    result = CliRunner().invoke(cli, ["status", "-w", str(settings.workspace)])
    assert result.exit_code == 0, result.output
    assert "review:      1 / 10 queue units done (10%)" in result.output
    assert re.search(r"ann: 1 done of \d+ assigned, \d+ double-coded", result.output)
    assert len(study.passage_ids) == 10


def test_codebook_for_prefers_the_units_codebook_then_the_active_one(settings, store):
    study = make_study(settings, store)
    sample = codes.codebook_for(store, study.passage_ids[0])
    assert sample is not None and sample.name == "benchmark-practices"
    older = Codebook(name="older", codes=[Code(title="a.b", description="first")])
    newer = Codebook(name="newer", codes=[Code(title="c.d", description="second")])
    store.save_codebook(older)
    store.save_codebook(newer)
    assert codes.codebook_for(store, None).name in {"newer", "benchmark-practices"}
    store.set_active_codebook(older)
    assert codes.codebook_for(store, None).name == "older"  # active before newest
    assert codes.codebook_for(store, study.passage_ids[0]).name == "benchmark-practices"


def test_codebook_search_ranks_titles_definitions_and_examples():
    book = Codebook(
        name="t",
        codes=[
            Code(title="01.scores.noise", description="Scores vary between runs"),
            Code(
                title="02.trust.ranking",
                description="How people read a ranking",
                examples=["I never trust the leaderboard after one noisy run"],
            ),
            Code(title="03.reading.leaderboards", description="Reading leaderboards"),
            Code(title="04.other", description="Anything else", inclusion="noise in data"),
        ],
    )
    titles = [h.code.title for h in codes.rank(book, "noise")]
    assert titles[0] == "01.scores.noise"  # a title match first
    assert titles[1:] == ["04.other", "02.trust.ranking"]  # criteria, then examples
    hits = codes.rank(book, "leaderboard")
    assert [h.code.title for h in hits] == ["03.reading.leaderboards", "02.trust.ranking"]
    assert hits[1].matched == ("examples",)
    assert codes.rank(book, "zzz") == []  # the page says "no match"
    by_text = codes.rank(book, "ranking", examples={"04.other": ["a ranking of models"]})
    assert [h.code.title for h in by_text] == ["02.trust.ranking", "04.other"]
    assert [h.code.title for h in codes.rank(book, "leader noisy")] == ["02.trust.ranking"]


def test_code_search_uses_what_people_coded_in_the_workspace(settings, store):
    study = make_study(settings, store)
    queue.assign(store, ["ann"], strategy="round_robin")
    ann = _uid(store, "ann")
    pid = study.passage_ids[0]  # "Honestly, I check the leaderboards pretty much every ..."
    unit = store.passage(pid)
    (piece,) = unit.codable_pieces()
    text = unit.text[piece.char_start - unit.char_start :]
    end = piece.char_start + text.index(".") + 1
    decisions.decide(
        store, ann, pid, "add", version=0, code="01.use.information.compare",
        start=piece.char_start, end=end,
    )  # fmt: skip
    codes._examples.clear()
    app = create_app(settings, store)
    c = TestClient(app)
    login(c, "ann")
    found = c.get(f"/codes?q=leaderboard&passage={pid}", headers={"Accept": "application/json"})
    assert [h["title"] for h in found.json()] == ["01.use.information.compare"]
    assert found.json()[0]["matched"] == ["examples"]
    assert c.get("/codes?q=zzzz-nothing").json() == []


def test_done_next_with_undecided_proposals_is_refused_and_offers_skip(settings, store):
    make_study(settings, store)
    queue.assign(store, ["ann", "bob"], strategy="round_robin")
    app = create_app(settings, store)
    c = TestClient(app)
    login(c, "ann")
    pid = next(i.passage_id for i in queue.items(store, auth.user_by_name(store, "ann")))
    page = c.get(f"/passages/{pid}").text
    assert 'id="done-next" aria-keyshortcuts="n" disabled' in page
    assert "still undecided" in page.split('id="done-blocked"')[1] and 'id="next-link"' in page
    r = c.post(
        f"/passages/{pid}/decide",
        data={"csrf": csrf_of(page), "version": str(version_of(page)), "action": "done",
              "go": "next"},
    )  # fmt: skip
    assert r.status_code == 400 and "still undecided" in r.text
    st = decisions.state(store, _uid(store, "ann"), pid)
    assert st.version == 0 and not st.done and not st.no_code  # nothing recorded


def test_an_empty_memo_box_clears_the_memo(settings, store):
    make_study(settings, store)
    queue.assign(store, ["ann", "bob"], strategy="round_robin")
    app = create_app(settings, store)
    c = TestClient(app)
    login(c, "ann")
    pid = next(i.passage_id for i in queue.items(store, auth.user_by_name(store, "ann")))
    for text in ("a first thought", ""):
        page = c.get(f"/passages/{pid}").text
        r = c.post(
            f"/passages/{pid}/decide",
            data={"csrf": csrf_of(page), "version": str(version_of(page)), "action": "memo",
                  "memo": text},
        )  # fmt: skip
        assert r.status_code == 200
    st = decisions.state(store, _uid(store, "ann"), pid)
    assert st.memo is None and st.version == 2
