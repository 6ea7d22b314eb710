"""Prefect flow ``agreement_report``: the latest coding runs against gold sets and
reviewed decisions, at span, sentence and turn level, published as a Markdown artifact
and written to report files.

Thin over ``qualflow.evaluate`` (figures, intervals, human baseline) and
``qualflow.report`` (rendering). A coder's coding is everything stored under its
proposal key (coder, model, prompt version, codebook version), so an incremental
run that only coded new passages still reports over all of them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline by default,
os.environ.setdefault("DO_NOT_TRACK", "1")  # set before Prefect reads its settings

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select

from qualflow import processes
from qualflow.db import RunRow
from qualflow.levels import DEFAULT_MIN_SHARE
from qualflow.settings import load_settings
from qualflow.store import ProposalKey, Store, open_store

ARTIFACT_KEY = "qualflow-agreement-report"


def latest_keys(store: Store, limit: int) -> list[ProposalKey]:
    """Proposal keys of the newest finished runs, newest first, one entry per key."""
    with store.session() as s:
        rows = s.scalars(
            select(RunRow)
            .where(RunRow.status.in_(["completed", "partial", "stopped_budget"]))
            .order_by(RunRow.id.desc())
        ).all()
        keys: list[ProposalKey] = []
        for r in rows:
            key = ProposalKey(r.coder, r.model, r.prompt_version, r.codebook_version)
            if key not in keys:
                keys.append(key)
            if len(keys) >= limit:
                break
        return keys


def key_coding(store: Store, key: ProposalKey) -> Any:
    """A proposal key's answers (valid codes per answered passage), with what its coder
    learned from; unanswered passages count as no code in the report."""
    from qualflow.evaluate import resolve_key

    return resolve_key(store, key)


def reviewer_names(store: Store) -> list[str]:
    """Reviewers with finished reviews (their codings resolve as ``reviewer:NAME``)."""
    try:
        from qualflow.review import decisions
    except ImportError:  # the review app is optional here
        return []
    finished = getattr(decisions, "reviewer_span_codings", None) or decisions.reviewer_codings
    # a SpanCoding is finished work when it has a scope, a unit coding when it has units
    return sorted(name for name, c in finished(store).items() if getattr(c, "scope", c))


def references(store: Store) -> list[tuple[Any, list[Any]]]:
    """Each human reference with the other humans of its group (for the human baseline):
    every coder of every gold set, and every reviewer's finished decisions, resolved as
    ``qualflow eval`` resolves them (with their spans)."""
    from qualflow.evaluate import resolve

    groups: list[list[Any]] = []
    for gold_set in sorted(store.gold_sets()):
        coders = store.gold(gold_set)
        groups.append([resolve(store, f"gold:{gold_set}:{c}") for c in sorted(coders)])
    group = [resolve(store, f"reviewer:{name}") for name in reviewer_names(store)]
    if group:
        groups.append(group)
    return [(ref, [h for h in group if h is not ref]) for group in groups for ref in group]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80] or "report"


@task(retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def compare_all(
    store: Store,
    out_dir: Path,
    runs: int,
    n_boot: int,
    min_support: int,
    min_share: float = DEFAULT_MIN_SHARE,
) -> list[dict[str, Any]]:
    """Evaluate every (latest coder key x human reference) pair that shares passages, at
    span, sentence and turn level."""
    from qualflow.evaluate import EvalError, evaluate, grid_for, write_outputs

    logger = get_run_logger()
    outputs = []
    refs = references(store)
    for key in latest_keys(store, runs):
        try:
            coder = key_coding(store, key)
        except EvalError as exc:  # e.g. every answer of the key went to needs_human
            outputs.append({"name": slug(f"{key.coder}-{key.model}"), "error": str(exc)})
            continue
        book = store.codebook(key.codebook_version)
        for ref, humans in refs:
            if not set(ref.coding) & set(coder.coding):
                continue
            name = slug(f"{coder.name}-vs-{ref.name}")
            people = [h for h in humans if set(h.coding) & set(ref.coding)]
            try:
                results = evaluate(
                    ref,
                    coder,
                    codebook=book,
                    humans=people,
                    n_boot=n_boot,
                    min_support=min_support,
                    experiment=name,
                    description=f"{coder.name} against {ref.name}",
                    scope={"codebook_version": key.codebook_version},
                    grid=grid_for(store, ref, coder, *people),
                    min_share=min_share,
                )
                written = write_outputs(results, out_dir)
            except EvalError as exc:
                outputs.append({"name": name, "error": str(exc)})
                continue
            except Exception as exc:  # one broken comparison must not sink the report
                logger.exception("agreement %s failed", name)
                outputs.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
                continue
            outputs.append(
                {"name": name, "markdown": written.markdown, "json": str(written.json_path)}
            )
    return outputs


def combine(outputs: list[dict[str, Any]], runs: list[ProposalKey]) -> str:
    lines = ["# qualflow agreement report", ""]
    if not runs:
        lines.append("No finished coding run yet: run `qualflow run` (or wait for the schedule).")
    elif not outputs:
        lines.append(
            "No human reference shares passages with the latest runs: import a gold set "
            "(`qualflow import-gold`) or finish reviews in the review app."
        )
    for out in outputs:
        if "error" in out:
            lines += [f"## {out['name']}", "", f"Not computed: {out['error']}", ""]
        else:
            lines += [out["markdown"].replace("\n# ", "\n## "), ""]
    return "\n".join(lines).rstrip() + "\n"


@flow(name="agreement-report", log_prints=False)
def agreement_report(
    workspace: str = ".",
    output: str = "reports/agreement-latest.md",
    runs: int = 3,
    n_boot: int = 1000,
    min_support: int = 5,
    min_share: float = DEFAULT_MIN_SHARE,
) -> str:
    """Agreement of the latest coding runs with every gold set and reviewer, at span,
    sentence and turn level.

    Args:
        workspace: Workspace folder (qualflow.toml, data/).
        output: Markdown report file (relative to the workspace); per-pair JSON, HTML
            and Markdown files are written beside it in ``<output stem>/``.
        runs: How many of the newest coder keys (coder, model, prompt, codebook) to report.
        n_boot: Bootstrap resamples for the 95% intervals.
        min_support: Codes with fewer positive passages are flagged as thin.
        min_share: Span level: a reference highlight counts as found when one span of
            the same code covers at least this share of it.

    Returns the path of the report file.
    """
    logger = get_run_logger()
    processes.watch_parent_from_env()
    settings = load_settings(workspace)
    path = Path(output)
    if not path.is_absolute():
        path = settings.workspace / path
    store = open_store(settings)
    try:
        keys = latest_keys(store, runs)
        outputs = compare_all(store, path.parent / path.stem, runs, n_boot, min_support, min_share)
    finally:
        store.close()
    markdown = combine(outputs, keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown, encoding="utf-8")
    logger.info("agreement report: %d comparisons, written to %s", len(outputs), path)
    create_markdown_artifact(
        markdown=markdown,
        key=ARTIFACT_KEY,
        description=f"Agreement of the latest {len(keys)} coder(s) with human references",
    )
    return str(path)
