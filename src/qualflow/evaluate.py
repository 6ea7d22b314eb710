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
    settings: dict[str, Any] = field(default_factory=dict)
    """Settings of the experiment's workspace (e.g. ``guide_patterns``), over its own."""
    train: dict[str, Any] | None = None
    """Train a coder first: ``{coder: learned|similarity, gold: [SET], decisions: false,
    until: TIME, participants: [...] | transcripts: [...], name: NAME}``; the experiment's
    coder is then that trained coder."""
    test: dict[str, Any] | None = None
    """With ``train``: ``{participants: [...]}`` or ``{transcripts: [...]}``; only these
    are coded and evaluated (train on A, evaluate on B)."""
    cross_validate: dict[str, Any] | None = None
    """With ``train``: ``{by: participant|transcript, folds: K | [[P1, P2], ...]}``; each
    fold is coded by a coder trained on the other folds, and the out-of-fold codings
    are evaluated together."""
    allow_overlap: bool = False
    """Evaluate even when a coder learned from (or was shown) reference transcripts."""

    @classmethod
    def from_mapping(cls, name: str, data: Mapping[str, Any], source: str = "") -> Experiment:
        known = set(cls.__dataclass_fields__) - {"name"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EvalError(f"{source}: experiment '{name}': unknown keys {unknown}")
        data = dict(data)
        if data.get("train") is None and (data.get("test") or data.get("cross_validate")):
            raise EvalError(
                f"{source}: experiment '{name}': 'test' and 'cross_validate' need a 'train' "
                "section (what the coder learns from)"
            )
        if data.get("train") is not None:
            _check_training_keys(name, data, source)
            data.setdefault("coder", TRAINED)
        for key in ("reference", "coder"):
            if not isinstance(data.get(key), str):
                raise EvalError(
                    f"{source}: experiment '{name}': '{key}' (a coding spec) is required"
                )
        return cls(name=name, **data)


TRAINED = "trained"
"""The coder spec of an experiment with ``train``: the coder it trains."""
_TRAIN_KEYS = {"coder", "gold", "decisions", "until", "participants", "transcripts", "name"}


def _check_training_keys(name: str, data: Mapping[str, Any], source: str) -> None:
    """An experiment's train/test/cross_validate sections, checked before anything runs."""
    where = f"{source}: experiment '{name}'"
    train = data["train"]
    if not isinstance(train, Mapping) or set(train) - _TRAIN_KEYS:
        raise EvalError(f"{where}: 'train' takes {sorted(_TRAIN_KEYS)}")
    if train.get("coder", "learned") not in ("learned", "similarity"):
        raise EvalError(f"{where}: train.coder must be learned or similarity")
    if data.get("coder", TRAINED) != TRAINED:
        raise EvalError(f"{where}: with 'train', the coder is the trained one: leave 'coder' out")
    test, folds = data.get("test"), data.get("cross_validate")
    if test is not None and folds is not None:
        raise EvalError(f"{where}: give 'test' (a split) or 'cross_validate', not both")
    if test is not None and (
        not isinstance(test, Mapping) or set(test) - {"participants", "transcripts"}
    ):
        raise EvalError(f"{where}: 'test' takes participants or transcripts")
    if folds is not None and (
        not isinstance(folds, Mapping)
        or folds.get("by", "participant") not in ("participant", "transcript")
        or set(folds) - {"by", "folds"}
    ):
        raise EvalError(f"{where}: 'cross_validate' takes by (participant|transcript) and folds")
    if folds is not None and (train.get("participants") or train.get("transcripts")):
        raise EvalError(f"{where}: with 'cross_validate' the folds choose the training data")
    if train.get("coder", "learned") in data.get("run", []):
        raise EvalError(f"{where}: the trained coder is run by 'train', not listed in 'run'")


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

    Transcripts and imports are segmented with the experiment's settings (interviewer
    turns, guide lines). Training (``train``) happens in :func:`run_experiment`, after
    the reference is known. Returns problems worth showing (bad lines of a gold file,
    bad transcripts).
    """
    from qualflow.gold import import_gold
    from qualflow.segment import study_segmenter

    settings = experiment_settings(experiment, settings)
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
    book = experiment_codebook(experiment)
    store.save_codebook(book)
    for item in experiment.taguette:
        from qualflow.exchange.taguette import import_taguette

        result = import_taguette(
            store,
            _path(item["file"]),
            segmentation=experiment.segmentation,
            gold_set=item.get("set"),
            min_overlap=float(item.get("min_overlap", 0.5)),
            interviewer_speakers=settings.interviewer_speakers,
            code_interviewer=settings.code_interviewer,
            segmenter=study_segmenter(settings),
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
            update={
                "segmentation": experiment.segmentation,
                "codebook": str(_codebook_source(experiment)),
            }
        )
        summary = code_paths(
            run_settings, store, coder=kind, codebook=str(_codebook_source(experiment))
        )
        log.info("eval: ran coder %s (%s passages coded)", kind, summary.coded)
        problems += [f"{f.stage} {f.subject}: {f.reason}" for f in summary.failures]
    return problems


def experiment_settings(experiment: Experiment, settings: Settings) -> Settings:
    """The workspace settings with the experiment's ``settings`` over them (checked)."""
    if not experiment.settings:
        return settings
    unknown = sorted(set(experiment.settings) - set(type(settings).model_fields))
    if unknown:
        raise EvalError(f"experiment '{experiment.name}': unknown settings {unknown}")
    from pydantic import ValidationError

    try:
        return type(settings).model_validate({**settings.model_dump(), **experiment.settings})
    except ValidationError as exc:
        raise EvalError(f"experiment '{experiment.name}': settings: {exc}") from exc


