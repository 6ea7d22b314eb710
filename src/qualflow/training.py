"""Training made explicit: a coder learns from named human codings, and says so.

Nothing trains implicitly. ``qualflow train learned --gold SET --name NAME`` (or
:func:`train_learned`) fits the learned coder on the gold sets and/or review decisions
it is given, optionally restricted to some transcripts or participants (a train/test
split), and saves it under a name; ``qualflow code --coder learned:NAME`` codes with it.
``qualflow train similarity`` calibrates the similarity coder's threshold and max codes
the same way.

Every trained coder carries its provenance (``training`` below), saved with it and
written into ``runs.params["training"]`` of every run it codes, so an agreement report
can tell which transcripts it learned from and refuse a leak::

    {"model": "learned:NAME", "sources": ["gold:dev", "decisions:until=..."],
     "transcripts": ["P1", ...], "units": 1234, "label_hash": "abc123def456",
     "note": "...", "codebook_version": "...", "filter": "participants=P1,P2"}

Training follows coding: only codable passages train a coder (an interviewer's turn
or a guide line read aloud is context for coding, so it is no training example
either, unless the study codes interviewer speech; see ``qualflow.segment``).

Human labels are read in one place, :func:`training_labels`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qualflow.models import Codebook, short_hash, utcnow

if TYPE_CHECKING:
    from qualflow.settings import Settings
    from qualflow.store import Store

log = logging.getLogger(__name__)

TRAINABLE = ("learned", "similarity")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TrainingError(ValueError):
    """Training that cannot happen: unknown source, nothing to learn from, bad name."""


# --------------------------------------------------------------------------- sources


@dataclass
class TrainingSources:
    """What a coder learns from.

    ``gold``: gold set names (``SET`` or ``SET:CODER``), in order of precedence.
    ``decisions``: also reviewers' finished review decisions, those made up to
    ``until`` when given. ``transcripts`` (names) and ``participants`` (ids, matched
    against a transcript's participant or, when it has none, its name) restrict the
    training units to those transcripts: a train/test split. Both empty = all.
    """

    gold: list[str] = field(default_factory=list)
    decisions: bool = False
    until: datetime | None = None
    transcripts: list[str] = field(default_factory=list)
    participants: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        """The ``sources`` entries of the provenance."""
        out = [f"gold:{g}" for g in self.gold]
        if self.decisions:
            out.append(
                f"decisions:until={_utc(self.until).isoformat()}" if self.until else "decisions"
            )
        return out

    def filter_label(self) -> str | None:
        parts = []
        if self.transcripts:
            parts.append("transcripts=" + ",".join(self.transcripts))
        if self.participants:
            parts.append("participants=" + ",".join(self.participants))
        return "; ".join(parts) or None


@dataclass
class TrainingLabels:
    """Training units (passage id -> code titles of the codebook) and what was left out."""

    labels: dict[str, frozenset[str]]
    transcripts: list[str]
    sources: list[str]
    label_hash: str
    not_codable: int = 0
    """Coded passages left out because they are not codable (interviewer, guide line)."""
    foreign_only: int = 0
    """Passages left out because every code they carry is outside the codebook."""
    foreign_codes: dict[str, int] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return len(self.labels)


def training_labels(store: Store, codebook: Codebook, sources: TrainingSources) -> TrainingLabels:
    """The human labels a coder may learn from: the one place that reads them.

    Per passage the first source that codes it wins (gold sets in the order given,
    then review decisions); within a gold set, the first coder by name unless the
    source names one. Codes outside ``codebook`` are dropped (a passage left with none
    of its codes is dropped too: it is not a "no code" example); passages that are not
    codable are left out; ``sources.transcripts``/``participants`` restrict the rest.
    """
    if not sources.gold and not sources.decisions:
        raise TrainingError("name what to learn from: at least one gold set, or decisions")
    raw: dict[str, frozenset[str]] = {}
    for spec in sources.gold:
        for pid, codes in _gold_labels(store, spec).items():
            raw.setdefault(pid, codes)
    if sources.decisions:
        for pid, codes in decision_labels(store, until=sources.until).items():
            raw.setdefault(pid, codes)
    passages = {p.id: p for p in _passages(store, list(raw))}
    transcripts = {t.id: t for t in store.transcripts(current_only=False)}
    keep_ids = _selected_transcripts(transcripts.values(), sources)
    titles = set(codebook.titles())
    labels: dict[str, frozenset[str]] = {}
    not_codable = foreign_only = 0
    foreign: Counter[str] = Counter()
    for pid, codes in raw.items():
        passage = passages.get(pid)
        if passage is None or (keep_ids is not None and passage.transcript_id not in keep_ids):
            continue
        if not passage.codable:
            not_codable += bool(codes)
            continue
        known = frozenset(c for c in codes if c in titles)
        foreign.update(c for c in codes if c not in titles)
        if codes and not known:
            foreign_only += 1
            continue
        labels[pid] = known
    _check_labels(labels, codebook, sources, foreign)
    names = sorted({transcripts[passages[pid].transcript_id].name for pid in labels})
    return TrainingLabels(
        labels=labels,
        transcripts=names,
        sources=sources.describe(),
        label_hash=short_hash(*sorted((pid, sorted(c)) for pid, c in labels.items()), length=12),
        not_codable=not_codable,
        foreign_only=foreign_only,
        foreign_codes=dict(foreign.most_common()),
    )


def _gold_labels(store: Store, spec: str) -> dict[str, frozenset[str]]:
    gold_set, _, coder = spec.partition(":")
    codings = store.gold(gold_set)
    if not codings:
        have = ", ".join(sorted(store.gold_sets())) or "none"
        raise TrainingError(f"no gold set '{gold_set}' in this workspace (gold sets: {have})")
    if coder and coder not in codings:
        raise TrainingError(f"gold set '{gold_set}' has no coder '{coder}' ({sorted(codings)})")
    out: dict[str, frozenset[str]] = {}
    for name in [coder] if coder else sorted(codings):
        for pid, codes in codings[name].items():
            out.setdefault(pid, frozenset(codes))
    return out


def decision_labels(store: Store, *, until: datetime | None = None) -> dict[str, frozenset[str]]:
    """Codes of every passage whose review was finished ("Done" and not undone), as the
    decision log stood at ``until`` (default: now). Where two reviewers finished the same
    passage (double coding), the later finished track wins."""
    from sqlalchemy import select

    from qualflow.db import DecisionRow
    from qualflow.review.decisions import LogEntry, derive, entry_of

    limit = _utc(until) if until else None
    grouped: dict[tuple[int, str], list[LogEntry]] = {}
    with store.session() as s:
        for r in s.scalars(select(DecisionRow).order_by(DecisionRow.id)):
            if limit is not None and _utc(r.created_at) > limit:
                continue
            track = r.track_user_id if r.track_user_id is not None else r.user_id
            grouped.setdefault((track, r.passage_id), []).append(entry_of(r))
    latest: dict[str, tuple[int, frozenset[str]]] = {}
    for (owner, pid), entries in grouped.items():
        state = derive(pid, owner, entries)
        if not state.done or state.last_effective_id is None:
            continue
        if pid not in latest or latest[pid][0] < state.last_effective_id:
            latest[pid] = (state.last_effective_id, frozenset(state.codes))
    return {pid: codes for pid, (_, codes) in latest.items()}


def _passages(store: Store, ids: list[str], chunk: int = 500) -> list[Any]:
    out = []
    for i in range(0, len(ids), chunk):
        out += store.passages(ids=ids[i : i + chunk])
    return out


def _selected_transcripts(transcripts: Iterable[Any], sources: TrainingSources) -> set[str] | None:
    """Ids of the transcripts the filter selects (None = no filter); every name and
    participant asked for must match a transcript."""
    if not sources.transcripts and not sources.participants:
        return None
    return select_transcripts(
        transcripts, names=sources.transcripts, participants=sources.participants
    )


def select_transcripts(
    transcripts: Iterable[Any], *, names: Sequence[str] = (), participants: Sequence[str] = ()
) -> set[str]:
    """Ids of the transcripts with one of ``names`` or one of ``participants`` (matched
    against the transcript's participant id, or its name when it has none)."""
    from qualflow.participants import match_participant

    chosen: set[str] = set()
    found: set[str] = set()
    all_names: set[str] = set()
    for t in transcripts:
        all_names.add(t.name)
        person = t.participant_id or match_participant(t.name, list(participants))
        if t.name in names:
            chosen.add(t.id)
            found.add(f"name:{t.name}")
        if participants and person in participants:
            chosen.add(t.id)
            found.add(f"participant:{person}")
    missing = [n for n in names if f"name:{n}" not in found]
    missing += [p for p in participants if f"participant:{p}" not in found]
    if missing:
        shown = ", ".join(sorted(all_names)[:20]) or "none"
        raise TrainingError(
            f"no transcript for {', '.join(missing)} (transcript names: {shown}); names "
            "must match exactly, participant ids match the transcript's participant or a "
            "whole token of its name"
        )
    return chosen


def _check_labels(
    labels: Mapping[str, frozenset[str]],
    codebook: Codebook,
    sources: TrainingSources,
    foreign: Counter[str],
) -> None:
    what = ", ".join(sources.describe())
    where = f" ({sources.filter_label()})" if sources.filter_label() else ""
    if not any(labels.values()):
        if foreign:
            sample = ", ".join(c for c, _ in foreign.most_common(5))
            raise TrainingError(
                f"{what}{where} shares no code with codebook '{codebook.name}' (version "
                f"{codebook.version}): its codes are e.g. {sample}. Train against the "
                "codebook the gold set was coded with (--codebook)."
            )
        raise TrainingError(
            f"{what}{where}: no codable coded passage to learn from (interviewer turns "
            "and guide lines do not count unless the study codes them)"
        )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time ('2026-11-30', '2026-11-30T10:00', with or without offset; UTC
    when none is given)."""
    try:
        return _utc(datetime.fromisoformat(text.strip()))
    except ValueError as exc:
        raise TrainingError(f"--until {text!r}: not an ISO 8601 time ({exc})") from exc


# --------------------------------------------------------------------------- trained coders


@dataclass
class TrainedCoder:
    """A trained (or calibrated) coder and its provenance (``runs.params["training"]``)."""

    coder: Any
    provenance: dict[str, Any]
    name: str | None = None
    path: Path | None = None
    reused: bool = False
    """True when a saved coder trained on the same labels was loaded instead."""


def models_dir(settings: Settings, kind: str) -> Path:
    return settings.data_dir / "coders" / kind


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise TrainingError(
            f"coder name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, "
            "starting with a letter or digit)"
        )
    return name


def _provenance(
    kind: str,
    name: str | None,
    labels: TrainingLabels,
    sources: TrainingSources,
    codebook: Codebook,
    note: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": f"{kind}:{name}" if name else kind,
        "sources": labels.sources,
        "transcripts": labels.transcripts,
        "units": labels.units,
        "label_hash": labels.label_hash,
        "note": note,
        "codebook_version": codebook.version,
    }
    if sources.filter_label():
        out["filter"] = sources.filter_label()
    return out


def _left_out(labels: TrainingLabels) -> str:
    parts = []
    if labels.not_codable:
        parts.append(
            f"{labels.not_codable} coded passages that are not codable (interviewer, guide "
            "lines) left out"
        )
    if labels.foreign_only:
        parts.append(f"{labels.foreign_only} passages coded only outside the codebook left out")
    return "; ".join(parts)


def train_learned(
    store: Store,
    settings: Settings,
    codebook: Codebook,
    sources: TrainingSources,
    name: str | None = None,
    *,
    C: float = 1.0,
    folds: int = 5,
    tune_thresholds: bool = True,
    reuse: bool = True,
) -> TrainedCoder:
    """Fit the learned coder on the labels ``sources`` name; save it under ``name``.

    With ``reuse``, a coder already saved under ``name`` for the same labels, codebook
    version and hyperparameters is loaded instead of fitted again.
    """
    from qualflow.coders.learned import LearnedCoder

    if name is not None:
        check_name(name)
    labels = training_labels(store, codebook, sources)
    note = (
        f"logistic regression per code on MiniLM embeddings (passage + text before it), "
        f"C={C:g}, per-code thresholds tuned on {folds} participant-grouped folds"
        if tune_thresholds
        else f"logistic regression per code on MiniLM embeddings, C={C:g}, threshold 0.5"
    )
    if left := _left_out(labels):
        note += f"; {left}"
    provenance = _provenance("learned", name, labels, sources, codebook, note)
    path = models_dir(settings, "learned") / f"{name}.joblib" if name else None
    if reuse and path is not None and path.is_file():
        saved = read_metadata(settings, "learned", name)  # type: ignore[arg-type]
        same = saved.get("training") or {}
        if (
            same.get("label_hash") == labels.label_hash
            and saved.get("codebook_version") == codebook.version
            and saved.get("hyperparameters") == [C, folds, tune_thresholds]
        ):
            coder = LearnedCoder.load(path)
            return TrainedCoder(coder, coder.training or same, name, path, reused=True)
    ids = list(labels.labels)
    contexts = store.contexts(_passages_in_order(store, ids))
    code_sets = [labels.labels[c.passage.id] for c in contexts]
    log.info("training learned coder on %d passages (%s)", len(contexts), ", ".join(labels.sources))
    try:
        coder = LearnedCoder(C=C, folds=folds, tune_thresholds=tune_thresholds).fit(
            contexts, code_sets
        )
    except ValueError as exc:
        raise TrainingError(f"cannot train the learned coder: {exc}") from exc
    coder.name = name
    coder.codebook_version = codebook.version
    coder.training = provenance
    if path is not None:
        coder.save(path)
        _write_metadata(
            path.with_suffix(".json"),
            kind="learned",
            name=name,
            codebook=codebook,
            model=coder.model,
            training=provenance,
            extra={"hyperparameters": [C, folds, tune_thresholds], "codes": coder.codes},
        )
    return TrainedCoder(coder, provenance, name, path)


def _passages_in_order(store: Store, ids: list[str]) -> list[Any]:
    found = {p.id: p for p in _passages(store, ids)}
    return [found[i] for i in ids if i in found]


def calibrate_similarity(
    store: Store,
    settings: Settings,
    codebook: Codebook,
    sources: TrainingSources,
    name: str | None = None,
    *,
    index: Any = None,
) -> TrainedCoder:
    """Calibrate the similarity coder's threshold and max codes (at most the
    ``similarity_max_codes`` setting) on the labels ``sources`` name; save them as
    ``similarity:NAME``."""
    from qualflow.coders.similarity import SimilarityCoder, micro_f1
    from qualflow.index import CodeIndex

    if name is not None:
        check_name(name)
    labels = training_labels(store, codebook, sources)
    index = index or CodeIndex.ensure(codebook, settings)
    contexts = store.contexts(_passages_in_order(store, list(labels.labels)))
    code_sets = [labels.labels[c.passage.id] for c in contexts]
    coder = SimilarityCoder(
        index, threshold=settings.similarity_threshold, max_codes=settings.similarity_max_codes
    )
    coder.calibrate(contexts, code_sets)
    f1 = micro_f1(coder.predict(contexts), code_sets)
    note = (
        f"threshold {coder.threshold:g} and max codes {coder.max_codes} calibrated on these "
        f"passages (micro-F1 {f1:.3f} on them)"
    )
    if left := _left_out(labels):
        note += f"; {left}"
    provenance = _provenance("similarity", name, labels, sources, codebook, note)
    coder.training = provenance
    path = None
    if name is not None:
        path = models_dir(settings, "similarity") / f"{name}.json"
        _write_metadata(
            path,
            kind="similarity",
            name=name,
            codebook=codebook,
            model=coder.model,
            training=provenance,
            extra={"threshold": coder.threshold, "max_codes": coder.max_codes, "micro_f1": f1},
        )
    return TrainedCoder(coder, provenance, name, path)


def _write_metadata(
    path: Path,
    *,
    kind: str,
    name: str | None,
    codebook: Codebook,
    model: str,
    training: dict[str, Any],
    extra: Mapping[str, Any],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "kind": kind,
        "name": name,
        "codebook": codebook.name,
        "codebook_version": codebook.version,
        "model": model,
        "trained_at": utcnow().isoformat(timespec="seconds"),
        "training": training,
        **extra,
    }
    path.write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")


def read_metadata(settings: Settings, kind: str, name: str) -> dict[str, Any]:
    """The saved metadata of a trained coder; TrainingError when there is none."""
    path = models_dir(settings, kind) / f"{check_name(name)}.json"
    if not path.is_file():
        have = ", ".join(m["name"] for m in list_trained(settings, kind)) or "none"
        raise TrainingError(
            f"no trained {kind} coder named '{name}' in this workspace (trained: {have}); "
            f"train one with `qualflow train {kind} --gold SET --name {name}`"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{path}: unreadable coder metadata ({exc})") from exc


def list_trained(settings: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    """Metadata of every trained coder of the workspace (of one kind), by name."""
    out = []
    for k in [kind] if kind else TRAINABLE:
        folder = models_dir(settings, k)
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                log.warning("skipping unreadable coder metadata %s", path)
    return out


def load_trained(settings: Settings, kind: str, name: str, *, index: Any = None) -> TrainedCoder:
    """A saved trained coder by kind and name, with its provenance."""
    meta = read_metadata(settings, kind, name)
    if kind == "learned":
        from qualflow.coders.learned import LearnedCoder

        path = models_dir(settings, kind) / f"{name}.joblib"
        if not path.is_file():
            raise TrainingError(f"{path}: the saved learned coder '{name}' is missing its model")
        coder = LearnedCoder.load(path)
        coder.training = coder.training or meta.get("training")
        return TrainedCoder(coder, coder.training or {}, name, path)
    if kind == "similarity":
        from qualflow.coders.similarity import SimilarityCoder

        if index is None:
            raise TrainingError("the similarity coder needs the codebook index")
        coder = SimilarityCoder(index, threshold=meta["threshold"], max_codes=meta["max_codes"])
        coder.training = meta.get("training")
        return TrainedCoder(coder, coder.training or {}, name, models_dir(settings, kind))
    raise TrainingError(f"'{kind}' coders are not trained here (trainable: {', '.join(TRAINABLE)})")


def default_trained_name(settings: Settings, kind: str, gold_sets: Sequence[str] = ()) -> str:
    """The one trained coder of ``kind`` when the user did not name one; an error that
    says how to train one when there is none, and which to pick when there are several."""
    names = [m["name"] for m in list_trained(settings, kind)]
    if len(names) == 1:
        return names[0]
    if not names:
        have = f" (gold sets here: {', '.join(sorted(gold_sets))})" if gold_sets else ""
        raise TrainingError(
            f"no {kind} coder is trained in this workspace{have}. Nothing trains "
            f"implicitly: train one from named sources, e.g. `qualflow train {kind} --gold "
            f"SET [--participants P1,P2] --name NAME`, then code with `--coder {kind}:NAME`."
        )
    raise TrainingError(
        f"several {kind} coders are trained here ({', '.join(names)}): say which with "
        f"--coder {kind}:NAME"
    )


def describe_provenance(params: Mapping[str, Any]) -> list[str]:
    """One line each for what a run's coder learned from and which examples it was
    shown (from ``runs.params``), for run summaries."""
    lines = []
    if training := params.get("training"):
        scope = f" ({training['filter']})" if training.get("filter") else ""
        sources = ", ".join(training.get("sources") or []) or "no labelled data"
        names = training.get("transcripts") or []
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        lines.append(
            f"learned from: {training.get('model', '?')} <- {sources}{scope}; "
            f"{training.get('units', 0)} units of {len(names)} transcripts"
            + (f" ({shown})" if names else "")
            + (f"; {training['note']}" if training.get("note") else "")
        )
    if few_shot := params.get("few_shot"):
        lines.append(
            f"few-shot examples: {few_shot.get('per_code')} per code from "
            f"{', '.join(few_shot.get('sources') or [])}: {len(few_shot.get('passages') or [])} "
            f"passages of {', '.join(few_shot.get('transcripts') or [])}"
        )
    return lines
