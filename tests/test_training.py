"""Training made explicit: named sources, saved by name, recorded on every run.

A small invented study (six participants talking about weather, food and sport, each
answer after an interviewer question) is written to a real store; the learned coder is
really fitted on MiniLM embeddings, nothing is mocked.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from qualflow import pipeline
from qualflow.coders.factory import CoderError, needs_index, open_coder, run_provenance
from qualflow.db import RunRow
from qualflow.models import Code, Codebook, Transcript, Turn
from qualflow.segment import segment
from qualflow.training import (
    TrainingError,
    TrainingSources,
    calibrate_similarity,
    decision_labels,
    load_trained,
    train_learned,
    training_labels,
)
from tests.test_baseline_coders import TOPICS

PARTICIPANTS = [f"P{i}" for i in range(1, 7)]
PROMPT = "Could you tell me more about that, please?"


def codebook() -> Codebook:
    return Codebook(
        name="topics",
        codes=[
            Code(title="weather", description="Talk about the weather: rain, sun, snow, heat"),
            Code(title="food", description="Talk about food, cooking, meals and eating"),
            Code(title="sport", description="Talk about sport, games, matches and training"),
            Code(title="prompting", description="The interviewer prompts for more."),
        ],
    )


def make_study(store, *, code_interviewer: bool = False, names=PARTICIPANTS) -> None:
    """One transcript per participant: interviewer prompt, then answers on each topic.
    Gold set 'dev' codes every passage, the interviewer's prompts as 'prompting'."""
    gold = {}
    for n, who in enumerate(names):
        turns, parts, pos = [], [], 0
        for texts in TOPICS.values():
            answer = " ".join(texts[(n * 2 + k) % len(texts)] for k in range(2))
            for speaker, text in (("Interviewer", PROMPT), (who, answer)):
                turns.append(
                    Turn(
                        index=len(turns),
                        speaker=speaker,
                        text=text,
                        char_start=pos,
                        char_end=pos + len(text),
                    )
                )
                parts.append(text)
                pos += len(text) + 2
        text = "\n\n".join(parts)
        digest = f"{n:02d}" * 32
        transcript = Transcript(
            id=Transcript.make_id(f"{who}_interview", digest),
            name=f"{who}_interview",
            source_path=f"{who}.txt",
            content_hash=digest,
            format="txt",
            text=text,
            turns=turns,
        )
        passages = segment(transcript, code_interviewer=code_interviewer)
        store.save_transcript(transcript, passages)
        for p in passages:
            if p.speaker == "Interviewer":
                gold[p.id] = frozenset({"prompting"})
            else:
                gold[p.id] = frozenset(t for t, xs in TOPICS.items() if p.text in xs)
    store.save_gold("dev", "ann", gold)


def _cli(*args: str):
    from typer.testing import CliRunner

    from qualflow.cli import app

    return CliRunner().invoke(app, list(args))


def _init(tmp_path):
    ws = tmp_path / "ws"
    assert _cli("init", str(ws)).exit_code == 0
    return ws


def _runs(store) -> list[RunRow]:
    with store.session() as s:
        rows = s.scalars(select(RunRow).order_by(RunRow.id)).all()
        for r in rows:
            s.expunge(r)
        return rows


# ----------------------------------------------------------------------------- nothing implicit


def test_code_learned_without_a_trained_coder_says_how_to_train_one(tmp_path):
    ws = _init(tmp_path)
    result = _cli("code", "-w", str(ws), "--coder", "learned")
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "no learned coder is trained" in out and "qualflow train learned --gold SET" in out
    assert "--coder learned:NAME" in out


def test_gold_in_the_store_trains_nothing_implicitly(store, settings):
    make_study(store)
    opening = open_coder("learned", settings, store, codebook=codebook())
    with pytest.raises(CoderError, match=r"no learned coder is trained.*gold sets here: dev"):
        opening.__enter__()
    assert not (settings.data_dir / "models").exists()


# ----------------------------------------------------------------------------- train, save, code


