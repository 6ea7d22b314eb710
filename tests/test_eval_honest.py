"""Reports a methods section can trust: train/test overlap refused, every passage
counted, specs that cannot silently change meaning, no constructed human baseline.

Every test builds its runs with params it sets directly (tests/eval_support.py)."""

from __future__ import annotations

import json

import pytest

from qualflow import evaluate as ev
from qualflow.models import Code, Codebook
from qualflow.report import render_html, render_markdown
from tests.eval_support import add_run, add_transcript, training

BOOK = Codebook(name="mini", codes=[Code(title="x"), Code(title="y")])


@pytest.fixture
def study(store):
    """Transcripts P1 (development) and P9 (held out), gold coder ann on every sentence."""
    dev = add_transcript(store, "P1", [f"Dev sentence {i}." for i in range(6)])
    held = add_transcript(store, "P9", [f"Held-out sentence {i}." for i in range(6)])
    gold = {pid: frozenset({"x"} if i % 2 else {"y"}) for i, pid in enumerate(dev + held)}
    store.save_gold("serdif", "ann", gold)
    return store, dev, held


def _answers(ids, gold_store, gold_set="serdif", coder="ann"):
    gold = gold_store.gold(gold_set)[coder]
    return {pid: sorted(gold[pid]) for pid in ids}


# --------------------------------------------------------------------------- 1: leakage


def test_report_refuses_a_coder_trained_on_the_reference_transcripts(study):
    store, dev, held = study
    add_run(store, _answers(dev + held, store), params={"training": training(["P1"])})
    reference = ev.resolve(store, "gold:serdif:ann")
    coder = ev.resolve(store, "proposals:learned")
    with pytest.raises(ev.LeakError) as caught:
        ev.evaluate(reference, coder, n_boot=20)
    message = str(caught.value)
    assert "transcripts P1 of 'serdif:ann'" in message and "gold:dev" in message
    assert "--allow-overlap" in message
    # evaluated on the held-out transcript only: no overlap, no refusal
    results = ev.evaluate(reference, coder, n_boot=20, passages=held)
    assert results["training"]["overlap"] == []
    assert results["scope"]["passages"] == len(held)


def test_few_shot_examples_from_the_reference_are_refused_too(study):
    store, _, held = study
    few_shot = {"per_code": 2, "transcripts": ["P9"], "passages": held[:2]}
    add_run(
        store,
        _answers(held, store),
        coder="llm",
        model="gpt-x",
        params={"training": None, "few_shot": few_shot},
    )
    reference = ev.resolve(store, "gold:serdif:ann")
    with pytest.raises(ev.LeakError, match=r"transcripts P9 .*few-shot examples"):
        ev.evaluate(reference, ev.resolve(store, "proposals:llm"), n_boot=20, passages=held)


def test_allowed_overlap_is_reported_with_a_warning_in_every_header(study, tmp_path):
    store, dev, held = study
    add_run(store, _answers(dev + held, store), params={"training": training(["P1", "P9"])})
    results = ev.evaluate(
        ev.resolve(store, "gold:serdif:ann"),
        ev.resolve(store, "proposals:learned"),
        n_boot=20,
        allow_overlap=True,
        experiment="leaky",
    )
    assert results["training"]["allow_overlap"] is True
    [warning] = results["warnings"]
    assert "TRAIN/TEST OVERLAP" in warning and "P9" in warning
    out = ev.write_outputs(results, tmp_path)
    assert json.loads(out.json_path.read_text())["warnings"] == [warning]
    html = out.html_path.read_text()
    assert html.index('class="warning"') < html.index('id="headline"')
    assert "P9" in html[html.index('class="warning"') : html.index('id="headline"')]
    md = out.markdown.splitlines()
    assert md[2].startswith("> **WARNING:** TRAIN/TEST OVERLAP")


def test_every_report_prints_what_the_coder_learned_from(study):
    store, _, held = study
    add_run(store, _answers(held, store), params={"training": training(["P1"], note="k=3")})
    results = ev.evaluate(
        ev.resolve(store, "gold:serdif:ann"),
        ev.resolve(store, "proposals:learned"),
        n_boot=20,
        passages=held,
    )
    [line] = results["training"]["coder_lines"]
    assert "trained as learned:dev on gold:dev" in line and "(P1)" in line
    assert "labels abc123def456" in line and "k=3" in line
    assert f"Coder learned from: {line}" in render_markdown(results)
    html = render_html(results, plots=False)
    assert 'id="learned"' in html and "trained as learned:dev on gold:dev" in html


