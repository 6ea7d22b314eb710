"""Results JSON, HTML and Markdown reports; specs; the experiments file; the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from qualflow import evaluate as ev
from qualflow.models import Code, Codebook

CODES = ["01.use.a", "01.use.b", "02.gap.c", "02.gap.d", "03.rare", "04.never"]
BOOK = Codebook(name="mini", codes=[Code(title=c) for c in CODES])


def _codings(seed: int = 0, n: int = 120):
    rng = np.random.default_rng(seed)
    prev = [0.3, 0.2, 0.25, 0.15, 0.02, 0.0]
    truth = {
        f"p{i}": frozenset(c for c, p in zip(CODES, prev, strict=True) if rng.random() < p)
        for i in range(n)
    }

    def noisy(flip: float) -> dict:
        return {
            pid: frozenset(c for c in CODES[:4] if (c in s) != (rng.random() < flip))
            for pid, s in truth.items()
        }

    return truth, noisy(0.05), noisy(0.3), noisy(0.2)


@pytest.fixture
def results():
    a, b, machine, base = _codings()
    m = ev.Resolved("run:7", machine, model="test-model", prompt_version="p1")
    rng = np.random.default_rng(1)
    m.confidences = [(pid, c, float(rng.random())) for pid, s in machine.items() for c in s]
    return ev.evaluate(
        ev.Resolved("gold:a", a),
        m,
        codebook=BOOK,
        humans=[ev.Resolved("gold:a", a), ev.Resolved("gold:b", b)],
        baseline=ev.Resolved("proposals:similarity", base),
        n_boot=200,
        experiment="unit",
    )


def test_results_json_has_the_documented_keys_and_scope(results, tmp_path):
    out = ev.write_outputs(results, tmp_path)
    loaded = json.loads(out.json_path.read_text())
    assert set(ev.RESULTS_KEYS) <= set(loaded)
    assert loaded["schema"] == ev.SCHEMA
    scope = loaded["scope"]
    for key in ("passages", "codebook_version", "prompt_version", "model", "coder", "reference"):
        assert key in scope
    assert scope["passages"] == 120
    assert scope["codebook_version"] == BOOK.version
    assert scope["model"] == "test-model" and scope["prompt_version"] == "p1"
    codes = {c["code"]: c for c in loaded["agreement"]["codes"]}
    assert set(codes) == set(CODES)  # every codebook code reported, used or not
    assert codes["04.never"]["kappa"]["value"] is None
    assert codes["03.rare"]["few"] is True
    for key in ("kappa", "alpha", "ac1", "precision", "recall", "f1"):
        assert {"value", "low", "high", "note"} <= set(codes["01.use.a"][key])
    assert loaded["human_baseline"]["overall"][0]["reading"] in {
        "non-inferior",
        "inferior",
        "inconclusive",
    }
    assert loaded["baseline"]["comparison"]["codes"]
    assert loaded["calibration"]["n"] > 0
    assert [c["code"] for c in loaded["agreement"]["categories"]["codes"]][:2] == ["01", "02"]
    assert len(loaded["cooccurrence"]["matrix"]) == len(loaded["cooccurrence"]["codes"])


def test_html_leads_with_the_per_code_table(results):
    from qualflow.report import render_html

    html = render_html(results)
    first_table = html.index("<table")
    assert html[first_table:].startswith('<table id="per-code"')
    assert first_table < html.index('id="overall"') < html.index("<img")
    header = html[first_table : html.index("</thead>", first_table)]
    # precision and recall side by side, then kappa; human-human and baseline next to it
    assert re.search(r"precision</th>\s*<th>recall", header)
    assert "human κ" in header and "baseline κ" in header
    body = html[first_table : html.index("</table>", first_table)]
    assert "03.rare" in body and 'class="few"' in body  # rare code shown, flagged
    assert "04.never" not in body  # unused codes are listed below the table
    assert "04.never" in html[html.index('id="unused"') :]
    assert html.count("data:image/png;base64,") == 4


def test_markdown_summary(results):
    from qualflow.report import render_markdown

    md = render_markdown(results)
    assert md.startswith("# Agreement: unit")
    assert "| code | ref / coder tags | precision | recall |" in md
    assert "Pooled kappa" in md and "human-human" in md
    assert "**" in md and "<b>" not in md


def test_no_shared_passages_is_a_clear_error():
    with pytest.raises(ev.EvalError, match="no passage in common"):
        ev.evaluate(ev.Resolved("a", {"p1": frozenset()}), ev.Resolved("b", {"p2": frozenset()}))


def test_resolve_specs(store):
    from qualflow.models import Passage, Transcript, Turn
    from qualflow.store import ProposalKey

    t = Transcript(
        id="t@1",
        name="t",
        source_path="t.txt",
        content_hash="h",
        format="txt",
        text="ab cd",
        turns=[Turn(index=0, text="ab cd", char_start=0, char_end=5)],
    )
    ps = [
        Passage(
            id="p1", transcript_id="t@1", index=0, turn_index=0, char_start=0, char_end=2, text="ab"
        ),
        Passage(
            id="p2", transcript_id="t@1", index=1, turn_index=0, char_start=3, char_end=5, text="cd"
        ),
    ]
    store.save_transcript(t, ps)
    store.save_gold("g", "ann", {"p1": frozenset({"x"}), "p2": frozenset()})
    from qualflow.models import CodeProposal, ProposalSet

    key = ProposalKey("similarity", "m", "", "v1")
    run = store.start_run(key)
    for pid, codes in (("p1", ["x"]), ("p2", [])):
        store.save_proposal_set(
            ProposalSet(
                passage_id=pid,
                coder="similarity",
                model="m",
                codebook_version="v1",
                proposals=[
                    CodeProposal(code=c, rationale="r", evidence="e", confidence=0.7) for c in codes
                ],
            ),
            run_id=run,
        )
    assert ev.resolve(store, "gold:g").coding == {"p1": frozenset({"x"}), "p2": frozenset()}
    assert ev.resolve(store, "gold:g:ann").name == "g:ann"
    by_run = ev.resolve(store, f"run:{run}")
    assert by_run.coding == {"p1": frozenset({"x"}), "p2": frozenset()}
    assert by_run.confidences == [("p1", "x", 0.7)]
    assert ev.resolve(store, "proposals:similarity", codebook_version="v1").model == "m"
    for bad, reason in [
        ("gold:nope", "no gold set"),
        ("gold:g:bob", "no coder 'bob'"),
        ("run:x", "run:<id>"),
        ("run:999", "no proposal sets"),
        ("proposals:similarity", "no proposal sets"),
        ("what:ever", "unknown coding spec"),
        ("previous", "no previous results"),
        ("reviewer:zoe", "no finished review by 'zoe'"),
    ]:
        with pytest.raises(ev.EvalError, match=reason):
            ev.resolve(store, bad, codebook_version="other" if "proposals" in bad else None)


def test_project_experiments_file_is_valid():
    exps = ev.load_experiments()
    assert {"examples-similarity", "examples-constructed-pair"} <= set(exps)
    e = exps["examples-similarity"]
    assert e.baseline == "previous" and e.reference == "gold:examples:constructed-a"
    # the constructed example gold set is never listed as human coders
    assert not any("examples" in h for x in exps.values() for h in x.humans)


def test_experiments_file_errors(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("experiments:\n  a: {reference: gold:x, coder: run:1, colour: red}\n")
    with pytest.raises(ev.EvalError, match="unknown keys"):
        ev.load_experiments(bad)
    bad.write_text("experiments:\n  a: {coder: run:1}\n")
    with pytest.raises(ev.EvalError, match="'reference'"):
        ev.load_experiments(bad)


@pytest.mark.slow
def test_eval_cli_on_the_examples_gold_set(tmp_path):
    """`qualflow eval examples-constructed-pair`: real ingest of examples/, JSONL import, reports;
    a second run reads the first as 'previous'."""
    from typer.testing import CliRunner

    from qualflow.cli import app

    runner = CliRunner()
    out = tmp_path / "out"
    name = "examples-constructed-pair"
    res = runner.invoke(app, ["eval", name, "--out", str(out), "--n-boot", "200"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / f"{name}.json").read_text())
    assert data["scope"]["passages"] >= 75  # every participant sentence of examples/
    assert not data["problems"], data["problems"]
    pooled = data["agreement"]["overall"]["pooled_kappa"]
    assert 0.4 < pooled["value"] < 0.95 and pooled["low"] < pooled["value"] < pooled["high"]
    assert (out / f"{name}.html").is_file() and (out / f"{name}.md").is_file()
    assert data["scope"]["human_baseline"].startswith("no human baseline measured")
    listed = runner.invoke(app, ["eval", "--list"])
    assert "examples-similarity" in listed.output
    bad = runner.invoke(app, ["eval", "nope", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown experiments" in bad.output


def test_gold_cli_import_and_list(tmp_path):
    from typer.testing import CliRunner

    from qualflow.cli import app

    runner = CliRunner()
    ws = tmp_path / "ws"
    assert runner.invoke(app, ["init", str(ws)]).exit_code == 0
    res = runner.invoke(app, ["ingest", "examples/I-3_interview.txt", "-w", str(ws)])
    assert res.exit_code == 0, res.output
    gold = tmp_path / "g.jsonl"
    gold.write_text(
        json.dumps(
            {
                "transcript": "I-3_interview",
                "text": "The big risk is false comfort.",
                "codes": ["06.risks.rewards.risks"],
                "coder": "ann",
            }
        )
        + "\n"
        + "{broken\n"
    )
    res = runner.invoke(app, ["gold", "import", str(gold), "--set", "demo", "-w", str(ws)])
    assert res.exit_code == 0, res.output
    assert "1/2 records imported" in res.output and "g.jsonl:2" in res.output
    listed = runner.invoke(app, ["gold", "list", "-w", str(ws)])
    assert "demo: ann (1)" in listed.output


@pytest.mark.slow
def test_experiment_imports_the_serdif_taguette_project(tmp_path, settings, store):
    """The highlight path: a Taguette project becomes a gold set an experiment reads."""
    from tests.conftest import SERDIF, needs_shared

    needs_shared("corpora", "serdif-usability", "taguette-project.sqlite3")
    exp = ev.Experiment(
        name="serdif-self",
        taguette=[{"file": str(SERDIF / "taguette-project.sqlite3"), "set": "serdif"}],
        codebook=str(SERDIF / "codebooks" / "codebook_20220303_8.csv"),
        reference="gold:serdif",
        coder="gold:serdif",
        n_boot=50,
    )
    out = ev.run_experiment(exp, store, settings, out_dir=tmp_path)
    data = out.results
    assert data["scope"]["passages"] > 3000  # every sentence of P1-P11, coded or not
    used = [c for c in data["agreement"]["codes"] if c["support"]]
    assert len(used) == 22
    assert all(c["kappa"]["value"] == pytest.approx(1.0) for c in used)
    assert data["agreement"]["overall"]["exact_match"]["value"] == 1.0


def test_reference_counts_as_one_of_the_humans():
    a, b, machine, _ = _codings(3)
    res = ev.evaluate(
        ev.Resolved("gold:a", a),
        ev.Resolved("m", machine),
        humans=[ev.Resolved("gold:b", b)],
        n_boot=50,
    )
    assert res["human_baseline"]["humans"] == ["gold:a", "gold:b"]
    alone = ev.evaluate(ev.Resolved("gold:a", a), ev.Resolved("m", machine), n_boot=50)
    assert alone["human_baseline"] is None


def test_cluster_map_by_participant_or_transcript(store):
    from qualflow.models import Passage, Transcript, Turn

    for name, participant in (("I-1", "P1"), ("I-2", None)):
        t = Transcript(
            id=f"{name}@x",
            name=name,
            source_path=f"{name}.txt",
            content_hash=name,
            format="txt",
            text="ab",
            participant_id=participant,
            turns=[Turn(index=0, text="ab", char_start=0, char_end=2)],
        )
        p = Passage(
            id=f"p-{name}",
            transcript_id=t.id,
            index=0,
            turn_index=0,
            char_start=0,
            char_end=2,
            text="ab",
        )
        store.save_transcript(t, [p])
    ids = ["p-I-1", "p-I-2"]
    assert ev.cluster_map(store, ids, "participant") == {"p-I-1": "P1", "p-I-2": "I-2"}
    assert ev.cluster_map(store, ids, "transcript") == {"p-I-1": "I-1", "p-I-2": "I-2"}
    assert ev.cluster_map(store, ids, None) is None
    with pytest.raises(ev.EvalError, match="cluster_by"):
        ev.cluster_map(store, ids, "speaker")


def test_calibration_plot_survives_bounds_past_the_estimate():
    """Regression: a bin at accuracy 1.0 whose upper bound rounds below it crashed."""
    from qualflow.report import plot_calibration

    cal = {
        "n": 12,
        "bins": [
            {
                "n": 7,
                "mean_confidence": 0.9,
                "accuracy": 1.0,
                "accuracy_low": 0.7,
                "accuracy_high": 0.9999999999,
            },
            {
                "n": 5,
                "mean_confidence": 0.3,
                "accuracy": 0.2,
                "accuracy_low": None,
                "accuracy_high": None,
            },
        ],
    }
    assert plot_calibration(cal)
