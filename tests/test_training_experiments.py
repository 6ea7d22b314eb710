"""Experiments that say "train on A, evaluate on B" and "cross-validate by participant".

Uses the invented six-participant study of tests/test_training.py in a real store; the
learned coder is really trained, coding runs through the pipeline.
"""

from __future__ import annotations

import pytest
import yaml

from qualflow import evaluate as ev
from qualflow.coders.factory import CoderError
from tests.test_training import PARTICIPANTS, codebook, make_study


@pytest.fixture
def book_file(tmp_path):
    path = tmp_path / "topics.yaml"
    codes = [{"title": c.title, "description": c.description} for c in codebook().codes]
    path.write_text(yaml.safe_dump({"name": "topics", "codes": codes}))
    return str(path)


def experiment(name: str, book: str, **extra) -> ev.Experiment:
    data = {"reference": "gold:dev", "codebook": book, "n_boot": 50, "min_support": 1, **extra}
    return ev.Experiment.from_mapping(name, data, "test")


def test_importing_gold_then_running_the_learned_coder_no_longer_leaks(
    store, settings, book_file, tmp_path
):
    """Before: preparation imported gold, then `run: [learned]` trained on all of it and
    scored itself on its own training data. Now nothing trains implicitly."""
    make_study(store)
    leaky = ev.Experiment.from_mapping(
        "leaky",
        {"reference": "gold:dev", "coder": "proposals:learned", "codebook": book_file,
         "run": ["learned"], "n_boot": 50},
    )  # fmt: skip
    with pytest.raises(CoderError, match="no learned coder is trained"):
        ev.run_experiment(leaky, store, settings, out_dir=tmp_path / "out")


def test_train_on_some_participants_evaluate_on_the_others(store, settings, book_file, tmp_path):
    make_study(store)
    exp = experiment(
        "split",
        book_file,
        train={"gold": ["dev"], "participants": PARTICIPANTS[:4]},
        test={"participants": PARTICIPANTS[4:]},
        cluster_by="participant",
    )
    assert exp.coder == ev.TRAINED
    out = ev.run_experiment(exp, store, settings, out_dir=tmp_path / "out")
    scope = out.results["scope"]
    assert scope["passages"] == 12  # codable sentences of P5 and P6 only
    (training,) = scope["training"]
    assert training["model"] == "learned:split"
    assert training["transcripts"] == [f"P{i}_interview" for i in range(1, 5)]
    assert scope["split"] == "train participants=P1,P2,P3,P4; test participants=P5,P6"
    coded = out.results["coding"]["coder"]
    assert {store.passage(pid).transcript_id for pid in coded} == {
        t.id for t in store.transcripts() if t.name[:2] in ("P5", "P6")
    }
    assert out.results["agreement"]["overall"]["micro_f1"]["value"] > 0.6
    assert not out.results["problems"]  # training transcripts are no "reference only" passages
    again = ev.run_experiment(exp, store, settings, out_dir=tmp_path / "out")  # incremental
    assert again.results["coding"] == out.results["coding"]


def test_training_on_the_transcripts_evaluated_is_refused_unless_allowed(
    store, settings, book_file, tmp_path
):
    make_study(store)
    exp = experiment("self", book_file, train={"gold": ["dev"]})
    with pytest.raises(ev.EvalError, match=r"learned:self learned from gold:dev on transcripts"):
        ev.run_experiment(exp, store, settings, out_dir=tmp_path / "out")
    exp = experiment(
        "overlap",
        book_file,
        train={"gold": ["dev"], "participants": PARTICIPANTS[:5]},
        test={"participants": PARTICIPANTS[4:]},
    )
    with pytest.raises(ev.EvalError, match=r"evaluated on: P5_interview\. Train on A"):
        ev.run_experiment(exp, store, settings, out_dir=tmp_path / "out")
    exp.allow_overlap = True
    allowed = ev.run_experiment(exp, store, settings, out_dir=tmp_path / "out")
    assert allowed.results["scope"]["passages"] == 12