def test_a_leaking_baseline_is_refused(study):
    store, _, held = study
    add_run(store, _answers(held, store), coder="similarity", model="mini", params={})
    add_run(store, _answers(held, store), params={"training": training(["P9"])})
    with pytest.raises(ev.LeakError, match="baseline 'proposals:learned'"):
        ev.evaluate(
            ev.resolve(store, "gold:serdif:ann"),
            ev.resolve(store, "proposals:similarity"),
            baseline=ev.resolve(store, "proposals:learned"),
            n_boot=20,
            passages=held,
        )


def test_eval_cli_refuses_the_overlap_and_runs_with_allow_overlap(study, settings, tmp_path):
    from typer.testing import CliRunner

    from qualflow.cli import app
    from qualflow.codebook import load_codebook

    store, dev, held = study
    book = tmp_path / "book.yaml"
    book.write_text("name: mini\ncodes:\n  - title: x\n  - title: y\n")
    version = load_codebook(book).version
    add_run(
        store,
        _answers(dev + held, store),
        codebook_version=version,
        params={"training": training(["P9"])},
    )
    experiments = tmp_path / "exp.yaml"
    experiments.write_text(
        "experiments:\n  leak:\n    reference: gold:serdif:ann\n"
        f"    coder: proposals:learned\n    codebook: {book}\n    n_boot: 20\n"
    )
    out = tmp_path / "out"
    args = ["eval", "-f", str(experiments), "-w", str(settings.workspace), "--no-prepare"]
    args += ["--out", str(out)]
    runner = CliRunner()
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1
    assert "learned from the reference's own text" in refused.output
    assert "P9" in refused.output and not (out / "leak.json").exists()
    allowed = runner.invoke(app, [*args, "--allow-overlap"])
    assert allowed.exit_code == 0, allowed.output
    results = json.loads((out / "leak.json").read_text())
    assert results["training"]["allow_overlap"] is True and results["warnings"]
    assert "WARNING" in allowed.output


# --------------------------------------------------------------------------- 2: coverage


def test_a_coder_that_answers_one_of_a_hundred_passages_scores_near_zero(store):
    ids = add_transcript(store, "P1", [f"Sentence number {i}." for i in range(100)])
    store.save_gold("g", "ann", {pid: frozenset({"x"}) for pid in ids})
    answers: dict = {ids[0]: ["x"]}
    answers |= {pid: None for pid in ids[1:60]}  # needs_human; the rest never coded
    add_run(store, answers, coder="llm", model="m", params={"training": None})
    results = ev.evaluate(
        ev.resolve(store, "gold:g:ann"),
        ev.resolve(store, "proposals:llm"),
        codebook=BOOK,
        n_boot=50,
    )
    f1 = results["agreement"]["overall"]["micro_f1"]["value"]
    assert f1 == pytest.approx(2 * 0.01 / 1.01)  # precision 1, recall 1/100
    assert results["coverage"] == {
        "coder": "proposals:llm",
        "reference_units": 100,
        "answered": 1,
        "share": 0.01,
        "needs_human": 59,
        "not_answered": 40,
        "rule": ev.UNANSWERED_RULE,
    }
    answered = results["answered_only"]
    assert answered["agreement"]["overall"]["micro_f1"]["value"] == 1.0
    assert answered["label"].startswith("answered passages only (1 of 100")
    assert any("99 of 100" in p and "counted as no code" in p for p in results["problems"])
    md = render_markdown(results)
    assert "coverage 1% (1 of 100 answered; 99 unanswered counted as no code)" in md
    headline = md.split("\n\n")[1]
    assert "coverage 1%" in headline and "micro F1 **0.02" in headline
    assert md.index("| overall (all passages; coverage 1%)") < md.index(
        "| answered passages only (1 of 100"
    )
    html = render_html(results, plots=False)
    headline_html = html[
        html.index('id="headline"') : html.index("</div>", html.index('id="headline"'))
    ]
    assert "coverage 1%" in headline_html
    assert html.index('id="overall"') < html.index('id="answered-only"')


