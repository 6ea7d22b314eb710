"""Agreement at span, sentence and turn level in every report, from the coders' spans.

Every figure asserted here is computed by hand from the invented interview below:
three interviewer questions and three participant answers, cut into two chunks. The
machine answers the first chunk and hands the second to a human (``needs_human``), so
its unanswered text must count as a miss at every level.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from qualflow import evaluate as ev
from qualflow.chunk import chunk
from qualflow.models import Code, Codebook, CodeProposal, ProposalSet, Span, SpanCoding
from qualflow.segment import segment
from qualflow.store import ProposalKey
from tests.test_chunks import INTERVIEW, transcript

BOOK = Codebook(name="mini", codes=[Code(title="x"), Code(title="y")])
S1 = "I look at the leaderboard first."
S2 = "Then I try it on my own data."
S3 = "Not really."
S4 = "The numbers are noisy."
S5 = "Contamination, mostly."
S6 = "Test sets leak into training data."
TURN1, TURN3 = f"{S1} {S2}", f"{S3} {S4}"


def _at(t, text: str) -> tuple[int, int]:
    start = t.text.index(text)
    return start, start + len(text)


def _span(t, text: str, code: str) -> Span:
    return Span(t.id, *_at(t, text), code)


def _participant_scope(t) -> dict:
    return {t.id: [(turn.char_start, turn.char_end) for turn in t.turns if turn.index % 2]}


def _interview(store, name: str = "P1-interview"):
    """The transcript, its sentence grid and its two chunks (40 codable words each)."""
    t = transcript(INTERVIEW, name=name)
    store.save_transcript(t, segment(t, "sentence"))
    first, second = chunk(t, segment(t, "sentence"), 40)
    store.add_passages([first, second])
    return t, first, second


def _gold(store, t, gold_set: str = "dev") -> None:
    """ann: x over the whole first answer and the last sentence, y on "The numbers are
    noisy."; bob: x on the first and last sentence only, y over the whole second answer."""
    ann = [_span(t, TURN1, "x"), _span(t, S4, "y"), _span(t, S6, "x")]
    bob = [_span(t, S1, "x"), _span(t, TURN3, "y"), _span(t, S6, "x")]
    for coder, spans in (("ann", ann), ("bob", bob)):
        store.save_gold_coding(gold_set, SpanCoding(coder, spans, _participant_scope(t)))


def _machine_run(store, t, first, second, *, coder="learned", model="m1", spans=None) -> int:
    """The first chunk answered with spans (x on S1, y over the second answer; an optional
    third item is the span's confidence, default 0.8); the second handed to a human."""
    spans = spans if spans is not None else [(S1, "x"), (TURN3, "y")]
    run = store.start_run(ProposalKey(coder, model, "", BOOK.version), {"training": None})
    proposals = [
        CodeProposal(
            code=code,
            rationale="r",
            evidence=text,
            start=_at(t, text)[0],
            end=_at(t, text)[1],
            confidence=rest[0] if rest else 0.8,
        )
        for text, code, *rest in spans
    ]
    for unit, status in ((first, "ok"), (second, "needs_human")):
        store.save_proposal_set(
            ProposalSet(
                passage_id=unit.id,
                coder=coder,
                model=model,
                codebook_version=BOOK.version,
                status=status,
                proposals=proposals if status == "ok" else [],
                reason=None if status == "ok" else "answer failed validation twice",
            ),
            run_id=run,
        )
    store.finish_run(run, status="completed")
    return run


@pytest.fixture
def study(store):
    t, first, second = _interview(store)
    _gold(store, t)
    _machine_run(store, t, first, second)
    return store, t


def _report(
    store, *, humans=(), min_share=0.5, coder="proposals:learned", n_boot=50, cluster_by=None
):
    reference = ev.resolve(store, "gold:dev:ann")
    return ev.evaluate(
        reference,
        ev.resolve(store, coder),
        codebook=BOOK,
        humans=[ev.resolve(store, h) for h in humans],
        n_boot=n_boot,
        grid=ev.Grid.from_store(store, reference.coding),
        min_share=min_share,
        experiment="levels",
        clusters=ev.cluster_map(store, list(reference.coding), cluster_by),
    )


def _value(section: dict, metric: str) -> float:
    return section["overall"][metric]["value"]


