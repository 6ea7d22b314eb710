"""The store on SQLite, and on PostgreSQL when a server is configured."""

import hashlib

import pytest
from sqlalchemy import func, select

from qualflow.db import PassageRow, TranscriptRow
from qualflow.models import CodeProposal, Passage, ProposalSet, Transcript, Turn
from qualflow.store import DuplicateTranscriptError, ProposalKey, Store
from tests.conftest import POSTGRES_URL


def make_transcript(name="I-1_interview", text_a="We check the leaderboard daily.", seed=""):
    text_b = "Interviewer asks. " + seed
    text = f"{text_a}\n\n{text_b}".strip()
    turns = [
        Turn(index=0, speaker="I-1", text=text_a, char_start=0, char_end=len(text_a)),
        Turn(
            index=1,
            speaker="Interviewer",
            text=text_b.strip(),
            char_start=len(text_a) + 2,
            char_end=len(text),
        ),
    ]
    content_hash = hashlib.sha256(text.encode()).hexdigest()
    t = Transcript(
        id=Transcript.make_id(name, content_hash),
        name=name,
        source_path=f"/x/{name}.txt",
        content_hash=content_hash,
        format="text",
        text=text,
        turns=turns,
    )
    passages = [
        Passage(
            id=Passage.make_id(content_hash, "sentence", 0, len(text_a)),
            transcript_id=t.id,
            index=0,
            turn_index=0,
            speaker="I-1",
            char_start=0,
            char_end=len(text_a),
            text=text_a,
        ),
    ]
    return t, passages


def exercise(store: Store) -> None:
    t, ps = make_transcript()
    assert store.save_transcript(t, ps) == "new"
    assert store.save_transcript(t, ps) == "unchanged"
    t2, ps2 = make_transcript(text_a="We check the leaderboard weekly now.")
    assert store.save_transcript(t2, ps2) == "new_version"
    current = store.transcripts()
    assert [x.id for x in current] == [t2.id]
    assert len(store.transcripts(current_only=False)) == 2
    dup, dps = make_transcript(name="other-name")
    with pytest.raises(DuplicateTranscriptError, match="I-1_interview"):
        store.save_transcript(dup, dps)
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(TranscriptRow)) == 2
        assert s.scalar(select(func.count()).select_from(PassageRow)) == 2
    loaded = store.transcript(t2.id)
    assert loaded.turns == t2.turns and loaded.text == t2.text
    ctx = store.contexts(store.passages())[0]
    assert ctx.after[0].speaker == "Interviewer"

    key = ProposalKey("llm", "m", "p1", "cb1")
    ps_ = ProposalSet(
        passage_id=ps2[0].id,
        coder="llm",
        model="m",
        prompt_version="p1",
        codebook_version="cb1",
        proposals=[CodeProposal(code="x", rationale="r", evidence="weekly", confidence=0.7)],
    )
    run = store.start_run(key)
    assert store.save_proposal_set(ps_, run) is True
    assert store.save_proposal_set(ps_, run) is False  # idempotent, no duplicate
    assert store.coded_passage_ids(key) == {ps2[0].id}
    assert store.run_coding(run) == {ps2[0].id: frozenset({"x"})}
    store.finish_run(run, status="completed")

    store.save_gold("g", "alice", {ps2[0].id: frozenset({"a", "b"})})
    store.save_gold("g", "alice", {ps2[0].id: frozenset({"a"})})
    assert store.gold("g") == {"alice": {ps2[0].id: frozenset({"a"})}}


def test_store_on_sqlite(store):
    exercise(store)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@pytest.mark.postgres
def test_store_on_postgres():
    if not POSTGRES_URL:
        pytest.skip("QUALFLOW_TEST_POSTGRES_URL not set (make test starts a local server)")
    from sqlalchemy import text

    from qualflow.db import Base, make_engine

    engine = make_engine(POSTGRES_URL)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("drop table if exists alembic_version"))
    engine.dispose()
    store = Store.open(POSTGRES_URL)
    try:
        exercise(store)
    finally:
        store.close()


def test_migrations_are_idempotent(settings):
    from qualflow.store import open_store

    open_store(settings).close()
    open_store(settings).close()


def test_runs_of_killed_processes_are_marked_interrupted(store):
    import subprocess
    import sys

    from qualflow.db import RunRow

    key = ProposalKey("llm", "m", "p1", "cb1")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = store.start_run(key)
    alive = store.start_run(key)  # this process: still running
    with store.session() as s:
        s.get(RunRow, dead).params = {**s.get(RunRow, dead).params, "pid": int(gone.stdout)}
    store.start_run(key)
    with store.session() as s:
        assert s.get(RunRow, dead).status == "interrupted"
        assert s.get(RunRow, dead).finished_at is not None
        assert s.get(RunRow, alive).status == "running"