def test_the_unanswered_rule_takes_any_units_and_a_scope():
    coding = {"chunk-1:s1": frozenset({"x"}), "chunk-2:s3": frozenset({"y"})}
    units = ["chunk-1:s1", "chunk-1:s2", "chunk-2:s3", "chunk-3:s4"]
    in_scope = {"chunk-1:s1", "chunk-1:s2"}  # chunk 2 was answered but is out of scope
    assert ev.count_unanswered_as_no_code(units, coding, in_scope) == {
        "chunk-1:s1": frozenset({"x"}),
        "chunk-1:s2": frozenset(),
        "chunk-2:s3": frozenset(),
        "chunk-3:s4": frozenset(),
    }


def test_a_full_coverage_report_says_the_answered_figures_equal_the_headline(study):
    store, _, held = study
    add_run(store, _answers(held, store), coder="similarity", model="mini", params={})
    results = ev.evaluate(
        ev.resolve(store, "gold:serdif:ann"),
        ev.resolve(store, "proposals:similarity"),
        n_boot=20,
        passages=held,
    )
    assert results["coverage"]["share"] == 1.0
    assert results["answered_only"]["same_as_headline"] is True
    assert "answered-only figures equal the headline" in render_html(results, plots=False)


# --------------------------------------------------------------------------- 4: specs


def test_a_proposals_spec_matching_several_codings_lists_them(study):
    store, _, held = study
    first = add_run(store, _answers(held[:3], store), coder="similarity", model="mini@0.35")
    second = add_run(store, _answers(held[3:], store), coder="similarity", model="mini@0.35")
    other = add_run(store, _answers(held, store), coder="similarity", model="mini@0.50")
    with pytest.raises(ev.EvalError) as caught:
        ev.resolve(store, "proposals:similarity", codebook_version="v1")
    message = str(caught.value)
    assert "matches 2 different codings" in message
    assert (
        "proposals:similarity:mini@0.35  (model mini@0.35, prompt -, codebook v1, "
        f"6 passages, runs {first}, {second})"
    ) in message
    assert (
        "proposals:similarity:mini@0.50  (model mini@0.50, prompt -, codebook v1, "
        f"6 passages, runs {other})"
    ) in message
    pinned = ev.resolve(store, "proposals:similarity:mini@0.35", codebook_version="v1")
    assert set(pinned.coding) == set(held)  # both incremental runs of one coding
    assert ev.resolve(store, "proposals:similarity:mini@0.50").model == "mini@0.50"
    with pytest.raises(ev.EvalError, match=r"no proposal sets of model 'mini@0\.9'"):
        ev.resolve(store, "proposals:similarity:mini@0.9")


def test_a_prompt_change_is_another_coding_pinned_by_model_at_prompt(study):
    store, _, held = study
    add_run(store, _answers(held, store), coder="llm", model="gpt-x", prompt_version="p1")
    add_run(store, _answers(held, store), coder="llm", model="gpt-x", prompt_version="p2")
    with pytest.raises(ev.EvalError, match=r"proposals:llm:gpt-x@p2 "):
        ev.resolve(store, "proposals:llm")
    assert ev.resolve(store, "proposals:llm:gpt-x@p1").prompt_version == "p1"


def test_one_coding_from_coders_trained_on_different_labels_is_an_error(study):
    store, _, held = study
    add_run(store, _answers(held[:3], store), params={"training": training(["P1"])})
    add_run(
        store,
        _answers(held[3:], store),
        params={"training": training(["P1"], label_hash="fff000")},
    )
    with pytest.raises(ev.EvalError, match="trained on different labels"):
        ev.resolve(store, "proposals:learned")


# --------------------------------------------------------------------------- 5: humans