# --------------------------------------------------------------------------- Resolved spans


def test_resolved_codings_carry_the_spans_behind_them(study):
    store, t = study
    gold = ev.resolve(store, "gold:dev:ann")
    assert gold.spans == store.gold_codings("dev", "ann")["ann"]
    machine = ev.resolve(store, "proposals:learned")
    first = t.turns[1], t.turns[3]
    assert sorted(machine.spans.spans) == [_span(t, S1, "x"), _span(t, TURN3, "y")]
    # answered scope: the codable turns of the answered chunk; the handed-over one is out
    assert machine.spans.scope == {t.id: [(turn.char_start, turn.char_end) for turn in first]}
    assert ev.resolve(store, "run:1").spans.spans == machine.spans.spans
    # the sentence coding is the projection of those spans (half coverage, or inside)
    by_text = {p.id: p.text for p in store.passages(transcript_id=t.id)}
    assert {by_text[u]: set(c) for u, c in machine.coding.items()} == {
        S1: {"x"},
        S2: set(),
        S3: {"y"},
        S4: {"y"},
    }
    assert {by_text[u] for u in machine.needs_human} == {S5, S6}


def test_another_coders_answer_on_the_same_chunk_stays_out(store):
    """Every coder cuts the same chunks: a coding reads only its own proposal sets."""
    t, first, second = _interview(store)
    _gold(store, t)
    _machine_run(store, t, first, second)
    _machine_run(store, t, first, second, coder="similarity", model="s1", spans=[(S2, "x")])
    learned = ev.resolve(store, "proposals:learned")
    by_text = {p.id: p.text for p in store.passages(transcript_id=t.id)}
    assert {by_text[u] for u, c in learned.coding.items() if "x" in c} == {S1}
    assert {s.code for s in learned.spans.spans} == {"x", "y"}
    similarity = ev.resolve(store, "proposals:similarity")
    assert {by_text[u] for u, c in similarity.coding.items() if c} == {S2}


def test_each_sentence_tag_has_the_confidence_of_its_own_span(store):
    """Two separate spans of one code in a chunk: a sentence takes the confidence of the
    span over it, once (calibration counts each tag once)."""
    t, first, second = _interview(store)
    _gold(store, t)
    _machine_run(store, t, first, second, spans=[(S1, "x", 0.9), (S4, "x", 0.3)])
    machine = ev.resolve(store, "proposals:learned")
    by_text = {p.id: p.text for p in store.passages(transcript_id=t.id)}
    assert sorted((by_text[u], code, c) for u, code, c in machine.confidences) == [
        (S1, "x", 0.9),
        (S4, "x", 0.3),
    ]


def test_from_span_coding_projects_spans_onto_the_grid(study):
    store, _ = study
    [bob] = store.gold_codings("dev", "bob").values()
    resolved = ev.from_span_coding(store, "reviewer:bob", bob, origin="reviewer")
    assert resolved.spans is bob and resolved.is_human
    assert resolved.coding == store.gold("dev", "bob")["bob"]


# --------------------------------------------------------------------------- three levels


