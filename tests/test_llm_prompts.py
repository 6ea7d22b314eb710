"""Prompt templates: files, content-hash versions, fencing, few-shot examples."""

from __future__ import annotations

import shutil

import pytest

from qualflow.prompts import PromptError, excerpt_view, fence, load_prompt
from qualflow.resources import project_dir
from tests.fake_openai import answer
from tests.llm_helpers import CODEBOOK, chunk_request, make_coder, request


def test_version_is_a_content_hash_of_the_files(tmp_path):
    folder = tmp_path / "prompts"
    shutil.copytree(project_dir("prompts"), folder)
    original = load_prompt("propose")
    copy = load_prompt("propose", folder)
    assert copy.version == original.version and len(copy.version) == 12
    (folder / "propose.user.md").write_text(
        (folder / "propose.user.md").read_text() + "\nBe brief.\n"
    )
    assert load_prompt("propose", folder).version != original.version


def test_missing_template_is_a_clear_error(tmp_path):
    with pytest.raises(PromptError, match="missing template"):
        load_prompt("nonexistent", tmp_path)


def test_fence_neutralizes_tags_only():
    assert (
        fence("a </turn> b <excerpt> c </passage> <b>bold</b>")
        == "a &lt;/turn> b &lt;excerpt> c &lt;/passage> <b>bold</b>"
    )


def test_user_prompt_shows_context_speakers_and_definitions():
    prompt = load_prompt()
    req = request("We rarely look at leaderboards.")
    text = prompt.user([c.code for c in req.candidates], [excerpt_view("C1", req)])
    assert (
        '<turn speaker="Interviewer" role="context">\nHow do you use benchmarks?\n</turn>' in text
    )
    assert '<turn speaker="Alice">\nWe rarely look at leaderboards.\n</turn>' in text
    assert '<excerpt id="C1">' in text
    assert "## 01.use.rarely\nDefinition: Rarely looks at benchmarks." in text
    assert "03.doubt.contamination" not in text  # only the candidates
    assert "speaker names or labels" in prompt.system(batched=False, json_mode=False)
    assert "empty list" in prompt.system(batched=False, json_mode=False)
    assert '{"codes": []}' in prompt.system(batched=False, json_mode=True)


def test_few_shot_examples_are_shown_but_never_the_passage_itself(fake_openai, settings):
    settings = settings.model_copy(update={"llm_few_shot": 1})
    examples = {"01.use.daily": ["We rarely look at leaderboards.", "Every morning I check."]}
    fake_openai.script(answer())
    coder = make_coder(fake_openai, settings, examples=examples)
    coder.propose([request("We rarely look at leaderboards.")], CODEBOOK)
    user = fake_openai.user_messages(0)[0]
    assert '- "Every morning I check."' in user
    assert '- "We rarely look at leaderboards."' not in user


def test_whole_codebook_when_no_candidates(fake_openai, settings):
    fake_openai.script(answer())
    make_coder(fake_openai, settings).propose([request("Hm.", candidates=[])], CODEBOOK)
    user = fake_openai.user_messages(0)[0]
    assert all(f"## {t}" in user for t in CODEBOOK.titles())


def test_few_shot_examples_from_gold_through_coder_from_settings(fake_openai, settings, store):
    from qualflow.local_llm import coder_from_settings
    from qualflow.models import Passage, Transcript, Turn

    texts = ["I check it daily.", "Every single morning I look.", "A very long one. " * 40]
    body = "\n\n".join(texts)
    turns, passages, pos = [], [], 0
    for i, t in enumerate(texts):
        turns.append(Turn(index=i, speaker="P1", text=t, char_start=pos, char_end=pos + len(t)))
        passages.append(
            Passage(
                id=f"g{i}",
                transcript_id="t@1",
                index=i,
                turn_index=i,
                speaker="P1",
                char_start=pos,
                char_end=pos + len(t),
                text=t,
            )
        )
        pos += len(t) + 2
    store.save_transcript(
        Transcript(
            id="t@1",
            name="t",
            source_path="t.txt",
            content_hash="1" * 64,
            format="txt",
            text=body,
            turns=turns,
        ),
        passages,
    )
    store.save_gold("gold", "human", {p.id: frozenset({"01.use.daily"}) for p in passages})
    assert store.coded_examples(5).examples == {}  # a gold set feeds prompts only when named
    chosen = store.coded_examples(5, gold_sets=["gold"])
    assert chosen.examples == {"01.use.daily": texts[:2]}  # long one left out

    settings.llm_base_url = fake_openai.base_url
    settings.llm_few_shot = 1
    settings.few_shot_gold = ["gold"]
    fake_openai.script(answer())
    with coder_from_settings(settings, store) as coder:
        coder.propose([request("Something new.")], CODEBOOK)
    assert '- "I check it daily."' in fake_openai.user_messages(0)[0]
    assert "Every single morning" not in fake_openai.user_messages(0)[0]


def test_a_chunk_shows_its_turns_in_order_with_context_marked():
    prompt = load_prompt()
    req = chunk_request(
        [
            ("Interviewer", "What do you trust?", False),
            ("P1", "Leaderboards, mostly.", True),
            ("Interviewer", "Why?", False),
            ("P1", "They are public.", True),
        ]
    )
    text = prompt.user(list(CODEBOOK.codes), [excerpt_view("C1", req)])
    body = text.split('<excerpt id="C1">\n', 1)[1].split("</excerpt>", 1)[0]
    assert body == (
        '<turn speaker="Interviewer" role="context">\nWhat do you trust?\n</turn>\n'
        '<turn speaker="P1">\nLeaderboards, mostly.\n</turn>\n'
        '<turn speaker="Interviewer" role="context">\nWhy?\n</turn>\n'
        '<turn speaker="P1">\nThey are public.\n</turn>\n'
    )
