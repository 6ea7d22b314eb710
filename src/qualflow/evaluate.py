"""The eval harness: experiments (coder x codebook x gold set) -> results JSON, HTML, Markdown.

An experiment names codings by *spec* strings, resolved against the store:

- ``gold:SET:CODER`` one coder of a gold set (``gold:SET`` if the set has one coder);
- ``run:ID`` a coding run's valid codes (with each proposal's confidence);
- ``proposals:KIND`` every answer of a coder kind (``similarity``, ``learned``,
  ``llm``, ...) under the experiment's codebook version. It must mean one coding:
  when answers of that kind come from several proposal keys (another model,
  threshold or prompt) the spec is an error listing them, and
  ``proposals:KIND:MODEL`` (or ``proposals:KIND:MODEL@PROMPT_VERSION``) names one;
- ``reviewer:NAME`` a reviewer's finished review decisions;
- ``previous`` (baseline only) the coder's coding stored in the previous results
  file of the same experiment, for regression tracking.

Rules every report follows (see docs/agreement.md):

- every reference unit counts: a unit outside the coder's answered scope (never
  coded, failed, needs_human) is scored as "no code"; coverage stands beside the
  headline figures and the answered-only figures come second, labelled;
- what the coder learned from (``runs.params["training"]`` and ``["few_shot"]``) is
  printed, and a coder that learned from the reference's transcripts is refused
  unless the overlap is explicitly allowed (then the report header warns);
- the human baseline comes only from real human coders (reviewers, human gold
  coders), never from machine codings or constructed example data; without two,
  the report says "no human baseline measured".

Before it evaluates, an experiment may ingest transcripts, import gold JSONL files and
run coders (``prepare``); evaluation itself only reads codings (the data path is
one-way). The report leads with the per-code table; see ``qualflow.report``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from qualflow import agreement as ag
from qualflow.levels import DEFAULT_MIN_SHARE, SENTENCE_THRESHOLD, Grid, LevelSetup, levels_section
from qualflow.models import Codebook, Coding, Span, SpanCoding

if TYPE_CHECKING:
    from qualflow.settings import Settings
    from qualflow.store import Store

log = logging.getLogger(__name__)

SCHEMA = "qualflow.eval/3"
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
    "coverage",
    "answered_only",
    "training",
    "warnings",
    "levels",
)
"""Top-level keys of every results JSON (tests pin them; add, never rename).

Schema 2: ``agreement`` counts every reference unit (unanswered = no code);
``answered_only`` holds the figures over answered units, ``coverage`` the share
answered, ``training`` what the coder learned from, ``warnings`` the header
warnings (an allowed train/test overlap). Schema 3 adds ``levels``: the span and turn
levels beside the sentence level (``agreement`` and its sections), each with its
coverage, answered-only figures and human baseline."""


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
    min_share: float = DEFAULT_MIN_SHARE
    """Span level: a reference highlight is found when one span of the same code covers
    at least this share of it (and a coder span matched likewise)."""
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
        share = data.get("min_share", DEFAULT_MIN_SHARE)
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise EvalError(
                f"{source}: experiment '{name}': min_share must be a number in (0, 1], "
                f"got {share!r}"
            )
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


class LeakError(EvalError):
    """The compared coder learned from the reference's own transcripts (or passages)."""


@dataclass
class Resolved:
    """A coding with its provenance (and, for machine coders, per-tag confidences).

    ``origin`` says what kind of coder this is: ``machine`` (runs, proposals,
    ``previous``), ``reviewer`` (the review app), ``gold`` (a gold set coder),
    ``constructed`` (a gold coder whose data declares it constructed example data, not
    human coding); empty means "as the caller says" (a caller listing it among the
    humans vouches for it). ``answered`` is the coder's answered scope: the units it
    gave an answer for (None: the coding's own units). ``needs_human`` are units it
    handed to a human instead. ``learned_from`` holds one entry per distinct training
    provenance of the runs behind the coding (``runs``, ``training``, ``few_shot``,
    ``recorded``). ``unit_transcripts`` maps the coding's units to transcript names.
    ``spans`` is the span coding behind ``coding`` (the coder's spans and answered
    scope): the span and turn levels of a report read it, never the sentence
    projection; None for codings that exist only on units (then the report builds
    spans over the coded units and says so).
    """

    name: str
    coding: Coding
    model: str = ""
    prompt_version: str = ""
    codebook_version: str = ""
    confidences: list[tuple[str, str, float]] = field(default_factory=list)
    origin: str = ""
    answered: frozenset[str] | None = None
    needs_human: frozenset[str] = frozenset()
    learned_from: list[dict[str, Any]] = field(default_factory=list)
    unit_transcripts: dict[str, str] = field(default_factory=dict)
    spans: SpanCoding | None = None
    coding_units: list[str] = field(default_factory=list)
    """What one coder call coded (the segmentation of the answered units: ``chunk:200``,
    ``sentence``); empty when unknown."""

    @property
    def scope(self) -> frozenset[str]:
        """The units this coder answered (its coding's units unless given)."""
        return self.answered if self.answered is not None else frozenset(self.coding)

    @property
    def is_human(self) -> bool:
        """May this coding stand as a human coder in a human baseline?"""
        return self.origin not in {"machine", "constructed"}


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
        resolved = _gold(store, spec, rest)
    elif kind == "run":
        if not rest.isdigit():
            raise EvalError(f"'{spec}': a run spec is run:<id>")
        resolved = _proposals(store, spec, run_id=int(rest))
    elif kind == "proposals":
        coder, _, pin = rest.partition(":")
        if not coder:
            raise EvalError(f"'{spec}': say which coder kind, e.g. proposals:similarity")
        resolved = _proposals(
            store, spec, coder=coder, pin=pin or None, codebook_version=codebook_version
        )
    elif kind == "reviewer":
        resolved = _reviewer(store, spec, rest)
    elif kind == "previous":
        resolved = _previous(previous)
    else:
        raise EvalError(f"'{spec}': unknown coding spec (gold:, run:, proposals:, reviewer:)")
    resolved.unit_transcripts = transcript_names(store, resolved.coding)
    return resolved


