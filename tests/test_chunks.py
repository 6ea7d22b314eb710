"""Chunks: the unit a coder call sees, and the spans every coder answers with."""

from __future__ import annotations

import pytest

from qualflow import pipeline
from qualflow.chunk import chunk, chunks_for, parse_budget, segmentation_name, words
from qualflow.models import Transcript, Turn, short_hash
from qualflow.segment import segment


def transcript(turns: list[tuple[str, str]], name: str = "t") -> Transcript:
    texts, out, pos = [], [], 0
    for i, (speaker, text) in enumerate(turns):
        out.append(
            Turn(index=i, speaker=speaker, text=text, char_start=pos, char_end=pos + len(text))
        )
        texts.append(text)
        pos += len(text) + 2
    full = "\n\n".join(texts)
    digest = short_hash(name, full, length=64)
    return Transcript(
        id=Transcript.make_id(name, digest),
        name=name,
        source_path=f"{name}.txt",
        content_hash=digest,
        format="txt",
        text=full,
        turns=out,
    )


def cut(t: Transcript, budget: int):
    return chunk(t, segment(t, "sentence"), budget)


def codable_words(t: Transcript, c) -> int:
    return sum(words(t.text[p.char_start : p.char_end]) for p in c.pieces if p.codable)


INTERVIEW = [
    ("Interviewer", "How do you pick a model?"),
    ("P1", "I look at the leaderboard first. Then I try it on my own data."),  # 14 words
    ("Interviewer", "Do you trust the leaderboard?"),
    ("P1", "Not really. The numbers are noisy."),  # 6 words
    ("Interviewer", "Why noisy?"),
    ("P1", "Contamination, mostly. Test sets leak into training data."),  # 8 words
]


def test_chunks_hold_consecutive_turns_up_to_the_budget_with_the_question_as_context():
    t = transcript(INTERVIEW)
    chunks = cut(t, 40)
    assert len(chunks) == 2
    first, second = chunks
    assert [(p.turn_index, p.codable) for p in first.pieces] == [
        (0, False), (1, True), (2, False), (3, True),
    ]  # fmt: skip
    assert [(p.turn_index, p.codable) for p in second.pieces] == [(4, False), (5, True)]
    assert codable_words(t, first) == 20 and codable_words(t, second) == 8
    assert first.text == t.text[first.char_start : first.char_end]
    assert first.text.startswith("How do you pick a model?")  # the question is kept
    assert (first.turn_index, first.turn_end, first.speaker) == (0, 3, "P1")
    assert first.segmentation == segmentation_name(40) == "chunk:40"
    assert parse_budget("chunk:40") == 40 and parse_budget("sentence") is None


def test_a_new_question_after_half_the_budget_starts_the_next_chunk():
    t = transcript(INTERVIEW)
    [a, b] = cut(t, 16)  # 14 words is past half of 16: the next question starts a chunk
    assert [p.turn_index for p in a.pieces] == [0, 1]
    assert [p.turn_index for p in b.pieces] == [2, 3, 4, 5]  # 6 words: not yet half


def test_a_long_turn_is_split_at_sentence_boundaries_never_inside_a_sentence():
    long = " ".join(f"Sentence number {i} is here." for i in range(10))  # 50 words
    t = transcript([("Interviewer", "Tell me everything."), ("P1", long)])
    chunks = cut(t, 12)
    sentences = {(s.char_start, s.char_end) for s in segment(t, "sentence")}
    starts = {s for s, _ in sentences}
    ends = {e for _, e in sentences}
    assert len(chunks) == 5
    for c in chunks:
        coded = [p for p in c.pieces if p.codable]
        assert all(p.char_start in starts and p.char_end in ends for p in coded)
        assert codable_words(t, c) <= 12
    assert not chunks[0].pieces[0].codable and all(c.pieces[-1].codable for c in chunks)
    covered = sorted((p.char_start, p.char_end) for c in chunks for p in c.pieces if p.codable)
    assert covered[0][0] == t.turns[1].char_start and covered[-1][1] == t.turns[1].char_end


def test_one_sentence_longer_than_the_budget_is_a_chunk_of_its_own():
    t = transcript([("P1", "One two three four five six seven eight. Nine ten.")])
    chunks = cut(t, 3)
    assert [codable_words(t, c) for c in chunks] == [8, 2]


def test_no_codable_speech_no_chunk_and_trailing_questions_belong_to_no_chunk():
    assert cut(transcript([("Interviewer", "Hello?"), ("Moderator", "Anyone?")]), 50) == []
    t = transcript([("P1", "Yes."), ("Interviewer", "Thanks, that is all.")])
    [only] = cut(t, 50)
    assert [p.turn_index for p in only.pieces] == [0]


def test_chunk_ids_are_stable_and_depend_on_the_budget():
    t = transcript(INTERVIEW)
    assert [c.id for c in cut(t, 40)] == [c.id for c in cut(t, 40)]
    assert {c.id for c in cut(t, 40)}.isdisjoint(c.id for c in cut(t, 16))