def test_every_report_has_span_sentence_and_turn_level_side_by_side(study):
    store, _ = study
    results = _report(store)
    assert "levels" in ev.RESULTS_KEYS and results["schema"] == "qualflow.eval/3"
    levels = results["levels"]
    assert levels["computed"] and levels["min_share"] == 0.5

    # sentence level, today's rule and figures: S1 x and S4 y found, S3 y extra, S2 x
    # and S6 x missed (S6 is in the chunk handed to a human: a miss, not a gap)
    sentence = results["agreement"]
    assert sentence["n_passages"] == 6
    assert _value(sentence, "micro_precision") == pytest.approx(2 / 3)
    assert _value(sentence, "micro_recall") == pytest.approx(2 / 4)
    assert results["coverage"]["answered"] == 4 and results["coverage"]["needs_human"] == 2

    # span level over the six sentences' characters
    span = levels["span"]
    region = sum(map(len, (S1, S2, S3, S4, S5, S6)))
    assert span["scope_chars"] == region
    assert span["coverage"]["answered_chars"] == sum(map(len, (S1, S2, S3, S4)))
    ref = len(S1) + len(S2) + len(S6) + len(S4)  # ann's x and y inside the sentences
    coder = len(S1) + len(S3) + len(S4)
    both = len(S1) + len(S4)
    headline = span["agreement"]
    assert _value(headline, "micro_char_precision") == pytest.approx(both / coder)
    assert _value(headline, "micro_char_recall") == pytest.approx(both / ref)
    assert _value(headline, "micro_char_f1") == pytest.approx(2 * both / (ref + coder))
    # highlights at share 0.5: ann's first answer (S1 covers more than half of its
    # in-scope characters) and S4 are found, S6 is not; both machine spans match
    assert _value(headline, "micro_highlight_recall") == pytest.approx(2 / 3)
    assert _value(headline, "micro_highlight_precision") == pytest.approx(1.0)
    # answered only: S6 (and S5) left out, second and labelled
    answered = span["answered_only"]
    assert _value(answered, "micro_char_recall") == pytest.approx(both / (ref - len(S6)))

    # turn level: the three answers; the third was never answered, so x there is a miss
    turn = levels["turn"]
    assert turn["coverage"] == {"reference_units": 3, "answered": 2, "share": pytest.approx(2 / 3)}
    assert turn["agreement"]["n_passages"] == 3
    assert _value(turn["agreement"], "micro_precision") == pytest.approx(1.0)
    assert _value(turn["agreement"], "micro_recall") == pytest.approx(2 / 3)
    assert _value(turn["answered_only"], "micro_recall") == pytest.approx(1.0)
    assert levels["notes"] == []
    assert results["scope"]["coding_unit"] == "chunk:40"  # what one coder call saw


def test_highlight_matching_share_is_an_experiment_key(study):
    store, _ = study
    strict = _report(store, min_share=0.6)["levels"]["span"]["agreement"]
    # 32 of ann's 61 in-scope characters of the first answer are under 0.6: not found
    assert _value(strict, "micro_highlight_recall") == pytest.approx(1 / 3)
    loaded = ev.Experiment.from_mapping("e", {"reference": "gold:x", "coder": "run:1"})
    assert loaded.min_share == 0.5
    assert ev.Experiment.from_mapping("e", {"reference": "a", "coder": "b", "min_share": 0.8})
    for bad in (0, 1.5, "half"):
        with pytest.raises(ev.EvalError, match="min_share"):
            ev.Experiment.from_mapping("e", {"reference": "a", "coder": "b", "min_share": bad})


def test_two_gold_coders_give_a_human_baseline_at_each_level(store):
    """ann and bob (two human gold coders on spans) coded four interviews; the machine
    answered the first chunk of each."""
    for k in range(4):
        t, first, second = _interview(store, name=f"P{k + 1}-interview")
        _gold(store, t)
        _machine_run(store, t, first, second, model="m1")
    results = _report(store, humans=["gold:dev:bob"], n_boot=100, cluster_by="transcript")
    levels = results["levels"]

    # span: ann vs bob share x on S1 and S6, y on S4 (per interview)
    ann_chars = len(S1) + len(S2) + len(S6) + len(S4)
    bob_chars = len(S1) + len(S6) + len(S3) + len(S4)
    hh = 2 * (len(S1) + len(S6) + len(S4)) / (ann_chars + bob_chars)
    machine = len(S1) + len(S3) + len(S4)
    vs_ann = 2 * (len(S1) + len(S4)) / (ann_chars + machine)
    vs_bob = 2 * (len(S1) + len(S3) + len(S4)) / (bob_chars + machine)
    span = levels["span"]
    assert _value(span["human_agreement"], "micro_char_f1") == pytest.approx(hh)
    reading = next(r for r in span["human_baseline"]["overall"] if r["metric"] == "micro_char_f1")
    assert reading["human_human"]["value"] == pytest.approx(hh)
    assert reading["machine_human"]["value"] == pytest.approx((vs_ann + vs_bob) / 2)
    # four identical interviews resampled whole: every resample gives the same
    # difference, -0.12 < -0.1
    assert reading["reading"] == "inferior"
    assert span["human_baseline"]["humans"] == ["dev:ann", "dev:bob"]

    # turn: ann and bob agree on every answer; the machine misses x in the third
    turn = levels["turn"]
    assert _value(turn["human_agreement"], "micro_f1") == pytest.approx(1.0)
    turn_reading = next(r for r in turn["human_baseline"]["overall"] if r["metric"] == "micro_f1")
    assert turn_reading["machine_human"]["value"] == pytest.approx(0.8)
    assert turn_reading["reading"] == "inferior"

    # sentence: the existing section, from the same two humans
    assert results["human_baseline"]["humans"] == ["dev:ann", "dev:bob"]
    assert results["scope"]["human_baseline"].startswith("measured: dev:ann, dev:bob")