def test_cross_validation_grouped_by_participant(store, settings, book_file, tmp_path):
    make_study(store)
    exp = experiment(
        "cv",
        book_file,
        train={"gold": ["dev"]},
        cross_validate={"by": "participant", "folds": [["P1", "P2"], ["P3", "P4"], ["P5", "P6"]]},
    )
    out = ev.run_experiment(exp, store, settings, out_dir=tmp_path / "out")
    scope = out.results["scope"]
    assert (
        scope["passages"] == 36
        and scope["split"] == "3 folds by participant: P1,P2 | P3,P4 | P5,P6"
    )
    names = {t.id: t.name for t in store.transcripts()}
    for fold, held in zip(
        scope["training"], (["P1", "P2"], ["P3", "P4"], ["P5", "P6"]), strict=True
    ):
        assert len(fold["transcripts"]) == 4
        assert not {n[:2] for n in fold["transcripts"]} & set(held)
    by_fold = {
        names[store.passage(pid).transcript_id][:2] for pid in out.results["coding"]["coder"]
    }
    assert by_fold == set(PARTICIPANTS)
    k_folds = experiment("cv3", book_file, train={"gold": ["dev"]}, cross_validate={"folds": 3})
    groups = ev.fold_groups(store.transcripts(), {t.id for t in store.transcripts()}, {"folds": 3})
    assert [sorted(t.name[:2] for t in members) for _, members in groups] == [
        ["P1", "P4"], ["P2", "P5"], ["P3", "P6"]
    ]  # fmt: skip
    assert k_folds.cross_validate == {"folds": 3}


def test_experiment_sections_are_checked_before_anything_runs():
    def bad(data, reason):
        with pytest.raises(ev.EvalError, match=reason):
            ev.Experiment.from_mapping("x", {"reference": "gold:dev", **data}, "f.yaml")

    bad({"train": {"gold": ["dev"], "colour": "red"}}, "'train' takes")
    bad({"train": {"gold": ["dev"]}, "coder": "proposals:learned"}, "leave 'coder' out")
    bad({"train": {"coder": "llm"}}, "learned or similarity")
    bad(
        {"train": {"gold": ["dev"]}, "test": {"participants": ["P1"]}, "cross_validate": {}},
        "not both",
    )
    bad(
        {"train": {"gold": ["dev"], "participants": ["P1"]}, "cross_validate": {"folds": 2}},
        "the folds choose",
    )
    bad({"train": {"gold": ["dev"]}, "run": ["learned"]}, "not listed in 'run'")
    bad({"coder": "run:1", "cross_validate": {"folds": 2}}, "need a 'train' section")


def test_experiment_settings_apply_to_the_workspace(settings):
    exp = ev.Experiment.from_mapping(
        "s", {"reference": "gold:x", "coder": "run:1", "settings": {"guide_patterns": ["^x"]}}
    )
    assert ev.experiment_settings(exp, settings).guide_patterns == ["^x"]
    exp.settings = {"colour": "red"}
    with pytest.raises(ev.EvalError, match=r"unknown settings \['colour'\]"):
        ev.experiment_settings(exp, settings)


def test_project_serdif_experiments_are_defined():
    exps = ev.load_experiments()
    split, cv = exps["serdif-learned-split"], exps["serdif-learned-cv"]
    assert split.train["participants"] == [f"P{i}" for i in range(1, 9)]
    assert split.test == {"participants": ["P9", "P10", "P11"]}
    assert [len(f) for f in cv.cross_validate["folds"]] == [3, 3, 2, 3]
    assert split.settings["guide_patterns"] and split.cluster_by == "participant"


@pytest.mark.slow
@pytest.mark.shared
def test_serdif_train_on_some_participants_evaluate_on_another(store, settings, tmp_path):
    """The SERDIF experiment's path on real data, cut down to stay quick: train on P1-P3,
    evaluate on P9. Moderator turns and task lines are context, never training."""
    from tests.conftest import needs_shared

    needs_shared("corpora", "serdif-usability", "taguette-project.sqlite3")
    exp = ev.load_experiments()["serdif-learned-split"]
    exp.name, exp.n_boot = "serdif-small", 50
    exp.train = {**exp.train, "participants": ["P1", "P2", "P3"]}
    exp.test = {"participants": ["P9"]}
    out = ev.run_experiment(exp, store, settings, out_dir=tmp_path / "out")
    scope = out.results["scope"]
    (training,) = scope["training"]
    assert [t[:3] for t in training["transcripts"]] == ["P1_", "P2_", "P3_"]
    assert "not codable" in training["note"]
    codable = {p.id for p in store.passages(codable_only=True)}
    assert set(out.results["coding"]["coder"]) <= codable
    assert all(
        not p.codable
        for p in store.passages()
        if p.text.startswith("3.b Are the query input options clear to you?")
    )
    assert 0.15 < out.results["agreement"]["overall"]["micro_f1"]["value"] < 0.8