def test_train_by_name_code_by_name_and_the_run_records_what_it_learned_from(store, settings):
    make_study(store)
    sources = TrainingSources(gold=["dev"], participants=["P1", "P2", "P3", "P4"])
    trained = train_learned(store, settings, codebook(), sources, "split")
    p = trained.provenance
    assert p["model"] == "learned:split" and p["sources"] == ["gold:dev"]
    assert p["transcripts"] == [f"P{i}_interview" for i in range(1, 5)]
    assert p["units"] == 4 * 6  # six participant sentences each; interviewer turns left out
    assert len(p["label_hash"]) == 12 and p["filter"] == "participants=P1,P2,P3,P4"
    assert "12 coded passages that are not codable" in p["note"]
    assert trained.path.is_file() and trained.path.with_suffix(".json").is_file()

    with open_coder("learned:split", settings, store, codebook=codebook()) as coder:
        assert coder.training == p and coder.model == trained.coder.model
        test = [t.id for t in store.transcripts() if t.name[:2] in ("P5", "P6")]
        summary = pipeline.run_coding(store, coder, codebook(), settings, transcript_ids=test)
    (run,) = _runs(store)
    assert run.id == summary.run_id and run.params["training"] == p
    assert "few_shot" not in run.params
    coded = _sentence_coding(store, run.id, test)
    right = sum(
        1
        for pid, codes in coded.items()
        if codes == frozenset(t for t, xs in TOPICS.items() if store.passage(pid).text in xs)
    )
    assert len(coded) == 12 and right >= 9  # held-out participants, really learned


def _sentence_coding(store, run_id: int, transcript_ids: list[str]) -> dict:
    """The run's spans on the codable sentences of the given transcripts."""
    from qualflow.highlights import Highlight, map_highlights

    spans = store.span_coding("learned", run_id=run_id).spans
    sentences = [
        p for tid in transcript_ids for p in store.passages(transcript_id=tid) if p.codable
    ]
    return map_highlights(
        sentences,
        [
            Highlight(
                transcript_id=s.transcript_id, char_start=s.start, char_end=s.end, code=s.code
            )
            for s in spans
        ],
    )


def test_interviewer_turns_never_train_a_coder_that_does_not_code_them(store, settings):
    make_study(store)
    labels = training_labels(store, codebook(), TrainingSources(gold=["dev"]))
    assert labels.not_codable == 18 and labels.units == 36
    assert not any("prompting" in c for c in labels.labels.values())
    trained = train_learned(store, settings, codebook(), TrainingSources(gold=["dev"]), "x")
    assert "prompting" not in trained.coder.codes


def test_a_study_that_codes_interviewer_speech_trains_on_it(store, settings):
    make_study(store, code_interviewer=True)
    labels = training_labels(store, codebook(), TrainingSources(gold=["dev"]))
    assert labels.not_codable == 0 and labels.units == 54
    trained = train_learned(store, settings, codebook(), TrainingSources(gold=["dev"]), "all")
    assert "prompting" in trained.coder.codes


def test_retraining_reuses_unchanged_labels_and_refits_changed_ones(store, settings):
    make_study(store)
    sources = TrainingSources(gold=["dev"])
    first = train_learned(store, settings, codebook(), sources, "dev")
    again = train_learned(store, settings, codebook(), sources, "dev")
    assert again.reused and again.coder.model == first.coder.model
    (pid, _), *_ = [(k, v) for k, v in store.gold("dev")["ann"].items() if "food" in v]
    store.save_gold("dev", "ann", {pid: frozenset({"sport"})})
    changed = train_learned(store, settings, codebook(), sources, "dev")
    assert not changed.reused and changed.coder.model != first.coder.model
    assert changed.provenance["label_hash"] != first.provenance["label_hash"]
    assert load_trained(settings, "learned", "dev").coder.model == changed.coder.model


def test_clear_errors_before_any_embedding_work(store, settings):
    make_study(store)
    other = Codebook(name="other", codes=[Code(title="cats", description="About cats.")])
    with pytest.raises(TrainingError, match=r"shares no code with codebook 'other'.*weather"):
        training_labels(store, other, TrainingSources(gold=["dev"]))
    with pytest.raises(TrainingError, match=r"no gold set 'nope'.*gold sets: dev"):
        training_labels(store, codebook(), TrainingSources(gold=["nope"]))
    with pytest.raises(TrainingError, match="no transcript for P9"):
        training_labels(store, codebook(), TrainingSources(gold=["dev"], participants=["P9"]))
    with pytest.raises(TrainingError, match="name what to learn from"):
        training_labels(store, codebook(), TrainingSources())
    with pytest.raises(TrainingError, match="coder name"):
        train_learned(store, settings, codebook(), TrainingSources(gold=["dev"]), "../x")


