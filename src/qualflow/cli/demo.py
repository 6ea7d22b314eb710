"""``qualflow demo``: the whole job on the embedded defaults, offline, over examples/.

transcripts -> passages -> candidates -> proposals (similarity baseline and the
embedded local LLM, through the Prefect coding flow) -> review queue (accounts and
assignments) -> agreement against the project's gold set, with the human baseline.
Re-running it is incremental: nothing already coded is coded again.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from qualflow.cli.common import NewWorkspaceOption, console, fail, offline_defaults

DEMO_GOLD_SET = "examples"
DEMO_REVIEWERS = ("reviewer-1", "reviewer-2")


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
            "few passages per minute; re-running the demo carries on where it stopped."
        ),
    ] = 30000,
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
    _step("2/4 the project's gold set for the examples (two human coders)")
    _import_gold(settings)
    _step("3/4 review queue: accounts and assignments")
    accounts = _review_queue(settings)
    _step("4/4 agreement against gold, with the human baseline")
    reports = [_evaluate(settings, kind, n_boot) for kind in kinds if summaries.get(kind)]
    _finish(workspace, summaries, accounts, reports)


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


def _prepare_workspace(workspace: Path, examples: Path):
    from qualflow.cli.workspace import init
    from qualflow.settings import CONFIG_FILE, load_settings

    if not (workspace / CONFIG_FILE).is_file():
        init(workspace, name="qualflow demo (invented example interviews)")
        config = workspace / CONFIG_FILE
        config.write_text(
            config.read_text() + f"\n# demo: participant metadata of the invented examples\n"
            f'participants_file = "{(examples / "participants.tsv").resolve()}"\n'
        )
    return load_settings(workspace)


def _demo_settings(toml: str, examples: Path) -> str:
    """The demo workspace's settings: the defaults, tuned for the embedded CPU model.

    SmolLM2-135M has a 4k context and codes a few passages a minute on 2 cores, so
    the demo sends the 10 best candidates (~900 prompt tokens) instead of the whole
    85-code codebook (~2,700) and caps answers at 300 tokens. A hosted model should
    keep the defaults (whole codebook; see docs/retrieval.md).
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
        result = import_gold(
            store,
            project_dir("eval") / "gold" / "examples.jsonl",
            DEMO_GOLD_SET,
            codebook=load_codebook(settings.codebook),
        )
    except GoldError as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    console.print(f"gold set '{DEMO_GOLD_SET}': {result.summary()}")


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
        report = queue.assign(store, list(DEMO_REVIEWERS), double_share=0.2, seed=0)
        console.print(
            f"assigned {report.passages} new passages to {', '.join(DEMO_REVIEWERS)} "
            f"({report.double_coded} double-coded, blind to each other)"
        )
    finally:
        store.close()
    return accounts


def _evaluate(settings, kind: str, n_boot: int):
    from qualflow.evaluate import EvalError, Experiment, run_experiment
    from qualflow.store import open_store

    experiment = Experiment(
        name=f"demo-{kind}",
        description=f"{kind} coder on the invented example interviews against the "
        "project's gold set (author-a), with author-b as the second human.",
        reference=f"gold:{DEMO_GOLD_SET}:author-a",
        coder=f"proposals:{kind}",
        humans=[f"gold:{DEMO_GOLD_SET}:author-a", f"gold:{DEMO_GOLD_SET}:author-b"],
        baseline="proposals:similarity" if kind != "similarity" else "previous",
        codebook=settings.codebook,
        n_boot=n_boot,
    )
    store = open_store(settings)
    try:
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


def _finish(workspace: Path, summaries: dict, accounts: dict[str, str], reports: list) -> None:
    from rich.table import Table

    _step("summary")
    table = Table(
        "coder",
        "n",
        "precision",
        "recall",
        "F1",
        "kappa",
        "human κ",
        "verdict",
        title="machine vs gold (author-a): micro P/R/F1, pooled kappa, human-human "
        "kappa, 95% bootstrap CIs",
    )
    for output in (r for r in reports if r is not None):
        results = output.results
        overall = results["agreement"]["overall"]
        human = next(
            (
                row
                for row in (results.get("human_baseline") or {}).get("overall", [])
                if row["metric"] == "pooled_kappa"
            ),
            None,
        )
        table.add_row(
            results["scope"]["coder"].removeprefix("proposals:"),
            str(results["agreement"]["n_passages"]),
            _figure(overall["micro_precision"]),
            _figure(overall["micro_recall"]),
            _figure(overall["micro_f1"]),
            _figure(overall["pooled_kappa"]),
            _figure(human["human_human"]) if human else "-",
            human["reading"] if human else "-",
        )
    console.print(table)
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


def _figure(estimate: dict) -> str:
    if estimate.get("value") is None:
        return "undefined"
    if estimate.get("low") is None:
        return f"{estimate['value']:.2f}"
    return f"{estimate['value']:.2f} [{estimate['low']:.2f}, {estimate['high']:.2f}]"