def _codebook_source(experiment: Experiment) -> str | Path:
    """A shipped codebook name as is; a file path relative to the project root."""
    source = experiment.codebook
    if "/" in source or Path(source).suffix:
        return _path(source)
    return source


def experiment_codebook(experiment: Experiment) -> Codebook:
    from qualflow.codebook import CodebookError, load_codebook

    try:
        return load_codebook(_codebook_source(experiment))
    except (CodebookError, OSError) as exc:
        raise EvalError(f"experiment '{experiment.name}': codebook: {exc}") from exc


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
    """Prepare (optional), train and code (with ``train``), evaluate, and write
    ``<name>.json``, ``.html`` and ``.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = prepare(experiment, store, settings) if prepare_first else []
    book = experiment_codebook(experiment)
    json_path = out_dir / f"{experiment.name}.json"
    previous = None
    if json_path.is_file():
        try:
            previous = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
    version = book.version
    reference = resolve(store, experiment.reference, codebook_version=version)
    held_out = None
    if experiment.train is not None:
        held_out = train_and_code(
            experiment,
            store,
            experiment_settings(experiment, settings),
            book,
            reference,
            train_first=prepare_first,
        )
        coder = held_out.resolved
        # the reference over the held-out passages only: training transcripts and
        # passages nobody codes (interviewer, guide lines) are outside the comparison
        keep = set(held_out.passages)
        reference = Resolved(
            reference.name,
            {pid: codes for pid, codes in reference.coding.items() if pid in keep},
            model=reference.model,
            prompt_version=reference.prompt_version,
            codebook_version=reference.codebook_version,
            confidences=reference.confidences,
        )
    else:
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
    scope: dict[str, Any] = {"segmentation": ", ".join(sorted(segs)) or experiment.segmentation}
    if held_out is not None:
        scope.update(held_out.scope())
        problems += held_out.problems
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
        passages=held_out.passages if held_out is not None else None,
        experiment=experiment.name,
        description=experiment.description,
        scope=scope,
        clusters=clusters,
    )
    results["problems"] = problems + results["problems"]
    return write_outputs(results, out_dir)


# --------------------------------------------------------------------------- train A, test B


@dataclass
class HeldOut:
    """A trained coder's codings of transcripts it did not learn from (one entry in
    ``folds`` per trained coder: its name, model label, provenance, test transcripts)."""

    resolved: Resolved
    passages: list[str]
    folds: list[dict[str, Any]]
    split: str
    problems: list[str] = field(default_factory=list)

    def scope(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "evaluated": f"{len(self.passages)} codable passages of the held-out transcripts",
            "training": [f["training"] for f in self.folds],
        }


def train_and_code(
    experiment: Experiment,
    store: Store,
    settings: Settings,
    book: Codebook,
    reference: Resolved,
    *,
    train_first: bool = True,
) -> HeldOut:
    """Train the experiment's coder on A and code B (``test``), or cross-validate: one
    coder per fold, trained on the other folds. Refuses a split whose training
    transcripts overlap the transcripts it evaluates on (unless ``allow_overlap``)."""
    train = dict(experiment.train or {})
    kind = train.get("coder", "learned")
    name = train.get("name") or experiment.name
    current = store.transcripts()
    ref_tids = {p.transcript_id for p in _passages(store, list(reference.coding))}
    if experiment.cross_validate is not None:
        groups = fold_groups(current, ref_tids, experiment.cross_validate)
        plans = [
            (f"{name}-fold{i + 1}", _sources(train, others=_others(groups, i)), members)
            for i, (_, members) in enumerate(groups)
        ]
        by = experiment.cross_validate.get("by", "participant")
        split = f"{len(groups)} folds by {by}: " + " | ".join(label for label, _ in groups)
    else:
        test = experiment.test or {}
        members = _select(current, test) if test else [t for t in current if t.id in ref_tids]
        plans = [(name, _sources(train), members)]
        split = (
            "train "
            + (_sources(train).filter_label() or "on everything")
            + "; test "
            + (", ".join(f"{k}={','.join(v)}" for k, v in test.items()) or "on everything")
        )
    folds, coding, confidences, scope = [], {}, [], []
    for fold_name, sources, members in plans:
        fold = _train_and_code_fold(
            store, settings, book, kind, fold_name, sources, members, experiment, train_first
        )
        _refuse_overlap(experiment, fold, [t.name for t in members])
        folds.append(fold)
        coding.update(fold.pop("coding"))
        confidences += fold.pop("confidences")
        scope += fold.pop("passages")
    resolved = Resolved(
        folds[0]["name"] if len(folds) == 1 else f"{kind} ({len(folds)} folds)",
        coding,
        model=", ".join(dict.fromkeys(f["model"] for f in folds)),
        codebook_version=book.version,
        confidences=confidences,
    )
    missing = len([p for p in scope if p not in coding])
    problems = (
        [f"{missing} held-out passages have no valid answer from the coder"] if missing else []
    )
    return HeldOut(resolved, scope, folds, split, problems)


def _train_and_code_fold(
    store: Store,
    settings: Settings,
    book: Codebook,
    kind: str,
    name: str,
    sources: Any,
    members: Sequence[Any],
    experiment: Experiment,
    train_first: bool,
) -> dict[str, Any]:
    """Train (or reuse) one coder and code its held-out transcripts; what it answered."""
    from qualflow.coders.factory import open_coder
    from qualflow.pipeline import proposal_key, run_coding
    from qualflow.training import TrainingError, calibrate_similarity, read_metadata, train_learned

    run_settings = settings.model_copy(update={"segmentation": experiment.segmentation})
    index = None
    if kind == "similarity":
        from qualflow.index import CodeIndex

        index = CodeIndex.ensure(book, settings)
    try:
        if train_first:
            if kind == "learned":
                train_learned(store, settings, book, sources, name)
            else:
                calibrate_similarity(store, settings, book, sources, name, index=index)
        provenance = read_metadata(settings, kind, name)["training"]
    except TrainingError as exc:
        raise EvalError(f"experiment '{experiment.name}': {exc}") from exc
    ids = [t.id for t in members]
    with open_coder(f"{kind}:{name}", run_settings, store, index, codebook=book) as coder:
        key = proposal_key(coder, book)
        if train_first:
            run_coding(store, coder, book, run_settings, index=index, transcript_ids=ids)
    scope = [
        p.id
        for tid in ids
        for p in store.passages(
            transcript_id=tid, segmentation=experiment.segmentation, codable_only=True
        )
    ]
    wanted = set(scope)
    coding: dict[str, frozenset[str]] = {}
    confidences: list[tuple[str, str, float]] = []
    for ps in store.proposal_sets(key=key):
        if ps.passage_id in wanted and ps.status == "ok":
            coding[ps.passage_id] = frozenset(ps.codes)
            confidences += [(ps.passage_id, p.code, float(p.confidence)) for p in ps.proposals]
    return {
        "name": f"{kind}:{name}",
        "model": key.model,
        "training": provenance,
        "test": sorted(t.name for t in members),
        "coding": coding,
        "confidences": confidences,
        "passages": scope,
    }


def _refuse_overlap(experiment: Experiment, fold: Mapping[str, Any], evaluated: list[str]) -> None:
    learned_from = set(fold["training"].get("transcripts", []))
    overlap = sorted(learned_from & set(evaluated))
    if overlap and not experiment.allow_overlap:
        raise EvalError(
            f"experiment '{experiment.name}': {fold['name']} learned from "
            f"{', '.join(fold['training'].get('sources', []))} on transcripts it is evaluated "
            f"on: {', '.join(overlap)}. Train on A and evaluate on B (train.participants and "
            "test.participants), cross-validate, or set allow_overlap: true to report it "
            "with a warning."
        )


def _sources(train: Mapping[str, Any], *, others: list[str] | None = None) -> Any:
    from qualflow.training import TrainingSources, parse_time

    until = train.get("until")
    return TrainingSources(
        gold=list(train.get("gold") or []),
        decisions=bool(train.get("decisions", False)),
        until=parse_time(str(until)) if until else None,
        transcripts=others if others is not None else list(train.get("transcripts") or []),
        participants=[] if others is not None else list(train.get("participants") or []),
    )


def _select(transcripts: Sequence[Any], test: Mapping[str, Any]) -> list[Any]:
    from qualflow.training import TrainingError, select_transcripts

    try:
        ids = select_transcripts(
            transcripts,
            names=list(test.get("transcripts") or []),
            participants=list(test.get("participants") or []),
        )
    except TrainingError as exc:
        raise EvalError(f"test: {exc}") from exc
    return [t for t in transcripts if t.id in ids]


def fold_groups(
    transcripts: Sequence[Any], reference_ids: set[str], spec: Mapping[str, Any]
) -> list[tuple[str, list[Any]]]:
    """Cross-validation folds of the transcripts the reference coded, grouped by
    participant (or transcript): explicit groups (``folds: [[P1, P2], [P3]]``) or K
    folds (participants sorted, dealt round-robin); a participant never spans folds."""
    by = spec.get("by", "participant")
    folds = spec.get("folds", 5)
    coded = [t for t in transcripts if t.id in reference_ids]
    if isinstance(folds, list):
        groups = []
        for group in folds:
            members = _select(
                coded, {"participants" if by == "participant" else "transcripts": list(group)}
            )
            groups.append((",".join(map(str, group)), members))
        seen = [t.id for _, members in groups for t in members]
        if len(seen) != len(set(seen)):
            raise EvalError("cross_validate: a transcript falls in two folds")
        return groups
    if not isinstance(folds, int) or folds < 2:
        raise EvalError("cross_validate.folds: a whole number >= 2 or a list of groups")
    keyed: dict[str, list[Any]] = {}
    for t in coded:
        key = (t.participant_id or t.name) if by == "participant" else t.name
        keyed.setdefault(key, []).append(t)
    keys = sorted(keyed)
    if len(keys) < folds:
        raise EvalError(f"cross_validate: {len(keys)} {by}s cannot make {folds} folds")
    return [
        (",".join(keys[i::folds]), [t for k in keys[i::folds] for t in keyed[k]])
        for i in range(folds)
    ]


def _others(groups: list[tuple[str, list[Any]]], i: int) -> list[str]:
    return sorted(t.name for j, (_, members) in enumerate(groups) if j != i for t in members)


def _passages(store: Store, ids: list[str], chunk: int = 500) -> list[Any]:
    out = []
    for i in range(0, len(ids), chunk):
        out += store.passages(ids=ids[i : i + chunk])
    return out


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