def test_cli_train_then_code_by_name(tmp_path):
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    ws = _init(tmp_path)
    settings = load_settings(ws)
    store = open_store(settings)
    make_study(store)
    store.close()
    book = tmp_path / "book.yaml"
    import yaml

    codes = [{"title": c.title, "description": c.description} for c in codebook().codes]
    book.write_text(yaml.safe_dump({"name": "topics", "codes": codes}))
    trained = _cli("train", "learned", "--gold", "dev", "--participants", "P1,P2,P3,P4",
                   "--name", "first4", "--codebook", str(book), "-w", str(ws))  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "learned:first4 trained on 24 passages of 4 transcripts from gold:dev" in trained.output
    listed = _cli("train", "list", "-w", str(ws))
    assert "learned:first4" in listed.output and "gold:dev" in listed.output
    coded = _cli("code", "-w", str(ws), "-c", "learned:first4", "--codebook", str(book))
    assert coded.exit_code == 0, coded.output
    assert (
        "learned from: learned:first4 <- gold:dev (participants=P1,P2,P3,P4); 24 units of 4 "
        "transcripts (P1_interview, P2_interview, P3_interview, P4_interview)"
    ) in " ".join(coded.output.split())
    store = open_store(settings)
    try:
        (run,) = _runs(store)
        assert run.params["training"]["model"] == "learned:first4"
        assert run.params["training"]["transcripts"] == [f"P{i}_interview" for i in range(1, 5)]
    finally:
        store.close()
    missing = _cli("code", "-w", str(ws), "-c", "learned:nope", "--codebook", str(book))
    assert missing.exit_code == 1 and "no trained learned coder named 'nope'" in missing.output
    assert "trained: first4" in missing.output


def test_train_without_codebook_uses_the_active_codebook(tmp_path):
    import yaml

    from qualflow.settings import load_settings
    from qualflow.store import open_store

    ws = _init(tmp_path)
    store = open_store(load_settings(ws))
    make_study(store)
    store.close()
    book = tmp_path / "book.yaml"
    codes = [{"title": c.title, "description": c.description} for c in codebook().codes]
    book.write_text(yaml.safe_dump({"name": "topics", "codes": codes}))
    loaded = _cli("codebook", "load", str(book), "-w", str(ws))
    assert loaded.exit_code == 0, loaded.output
    trained = _cli("train", "learned", "--gold", "dev", "--name", "act", "-w", str(ws))
    assert trained.exit_code == 0, trained.output  # the default codebook shares no code
    listed = " ".join(_cli("train", "list", "-w", str(ws)).output.split())
    assert "learned:act codebook topics" in listed


# ----------------------------------------------------------------------------- decisions


def test_decisions_up_to_a_time_are_training_labels(store, settings):
    from datetime import UTC, timedelta

    from qualflow.db import DecisionRow
    from qualflow.review.auth import add_user
    from qualflow.review.decisions import decide

    make_study(store)
    store.save_codebook(codebook())
    ids = [p.id for p in store.passages(codable_only=True)][:3]
    user = add_user(store, "rev", "a long password 123", role="reviewer")
    for pid in ids[:2]:
        decide(store, user.id, pid, "add", version=0, code="weather")
        decide(store, user.id, pid, "done", version=1)
    decide(store, user.id, ids[2], "add", version=0, code="food")  # not finished
    assert decision_labels(store) == {pid: frozenset({"weather"}) for pid in ids[:2]}
    with store.session() as s:
        second_done = sorted(s.scalars(select(DecisionRow.created_at)))[3]
    cut = second_done.replace(tzinfo=second_done.tzinfo or UTC) - timedelta(microseconds=1)
    assert list(decision_labels(store, until=cut)) == [ids[0]]
    labels = training_labels(store, codebook(), TrainingSources(decisions=True, until=cut))
    assert list(labels.labels) == [ids[0]]
    assert labels.sources == [f"decisions:until={cut.astimezone(UTC).isoformat()}"]


# ----------------------------------------------------------------------------- similarity


def test_default_similarity_run_records_where_its_constants_come_from(store, settings):
    from qualflow.coders.similarity import DEFAULT_NOTE, DEFAULT_THRESHOLD
    from qualflow.index import CodeIndex

    assert settings.similarity_threshold == DEFAULT_THRESHOLD
    make_study(store, names=PARTICIPANTS[:1])
    index = CodeIndex.ensure(codebook(), settings)
    with open_coder("similarity", settings, store, index) as coder:
        pipeline.run_coding(store, coder, codebook(), settings, index=index)
    (run,) = _runs(store)
    assert run.params["training"]["note"] == DEFAULT_NOTE
    assert "SERDIF" in DEFAULT_NOTE