def _reviewer(store: Store, spec: str, name: str) -> Resolved:
    """A reviewer's finished units as a coding of the sentence grid, the way machine
    chunks are projected (``_onto_grid``): every codable grid passage inside the text the
    reviewer answered for (the codable stretches of the units they finished) is
    answered, carrying the codes its spans give it by the sentence rule
    (``spans.to_sentences``). Units that are grid passages (stores from before spans)
    come back as they were."""
    from qualflow.review.decisions import reviewer_span_codings
    from qualflow.spans import to_sentences

    codings = reviewer_span_codings(store)
    if name not in codings:
        raise EvalError(f"'{spec}': no finished review by '{name}' (have {sorted(codings)})")
    coding = codings[name]
    grid = [
        g
        for tid in coding.scope
        for g in store.passages(transcript_id=tid, segmentation=store.grid_of(tid))
        if g.codable
    ]
    projected = to_sentences(coding, grid)  # only the grid passages inside the scope
    return Resolved(spec, projected, origin="reviewer")


def _previous(previous: Mapping[str, Any] | None) -> Resolved:
    if not previous:
        raise EvalError("'previous': no previous results file for this experiment")
    stored = previous.get("coding", {}).get("coder") or {}
    return Resolved(
        f"previous ({previous.get('created_at', '?')})",
        {pid: frozenset(cs) for pid, cs in stored.items()},
        model=previous.get("scope", {}).get("model", ""),
        origin="machine",
        learned_from=list((previous.get("training") or {}).get("coder") or []),
    )


def transcript_names(store: Store, units: Iterable[str]) -> dict[str, str]:
    """Unit (passage) id -> name of its transcript, for the units the store knows."""
    from sqlalchemy import select

    from qualflow.db import PassageRow, TranscriptRow

    ids = list(units)
    out: dict[str, str] = {}
    with store.session() as s:
        for i in range(0, len(ids), 5000):
            q = (
                select(PassageRow.id, TranscriptRow.name)
                .join(TranscriptRow, TranscriptRow.id == PassageRow.transcript_id)
                .where(PassageRow.id.in_(ids[i : i + 5000]))
            )
            out.update({pid: name for pid, name in s.execute(q).tuples()})
    return out


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
    origin = "constructed" if store.gold_origin(gold_set, coder) == "constructed" else "gold"
    spans = store.gold_codings(gold_set, coder).get(coder)
    return Resolved(f"{gold_set}:{coder}", codings[coder], origin=origin, spans=spans)


def from_span_coding(
    store: Store,
    name: str,
    coding: SpanCoding,
    *,
    origin: str = "",
    segmentation: str | None = None,
) -> Resolved:
    """A coding given as spans (a reviewer's, an imported coder's) with its sentence-grid
    projection: every grid passage inside the scope, carrying the codes whose spans
    cover at least half of it or lie inside it (``spans.to_sentences``, the rule gold
    sets use). The grid is ``segmentation`` or each transcript's stored grid."""
    from qualflow.spans import to_sentences

    grid = [
        p
        for tid in sorted(coding.scope)
        for p in store.passages(transcript_id=tid, segmentation=segmentation or store.grid_of(tid))
    ]
    return Resolved(name, to_sentences(coding, grid), origin=origin, spans=coding)


@dataclass
class _Candidate:
    """One distinct coding a ``proposals:`` spec could mean (one proposal key)."""

    model: str
    prompt_version: str
    codebook_version: str
    runs: set[int] = field(default_factory=set)
    passages: set[str] = field(default_factory=set)

    def pinned(self, coder: str, ambiguous_prompt: bool) -> str:
        suffix = f"@{self.prompt_version}" if ambiguous_prompt and self.prompt_version else ""
        return f"proposals:{coder}:{self.model}{suffix}"