def test_chunks_for_uses_the_studys_interviewer_rules(settings):
    t = transcript([("Dr Lee", "What do you use?"), ("P1", "Mostly the leaderboard.")])
    settings = settings.model_copy(update={"interviewer_speakers": ["Dr Lee"]})
    [c] = chunks_for(t, settings)
    assert [p.codable for p in c.pieces] == [False, True]
    coded = settings.model_copy(update={"code_interviewer": True})
    [c] = chunks_for(t, coded)
    assert [p.codable for p in c.pieces] == [True, True]


def test_stored_chunk_round_trips_with_its_pieces(store, settings):
    t = transcript(INTERVIEW)
    store.save_transcript(t, segment(t, "sentence"))
    assert pipeline.ensure_chunks(store, settings) == 1
    assert pipeline.ensure_chunks(store, settings) == 0  # idempotent: nothing read again
    [stored] = store.passages(segmentation=pipeline.unit_segmentation(settings))
    assert stored == chunks_for(t, settings)[0]
    assert len(store.passages()) == len(segment(t, "sentence"))  # the grid, not chunks


# --------------------------------------------------------------------------- spans


@pytest.fixture
def interview(store, settings):
    t = transcript(INTERVIEW, name="interview")
    store.save_transcript(t, segment(t, "sentence"))
    return t


def test_baseline_coder_joins_adjacent_sentences_and_breaks_runs_at_a_question(
    store, settings, interview
):
    from qualflow.coders.sentence_runs import runs_to_proposals

    pipeline.ensure_chunks(store, settings)
    [unit] = store.passages(segmentation=pipeline.unit_segmentation(settings))
    from qualflow.codebook import load_codebook

    [request] = pipeline.build_requests(
        store,
        [unit],
        load_codebook(settings.codebook),
        sentences=pipeline.SentenceSource(store, settings),
    )
    assert [c.passage.text for c in request.sentences] == [
        "I look at the leaderboard first.",
        "Then I try it on my own data.",
        "Not really.",
        "The numbers are noisy.",
        "Contamination, mostly.",
        "Test sets leak into training data.",
    ]
    decisions = [{"x": 0.4}, {"x": 0.6}, {"x": 0.9}, {}, {"y": 0.5}, {"y": 0.7}]
    spans = runs_to_proposals(request, decisions, lambda c, s, n: f"{c} {s} {n}")
    text = interview.text
    assert [(p.code, text[p.start : p.end], p.confidence) for p in spans] == [
        ("x", "I look at the leaderboard first. Then I try it on my own data.", 0.6),
        ("x", "Not really.", 0.9),  # a question lies between: a new span
        ("y", "Contamination, mostly. Test sets leak into training data.", 0.7),
    ]
    assert all(p.evidence == text[p.start : p.end] and p.located == "sentences" for p in spans)


def test_llm_spans_across_sentences_with_curly_quotes_land_exactly(store, settings, fake_openai):
    """The scripted model quotes two sentences with straight quotes where the transcript
    has curly ones: the span lands on the original characters, and the sentences it
    covers (and only those) carry the code."""
    from qualflow.coders.factory import open_coder
    from qualflow.spans import to_sentences
    from tests.coders_fixture import small_codebook
    from tests.fake_openai import answer, proposal

    t = transcript(
        [
            ("Interviewer", "What did you do first?"),
            ("P3", "Read the ‘Home’ tab… then the ‘Query’ tab. It was fine. Then it crashed."),
        ],
        name="p3",
    )
    store.save_transcript(t, segment(t, "sentence"))
    settings = settings.model_copy(
        update={"llm_base_url": fake_openai.base_url, "llm_max_retries": 0, "retrieval_k": 0}
    )
    fake_openai.script(
        answer(
            proposal(
                "cat.trust",
                "Read the 'Home' tab... then the 'Query' tab. It was fine.",
                rationale="Reads the tabs without trouble.",
            )
        )
    )
    book = small_codebook()
    with open_coder("llm", settings, store) as coder:
        summary = pipeline.run_coding(store, coder, book, settings)
    assert summary.status == "completed" and summary.proposals == 1
    [ps] = store.proposal_sets(run_id=summary.run_id)
    [p] = ps.proposals
    assert p.located == "tolerant"
    assert t.text[p.start : p.end] == "Read the ‘Home’ tab… then the ‘Query’ tab. It was fine."
    coding = store.span_coding("llm", run_id=summary.run_id)
    assert coding.scope == {t.id: [(t.turns[1].char_start, t.turns[1].char_end)]}
    assert [(s.code, s.start, s.end) for s in coding.spans] == [("cat.trust", p.start, p.end)]
    sentences = store.passages(transcript_id=t.id)
    coded = to_sentences(coding, sentences)
    by_text = {s.text: coded.get(s.id) for s in sentences}
    assert by_text == {
        "What did you do first?": None,  # the interviewer's: outside the coded text
        "Read the ‘Home’ tab… then the ‘Query’ tab.": {"cat.trust"},
        "It was fine.": {"cat.trust"},
        "Then it crashed.": frozenset(),
    }