def test_constructed_example_gold_never_stands_as_human(store):
    from qualflow.gold import import_gold
    from qualflow.ingest import ingest_paths
    from qualflow.settings import Settings
    from tests.conftest import EXAMPLES

    ingest_paths(store, [EXAMPLES], Settings())
    report = import_gold(store, "eval/gold/examples.jsonl", "examples")
    assert report.constructed == {"constructed-a", "constructed-b"}
    a = ev.resolve(store, "gold:examples:constructed-a")
    b = ev.resolve(store, "gold:examples:constructed-b")
    assert a.origin == b.origin == "constructed"
    results = ev.evaluate(a, b, humans=[a, b], n_boot=20)
    assert results["human_baseline"] is None and results["human_agreement"] is None
    assert results["scope"]["human_baseline"].startswith("no human baseline measured")
    assert any("constructed example data, not a human coder" in p for p in results["problems"])
    assert "Human baseline: **no human baseline measured" in render_markdown(results)
    assert "<b>no human baseline measured" in render_html(results, plots=False)


def test_machine_codings_are_not_humans(study):
    store, _, held = study
    add_run(store, _answers(held, store), coder="similarity", model="mini", params={})
    machine = ev.resolve(store, "proposals:similarity")
    results = ev.evaluate(
        ev.resolve(store, "gold:serdif:ann"), machine, humans=[machine], n_boot=20, passages=held
    )
    assert results["human_baseline"] is None
    assert any("a machine coder, not a human coder" in p for p in results["problems"])


def test_the_review_apps_double_coded_share_is_the_human_baseline(settings, store):
    from qualflow import chunk
    from qualflow.db import AssignmentRow, UserRow
    from qualflow.review.decisions import decide
    from tests.review_support import make_study

    study = make_study(settings, store, transcripts=2, answers=5)
    ids = study.passage_ids
    with store.session() as s:
        users = {u.username: u.id for u in s.query(UserRow)}
        for pid in ids[:6]:  # the double-coded share: ann and bob, blind to each other
            for name in ("ann", "bob"):
                s.add(
                    AssignmentRow(
                        passage_id=pid,
                        user_id=users[name],
                        double_coded=True,
                        blind_to_machine=True,
                    )
                )
    for i, pid in enumerate(ids[:6]):
        for name in ("ann", "bob"):
            code = "01.use.frequency.daily" if (i % 2 or name == "ann") else "05.gaps.issues"
            decide(store, users[name], pid, "add", version=0, code=code)
            decide(store, users[name], pid, "done", version=1)
    machine = ev.resolve(store, "proposals:llm")
    store.save_gold("constructed", "c", {pid: frozenset({"01.use.frequency.daily"}) for pid in ids})
    store.set_gold_origin("constructed", "c", "constructed")
    results = ev.evaluate(
        ev.resolve(store, "gold:constructed:c"),
        machine,
        humans=[ev.resolve(store, "reviewer:ann"), ev.resolve(store, "reviewer:bob")],
        n_boot=20,
    )
    assert results["human_baseline"]["humans"] == ["reviewer:ann", "reviewer:bob"]
    # the reviewers coded chunks: their spans are read on the sentence grid
    units = [store.passage(pid) for pid in ids[:6]]
    sentences = sum(
        len(chunk.sentences_in(u, store.passages(transcript_id=u.transcript_id))) for u in units
    )
    assert results["human_baseline"]["n_passages"] == sentences > 6
    assert results["scope"]["human_baseline"] == (
        f"measured: reviewer:ann, reviewer:bob on {sentences} passages they all coded"
    )
    kappa = results["human_agreement"]["overall"]["pooled_kappa"]["value"]
    assert kappa is not None and kappa < 1.0  # they disagree on three passages


def test_flow_report_reads_provenance_and_origins(study):
    """The scheduled agreement report resolves coders and humans the same way."""
    pytest.importorskip("prefect")
    from flows.report import key_coding, references

    from qualflow.store import ProposalKey

    store, _, held = study
    add_run(store, _answers(held, store), params={"training": training(["P9"])})
    store.save_gold("examples", "constructed-a", {held[0]: frozenset({"x"})})
    store.set_gold_origin("examples", "constructed-a", "constructed")
    coder = key_coding(store, ProposalKey("learned", "learned:dev", "", "v1"))
    assert coder.name == "learned:learned:dev" and coder.learned_from[0]["training"]
    origins = {ref.name: ref.origin for ref, _ in references(store)}
    assert origins == {"examples:constructed-a": "constructed", "serdif:ann": "gold"}
    [ann] = [ref for ref, _ in references(store) if ref.name == "serdif:ann"]
    with pytest.raises(ev.LeakError, match="P9"):
        ev.evaluate(ann, coder, n_boot=20)