def test_constructed_coders_give_no_human_baseline_at_any_level(study):
    store, _ = study
    store.set_gold_origin("dev", "bob", "constructed")
    results = _report(store, humans=["gold:dev:bob"])
    assert results["human_baseline"] is None
    assert "human_baseline" not in results["levels"]["span"]
    assert "human_baseline" not in results["levels"]["turn"]


def test_a_coding_without_spans_is_read_over_its_units_and_the_report_says_so(study):
    store, _ = study
    reference = ev.resolve(store, "gold:dev:ann")
    machine = ev.resolve(store, "proposals:learned")
    machine.spans = None  # e.g. a review made before spans
    results = ev.evaluate(
        reference, machine, n_boot=20, grid=ev.Grid.from_store(store, reference.coding)
    )
    [note] = results["levels"]["notes"]
    assert "proposals:learned has no spans" in note
    # over units, "Not really." counts whole: the span figures follow the sentences
    span = results["levels"]["span"]["agreement"]
    assert _value(span, "micro_char_precision") == pytest.approx(
        (len(S1) + len(S4)) / (len(S1) + len(S3) + len(S4))
    )


def test_without_a_grid_the_report_says_it_has_the_sentence_level_only(study):
    store, _ = study
    results = ev.evaluate(
        ev.resolve(store, "gold:dev:ann"), ev.resolve(store, "proposals:learned"), n_boot=20
    )
    assert results["levels"]["computed"] is False
    from qualflow.report import render_html, render_markdown

    assert "Span and turn levels: no grid given" in render_markdown(results)
    assert "Span and turn levels: no grid given" in render_html(results, plots=False)


# --------------------------------------------------------------------------- reports


def test_reports_show_the_three_levels_with_what_each_rests_on(study, tmp_path):
    from qualflow.report import level_rows

    store, _ = study
    results = _report(store, humans=["gold:dev:bob"])
    rows = level_rows(results)
    assert [r["level"] for r in rows] == ["span_chars", "span_highlights", "sentence", "turn"]
    region = sum(map(len, (S1, S2, S3, S4, S5, S6)))
    assert rows[0]["rests_on"] == f"{region} characters"
    assert rows[1]["rests_on"] == "3 reference / 2 coder highlights"
    assert rows[2]["rests_on"] == "6 sentences" and rows[3]["rests_on"] == "3 turns"
    assert [r["coverage"] for r in rows] == pytest.approx(
        [sum(map(len, (S1, S2, S3, S4))) / region] * 2 + [4 / 6, 2 / 3]
    )
    assert all(r["human_f1"] and r["reading"] for r in rows)

    out = ev.write_outputs(results, tmp_path)
    md = out.markdown
    assert "Three levels (unanswered text = no code): span, characters F1 **" in md
    table = md[md.index("| level | rests on |") :]
    assert f"| span, characters | {region} characters | " in table
    assert "| turn | 3 turns | 66.7% |" in table
    assert "| code | characters ref / coder |" in md
    html = out.html_path.read_text()
    assert html.index('id="per-code"') < html.index('id="levels"') < html.index('id="overall"')
    assert "3 reference / 2 coder highlights" in html
    assert json.loads(out.json_path.read_text())["levels"]["computed"] is True


def test_run_experiment_reports_three_levels(study, settings, tmp_path):
    store, _ = study
    book = tmp_path / "book.yaml"
    book.write_text("name: mini\ncodes:\n  - title: x\n  - title: y\n")
    exp = ev.Experiment(
        name="levels-exp",
        reference="gold:dev:ann",
        coder="proposals:learned",
        codebook=str(book),
        n_boot=20,
        min_share=0.6,
    )
    from qualflow.codebook import load_codebook

    assert load_codebook(book).version == BOOK.version  # the run was stored under it
    out = ev.run_experiment(exp, store, settings, out_dir=tmp_path, prepare_first=False)
    levels = out.results["levels"]
    assert levels["computed"] and levels["min_share"] == 0.6
    assert _value(levels["span"]["agreement"], "micro_highlight_recall") == pytest.approx(1 / 3)
    assert "Agreement at three levels" in out.markdown