def test_changing_the_similarity_threshold_codes_the_passages_again(store, settings):
    from qualflow.index import CodeIndex

    make_study(store, names=PARTICIPANTS[:1])
    index = CodeIndex.ensure(codebook(), settings)
    with open_coder("similarity", settings, store, index) as coder:
        first = pipeline.run_coding(store, coder, codebook(), settings, index=index)
    assert first.coded == 1  # one chunk: the whole short interview
    settings.similarity_threshold = 0.5
    settings.similarity_max_codes = 1
    with open_coder("similarity", settings, store, index) as coder:
        assert "threshold=0.5" in coder.model and "max_codes=1" in coder.model
        second = pipeline.run_coding(store, coder, codebook(), settings, index=index)
    assert second.coded == 1 and second.already_coded == 0
    settings.retrieval_k = 2  # candidates restrict the eligible codes: another key
    with open_coder("similarity", settings, store, index) as coder:
        assert coder.model.endswith("|k=2")
        third = pipeline.run_coding(store, coder, codebook(), settings, index=index)
    assert third.coded == 1


def test_train_similarity_calibrates_and_codes_by_name(store, settings):
    from qualflow.index import CodeIndex

    make_study(store)
    index = CodeIndex.ensure(codebook(), settings)
    sources = TrainingSources(gold=["dev"], participants=["P1", "P2", "P3"])
    trained = calibrate_similarity(store, settings, codebook(), sources, "cal", index=index)
    meta = json.loads(trained.path.read_text())
    assert meta["threshold"] == trained.coder.threshold and meta["max_codes"] >= 1
    assert trained.provenance["transcripts"] == ["P1_interview", "P2_interview", "P3_interview"]
    assert "calibrated on these passages" in trained.provenance["note"]
    with open_coder("similarity:cal", settings, store, index) as coder:
        assert coder.threshold == trained.coder.threshold and coder.training["units"] == 18


# ----------------------------------------------------------------------------- plug-ins, LLM


def plugin_without_index(settings, store, index):  # a plug-in that declares no index need
    raise AssertionError("not called")


plugin_without_index.needs_index = False


def test_plug_in_coders_get_the_index_whatever_retrieval_k_is(settings):
    settings.retrieval_k = 0
    assert needs_index("tests.coders_fixture:scripted_coder", settings)
    assert not needs_index("tests.test_training:plugin_without_index", settings)
    assert needs_index("similarity:cal", settings) and not needs_index("learned:x", settings)
    assert not needs_index("llm", settings)
    settings.retrieval_k = 5
    assert needs_index("llm", settings)


def test_llm_output_parameters_are_in_its_key(store, settings, fake_openai):
    settings.llm_base_url = fake_openai.base_url
    with open_coder("llm", settings, store) as coder:
        plain = coder.model
    assert plain == settings.llm_model
    settings.retrieval_k = 10
    settings.llm_temperature = 0.7
    with open_coder("llm", settings, store) as coder:
        assert coder.model == f"{plain}|k=10|temperature=0.7"


def test_few_shot_examples_come_from_named_gold_only_and_are_recorded(store, settings, fake_openai):
    from tests.fake_openai import answer

    make_study(store, names=PARTICIPANTS[:2])
    assert store.coded_examples(2).examples == {}  # gold is not a source unless named
    chosen = store.coded_examples(2, gold_sets=["dev"])
    assert set(chosen.examples) == {"weather", "food", "sport"}  # interviewer prompts left out
    assert chosen.transcripts == ["P1_interview", "P2_interview"] and len(chosen.passages) == 6
    settings.llm_base_url = fake_openai.base_url
    settings.llm_few_shot = 2
    settings.few_shot_gold = ["dev"]
    fake_openai.script(*[answer()] * 50)
    with open_coder("llm", settings, store) as coder:
        assert coder.model.endswith("|few_shot=2:reviews+gold:dev")
        pipeline.run_coding(store, coder, codebook(), settings)
    (run,) = _runs(store)
    assert run.params["few_shot"] == {
        "per_code": 2,
        "sources": ["reviews", "gold:dev"],
        "transcripts": ["P1_interview", "P2_interview"],
        "passages": chosen.passages,
    }
    assert run_provenance(object()) == {}
