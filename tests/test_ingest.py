"""Ingest into the store: batches go on past bad files; nothing is lost or duplicated."""

import shutil

from sqlalchemy import func, select
from typer.testing import CliRunner

from qualflow.cli import app
from qualflow.db import FailureRow, PassageRow, TranscriptRow
from qualflow.ingest import ingest_paths
from tests.conftest import EXAMPLES, needs_shared


def counts(store):
    with store.session() as s:
        return (
            s.scalar(select(func.count()).select_from(TranscriptRow)),
            s.scalar(select(func.count()).select_from(PassageRow)),
        )


def test_examples_ingest_once_and_reingest_is_a_no_op(store, settings, tmp_path):
    report = ingest_paths(store, [EXAMPLES], settings)
    assert report.count("new") == 6 and not report.errors
    before = counts(store)
    again = ingest_paths(store, [EXAMPLES], settings)
    assert again.count("unchanged") == 6 and again.count("new") == 0
    assert counts(store) == before


def test_bad_files_are_reported_and_the_batch_goes_on(store, settings, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(EXAMPLES / "I-5_otter.txt", inbox)
    (inbox / "empty.txt").write_text("")
    (inbox / "binary.txt").write_bytes(b"\x00\x01\x02\xff" * 50)
    (inbox / "notes.vtt").write_text("this is not webvtt\n")
    report = ingest_paths(store, [inbox, tmp_path / "missing.srt"], settings)
    assert report.count("new") == 1
    reasons = {f.path.rsplit("/", 1)[-1]: f.reason for f in report.errors}
    assert set(reasons) == {"empty.txt", "binary.txt", "notes.vtt", "missing.srt"}
    for name, reason in reasons.items():
        assert name in reason
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(FailureRow)) == 4


def test_changed_file_becomes_a_new_version_and_duplicates_are_refused(store, settings, tmp_path):
    f = tmp_path / "I-3_interview.txt"
    shutil.copy(EXAMPLES / "I-3_interview.txt", f)
    assert ingest_paths(store, [f], settings).count("new") == 1
    f.write_text(f.read_text() + "\nI-3: One more thing about leaderboards.\n")
    assert ingest_paths(store, [f], settings).count("new_version") == 1
    assert len(store.transcripts()) == 1 and len(store.transcripts(current_only=False)) == 2
    copy = tmp_path / "copy-of-interview.txt"
    shutil.copy(f, copy)
    report = ingest_paths(store, [copy], settings)
    assert report.errors and "same content" in report.errors[0].reason


def test_participants_are_matched_by_file_name(store, settings):
    settings.participants_file = EXAMPLES / "participants.tsv"
    ingest_paths(store, [EXAMPLES], settings)
    by_name = {t.name: t.participant_id for t in store.transcripts()}
    assert by_name["I-5_otter"] == "I-5" and by_name["I-12_captions"] == "I-12"
    people = {p.id: p.attributes for p in store.participants()}
    assert "area" in people["I-5"]


def test_every_passage_matches_its_transcript_text(store, settings):
    ingest_paths(store, [EXAMPLES], settings)
    texts = {t.id: t.text for t in store.transcripts()}
    passages = store.passages()
    assert passages
    for p in passages:
        assert texts[p.transcript_id][p.char_start : p.char_end] == p.text


def test_serdif_odt_corpus_ingests_with_offsets_intact(store, settings):
    raw = needs_shared("corpora", "serdif-usability", "raw")
    report = ingest_paths(store, [raw], settings)
    assert report.count("new") == 11 and not report.errors
    texts = {t.id: t.text for t in store.transcripts()}
    passages = store.passages()
    assert len(passages) > 3000
    assert all(texts[p.transcript_id][p.char_start : p.char_end] == p.text for p in passages)


def test_cli_init_ingest_passages_and_codebook_check(tmp_path):
    runner = CliRunner()
    ws = tmp_path / "study"
    result = runner.invoke(app, ["init", str(ws)])
    assert result.exit_code == 0, result.output
    assert (ws / "qualflow.toml").is_file() and (ws / "data" / "qualflow.sqlite3").is_file()
    result = runner.invoke(app, ["ingest", str(EXAMPLES), "-w", str(ws)])
    assert result.exit_code == 0, result.output
    assert "6 new" in result.output
    out = tmp_path / "passages.jsonl"
    result = runner.invoke(app, ["passages", "-w", str(ws), "--format", "jsonl", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 80
    result = runner.invoke(app, ["codebook", "check", "benchmark-practices"])
    assert result.exit_code == 0
    assert "85 codes in 13 top-level categories" in result.output
    assert "01.Use.information.progress" in result.output


def test_cli_refuses_a_folder_that_is_not_a_workspace(tmp_path):
    result = CliRunner().invoke(app, ["ingest", str(EXAMPLES), "-w", str(tmp_path)])
    assert result.exit_code == 1
    assert "not a qualflow workspace" in result.output