def _proposals(
    store: Store,
    spec: str,
    *,
    run_id: int | None = None,
    coder: str | None = None,
    pin: str | None = None,
    codebook_version: str | None = None,
) -> Resolved:
    """A run's, or a coder kind's, answers: ok sets are the coding, needs_human noted.

    ``proposals:KIND`` must mean one coding: when the stored proposal sets of that kind
    come from several coders (another model, another threshold or prompt, hence another
    proposal key) it is an error listing them, unless ``pin`` (``MODEL`` or
    ``MODEL@PROMPT_VERSION``) picks one.
    """
    from sqlalchemy import select

    from qualflow.db import ProposalSetRow

    with store.session() as s:
        q = select(
            ProposalSetRow.id,
            ProposalSetRow.passage_id,
            ProposalSetRow.status,
            ProposalSetRow.model,
            ProposalSetRow.prompt_version,
            ProposalSetRow.codebook_version,
            ProposalSetRow.run_id,
        ).where(ProposalSetRow.status.in_(["ok", "needs_human"]))
        if run_id is not None:
            q = q.where(ProposalSetRow.run_id == run_id)
        if coder is not None:
            q = q.where(ProposalSetRow.coder == coder)
        if codebook_version:
            q = q.where(ProposalSetRow.codebook_version == codebook_version)
        rows = s.execute(q.order_by(ProposalSetRow.id)).all()
    if run_id is None and coder is not None:
        rows = _one_coding(spec, coder, pin, rows)
    ok = {r.passage_id: r for r in rows if r.status == "ok"}  # newest wins
    if not ok:
        handed = len({r.passage_id for r in rows})
        detail = f" with an answer ({handed} passages went to needs_human)" if handed else ""
        raise EvalError(f"'{spec}': no proposal sets found{detail}")
    first = next(iter(ok.values()))
    resolved = Resolved(
        spec,
        {pid: frozenset() for pid in ok},
        model=first.model,
        prompt_version=first.prompt_version,
        codebook_version=first.codebook_version,
        origin="machine",
        needs_human=frozenset(r.passage_id for r in rows if r.status == "needs_human") - set(ok),
    )
    answers = _answers(store, {r.id: r.passage_id for r in ok.values()})
    units = {p.id: p for p in _passages(store, [*ok, *resolved.needs_human])}
    resolved.spans = _span_coding(spec, units, ok, answers)
    resolved.coding_units = sorted({units[pid].segmentation for pid in ok if pid in units})
    _onto_grid(store, resolved, units, answers)
    resolved.learned_from = learned_from(store, {r.run_id for r in rows if r.run_id is not None})
    if run_id is None:
        _refuse_mixed_training(spec, resolved.learned_from)
    return resolved


def _one_coding(spec: str, coder: str, pin: str | None, rows: Sequence[Any]) -> list[Any]:
    """The rows of the one coding ``spec`` means; EvalError listing them when several."""
    groups: dict[tuple[str, str, str], _Candidate] = {}
    for r in rows:
        key = (r.model, r.prompt_version, r.codebook_version)
        group = groups.setdefault(key, _Candidate(*key))
        group.passages.add(r.passage_id)
        if r.run_id is not None:
            group.runs.add(r.run_id)
    chosen = list(groups)
    if pin is not None:
        chosen = [k for k in groups if k[0] == pin] or [
            k for k in groups if f"{k[0]}@{k[1]}" == pin
        ]
        if not chosen:
            raise EvalError(
                f"'{spec}': no proposal sets of model '{pin}' "
                f"(have {sorted({f'{k[0]}@{k[1]}' if k[1] else k[0] for k in groups})})"
            )
    if len(chosen) > 1:
        models = [k[0] for k in chosen]
        lines = []
        for k in chosen:
            g = groups[k]
            pinned = g.pinned(coder, models.count(k[0]) > 1)
            lines.append(
                f"  {pinned}  (model {g.model}, prompt {g.prompt_version or '-'}, codebook "
                f"{g.codebook_version}, {len(g.passages)} passages, runs "
                f"{', '.join(map(str, sorted(g.runs))) or '-'})"
            )
        raise EvalError(
            f"'{spec}' matches {len(chosen)} different codings (another model, threshold, "
            "prompt or codebook each makes its own); name one:\n" + "\n".join(lines)
        )
    keep = set(chosen)
    return [r for r in rows if (r.model, r.prompt_version, r.codebook_version) in keep]


class _Answer(NamedTuple):
    """One valid proposal of a chosen proposal set."""

    code: str
    start: int | None
    end: int | None
    confidence: float


def _answers(store: Store, set_units: Mapping[int, str]) -> dict[str, list[_Answer]]:
    """Valid proposals of exactly these proposal sets (set id -> its unit): unit -> answers.

    Only the sets the spec chose: another coder's answers on the same chunk (every coder
    cuts the same chunks) never leak into this coding."""
    from sqlalchemy import select

    from qualflow.db import ProposalRow

    out: dict[str, list[_Answer]] = {}
    ids = list(set_units)
    with store.session() as s:
        for i in range(0, len(ids), 5000):
            rows = s.execute(
                select(
                    ProposalRow.set_id,
                    ProposalRow.code,
                    ProposalRow.start,
                    ProposalRow.end,
                    ProposalRow.confidence,
                ).where(ProposalRow.set_id.in_(ids[i : i + 5000]), ProposalRow.valid.is_(True))
            ).all()
            for set_id, code, start, end, confidence in rows:
                unit = set_units[set_id]
                out.setdefault(unit, []).append(_Answer(code, start, end, float(confidence)))
    return out


def _answered_ranges(unit: Any) -> list[tuple[int, int]]:
    """The text a coder answered for by answering a unit: a chunk's codable pieces, or
    the passage itself."""
    if unit.is_chunk:
        return [(p.char_start, p.char_end) for p in unit.codable_pieces()]
    return [(unit.char_start, unit.char_end)]


def _span_coding(
    name: str, units: Mapping[str, Any], answered: Iterable[str], answers: Mapping[str, list]
) -> SpanCoding:
    """The machine coding as spans: each valid proposal's span, the answered units'
    text as scope (``needs_human`` units stay outside: unanswered). A proposal without
    offsets (a passage-level answer from before spans) spans its passage."""
    from qualflow.spans import merge_ranges

    coding = SpanCoding(coder=name)
    scope: dict[str, list[tuple[int, int]]] = {}
    for pid in answered:
        unit = units.get(pid)
        if unit is None:
            continue
        pieces = _answered_ranges(unit)
        scope.setdefault(unit.transcript_id, []).extend(pieces)
        for a in answers.get(pid, []):
            if a.start is not None and a.end is not None:
                coding.spans.append(Span(unit.transcript_id, a.start, a.end, a.code))
            else:
                coding.spans += [Span(unit.transcript_id, x, y, a.code) for x, y in pieces]
    coding.spans.sort()
    coding.scope = {tid: merge_ranges(rs) for tid, rs in sorted(scope.items())}
    return coding


