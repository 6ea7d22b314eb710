"""``qualflow demo``: the whole job on the embedded defaults, offline, over examples/.

transcripts -> passages -> candidates -> proposals (similarity baseline and the
embedded local LLM, through the Prefect coding flow) -> review queue (accounts and
assignments, with a double-coded share) -> agreement against the project's
constructed example gold set. The example gold set is constructed data, not human
coding, so it never stands as a human baseline: the demo says "no human baseline
measured" until the two demo reviewers have coded the double-coded share in the
review app, and from then on reports their human-human agreement next to the
machine's. Re-running it is incremental: nothing already coded is coded again.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from qualflow.cli.common import (
    NewWorkspaceOption,
    adopt_codebook,
    codebook_source,
    console,
    fail,
    offline_defaults,
)

DEMO_GOLD_SET = "examples"
DEMO_REFERENCE = f"gold:{DEMO_GOLD_SET}:constructed-a"
DEMO_REVIEWERS = ("reviewer-1", "reviewer-2")
DOUBLE_SHARE = 0.2


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    workspace: NewWorkspaceOption = Path("demo-workspace"),
    coders: Annotated[
        str, typer.Option(help="Comma-separated coders to run: similarity, llm, learned.")
    ] = "similarity,llm",
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 1000,
    llm_tokens: Annotated[
        int,
        typer.Option(
            help="Token budget of the LLM run (0 = none). The embedded CPU model codes a "
            "chunk in a minute or more; re-running the demo carries on where it stopped."
        ),
    ] = 8000,
) -> None:
    """Run the main job on examples/ offline: ingest, code, queue, measure agreement."""
    offline_defaults()
    from qualflow.resources import project_dir

    kinds = [c.strip() for c in coders.split(",") if c.strip()]
    examples = project_dir("examples")
    settings = _prepare_workspace(workspace, examples)
    _step("1/4 ingest, segment, index and code (Prefect flow, one run per coder)")
    summaries = {
        kind: _code(kind, examples, workspace, llm_tokens if kind == "llm" else 0) for kind in kinds
    }
    _step("2/4 the project's example gold set (constructed example data, not human coding)")
    _import_gold(settings)
    _step("3/4 review queue: accounts and assignments, a double-coded share")
    accounts = _review_queue(settings)
    _step("4/4 agreement against the example gold set; human baseline from the reviewers")
    humans = _double_coders(settings)
    reports = [_evaluate(settings, kind, n_boot, humans) for kind in kinds if summaries.get(kind)]
    _finish(workspace, summaries, accounts, reports, humans)


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


def _prepare_workspace(workspace: Path, examples: Path):
    from qualflow.cli.workspace import init
    from qualflow.settings import CONFIG_FILE, load_settings

    if not (workspace / CONFIG_FILE).is_file():
        init(workspace, name="qualflow demo (invented example interviews)")
        config = workspace / CONFIG_FILE
        config.write_text(_demo_settings(config.read_text(), examples))
    return load_settings(workspace)


def _demo_settings(toml: str, examples: Path) -> str:
    """The demo workspace's settings: the defaults, tuned for the embedded CPU model.

    SmolLM2-135M has a 4k context and codes a chunk in a minute or more on 2 cores,
    so the demo sends the 10 best candidates of each chunk instead of the whole 85-code
    codebook (about 3,900 prompt tokens with its answer schema: nearly the whole
    context) and caps answers at 300 tokens. A hosted model should keep the defaults
    (whole codebook; see docs/retrieval.md and docs/spans.md).
    """
    overrides = {
        "retrieval_k": "10",
        "llm_max_tokens": "300",
        "participants_file": f'"{(examples / "participants.tsv").resolve()}"',
    }
    lines = [line for line in toml.splitlines() if line.split("=")[0].strip() not in overrides]
    lines.append("\n# demo overrides (see qualflow/cli/demo.py: _demo_settings)")
    lines += [f"{key} = {value}" for key, value in overrides.items()]
    return "\n".join(lines) + "\n"


def _code(kind: str, examples: Path, workspace: Path, max_tokens: int) -> dict | None:
    from qualflow.cli.runs import run

    budget = f", token budget {max_tokens:,}" if max_tokens else ""
    console.print(f"[bold]coder: {kind}{budget}[/]")
    try:
        run(files=[examples], coder=kind, workspace=workspace, max_tokens=max_tokens or None)
    except typer.Exit:
        console.print(f"[red]the {kind} run failed; the demo goes on without it[/]")
        return None
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    store = open_store(load_settings(workspace))
    try:
        sets = [ps for ps in store.proposal_sets() if ps.coder == kind]
        return {
            "passages": len(sets),
            "ok": sum(1 for ps in sets if ps.status == "ok"),
            "needs_human": sum(1 for ps in sets if ps.status == "needs_human"),
        }
    finally:
        store.close()


def _import_gold(settings) -> None:
    from qualflow.codebook import load_codebook
    from qualflow.gold import GoldError, import_gold
    from qualflow.resources import project_dir
    from qualflow.store import open_store

    store = open_store(settings)
    try:
        codebook = store.active_codebook() or load_codebook(settings.codebook)
        result = import_gold(
            store,
            project_dir("eval") / "gold" / "examples.jsonl",
            DEMO_GOLD_SET,
            codebook=codebook,
        )
        console.print(f"gold set '{DEMO_GOLD_SET}': {result.summary()}", markup=False)
        adopt_codebook(store, codebook.version, activate=False)
    except GoldError as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()


def _review_queue(settings) -> dict[str, str]:
    """Create the demo accounts once (random passwords, saved 0600) and assign."""
    from qualflow.review import auth, queue
    from qualflow.store import open_store

    store = open_store(settings)
    accounts_file = settings.data_dir / "demo-accounts.txt"
    accounts: dict[str, str] = {}
    try:
        if not auth.users(store):
            accounts = {"admin": secrets.token_urlsafe(9)}
            accounts |= {name: secrets.token_urlsafe(9) for name in DEMO_REVIEWERS}
            for name, password in accounts.items():
                auth.add_user(store, name, password, "admin" if name == "admin" else "reviewer")
            accounts_file.write_text("".join(f"{n}\t{p}\n" for n, p in accounts.items()))
            accounts_file.chmod(0o600)
        report = queue.assign(
            store, list(DEMO_REVIEWERS), double_share=DOUBLE_SHARE, seed=0, blind_machine=True
        )
        console.print(
            f"assigned {report.passages} new passages to {', '.join(DEMO_REVIEWERS)} "
            f"({report.double_coded} double-coded: blind to each other and to the machine)"
        )
    finally:
        store.close()
    return accounts


def _double_coders(settings) -> list[str]:
    """The human coders for the baseline: the demo reviewers, once both have finished
    reviews of the same passages (the double-coded share); else none."""
    from qualflow.review.decisions import reviewer_codings
    from qualflow.store import open_store

    store = open_store(settings)
    try:
        codings = reviewer_codings(store)
    finally:
        store.close()
    done = [codings.get(name, {}) for name in DEMO_REVIEWERS]
    shared = set(done[0]).intersection(*done[1:])
    return [f"reviewer:{name}" for name in DEMO_REVIEWERS] if shared else []


def _evaluate(settings, kind: str, n_boot: int, humans: list[str]):
    from qualflow.evaluate import EvalError, Experiment, run_experiment
    from qualflow.store import open_store

    experiment = Experiment(
        name=f"demo-{kind}",
        description=f"{kind} coder on the invented example interviews against the "
        "project's constructed example gold set (constructed-a; not human coding). "
        "Human baseline: the demo reviewers' double-coded share, once they coded it.",
        reference=DEMO_REFERENCE,
        coder=f"proposals:{kind}",
        humans=humans,
        baseline="proposals:similarity" if kind != "similarity" else "previous",
        n_boot=n_boot,
    )
    store = open_store(settings)
    try:
        active = store.active_codebook()
        experiment.codebook = codebook_source(settings, active) if active else settings.codebook
        return run_experiment(
            experiment,
            store,
            settings,
            out_dir=settings.workspace / "reports",
            prepare_first=False,
        )
    except EvalError as exc:
        console.print(f"[yellow]no agreement report for {kind}: {exc}[/]")
        return None
    finally:
        store.close()


def _finish(
    workspace: Path, summaries: dict, accounts: dict[str, str], reports: list, humans: list[str]
) -> None:
    _step("summary")
    console.print(summary_table([r.results for r in reports if r is not None]))
    _human_baseline_note(reports, humans)
    reported = {r.results["scope"]["coder"].removeprefix("proposals:") for r in reports if r}
    for kind, counts in summaries.items():
        if counts and kind not in reported:
            console.print(
                f"{kind}: no agreement figure: {counts['ok']} of {counts['passages']} coded "
                f"passages validated ({counts['needs_human']} need a human; see the run "
                "summary above)"
            )
    for output in (r for r in reports if r is not None):
        console.print(f"report: {output.html_path}  (also .json, .md)")
    accounts_file = workspace / "data" / "demo-accounts.txt"
    if not accounts and accounts_file.is_file():
        console.print(f"review accounts: see {accounts_file}")
    if accounts:
        console.print(f"review accounts (saved in {workspace / 'data' / 'demo-accounts.txt'}):")
        for name, password in accounts.items():
            console.print(f"  {name:<12} {password}")
    console.print(
        f"\nreview the queue:  .venv/bin/qualflow review -w {workspace} "
        "--host 127.0.0.1 --port 8000"
    )


def summary_table(results: list[dict]):
    """One row per coder and level (span characters, span highlights, sentence, turn):
    what it rests on, coverage, micro P/R/F1 and pooled kappa with 95% intervals over
    every reference unit (unanswered text counted as no code), the human-human F1 and
    the machine-vs-humans reading."""
    from rich.table import Table

    from qualflow.report import level_rows, reading_text

    table = Table(
        "coder",
        "level",
        "rests on",
        "coverage",
        "precision",
        "recall",
        "F1",
        "kappa",
        "human-human F1",
        "vs humans",
        title="machine vs the constructed example gold set (constructed-a, not human "
        "coding) at span, sentence and turn level: micro P/R/F1 and pooled kappa over "
        "all the reference's text (unanswered = no code), 95% bootstrap CIs",
    )
    for res in results:
        coder = res["scope"]["coder"].removeprefix("proposals:")
        for i, row in enumerate(level_rows(res) or _sentence_only(res)):
            table.add_row(
                coder if i == 0 else "",
                row["label"],
                row["rests_on"],
                _share(row["coverage"]),
                _figure(row["precision"]),
                _figure(row["recall"]),
                _figure(row["f1"]),
                _figure(row["kappa"]) if row["kappa"] else "-",
                _figure(row["human_f1"]) if row["human_f1"] else "not measured",
                reading_text(row["reading"]) if row["reading"] else "-",
            )
    return table


def _sentence_only(results: dict) -> list[dict]:
    """The sentence row when a report has no span and turn levels."""
    overall = results["agreement"]["overall"]
    human = (results.get("human_agreement") or {}).get("overall") or {}
    reading = next(
        (
            r
            for r in (results.get("human_baseline") or {}).get("overall", [])
            if r["metric"] == "micro_f1"
        ),
        None,
    )
    return [
        {
            "label": "sentence",
            "rests_on": f"{results['agreement']['n_passages']} sentences",
            "coverage": (results.get("coverage") or {}).get("share"),
            "precision": overall["micro_precision"],
            "recall": overall["micro_recall"],
            "f1": overall["micro_f1"],
            "kappa": overall["pooled_kappa"],
            "human_f1": human.get("micro_f1"),
            "reading": reading,
        }
    ]


def _share(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.0f}%"


def _human_baseline_note(reports: list, humans: list[str]) -> None:
    """Say where the human baseline stands and how a team measures one."""
    shown = next((r for r in reports if r is not None), None)
    note = shown.results["scope"].get("human_baseline") if shown else None
    if humans and note and not note.startswith("no human"):
        console.print(f"human baseline: {note} (the review app's double-coded share)", markup=False)
        return
    console.print(
        "human baseline: no human baseline measured. The example gold set is constructed "
        "data, not two human coders, so it cannot give one. To measure one, "
        f"{' and '.join(DEMO_REVIEWERS)} each code the double-coded passages in the "
        "review app (blind to each other and to the machine) and press Done; run the "
        "demo again and the report shows their agreement next to the machine's (in a "
        "study: `qualflow assign --double 0.2 --blind-machine`, then an experiment "
        "with humans: [reviewer:NAME, reviewer:NAME]).",
        markup=False,
    )


def _figure(estimate: dict | None) -> str:
    if not estimate or estimate.get("value") is None:
        return "undefined"
    if estimate.get("low") is None:
        return f"{estimate['value']:.2f}"
    return f"{estimate['value']:.2f} [{estimate['low']:.2f}, {estimate['high']:.2f}]"
