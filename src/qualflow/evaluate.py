"""The eval harness: experiments (coder x codebook x gold set) -> results JSON, HTML, Markdown.

An experiment names codings by *spec* strings, resolved against the store:

- ``gold:SET:CODER`` one coder of a gold set (``gold:SET`` if the set has one coder);
- ``run:ID`` a coding run's valid codes (with each proposal's confidence);
- ``proposals:KIND`` the newest proposal set per passage of a coder kind
  (``similarity``, ``learned``, ``llm``, ...) under the experiment's codebook version;
- ``reviewer:NAME`` a reviewer's finished review decisions;
- ``previous`` (baseline only) the coder's coding stored in the previous results
  file of the same experiment, for regression tracking.

Before it evaluates, an experiment may ingest transcripts, import gold JSONL files and
run coders (``prepare``); evaluation itself only reads codings (the data path is
one-way). The report leads with the per-code table; see ``qualflow.report``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qualflow import agreement as ag
from qualflow.models import Codebook, Coding

if TYPE_CHECKING:
    from qualflow.settings import Settings
    from qualflow.store import Store

log = logging.getLogger(__name__)

SCHEMA = "qualflow.eval/1"
RESULTS_KEYS = (
    "schema",
    "experiment",
    "description",
    "created_at",
    "scope",
    "agreement",
    "human_baseline",
    "human_agreement",
    "multi_coder",
    "baseline",
    "calibration",
    "cooccurrence",
    "problems",
    "coding",
)
"""Top-level keys of every results JSON (tests pin them; add, never rename)."""


class EvalError(ValueError):
    """An experiment that cannot run: unknown spec, missing gold set, no shared passages."""


# --------------------------------------------------------------------------- experiments


@dataclass
class Experiment:
    """Which coder against which gold, on which codebook; see eval/experiments.yaml."""

    name: str
    reference: str
    coder: str
    description: str = ""
    codebook: str = "benchmark-practices"
    segmentation: str = "sentence"
    transcripts: list[str] = field(default_factory=list)
    gold: list[dict[str, Any]] = field(default_factory=list)
    taguette: list[dict[str, Any]] = field(default_factory=list)
    run: list[str] = field(default_factory=list)
    humans: list[str] = field(default_factory=list)
    baseline: str | None = None
    margin: float = 0.1
    n_boot: int = 1000
    seed: int = 0
    min_support: int = 5
    bins: int = 5
    cluster_by: str | None = None  # "participant" or "transcript": resample those

    @classmethod
    def from_mapping(cls, name: str, data: Mapping[str, Any], source: str = "") -> Experiment:
        known = set(cls.__dataclass_fields__) - {"name"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EvalError(f"{source}: experiment '{name}': unknown keys {unknown}")
        for key in ("reference", "coder"):
            if not isinstance(data.get(key), str):
                raise EvalError(
                    f"{source}: experiment '{name}': '{key}' (a coding spec) is required"
                )
        return cls(name=name, **dict(data))


def load_experiments(path: Path | str | None = None) -> dict[str, Experiment]:
    """Experiments from a YAML file (default: the project's eval/experiments.yaml)."""
    import yaml

    if path is None:
        from qualflow.resources import project_dir

        path = project_dir("eval") / "experiments.yaml"
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EvalError(f"{path}: cannot read experiments ({exc})") from exc
    items = raw.get("experiments") if isinstance(raw, dict) else None
    if not isinstance(items, dict):
        raise EvalError(f"{path}: expected a mapping 'experiments: {{name: {{...}}}}'")
    return {n: Experiment.from_mapping(n, d or {}, str(path)) for n, d in items.items()}


# --------------------------------------------------------------------------- codings


@dataclass
class Resolved:
    """A coding with its provenance (and, for machine coders, per-tag confidences)."""

    name: str
    coding: Coding
    model: str = ""
    prompt_version: str = ""
    codebook_version: str = ""
    confidences: list[tuple[str, str, float]] = field(default_factory=list)


def resolve(
    store: Store,
    spec: str,
    *,
    codebook_version: str | None = None,
    previous: Mapping[str, Any] | None = None,
) -> Resolved:
    """The coding a spec names (see the module docstring); EvalError if it names none."""
    kind, _, rest = spec.partition(":")
    if kind == "gold":
        return _gold(store, spec, rest)
    if kind == "run":
        if not rest.isdigit():
            raise EvalError(f"'{spec}': a run spec is run:<id>")
        return _proposals(store, spec, run_id=int(rest))
    if kind == "proposals":
        if not rest:
            raise EvalError(f"'{spec}': say which coder kind, e.g. proposals:similarity")
        return _proposals(store, spec, coder=rest, codebook_version=codebook_version)
    if kind == "reviewer":
        from qualflow.review.decisions import reviewer_codings

        codings = reviewer_codings(store)
        if rest not in codings:
            raise EvalError(f"'{spec}': no finished review by '{rest}' (have {sorted(codings)})")
        return Resolved(spec, codings[rest])
    if kind == "previous":
        if not previous:
            raise EvalError("'previous': no previous results file for this experiment")
        stored = previous.get("coding", {}).get("coder") or {}
        return Resolved(
            f"previous ({previous.get('created_at', '?')})",
            {pid: frozenset(cs) for pid, cs in stored.items()},
            model=previous.get("scope", {}).get("model", ""),
        )
    raise EvalError(f"'{spec}': unknown coding spec (gold:, run:, proposals:, reviewer:)")


def _gold(store: Store, spec: str, rest: str) -> Resolved:
    gold_set, _, coder = rest.partition(":")
    codings = store.gold(gold_set)
    if not codings:
        raise EvalError(f"'{spec}': no gold set '{gold_set}' (have {sorted(store.gold_sets())})")
    if not coder:
        if len(codings) != 1:
            raise EvalError(f"'{spec}': gold set has coders {sorted(codings)}; name one")
        coder = next(iter(codings))
    if coder not in codings:
        raise EvalError(f"'{spec}': no coder '{coder}' in gold set (have {sorted(codings)})")
    return Resolved(f"{gold_set}:{coder}", codings[coder])


def _proposals(
    store: Store,
    spec: str,
    *,
    run_id: int | None = None,
    coder: str | None = None,
    codebook_version: str | None = None,
) -> Resolved:
    from sqlalchemy import select

    from qualflow.db import ProposalRow, ProposalSetRow

    with store.session() as s:
        q = select(ProposalSetRow).where(ProposalSetRow.status == "ok")
        if run_id is not None:
            q = q.where(ProposalSetRow.run_id == run_id)
        if coder is not None:
            q = q.where(ProposalSetRow.coder == coder)
        if codebook_version:
            q = q.where(ProposalSetRow.codebook_version == codebook_version)
        sets = {r.passage_id: r for r in s.scalars(q.order_by(ProposalSetRow.id))}  # newest wins
        if not sets:
            raise EvalError(f"'{spec}': no proposal sets found")
        ids = [r.id for r in sets.values()]
        props = s.scalars(
            select(ProposalRow).where(ProposalRow.set_id.in_(ids), ProposalRow.valid.is_(True))
        ).all()
        first = next(iter(sets.values()))
        resolved = Resolved(
            spec,
            {pid: frozenset() for pid in sets},
            model=first.model,
            prompt_version=first.prompt_version,
            codebook_version=first.codebook_version,
        )
    codes: dict[str, set[str]] = {}
    for p in props:
        codes.setdefault(p.passage_id, set()).add(p.code)
        resolved.confidences.append((p.passage_id, p.code, float(p.confidence)))
    resolved.coding.update({pid: frozenset(cs) for pid, cs in codes.items() if pid in sets})
    return resolved


# --------------------------------------------------------------------------- evaluation


def cooccurrence(
    reference: Coding, coder: Coding, passages: Sequence[str], codes: Sequence[str]
) -> list[list[int]]:
    """Passages where the reference has code i and the coder has code j (confusion)."""
    col = {c: j for j, c in enumerate(codes)}
    matrix = [[0] * len(codes) for _ in codes]
    for pid in passages:
        for a in reference[pid]:
            for b in coder[pid]:
                if a in col and b in col:
                    matrix[col[a]][col[b]] += 1
    return matrix


def evaluate(
    reference: Resolved,
    coder: Resolved,
    *,
    codebook: Codebook | None = None,
    humans: Sequence[Resolved] = (),
    baseline: Resolved | None = None,
    margin: float = 0.1,
    n_boot: int = 1000,
    seed: int = 0,
    min_support: int = 5,
    bins: int = 5,
    passages: Sequence[str] | None = None,
    experiment: str = "adhoc",
    description: str = "",
    scope: Mapping[str, Any] | None = None,
    clusters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every figure of a report, as a JSON-ready dict (keys: ``RESULTS_KEYS``).

    ``humans``: human coders for the human baseline (human-human next to
    machine-human); the reference counts as one of them when not listed. With fewer
    than two humans there is no baseline (and the report says so by omission).
    ``clusters`` (passage id -> participant, say) resamples clusters, not passages.
    """
    codes = codebook.titles() if codebook else None
    categories: Any = codebook if codebook else True
    pair = ag.compare(
        reference.coding,
        coder.coding,
        name_a=reference.name,
        name_b=coder.name,
        codes=codes,
        n_boot=n_boot,
        seed=seed,
        min_support=min_support,
        categories=categories,
        passages=passages,
        clusters=clusters,
    )
    shared = ag.shared_passages(reference.coding, coder.coding)
    if passages is not None:
        keep = set(passages)
        shared = [p for p in shared if p in keep]
    if not shared:
        raise EvalError(
            f"'{reference.name}' and '{coder.name}' have no passage in common: "
            "check the segmentation and the transcripts of both"
        )
    problems: list[str] = []
    if pair.only_a:
        problems.append(f"{pair.only_a} passages coded by {reference.name} only (left out)")
    if pair.only_b:
        problems.append(f"{pair.only_b} passages coded by {coder.name} only (left out)")
    out: dict[str, Any] = dict.fromkeys(RESULTS_KEYS)
    out.update(
        schema=SCHEMA,
        experiment=experiment,
        description=description,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        agreement=pair.to_dict(),
        problems=problems,
    )
    if humans and reference.name not in {h.name for h in humans}:
        humans = [reference, *humans]  # the reference is one of the human coders
    human_codings = {h.name: {p: h.coding[p] for p in shared if p in h.coding} for h in humans}
    if len(humans) >= 2:
        covered = ag.shared_passages(*human_codings.values(), coder.coding)
        if covered:
            reading = ag.human_baseline(
                human_codings,
                {p: coder.coding[p] for p in covered},
                machine_name=coder.name,
                codes=codes,
                margin=margin,
                n_boot=n_boot,
                seed=seed,
                clusters=clusters,
            )
            out["human_baseline"] = reading.to_dict()
            h1, h2 = humans[0], humans[1]
            out["human_agreement"] = ag.compare(
                h1.coding,
                h2.coding,
                name_a=h1.name,
                name_b=h2.name,
                codes=codes,
                n_boot=n_boot,
                seed=seed,
                min_support=min_support,
                passages=covered,
                clusters=clusters,
            ).to_dict()
            out["multi_coder"] = ag.compare_many(
                {**human_codings, coder.name: {p: coder.coding[p] for p in covered}},
                codes=codes,
                n_boot=n_boot,
                seed=seed,
                min_support=min_support,
                clusters=clusters,
            ).to_dict()
        else:
            problems.append("the human coders share no passage with the coder: no human baseline")
    if baseline is not None:
        common = ag.shared_passages(reference.coding, coder.coding, baseline.coding)
        common = [p for p in common if p in set(shared)]
        if common:
            cmp = ag.compare_runs(
                {p: reference.coding[p] for p in common},
                {p: coder.coding[p] for p in common},
                {p: baseline.coding[p] for p in common},
                names=(reference.name, coder.name, baseline.name),
                codes=codes,
                n_boot=n_boot,
                seed=seed,
                clusters=clusters,
            )
            out["baseline"] = {
                "name": baseline.name,
                "model": baseline.model,
                "comparison": cmp.to_dict(),
            }
        else:
            problems.append(f"baseline '{baseline.name}' shares no passage: no comparison")
    if coder.confidences:
        shared_set = set(shared)
        pairs = [
            (conf, code in reference.coding[pid])
            for pid, code, conf in coder.confidences
            if pid in shared_set
        ]
        if pairs:
            out["calibration"] = ag.calibration(
                pairs, bins=bins, n_boot=n_boot, seed=seed
            ).to_dict()
    top = [c["code"] for c in sorted(pair.to_dict()["codes"], key=lambda c: -c["support"])]
    top = [c for c in top if pair.code(c).support > 0][:25]
    out["cooccurrence"] = {
        "codes": top,
        "matrix": cooccurrence(reference.coding, coder.coding, shared, top),
        "rows": reference.name,
        "columns": coder.name,
    }
    out["scope"] = {
        "passages": len(shared),
        "reference": reference.name,
        "coder": coder.name,
        "model": coder.model,
        "prompt_version": coder.prompt_version,
        "codebook": codebook.name if codebook else None,
        "codebook_version": codebook.version if codebook else coder.codebook_version,
        "codes_in_codebook": len(codes) if codes else None,
        "n_boot": n_boot,
        "seed": seed,
        "resampling": (
            f"{len({clusters.get(p, p) for p in shared})} clusters" if clusters else "passages"
        ),
        "min_support": min_support,
        "margin": margin,
        "humans": [h.name for h in humans],
        "baseline": baseline.name if baseline else None,
        **dict(scope or {}),
    }
    out["coding"] = {
        "reference": {p: sorted(reference.coding[p]) for p in shared},
        "coder": {p: sorted(coder.coding[p]) for p in shared},
    }
    return out


# --------------------------------------------------------------------------- running


@dataclass
class ExperimentOutput:
    name: str
    results: dict[str, Any]
    json_path: Path
    html_path: Path
    markdown_path: Path
    markdown: str


def prepare(experiment: Experiment, store: Store, settings: Settings) -> list[str]:
    """Ingest the experiment's transcripts, import its gold sets, run its coders.

    Returns problems worth showing (bad lines of a gold file, bad transcripts).
    """
    from qualflow.codebook import load_codebook
    from qualflow.gold import import_gold

    problems: list[str] = []
    if experiment.transcripts:
        from qualflow.ingest import ingest_paths

        report = ingest_paths(
            store,
            [_path(p) for p in experiment.transcripts],
            settings,
            segmentation=experiment.segmentation,
        )
        problems += [f"ingest {f.path}: {f.reason}" for f in report.errors]
    book = load_codebook(experiment.codebook)
    store.save_codebook(book)
    for item in experiment.taguette:
        from qualflow.exchange.taguette import import_taguette

        result = import_taguette(
            store,
            _path(item["file"]),
            segmentation=experiment.segmentation,
            gold_set=item.get("set"),
            min_overlap=float(item.get("min_overlap", 0.5)),
        )
        problems += result.problems
    for item in experiment.gold:
        report = import_gold(
            store,
            _path(item["file"]),
            item["set"],
            coder=item.get("coder"),
            codebook=book,
            segmentation=experiment.segmentation,
            min_overlap=float(item.get("min_overlap", 0.5)),
        )
        problems += report.problems
    for kind in experiment.run:
        from qualflow.pipeline import code_paths

        run_settings = settings.model_copy(
            update={"segmentation": experiment.segmentation, "codebook": experiment.codebook}
        )
        summary = code_paths(run_settings, store, coder=kind, codebook=experiment.codebook)
        log.info("eval: ran coder %s (%s passages coded)", kind, summary.coded)
        problems += [f"{f.stage} {f.subject}: {f.reason}" for f in summary.failures]
    return problems


def _path(p: str) -> Path:
    """Paths in experiments are relative to the project root (or absolute)."""
    from qualflow.resources import _REPO_ROOT

    path = Path(p)
    if path.is_absolute():
        return path
    import os

    root = Path(os.environ.get("QUALFLOW_PROJECT_ROOT", _REPO_ROOT))
    return root / path


def run_experiment(
    experiment: Experiment,
    store: Store,
    settings: Settings,
    *,
    out_dir: Path | str,
    prepare_first: bool = True,
) -> ExperimentOutput:
    """Prepare (optional), evaluate, and write ``<name>.json``, ``.html`` and ``.md``."""
    from qualflow.codebook import load_codebook

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = prepare(experiment, store, settings) if prepare_first else []
    book = load_codebook(experiment.codebook)
    json_path = out_dir / f"{experiment.name}.json"
    previous = None
    if json_path.is_file():
        try:
            previous = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
    version = book.version
    reference = resolve(store, experiment.reference, codebook_version=version)
    coder = resolve(store, experiment.coder, codebook_version=version)
    humans = [resolve(store, h, codebook_version=version) for h in experiment.humans]
    baseline = None
    if experiment.baseline:
        try:
            baseline = resolve(
                store, experiment.baseline, codebook_version=version, previous=previous
            )
        except EvalError as exc:
            if experiment.baseline != "previous":
                raise
            problems.append(f"no baseline yet: {exc}")
    segs = {p.segmentation for p in store.passages(ids=list(reference.coding)[:50])}
    clusters = cluster_map(store, list(reference.coding), experiment.cluster_by)
    results = evaluate(
        reference,
        coder,
        codebook=book,
        humans=humans,
        baseline=baseline,
        margin=experiment.margin,
        n_boot=experiment.n_boot,
        seed=experiment.seed,
        min_support=experiment.min_support,
        bins=experiment.bins,
        experiment=experiment.name,
        description=experiment.description,
        scope={"segmentation": ", ".join(sorted(segs)) or experiment.segmentation},
        clusters=clusters,
    )
    results["problems"] = problems + results["problems"]
    return write_outputs(results, out_dir)


def cluster_map(store: Store, passage_ids: Sequence[str], by: str | None) -> dict[str, str] | None:
    """Passage id -> participant (or transcript name) for a clustered bootstrap."""
    if not by:
        return None
    if by not in {"participant", "transcript"}:
        raise EvalError(f"cluster_by must be 'participant' or 'transcript', not '{by}'")
    transcripts = {t.id: t for t in store.transcripts(current_only=False)}
    out = {}
    for p in store.passages(ids=list(passage_ids)):
        t = transcripts.get(p.transcript_id)
        label = (t.participant_id if by == "participant" else None) or (t.name if t else None)
        out[p.id] = label or p.transcript_id
    return out


def write_outputs(results: dict[str, Any], out_dir: Path | str) -> ExperimentOutput:
    """Write the JSON, HTML and Markdown of one results dict."""
    from qualflow.report import render_html, render_markdown

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = results["experiment"]
    json_path = out_dir / f"{name}.json"
    html_path = out_dir / f"{name}.html"
    md_path = out_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    html_path.write_text(render_html(results), encoding="utf-8")
    markdown = render_markdown(results)
    md_path.write_text(markdown, encoding="utf-8")
    return ExperimentOutput(name, results, json_path, html_path, md_path, markdown)