def _onto_grid(
    store: Store, resolved: Resolved, units: Mapping[str, Any], answers: Mapping[str, list]
) -> None:
    """The answers as a coding of the sentence grid, so a machine coder compares with
    gold and reviewers unit for unit: a grid passage answered directly keeps its codes;
    the codable grid passages inside an answered chunk are answered, each carrying the
    codes whose spans cover it (the sentence rule of ``spans.to_sentences``); those
    inside a ``needs_human`` chunk were handed to a human."""
    coding: dict[str, frozenset[str]] = {}
    confidences: list[tuple[str, str, float]] = []
    handed = {pid for pid in resolved.needs_human if pid in units and not units[pid].is_chunk}
    for pid in resolved.coding:
        unit = units.get(pid)
        found = answers.get(pid, [])
        if unit is None or not unit.is_chunk:
            coding[pid] = frozenset(a.code for a in found)
            confidences += [(pid, a.code, a.confidence) for a in found]
            continue
        spans = [
            (Span(unit.transcript_id, a.start, a.end, a.code), a.confidence)
            for a in found
            if a.start is not None and a.end is not None
        ]
        grid = _grid_inside(store, unit)
        mapped = _project(unit, grid, spans)
        coding.update(mapped)
        confidences += _sentence_confidences(grid, mapped, spans)
    for pid in resolved.needs_human:
        unit = units.get(pid)
        if unit is not None and unit.is_chunk:
            handed |= {g.id for g in _grid_inside(store, unit)}
    resolved.coding = coding
    resolved.confidences = sorted(set(confidences))
    resolved.needs_human = frozenset(handed) - set(coding)


def _sentence_confidences(
    grid: Sequence[Any], mapped: Coding, spans: Sequence[tuple[Span, float]]
) -> list[tuple[str, str, float]]:
    """One confidence per sentence tag: the highest of the spans of that code that
    overlap the sentence (a chunk's other spans of the code say nothing about it)."""
    out = []
    for g in grid:
        for code in sorted(mapped.get(g.id, ())):
            scores = [
                confidence
                for span, confidence in spans
                if span.code == code and span.start < g.char_end and g.char_start < span.end
            ]
            if scores:
                out.append((g.id, code, max(scores)))
    return out


def _grid_inside(store: Store, unit: Any) -> list[Any]:
    """The codable grid passages lying inside one of a chunk's codable pieces."""
    ranges = [(p.char_start, p.char_end) for p in unit.codable_pieces()]
    grid = store.passages(
        transcript_id=unit.transcript_id, segmentation=store.grid_of(unit.transcript_id)
    )
    return [
        g
        for g in grid
        if g.codable and any(a <= g.char_start and g.char_end <= b for a, b in ranges)
    ]


def _project(unit: Any, grid: Sequence[Any], spans: Sequence[tuple[Span, float]]) -> Coding:
    """The chunk's spans on its grid passages by the sentence rule (``spans.to_sentences``:
    spans of a code cover at least half of a sentence, or one lies inside it)."""
    from qualflow.spans import to_sentences

    scope = {unit.transcript_id: [(p.char_start, p.char_end) for p in unit.codable_pieces()]}
    coding = SpanCoding(coder="chunk", spans=[sp for sp, _ in spans], scope=scope)
    return to_sentences(coding, grid)


def learned_from(store: Store, run_ids: Iterable[int]) -> list[dict[str, Any]]:
    """What the coders of these runs learned from, one entry per distinct provenance.

    Reads ``runs.params["training"]`` and ``["few_shot"]`` (written by the coding run).
    ``recorded`` is False for runs that carry no ``training`` key at all.
    """
    from sqlalchemy import select

    from qualflow.db import RunRow

    ids = sorted(set(run_ids))
    if not ids:
        return []
    entries: dict[str, dict[str, Any]] = {}
    with store.session() as s:
        for run in s.scalars(select(RunRow).where(RunRow.id.in_(ids)).order_by(RunRow.id)):
            params = run.params or {}
            entry = {
                "training": params.get("training"),
                "few_shot": params.get("few_shot"),
                "recorded": "training" in params,
            }
            key = json.dumps(entry, sort_keys=True, default=str)
            entries.setdefault(key, {"runs": [], **entry})["runs"].append(run.id)
    return list(entries.values())


def _refuse_mixed_training(spec: str, entries: Sequence[Mapping[str, Any]]) -> None:
    """Runs of one proposal key whose coders were trained on different labels."""
    trained = [e for e in entries if e.get("training")]
    hashes = {(e["training"].get("model"), e["training"].get("label_hash")) for e in trained}
    if len(hashes) > 1:
        lines = [
            f"  runs {', '.join(map(str, e['runs']))}: {e['training'].get('model')} "
            f"(labels {e['training'].get('label_hash')})"
            for e in trained
        ]
        raise EvalError(
            f"'{spec}' mixes answers of coders trained on different labels; "
            "name one run (run:ID):\n" + "\n".join(lines)
        )


def resolve_key(store: Store, key: Any) -> Resolved:
    """Everything stored under one proposal key (coder, model, prompt, codebook)."""
    pin = f"{key.model}@{key.prompt_version}" if key.prompt_version else key.model
    resolved = resolve(store, f"proposals:{key.coder}:{pin}", codebook_version=key.codebook_version)
    suffix = f"@{key.prompt_version}" if key.prompt_version else ""
    resolved.name = f"{key.coder}:{key.model}{suffix}"
    return resolved


# --------------------------------------------------------------------------- the rules