@pytest.mark.slow
def test_a_trained_coder_on_held_out_transcripts_keeps_its_spans(store, settings, tmp_path):
    """train on P1, test on P2 (a real similarity calibration and coding run): the held-out
    coder's spans and the cut reference's spans and origin reach every level."""
    for name in ("P1-interview", "P2-interview"):
        t, _, _ = _interview(store, name=name)
        _gold(store, t)
    book = tmp_path / "book.yaml"
    book.write_text(
        "name: mini\ncodes:\n  - title: x\n    description: choosing and trusting models\n"
        "  - title: y\n    description: noisy numbers and leaks\n"
    )
    exp = ev.Experiment.from_mapping(
        "held-out",
        {
            "reference": "gold:dev:ann",
            "humans": ["gold:dev:bob"],
            "codebook": str(book),
            "train": {"coder": "similarity", "gold": ["dev"], "transcripts": ["P1-interview"]},
            "test": {"transcripts": ["P2-interview"]},
            "n_boot": 20,
        },
    )
    out = ev.run_experiment(exp, store, settings, out_dir=tmp_path, prepare_first=True)
    results = out.results
    levels = results["levels"]
    assert levels["computed"] and levels["notes"] == []  # spans, not units, on both sides
    assert results["scope"]["passages"] == 6  # the held-out interview's six sentences
    assert levels["span"]["scope_chars"] == sum(map(len, (S1, S2, S3, S4, S5, S6)))
    assert levels["turn"]["coverage"]["reference_units"] == 3
    assert levels["span"]["human_baseline"]["humans"] == ["dev:ann", "dev:bob"]
    assert levels["turn"]["human_baseline"] is not None


@pytest.mark.slow
def test_the_scheduled_report_flow_gives_the_three_levels(study, settings):
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="qualflow-test-prefect-"))
    pytest.importorskip("prefect")
    from flows.report import agreement_report
    from prefect.testing.utilities import prefect_test_harness

    store, _ = study
    store.close()
    with prefect_test_harness(server_startup_timeout=120):
        path = agreement_report(workspace=str(settings.workspace), n_boot=20, min_support=1)
    text = Path(path).read_text(encoding="utf-8")
    assert "Agreement at three levels" in text
    assert "| span, characters |" in text and "| turn | 3 turns |" in text


def test_a_human_coding_without_spans_still_gives_a_baseline_at_each_level(study):
    """A review made before spans (sentence codes only): read over its sentences, said
    in a note, and compared at every level."""
    store, _ = study
    reference = ev.resolve(store, "gold:dev:ann")
    reviewer = ev.Resolved("reviewer:bob", store.gold("dev", "bob")["bob"], origin="reviewer")
    machine = ev.resolve(store, "proposals:learned")
    results = ev.evaluate(
        reference,
        machine,
        humans=[reviewer],
        n_boot=20,
        grid=ev.grid_for(store, reference, machine, reviewer),
    )
    levels = results["levels"]
    assert levels["notes"] == [
        "reviewer:bob has no spans (a coding of units only): its span and turn levels "
        "read each coded unit as a span over the unit"
    ]
    assert levels["span"]["human_baseline"]["humans"] == ["dev:ann", "reviewer:bob"]
    assert levels["turn"]["human_baseline"]["humans"] == ["dev:ann", "reviewer:bob"]


def test_the_demo_summary_has_a_row_per_coder_and_level(study):
    from rich.console import Console

    from qualflow.cli.demo import summary_table

    store, _ = study
    console = Console(width=250, record=True)
    console.print(summary_table([_report(store, humans=["gold:dev:bob"])]))
    text = console.export_text()
    for level in ("span, characters", "span, highlights (share 0.5)", "sentence", "turn"):
        assert f"│ {level}" in text
    assert "learned" in text and "6 sentences" in text and "3 turns" in text
    assert "inferior" in text or "inconclusive" in text or "non-inferior" in text