NO_HUMAN_BASELINE = "no human baseline measured"
SENTENCE_RULE = "spans of a code cover at least half of the sentence, or one lies inside it"
UNANSWERED_RULE = "reference units outside the coder's answered scope count as no code"


def count_unanswered_as_no_code(
    units: Sequence[str], coding: Coding, answered: Container[str]
) -> Coding:
    """The coding over every reference unit: a unit outside the answered scope (never
    coded, failed, handed to a human) carries no code, i.e. every code it should have
    had is a miss. Units are opaque ids: passages today, sentences under spans."""
    empty: frozenset[str] = frozenset()
    return {u: coding.get(u, empty) if u in answered else empty for u in units}


def coverage(units: Sequence[str], coder: Resolved) -> dict[str, Any]:
    """Share of the reference units the coder answered, and why the others are not."""
    scope = coder.scope
    answered = sum(1 for u in units if u in scope and u in coder.coding)
    needs_human = sum(1 for u in units if u in coder.needs_human and u not in scope)
    return {
        "coder": coder.name,
        "reference_units": len(units),
        "answered": answered,
        "share": answered / len(units) if units else None,
        "needs_human": needs_human,
        "not_answered": len(units) - answered - needs_human,
        "rule": UNANSWERED_RULE,
    }


def learned_overlap(
    reference: Resolved, units: Sequence[str], coder: Resolved, role: str
) -> dict[str, Any] | None:
    """Reference transcripts (or passages) the coder learned from, with the sources."""
    names = {reference.unit_transcripts[u] for u in units if u in reference.unit_transcripts}
    unit_set = set(units)
    transcripts: set[str] = set()
    passages: set[str] = set()
    sources: list[str] = []
    for entry in coder.learned_from:
        for part in ("training", "few_shot"):
            info = entry.get(part) or {}
            hit = names & set(info.get("transcripts") or [])
            shown = unit_set & set(info.get("passages") or [])
            if hit or shown:
                transcripts |= hit
                passages |= shown
                sources.append(_describe_source(part, info, entry.get("runs")))
    if not transcripts and not passages:
        return None
    return {
        "role": role,
        "coder": coder.name,
        "transcripts": sorted(transcripts),
        "passages": len(passages),
        "sources": sources,
    }


def _learned_transcripts(coder: Resolved) -> set[str]:
    return {
        name
        for entry in coder.learned_from
        for part in ("training", "few_shot")
        for name in ((entry.get(part) or {}).get("transcripts") or [])
    }


def _describe_source(part: str, info: Mapping[str, Any], runs: Any) -> str:
    on = f"runs {', '.join(map(str, runs))}" if runs else "its runs"
    if part == "training":
        given = ", ".join(info.get("sources") or []) or "unnamed sources"
        return f"training of {info.get('model') or 'the coder'} ({given}; {on})"
    return f"few-shot examples ({info.get('per_code', '?')} per code; {on})"


def leak_message(overlap: Mapping[str, Any], reference: str) -> str:
    what = ", ".join(overlap["transcripts"]) or f"{overlap['passages']} reference passages"
    return (
        f"{overlap['role']} '{overlap['coder']}' learned from the reference's own text: "
        f"transcripts {what} of '{reference}' (via {'; '.join(overlap['sources'])}). "
        "Agreement on text a coder learned from is inflated."
    )


def describe_learning(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Human-readable lines: what a coder learned from (for every report header)."""
    if not entries:
        return ["nothing recorded (not a machine run, or no runs behind this coding)"]
    lines = []
    for e in entries:
        runs = ", ".join(map(str, e.get("runs") or [])) or "-"
        t = e.get("training")
        if t:
            text = (
                f"runs {runs}: trained as {t.get('model') or '?'} on "
                f"{', '.join(t.get('sources') or []) or 'unnamed sources'}; "
                f"{_count(t.get('transcripts'), 'transcript')} ({_names(t.get('transcripts'))}), "
                f"{t.get('units', '?')} units, "
                f"labels {t.get('label_hash') or '?'}"
            )
            if t.get("note"):
                text += f"; {t['note']}"
        elif e.get("recorded"):
            text = f"runs {runs}: no training data"
        else:
            text = f"runs {runs}: training not recorded"
        f = e.get("few_shot")
        if f:
            text += (
                f"; few-shot examples, {f.get('per_code', '?')} per code, from "
                f"{_count(f.get('transcripts'), 'transcript')} ({_names(f.get('transcripts'))})"
            )
        lines.append(text)
    return lines


def _count(items: Sequence[Any] | None, noun: str) -> str:
    n = len(items or [])
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _names(names: Sequence[str] | None, limit: int = 8) -> str:
    names = list(names or [])
    shown = ", ".join(names[:limit])
    return shown + (f", … {len(names) - limit} more" if len(names) > limit else "") or "-"


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


@dataclass
class _Setup:
    """What every section of a report shares: the units, the codes and the bootstrap."""

    units: list[str]
    codes: list[str] | None
    n_boot: int
    seed: int
    min_support: int
    clusters: Mapping[str, Any] | None


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
    allow_overlap: bool = False,
    grid: Grid | None = None,
    min_share: float = DEFAULT_MIN_SHARE,
) -> dict[str, Any]:
    """Every figure of a report, as a JSON-ready dict (keys: ``RESULTS_KEYS``).

    The units are the reference's (restricted to ``passages`` when given). Headline
    figures count every one of them: a unit the coder did not answer (never coded,
    failed, needs_human) carries no code (``count_unanswered_as_no_code``), and the
    coverage stands beside them; the figures over answered units only come second.

    A coder (or baseline) that learned from the reference's transcripts is refused
    (``LeakError``) unless ``allow_overlap``; then the report carries the warning.

    ``humans``: human coders for the human baseline. Only real ones count (not machine
    codings, not constructed example data); the reference joins them when it is human.
    With fewer than two, the report says ``NO_HUMAN_BASELINE``. ``clusters`` (unit ->
    participant, say) resamples clusters, not units.

    The units are sentences of the grid and ``agreement`` is the sentence level.
    ``grid`` (``Grid.from_store``: where the units and their turns lie) adds the span and
    turn levels (``levels``), read from the coders' spans over the same text, with
    highlight matching at ``min_share``; without it the report has the sentence level
    only and says so.
    """
    if not 0.0 < min_share <= 1.0:
        raise EvalError(f"min_share must be in (0, 1], got {min_share}")
    units = sorted(reference.coding)
    if passages is not None:
        keep = set(passages)
        units = [u for u in units if u in keep]
    answered = [u for u in units if u in coder.scope and u in coder.coding]
    if not answered:
        raise EvalError(
            f"'{reference.name}' and '{coder.name}' have no passage in common: "
            "check the segmentation and the transcripts of both"
        )
    overlaps, warnings = _check_learning(reference, units, coder, baseline, allow_overlap)
    setup = _Setup(
        units, codebook.titles() if codebook else None, n_boot, seed, min_support, clusters
    )
    full = count_unanswered_as_no_code(units, coder.coding, coder.scope)
    pair = ag.compare(
        reference.coding,
        full,
        name_a=reference.name,
        name_b=coder.name,
        codes=setup.codes,
        n_boot=n_boot,
        seed=seed,
        min_support=min_support,
        categories=codebook if codebook else True,
        passages=units,
        clusters=clusters,
    )
    cover = coverage(units, coder)
    problems = _coverage_problems(reference, coder, cover)
    out: dict[str, Any] = dict.fromkeys(RESULTS_KEYS)
    out.update(
        schema=SCHEMA,
        experiment=experiment,
        description=description,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        agreement=pair.to_dict(),
        coverage=cover,
        answered_only=_answered_only(reference, coder, answered, setup, cover),
        training={
            "coder": coder.learned_from,
            "coder_lines": describe_learning(coder.learned_from),
            "baseline": baseline.learned_from if baseline else None,
            "overlap": overlaps,
            "allow_overlap": allow_overlap,
        },
        warnings=warnings,
        problems=problems,
    )
    real = real_humans(reference, humans, out["problems"])
    humans_used, human_note = _human_section(out, real, full, setup, margin)
    out["levels"] = three_levels(
        reference, coder, units, grid, setup, real if len(real) >= 2 else [], margin, min_share
    )
    if baseline is not None:
        _baseline_section(out, reference, full, baseline, setup)
    if coder.confidences:
        in_scope = set(answered)
        pairs = [
            (conf, code in reference.coding[pid])
            for pid, code, conf in coder.confidences
            if pid in in_scope
        ]
        if pairs:
            out["calibration"] = ag.calibration(
                pairs, bins=bins, n_boot=n_boot, seed=seed
            ).to_dict()
    top = [c["code"] for c in sorted(pair.to_dict()["codes"], key=lambda c: -c["support"])]
    top = [c for c in top if pair.code(c).support > 0][:25]
    out["cooccurrence"] = {
        "codes": top,
        "matrix": cooccurrence(reference.coding, full, units, top),
        "rows": reference.name,
        "columns": coder.name,
    }
    out["scope"] = {
        "passages": len(units),
        "answered": len(answered),
        "coverage": cover["share"],
        "reference": reference.name,
        "coder": coder.name,
        "model": coder.model,
        "coding_unit": ", ".join(coder.coding_units) or None,
        "prompt_version": coder.prompt_version,
        "codebook": codebook.name if codebook else None,
        "codebook_version": codebook.version if codebook else coder.codebook_version,
        "codes_in_codebook": len(setup.codes) if setup.codes else None,
        "n_boot": n_boot,
        "seed": seed,
        "resampling": (
            f"{len({clusters.get(p, p) for p in units})} clusters" if clusters else "passages"
        ),
        "min_support": min_support,
        "margin": margin,
        "humans": humans_used,
        "human_baseline": human_note,
        "baseline": baseline.name if baseline else None,
        **dict(scope or {}),
    }
    out["coding"] = {
        "reference": {p: sorted(reference.coding[p]) for p in units},
        "coder": {p: sorted(coder.coding[p]) for p in answered},
    }
    return out


def _check_learning(
    reference: Resolved,
    units: Sequence[str],
    coder: Resolved,
    baseline: Resolved | None,
    allow_overlap: bool,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Overlaps of what the coder (and baseline) learned from with the reference text."""
    overlaps = [
        o
        for o in (
            learned_overlap(reference, units, coder, "coder"),
            learned_overlap(reference, units, baseline, "baseline") if baseline else None,
        )
        if o
    ]
    messages = [leak_message(o, reference.name) for o in overlaps]
    unnamed = sum(1 for u in units if u not in reference.unit_transcripts)
    learned = [coder, baseline] if baseline else [coder]
    if unnamed and any(_learned_transcripts(c) for c in learned):
        messages.append(
            f"{unnamed} passages of '{reference.name}' have no known transcript, so an "
            "overlap with what the coder learned from cannot be ruled out."
        )
    if messages and not allow_overlap:
        raise LeakError(
            " ".join(messages) + " Refused: evaluate on transcripts it did not learn from, "
            "or pass --allow-overlap (experiment key allow_overlap: true) to report it "
            "with this warning in the header."
        )
    warnings = [f"TRAIN/TEST OVERLAP (allowed): {m}" for m in messages]
    return overlaps, warnings


def _coverage_problems(reference: Resolved, coder: Resolved, cover: Mapping[str, Any]) -> list[str]:
    problems = []
    missing = cover["reference_units"] - cover["answered"]
    if missing:
        problems.append(
            f"{missing} of {cover['reference_units']} {reference.name} passages have no answer "
            f"from {coder.name} ({cover['needs_human']} needs_human, "
            f"{cover['not_answered']} never coded or failed): counted as no code"
        )
    extra = len(set(coder.coding) - set(reference.coding))
    if extra:
        problems.append(f"{extra} passages coded by {coder.name} only (not in the reference)")
    return problems


def _answered_only(
    reference: Resolved,
    coder: Resolved,
    answered: Sequence[str],
    setup: _Setup,
    cover: Mapping[str, Any],
) -> dict[str, Any]:
    """The figures over the units the coder answered (second, labelled as such)."""
    label = (
        f"answered passages only ({cover['answered']} of {cover['reference_units']}; "
        "unanswered passages left out)"
    )
    if len(answered) == len(setup.units):
        return {"label": label, "same_as_headline": True, "agreement": None}
    pair = ag.compare(
        reference.coding,
        coder.coding,
        name_a=reference.name,
        name_b=coder.name,
        codes=setup.codes,
        n_boot=setup.n_boot,
        seed=setup.seed,
        min_support=setup.min_support,
        passages=list(answered),
        clusters=setup.clusters,
    )
    return {"label": label, "same_as_headline": False, "agreement": pair.to_dict()}


def real_humans(
    reference: Resolved, humans: Sequence[Resolved], problems: list[str]
) -> list[Resolved]:
    """The human coders of a human baseline: real ones only (not machine codings, not
    constructed example data, each named in ``problems``); the reference joins them
    when it is human and another human is given."""
    real = [h for h in humans if h.is_human]
    for h in humans:
        if not h.is_human:
            kind = "constructed example data" if h.origin == "constructed" else "a machine coder"
            problems.append(f"{h.name} is {kind}, not a human coder: not in the human baseline")
    if reference.is_human and reference.name not in {h.name for h in real}:
        real = [reference, *real] if real else []  # the reference is one of the human coders
    return real


def _human_section(
    out: dict[str, Any],
    real: Sequence[Resolved],
    full: Coding,
    setup: _Setup,
    margin: float,
) -> tuple[list[str], str]:
    """Human-human next to machine-human at the sentence level, from the real human
    coders (``real_humans``).

    Returns the humans used and the note the report shows (what was measured, or
    ``NO_HUMAN_BASELINE`` and why)."""
    problems = out["problems"]
    names = [h.name for h in real]
    if len(real) < 2:
        return names, f"{NO_HUMAN_BASELINE}: no two human coders of these passages"
    units = set(setup.units)
    human_codings = {h.name: {u: h.coding[u] for u in h.coding if u in units} for h in real}
    covered = ag.shared_passages(*human_codings.values())
    if not covered:
        problems.append("the human coders share no passage of the reference")
        return names, f"{NO_HUMAN_BASELINE}: the human coders share no passage"
    machine = {u: full[u] for u in covered}
    out["human_baseline"] = ag.human_baseline(
        human_codings,
        machine,
        machine_name=out["agreement"]["coder_b"],
        codes=setup.codes,
        margin=margin,
        n_boot=setup.n_boot,
        seed=setup.seed,
        clusters=setup.clusters,
    ).to_dict()
    h1, h2 = real[0], real[1]
    out["human_agreement"] = ag.compare(
        h1.coding,
        h2.coding,
        name_a=h1.name,
        name_b=h2.name,
        codes=setup.codes,
        n_boot=setup.n_boot,
        seed=setup.seed,
        min_support=setup.min_support,
        passages=covered,
        clusters=setup.clusters,
    ).to_dict()
    out["multi_coder"] = ag.compare_many(
        {**human_codings, out["agreement"]["coder_b"]: machine},
        codes=setup.codes,
        n_boot=setup.n_boot,
        seed=setup.seed,
        min_support=setup.min_support,
        clusters=setup.clusters,
    ).to_dict()
    return names, f"measured: {', '.join(names)} on {len(covered)} passages they all coded"


def _baseline_section(
    out: dict[str, Any], reference: Resolved, full: Coding, baseline: Resolved, setup: _Setup
) -> None:
    """The coder against another coding on the same units (both with unanswered = miss)."""
    units = setup.units
    base_cover = coverage(units, baseline)
    if not base_cover["answered"]:
        out["problems"].append(f"baseline '{baseline.name}' shares no passage: no comparison")
        return
    base_full = count_unanswered_as_no_code(units, baseline.coding, baseline.scope)
    cmp = ag.compare_runs(
        {u: reference.coding[u] for u in units},
        full,
        base_full,
        names=(reference.name, out["agreement"]["coder_b"], baseline.name),
        codes=setup.codes,
        n_boot=setup.n_boot,
        seed=setup.seed,
        clusters=setup.clusters,
    )
    out["baseline"] = {
        "name": baseline.name,
        "model": baseline.model,
        "coverage": base_cover,
        "comparison": cmp.to_dict(),
    }


# --------------------------------------------------------------------------- three levels


def three_levels(
    reference: Resolved,
    coder: Resolved,
    units: Sequence[str],
    grid: Grid | None,
    setup: _Setup,
    humans: Sequence[Resolved],
    margin: float,
    min_share: float,
) -> dict[str, Any]:
    """The ``levels`` section: span and turn figures over the text of the report's
    sentence units (see ``qualflow.levels``), beside the sentence level."""
    out: dict[str, Any] = {
        "computed": False,
        "min_share": min_share,
        "sentence_threshold": SENTENCE_THRESHOLD,
        "notes": [],
    }
    if grid is None:
        out["reason"] = "no grid given (a report built without the store): sentence level only"
        return out
    region = grid.region(units)
    if not region:
        out["reason"] = "the store has no position for the reference's units: sentence level only"
        return out
    notes: list[str] = []
    codings = {r.name: r for r in (reference, coder, *humans)}  # the reference may be a human
    spans = {name: _spans_for(r, grid, notes) for name, r in codings.items()}
    transcript_clusters = _transcript_clusters(units, grid, setup.clusters)
    level_setup = LevelSetup(
        codes=setup.codes,
        n_boot=setup.n_boot,
        seed=setup.seed,
        min_support=setup.min_support,
        min_share=min_share,
        margin=margin,
        transcript_clusters=transcript_clusters,
    )
    people = {h.name: spans[h.name] for h in humans}
    out.update(
        levels_section(
            spans[reference.name], spans[coder.name], region, grid, level_setup, people or None
        )
    )
    out.update(
        computed=True,
        notes=notes,
        sentence={
            "units": len(units),
            "rule": "spans of a code cover at least half of the sentence, or one lies inside it",
        },
        resampling={
            "span": _resampled("transcripts", transcript_clusters),
            "sentence": _resampled("sentences", setup.clusters),
            "turn": _resampled("turns", transcript_clusters),
        },
    )
    return out


def grid_for(store: Store, reference: Resolved, *others: Resolved | None) -> Grid:
    """The grid of a report: where the reference's units lie (they make the evaluated
    text), and the units of any coding without spans (read as spans over its units)."""
    units = set(reference.coding)
    for coding in (reference, *others):
        if coding is not None and coding.spans is None:
            units |= set(coding.coding)
    return Grid.from_store(store, units)


def _spans_for(resolved: Resolved, grid: Grid, notes: list[str]) -> SpanCoding:
    """A coding's spans under its report name; spans over its coded units (with a note)
    when it has none."""
    from qualflow.levels import spans_from_units

    if resolved.spans is not None:
        return SpanCoding(resolved.name, list(resolved.spans.spans), dict(resolved.spans.scope))
    notes.append(
        f"{resolved.name} has no spans (a coding of units only): its span and turn levels "
        "read each coded unit as a span over the unit"
    )
    answered = {u: resolved.coding[u] for u in resolved.scope if u in resolved.coding}
    return spans_from_units(resolved.name, answered, grid)


def _transcript_clusters(
    units: Sequence[str], grid: Grid, clusters: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Transcript id -> the cluster label of its units (participant), or None."""
    if clusters is None:
        return None
    out = {}
    for u in units:
        where = grid.sentences.get(u)
        if where is not None:
            out.setdefault(where.transcript_id, clusters.get(u, where.transcript_id))
    return out


def _resampled(what: str, clusters: Mapping[str, Any] | None) -> str:
    if clusters is None:
        return what
    return f"{len(set(clusters.values()))} clusters of {what}"


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
        reference = replace(
            reference, coding={pid: codes for pid, codes in reference.coding.items() if pid in keep}
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
        allow_overlap=experiment.allow_overlap,
        grid=grid_for(store, reference, coder, *humans),
        min_share=experiment.min_share,
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
    spans = SpanCoding(coder="")
    handed: set[str] = set()
    units: set[str] = set()
    for fold_name, sources, members in plans:
        fold = _train_and_code_fold(
            store, settings, book, kind, fold_name, sources, members, experiment, train_first
        )
        _refuse_overlap(experiment, fold, [t.name for t in members])
        folds.append(fold)
        coding.update(fold.pop("coding"))
        confidences += fold.pop("confidences")
        scope += fold.pop("passages")
        handed |= fold.pop("needs_human")
        units |= set(fold.pop("coding_units"))
        fold_spans = fold.pop("spans")
        spans.spans += fold_spans.spans
        spans.scope.update(fold_spans.scope)
    coder_name = folds[0]["name"] if len(folds) == 1 else f"{kind} ({len(folds)} folds)"
    spans.coder = coder_name
    resolved = Resolved(
        coder_name,
        coding,
        model=", ".join(dict.fromkeys(f["model"] for f in folds)),
        codebook_version=book.version,
        confidences=confidences,
        origin="machine",
        needs_human=frozenset(handed),
        spans=spans,
        coding_units=sorted(units),
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
    answers = resolve_key(store, key)  # chunk answers projected onto the grid
    coding = {pid: codes for pid, codes in answers.coding.items() if pid in wanted}
    confidences = [c for c in answers.confidences if c[0] in wanted]
    return {
        "name": f"{kind}:{name}",
        "model": key.model,
        "training": provenance,
        "test": sorted(t.name for t in members),
        "coding": coding,
        "confidences": confidences,
        "passages": scope,
        "needs_human": set(answers.needs_human) & wanted,
        "spans": _on_transcripts(answers.spans, set(ids)),
        "coding_units": answers.coding_units,
    }


def _on_transcripts(coding: SpanCoding | None, transcript_ids: Container[str]) -> SpanCoding:
    """The part of a span coding on these transcripts."""
    if coding is None:
        return SpanCoding(coder="")
    return SpanCoding(
        coder=coding.coder,
        spans=[s for s in coding.spans if s.transcript_id in transcript_ids],
        scope={tid: rs for tid, rs in coding.scope.items() if tid in transcript_ids},
    )


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
