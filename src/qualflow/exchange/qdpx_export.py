"""Write a study as a REFI-QDA project (``.qdpx``): every coder's spans as selections.

Two steps. ``collect_plan`` gathers from the store what goes into the project: the
current transcripts, the codebook, and each coder as a ``SpanCoding`` (machine coders,
human reviewers, gold coders), plus what the imports kept
(``qualflow.exchange.records``: GUIDs, colours, folder descriptions, memos, sets,
users, dates). ``project_xml`` writes that plan; it knows nothing about the store.

Where each coder's spans come from:

- machine coders: ``Store.span_coding`` for each proposal key (or the chosen runs):
  the valid span proposals exactly as stored, the scope the codable text of the units
  (chunks) answered ok. No machine coding goes through a passage grid.
- reviewers: ``qualflow.exchange.reviewed.review_work`` (one function; a caller may
  pass its own ``ReviewWork``).
- gold coders: ``qualflow.exchange.spans.load_gold_spans``; imported gold keeps its
  exact highlights and the tool's selections.

How qualflow's data maps onto the standard (see docs/interop.md):

- Each coder is a ``<User>``; imported users keep their GUID, name and id, and users
  who coded nothing are written too. Gold coders keep their names.
- A span is a ``<Coding>`` in a ``<PlainTextSelection>`` with the span's exact
  offsets. Spans of one imported selection (or Taguette highlight) share one
  selection again; other spans of one coder on the same text share one. Every
  selection carries ``creatingUser``; codings and selections carry their dates.
- A coder's explicit "no code applies" (text in its scope that none of its spans
  touches: a machine's chunk answered without a span, a reviewer's finished unit
  without codes, a gold coder's uncoded passage) is a selection without a coding,
  described "no code applies".
- Machine codings carry a ``<Note>`` with their provenance; reviewers' memos are notes
  on their selection; imported memos, sets, colours and folder descriptions go back.
- Whatever the standard cannot hold is left out with one notice per kind, with counts.
"""

from __future__ import annotations

import bisect
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from qualflow.exchange.records import ImportRecord, coding_key, import_records
from qualflow.exchange.refiqda import (
    NO_CODE_APPLIES,
    NS_PROJECT,
    RefiError,
    _clean,
    _parse_xml,
    _stamp,
    code_nodes,
    codes_xml,
    guid,
    validate,
)
from qualflow.exchange.reviewed import ReviewWork, review_work
from qualflow.exchange.spans import GoldCoderSpans, load_gold_spans, merge_ranges, restrict
from qualflow.highlights import passages_by_ids
from qualflow.models import (
    Codebook,
    CodeProposal,
    Passage,
    ProposalSet,
    Range,
    Span,
    SpanCoding,
    Transcript,
)
from qualflow.store import ProposalKey, Store

if TYPE_CHECKING:
    from lxml import etree

When = datetime | str | None
_NOTE_STAMPS = {"creatingUser", "modifyingUser", "modifiedDateTime"}


# ---------------------------------------------------------------------- the plan


@dataclass
class ExportUser:
    """A ``<User>``: a machine coder, a reviewer, a gold coder or an imported user."""

    key: str
    name: str
    kind: str  # machine | reviewer | gold | imported
    guid: str = ""
    id: str | None = None

    def __post_init__(self) -> None:
        self.guid = self.guid or guid("user", self.key)


@dataclass
class ExportNote:
    """A ``<Note>``; ``guid`` is kept from an import or derived from its content."""

    guid: str
    text: str
    name: str = ""
    user: ExportUser | None = None
    created_at: When = None
    stamps: dict[str, str] = field(default_factory=dict)


@dataclass
class SpanDetail:
    """What goes with one span: the selection it belongs to (a key; spans with the same
    key share a ``<PlainTextSelection>``), its notes, date and kept coding GUID."""

    selection: str | None = None
    notes: list[ExportNote] = field(default_factory=list)
    created_at: When = None
    guid: str | None = None


@dataclass
class SelectionInfo:
    """What an import kept about a selection (GUID, name, description, who and when)."""

    guid: str | None = None
    name: str | None = None
    description: str | None = None
    creating_user: str | None = None
    created_at: When = None
    modifying_user: str | None = None
    modified_at: When = None
    notes: list[ExportNote] = field(default_factory=list)


@dataclass
class Uncoded:
    """A selection without a coding (a Taguette highlight without a tag, or one kept
    from an import)."""

    transcript_id: str
    start: int
    end: int
    selection: str | None = None


@dataclass
class ExportCoder:
    """One coder to write: its spans and scope, with ``details[i]`` for ``spans[i]``;
    ``range_notes``/``range_dates`` give the notes and dates of its judgements on a
    stretch of text (a passage), ``created_at`` the date of the rest."""

    user: ExportUser
    coding: SpanCoding
    details: list[SpanDetail] = field(default_factory=list)
    uncoded: list[Uncoded] = field(default_factory=list)
    range_notes: dict[tuple[str, int, int], list[ExportNote]] = field(default_factory=dict)
    range_dates: dict[tuple[str, int, int], When] = field(default_factory=dict)
    created_at: When = None


@dataclass
class ExportSource:
    transcript: Transcript
    guid: str
    description: str | None = None
    stamps: dict[str, str] = field(default_factory=dict)
    note_guids: list[str] = field(default_factory=list)


@dataclass
class ExportPlan:
    """Everything a ``.qdpx`` export writes, gathered from the store."""

    name: str
    codebook: Codebook
    sources: list[ExportSource]
    coders: list[ExportCoder] = field(default_factory=list)
    users: list[ExportUser] = field(default_factory=list)
    known_codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    selections: dict[str, SelectionInfo] = field(default_factory=dict)
    notes: dict[str, ExportNote] = field(default_factory=dict)
    project: dict[str, Any] = field(default_factory=dict)
    free_notes: list[str] = field(default_factory=list)
    sets: list[dict[str, Any]] = field(default_factory=list)
    participants: dict[str, dict[str, str]] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)


@dataclass
class RefiExport:
    path: str
    sources: int = 0
    codes: int = 0
    selections: int = 0
    codings: int = 0
    notes: int = 0
    sets: int = 0
    users: dict[str, int] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def summary(self) -> str:
        users = ", ".join(f"{u}: {n}" for u, n in self.users.items()) or "none"
        return (
            f"{self.path}: {self.sources} sources, {self.codes} codes, {self.selections} "
            f"selections, {self.codings} codings, {self.notes} notes, {self.sets} sets; "
            f"codings per user: {users}"
        )


def selection_key(user: ExportUser, transcript_id: str, start: int, end: int) -> str:
    """The selection a coder's span or judgement on one stretch of text belongs to."""
    return f"{user.key}\x1f{transcript_id}\x1f{start}\x1f{end}"


# ---------------------------------------------------------------------- from the store


def export_qdpx(
    store: Store,
    path: Path | str,
    *,
    name: str | None = None,
    study_name: str | None = None,
    codebook_version: str | None = None,
    machine: bool = True,
    reviewers: bool = True,
    gold: bool = True,
    run_ids: list[int] | None = None,
    gold_sets: list[str] | None = None,
    transcript_ids: list[str] | None = None,
    review: ReviewWork | None = None,
    schema_dir: Path | None = None,
    check_schema: bool = True,
) -> RefiExport:
    """Write a study as a ``.qdpx``: sources, codebook, every coder's spans, and what
    the imports kept. The project is called ``name``, else the name of the project it
    was imported from (when there is one), else ``study_name``. Reviewers' work comes
    from ``review`` when given, else from ``reviewed.review_work(store)``."""
    path = Path(path)
    plan = collect_plan(
        store,
        name=name,
        study_name=study_name,
        codebook_version=codebook_version,
        machine=machine,
        reviewers=reviewers,
        gold=gold,
        run_ids=run_ids,
        gold_sets=gold_sets,
        transcript_ids=transcript_ids,
        review=review,
    )
    data, files, report = project_xml(plan)
    report.path = str(path)
    if check_schema:
        root = _parse_xml(data, str(path))
        notice = validate(root, "project", schema_dir, f"{path}!project.qde", hint=None)
        report.notices += [notice] if notice else []
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project.qde", data)
        for member, content in files.items():
            zf.writestr(member, content)
    tmp.replace(path)
    return report


def collect_plan(
    store: Store,
    *,
    name: str | None = None,
    study_name: str | None = None,
    codebook_version: str | None = None,
    machine: bool = True,
    reviewers: bool = True,
    gold: bool = True,
    run_ids: list[int] | None = None,
    gold_sets: list[str] | None = None,
    transcript_ids: list[str] | None = None,
    review: ReviewWork | None = None,
) -> ExportPlan:
    """What an export of ``store`` writes (see the module docstring)."""
    codebook = store.codebook(codebook_version) if codebook_version else store.codebook()
    if codebook_version and codebook is None:
        raise RefiError(f"no codebook with version {codebook_version} in the store")
    records = import_records(store)
    transcripts = store.transcripts()
    if transcript_ids is not None:
        wanted = set(transcript_ids)
        transcripts = [t for t in transcripts if t.id in wanted or t.name in wanted]
    plan = ExportPlan(
        name=_project_name(name, study_name, records),
        codebook=codebook or Codebook(name=name or study_name or "qualflow", codes=[]),
        sources=_sources(store, transcripts, records),
    )
    _kept(plan, records)
    exported = {t.id for t in transcripts}
    coders: list[ExportCoder] = []
    if machine:
        coders += _machine_coders(store, run_ids, plan.notices)
    if reviewers:
        work = review if review is not None else review_work(store)
        reviewer_coders, idle = _reviewer_coders(work, plan.notices)
        coders += reviewer_coders
        plan.users += idle
    if gold:
        coders += _gold_coders(store, gold_sets, records, plan)
    dropped = 0
    for coder in coders:
        before = len(coder.coding.spans)
        coder.coding, coder.details = _on(coder, exported)
        coder.uncoded = [u for u in coder.uncoded if u.transcript_id in exported]
        dropped += before - len(coder.coding.spans)
    if dropped:
        plan.notices.append(
            f"{dropped} codings on transcripts not exported (earlier versions, or not "
            "selected) left out"
        )
    plan.coders = coders
    _name_users(plan)
    plan.participants = {p.id: dict(p.attributes) for p in store.participants()}
    plan.notices += _lost_in_translation(plan, transcripts)
    return plan


def _on(coder: ExportCoder, exported: set[str]) -> tuple[SpanCoding, list[SpanDetail]]:
    """The coder's spans (and their details) on exported transcripts only."""
    details = coder.details or [SpanDetail() for _ in coder.coding.spans]
    keep = [i for i, s in enumerate(coder.coding.spans) if s.transcript_id in exported]
    coding = restrict(coder.coding, exported)
    coding.spans = [coder.coding.spans[i] for i in keep]
    return coding, [details[i] for i in keep]


def _project_name(name: str | None, study_name: str | None, records: list[ImportRecord]) -> str:
    if name:
        return name
    imported = {r.name for r in records if r.format in {"refi-qda", "taguette"}}
    if len(imported) == 1:
        return imported.pop()
    return study_name or "qualflow study"


def _sources(
    store: Store, transcripts: list[Transcript], records: list[ImportRecord]
) -> list[ExportSource]:
    from qualflow.db import TranscriptRow

    kept: dict[str, dict[str, Any]] = {}
    for r in records:
        kept.update(r.data.get("sources", {}))
    ids = [t.id for t in transcripts]
    with store.session() as s:
        ingested = dict(
            s.execute(
                select(TranscriptRow.id, TranscriptRow.ingested_at).where(TranscriptRow.id.in_(ids))
            )
            .tuples()
            .all()
        )
    out = []
    for t in transcripts:
        info = kept.get(t.id, {})
        stamps = {
            k: info[k]
            for k in ("creatingUser", "creationDateTime", "modifyingUser", "modifiedDateTime")
            if k in info
        }
        if "creationDateTime" not in stamps and ingested.get(t.id) is not None:
            stamps["creationDateTime"] = _stamp(ingested[t.id])
        out.append(
            ExportSource(
                transcript=t,
                guid=info.get("guid") or guid("source", t.id),
                description=info.get("description") or t.metadata.get("description") or None,
                stamps=stamps,
                note_guids=list(info.get("notes", [])),
            )
        )
    return out


def _kept(plan: ExportPlan, records: list[ImportRecord]) -> None:
    """Codes, users, notes, sets and project details the imports kept (later wins)."""
    seen_users: set[str] = set()
    for r in records:
        data = r.data
        for title, info in data.get("codes", {}).items():
            plan.known_codes[title] = {**plan.known_codes.get(title, {}), **info}
        if r.format not in {"refi-qda", "taguette"}:
            continue
        if plan.name == data.get("project", {}).get("name", r.name):
            plan.project = dict(data.get("project", {}))
        for u in data.get("users", []):
            if u["guid"] not in seen_users:
                seen_users.add(u["guid"])
                plan.users.append(
                    ExportUser(
                        key=f"import:{u['guid']}",
                        name=u.get("name") or u.get("label") or u["guid"],
                        kind="imported",
                        guid=u["guid"],
                        id=u.get("id"),
                    )
                )
        for g, n in data.get("notes", {}).items():
            plan.notes[g] = ExportNote(
                guid=g,
                text=n.get("text", ""),
                name=n.get("name", ""),
                created_at=n.get("creationDateTime"),
                stamps={k: v for k, v in n.items() if k in _NOTE_STAMPS},
            )
        plan.free_notes += [g for g in data.get("free_notes", []) if g not in plan.free_notes]
        plan.sets += data.get("sets", [])


def known_codes(store: Store) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Codes (title -> GUID, colour, description) and sets the imports kept."""
    codes: dict[str, dict[str, Any]] = {}
    sets: list[dict[str, Any]] = []
    for r in import_records(store):
        for title, info in r.data.get("codes", {}).items():
            codes[title] = {**codes.get(title, {}), **info}
        sets += r.data.get("sets", [])
    return codes, sets


# ---------------------------------------------------------------------- machine coders


@dataclass(frozen=True)
class MachineCoder:
    """One machine coder to export: a proposal key, the runs to take (None: every set
    stored under the key) and the user it is written as."""

    key: ProposalKey
    runs: tuple[int | None, ...] | None
    user_key: str
    user_name: str


def machine_coders(store: Store, run_ids: list[int] | None = None) -> list[MachineCoder]:
    """The machine coders in the store (or in the given runs): one per coder kind,
    model and prompt version, as before spans; runs of those under several codebook
    versions are one coder per codebook version (the user's name then says which)."""
    from qualflow.db import ProposalSetRow

    with store.session() as s:
        q = select(
            ProposalSetRow.coder,
            ProposalSetRow.model,
            ProposalSetRow.prompt_version,
            ProposalSetRow.codebook_version,
            ProposalSetRow.run_id,
        ).distinct()
        if run_ids is not None:
            q = q.where(ProposalSetRow.run_id.in_(run_ids))
        rows = s.execute(q).tuples().all()
    runs: dict[ProposalKey, set[int | None]] = defaultdict(set)
    for coder, model, prompt, codebook, run_id in rows:
        runs[ProposalKey(coder, model, prompt, codebook)].add(run_id)
    versions: dict[tuple[str, str, str], int] = defaultdict(int)
    for key in runs:
        versions[(key.coder, key.model, key.prompt_version)] += 1
    out = []
    for key in sorted(runs, key=lambda k: (k.coder, k.model, k.prompt_version, k.codebook_version)):
        pv = key.prompt_version[:12]
        user_key = f"machine:{key.coder}:{key.model}:{key.prompt_version}"
        name = f"{key.model} [{key.coder}" + (f", prompt {pv}" if pv else "")
        if versions[(key.coder, key.model, key.prompt_version)] > 1:
            user_key += f":{key.codebook_version}"
            name += f", codebook {key.codebook_version[:8]}"
        chosen = None if run_ids is None else tuple(sorted(runs[key], key=lambda r: r or 0))
        out.append(MachineCoder(key, chosen, user_key, name + "]"))
    return out


def _machine_coders(
    store: Store, run_ids: list[int] | None, notices: list[str]
) -> list[ExportCoder]:
    """Every machine coder's spans exactly as stored (``Store.span_coding``: the valid
    proposals of the units it answered ok, its scope the codable text of those units),
    each span with a note giving its provenance."""
    out = []
    needs_human = invalid = 0
    for machine in machine_coders(store, run_ids):
        sets = _machine_sets(store, machine)
        needs_human += sum(1 for ps in sets if ps.status != "ok")
        invalid += sum(len(ps.invalid) for ps in sets)
        out.append(_machine_coder(store, machine, sets))
    if needs_human:
        notices.append(
            f"{needs_human} machine answers without a valid coding (needs_human) not "
            "written: no coder answered for those units"
        )
    if invalid:
        notices.append(
            f"{invalid} invalid machine proposals (failed validation) not written; "
            "`qualflow export proposals` lists them"
        )
    return out


def _machine_sets(store: Store, machine: MachineCoder) -> list[ProposalSet]:
    if machine.runs is None:
        return store.proposal_sets(key=machine.key)
    return [
        ps
        for run_id in machine.runs
        if run_id is not None
        for ps in store.proposal_sets(run_id=run_id, key=machine.key)
    ]


def _machine_span_coding(store: Store, machine: MachineCoder) -> SpanCoding:
    """The coder's spans and scope as the store gives them (one run or the whole key)."""
    if machine.runs is None:
        return store.span_coding(machine.user_name, key=machine.key)
    coding = SpanCoding(coder=machine.user_name)
    for run_id in machine.runs:
        if run_id is None:
            continue
        part = store.span_coding(machine.user_name, run_id=run_id)
        coding.spans += part.spans
        for tid, ranges in part.scope.items():
            coding.scope.setdefault(tid, []).extend(ranges)
    coding.scope = {tid: merge_ranges(r) for tid, r in coding.scope.items()}
    return coding


def _machine_coder(store: Store, machine: MachineCoder, sets: list[ProposalSet]) -> ExportCoder:
    user = ExportUser(key=machine.user_key, name=machine.user_name, kind="machine")
    coding = _machine_span_coding(store, machine)
    coder = ExportCoder(user, coding)
    units = {p.id: p for p in passages_by_ids(store, {ps.passage_id for ps in sets})}
    found: dict[Span, list[SpanDetail]] = defaultdict(list)
    for ps in sets:
        unit = units.get(ps.passage_id)
        if ps.status != "ok" or unit is None:
            continue
        for start, end in [(p.char_start, p.char_end) for p in unit.codable_pieces()]:
            coder.range_dates[(unit.transcript_id, start, end)] = ps.created_at
        for prop in ps.proposals:
            if prop.start is None or prop.end is None:
                continue
            span = Span(unit.transcript_id, prop.start, prop.end, prop.code)
            found[span].append(_machine_detail(user, ps, prop, unit))
    coder.details = [found[s].pop(0) if found.get(s) else SpanDetail() for s in coding.spans]
    coder.created_at = min((ps.created_at for ps in sets), default=None)
    return coder


def _machine_detail(
    user: ExportUser, ps: ProposalSet, prop: CodeProposal, unit: Passage
) -> SpanDetail:
    """A machine span's date and its provenance note."""
    text = "\n".join(
        [
            "qualflow machine coding",
            f"code: {prop.code}",
            f"coder: {ps.coder}",
            f"model: {ps.model}",
            f"prompt version: {ps.prompt_version or '-'}",
            f"codebook version: {ps.codebook_version}",
            f"unit: {unit.id} ({unit.segmentation}, characters {unit.char_start}-{unit.char_end})",
            f"span: characters {prop.start}-{prop.end}"
            + (f" (quote located {prop.located})" if prop.located else ""),
            f"confidence: {prop.confidence:.2f}",
            f"rationale: {prop.rationale}",
            f"evidence: {prop.evidence}",
        ]
    )
    note = ExportNote(
        guid=guid("note", user.key, unit.id, prop.code, prop.start, prop.end),
        text=text,
        name=f"rationale: {prop.code}",
        user=user,
        created_at=ps.created_at,
    )
    return SpanDetail(notes=[note], created_at=ps.created_at)


# ---------------------------------------------------------------------- reviewers


def _reviewer_coders(
    work: ReviewWork, notices: list[str]
) -> tuple[list[ExportCoder], list[ExportUser]]:
    """Each reviewer's finished work as it comes from ``review_work`` (spans, scope,
    dates, memos as notes on the reviewer's selection), plus the review accounts that
    finished nothing; one notice per kind of review data the standard cannot hold."""
    coders: list[ExportCoder] = []
    for reviewer in work.reviewers:
        user = ExportUser(
            key=f"reviewer:{reviewer.reviewer}", name=reviewer.reviewer, kind="reviewer"
        )
        coder = ExportCoder(user, reviewer.coding)
        coder.details = [SpanDetail(created_at=when) for when in reviewer.coded_at]
        coder.details += [SpanDetail() for _ in coder.coding.spans[len(coder.details) :]]
        coder.range_dates = dict(reviewer.judged_at)
        coder.range_notes = {
            place: [
                ExportNote(
                    guid=guid("note", user.key, memo.ref, "memo"),
                    text=memo.text,
                    name=f"memo: {reviewer.reviewer}",
                    user=user,
                    created_at=memo.created_at,
                )
            ]
            for place, memo in reviewer.memos.items()
        }
        coders.append(coder)
    if work.unfinished:
        notices.append(f"{work.unfinished} units in review but not finished (no 'Done') left out")
    if work.flagged:
        notices.append(f"{work.flagged} review flags not written (REFI-QDA has no flag)")
    if work.log_entries:
        notices.append(
            f"the review log ({work.log_entries} decisions: accept, reject, undo, ...) is not "
            "written; each reviewer's final codes, 'no code applies' and memos are "
            "(`qualflow export decisions` has the log)"
        )
    idle = [ExportUser(key=f"reviewer:{u}", name=u, kind="reviewer") for u in work.idle]
    return coders, idle


# ---------------------------------------------------------------------- gold coders


def _gold_coders(
    store: Store, gold_sets: list[str] | None, records: list[ImportRecord], plan: ExportPlan
) -> list[ExportCoder]:
    """Every gold coder as spans: imported ones with their exact highlights, their
    original user, selection GUIDs, dates and memos; JSONL ones over their passages."""
    by_target = {r.target: r for r in records}
    out: list[ExportCoder] = []
    for gs in gold_sets if gold_sets is not None else sorted(store.gold_sets()):
        record = by_target.get(gs)
        data = record.data if record else {}
        users = {u.get("label") or u.get("name"): u for u in data.get("users", [])}
        for coder in load_gold_spans(store, gs, data.get("scopes")):
            kept = users.get(coder.coding.coder)
            user = ExportUser(
                key=f"gold:{gs}:{coder.coding.coder}",
                name=(kept or {}).get("name") or coder.coding.coder,
                kind="gold",
                guid=(kept or {}).get("guid", ""),
                id=(kept or {}).get("id"),
            )
            out.append(_gold_coder(user, coder, data, plan))
    return out


def _gold_coder(
    user: ExportUser, gold: GoldCoderSpans, data: dict[str, Any], plan: ExportPlan
) -> ExportCoder:
    coder = ExportCoder(user, gold.coding, created_at=gold.created_at)
    if not gold.from_highlights:
        coder.details = [SpanDetail(created_at=gold.created_at) for _ in gold.coding.spans]
        return coder
    kept = data.get("selections", {})
    for h in gold.highlights:
        key = _highlight_selection(gold.gold_set, h.external_id, plan, kept, user)
        info = kept.get(h.external_id or "", {})
        coding = info.get("codings", {}).get(coding_key(gold.coding.coder, h.code or ""), {})
        notes = [plan.notes[g] for g in coding.get("notes", []) if g in plan.notes]
        if not info and h.memo:  # no record of the selection: the memo is all there is
            notes = [
                ExportNote(
                    guid=guid("note", user.key, h.external_id, h.code, h.memo),
                    text=h.memo,
                    name=f"memo: {h.code}",
                    user=user,
                    created_at=coding.get("creationDateTime") or info.get("creationDateTime"),
                )
            ]
        coder.details.append(
            SpanDetail(
                selection=key,
                notes=notes,
                created_at=coding.get("creationDateTime")
                or info.get("creationDateTime")
                or gold.created_at,
                guid=coding.get("guid"),
            )
        )
    for h in gold.uncoded:
        key = _highlight_selection(gold.gold_set, h.external_id, plan, kept, user)
        coder.uncoded.append(Uncoded(h.transcript_id, h.char_start, h.char_end, key))
    return coder


def _highlight_selection(
    gold_set: str,
    external_id: str | None,
    plan: ExportPlan,
    kept: dict[str, Any],
    user: ExportUser,
) -> str | None:
    """The selection key of an imported highlight (one per tool highlight or selection),
    registering what the import kept about that selection."""
    if not external_id:
        return None
    key = f"import\x1f{gold_set}\x1f{external_id}"
    if key not in plan.selections:
        info = kept.get(external_id, {})
        plan.selections[key] = SelectionInfo(
            guid=info.get("guid"),
            name=info.get("name"),
            description=info.get("description"),
            creating_user=info.get("creatingUser") or user.guid,
            created_at=info.get("creationDateTime"),
            modifying_user=info.get("modifyingUser"),
            modified_at=info.get("modifiedDateTime"),
            notes=[plan.notes[g] for g in info.get("notes", []) if g in plan.notes],
        )
    return key


# ---------------------------------------------------------------------- users, notices


def _name_users(plan: ExportPlan) -> None:
    """One user per GUID; a name two different users would share gets its kind and
    origin appended (``ann [gold-a]``), so other tools can tell them apart."""
    by_guid: dict[str, ExportUser] = {}
    for coder in plan.coders:
        first = by_guid.setdefault(coder.user.guid, coder.user)
        coder.user = first
    for u in plan.users:
        by_guid.setdefault(u.guid, u)
    names: dict[str, list[ExportUser]] = defaultdict(list)
    for u in by_guid.values():
        names[u.name].append(u)
    for shared in names.values():
        if len(shared) > 1:
            for u in shared[1:]:
                u.name = f"{u.name} [{u.key.rsplit(':', 1)[0]}]"
            plan.notices.append(
                f"{len(shared)} different users are called '{shared[0].name}': all but the "
                "first have their origin added to the name"
            )
    plan.users = list(by_guid.values())


def _lost_in_translation(plan: ExportPlan, transcripts: list[Transcript]) -> list[str]:
    """One notice per kind of qualflow data the standard cannot hold, with counts."""
    notices = []
    fields = [c for c in plan.codebook.codes if c.inclusion or c.exclusion or c.examples]
    if fields:
        notices.append(
            f"inclusion/exclusion criteria and examples of {len(fields)} codes not written "
            "(a REFI-QDA code holds a description only; `qualflow export qdc` neither)"
        )
    missing_turns, where = 0, 0
    for t in transcripts:
        n = sum(1 for turn in t.turns if turn.speaker and not _labelled(t.text, turn))
        missing_turns += n
        where += n > 0
    if missing_turns:
        notices.append(
            f"speaker names of {missing_turns} turns in {where} transcripts not written: "
            "they are not part of the transcript text, and a REFI-QDA source is plain text"
        )
    return notices


def _labelled(text: str, turn: Any) -> bool:
    """Whether the speaker's name stands in the text just before the turn."""
    before = text[max(0, turn.char_start - len(turn.speaker) - 4) : turn.char_start]
    return turn.speaker in before


# ---------------------------------------------------------------------- writing


class _Guids:
    """Hands out GUIDs once: a kept GUID used a second time is replaced by a derived one."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.replaced = 0

    def take(self, kept: str | None, *parts: object) -> str:
        if kept and kept.lower() not in self.used:
            self.used.add(kept.lower())
            return kept
        self.replaced += bool(kept)
        value = guid(*parts)
        while value in self.used:
            value = guid(value, "next")
        self.used.add(value)
        return value


@dataclass
class _Selection:
    transcript_id: str
    start: int
    end: int
    user: ExportUser
    key: str
    codings: list[tuple[ExportUser, str, SpanDetail]] = field(default_factory=list)
    notes: list[ExportNote] = field(default_factory=list)
    no_code: bool = False
    judged_at: When = None


def _selections(plan: ExportPlan) -> dict[str, _Selection]:
    """Every coder's spans grouped into selections, plus "no code applies" selections
    for the text in a coder's scope that none of its spans or selections touches."""
    sels: dict[str, _Selection] = {}

    def at(user: ExportUser, tid: str, start: int, end: int, key: str | None) -> _Selection:
        key = key or selection_key(user, tid, start, end)
        if key not in sels:
            sels[key] = _Selection(tid, start, end, user, key)
        return sels[key]

    for coder in plan.coders:
        user, spans = coder.user, coder.coding.spans
        details = coder.details or [SpanDetail() for _ in spans]
        for span, detail in zip(spans, details, strict=True):
            sel = at(user, span.transcript_id, span.start, span.end, detail.selection)
            if not any(u.guid == user.guid and c == span.code for u, c, _ in sel.codings):
                sel.codings.append((user, span.code, detail))
        for u in coder.uncoded:
            at(user, u.transcript_id, u.start, u.end, u.selection)
        taken: dict[str, list[Range]] = defaultdict(list)
        for s in spans:
            taken[s.transcript_id].append((s.start, s.end))
        for u in coder.uncoded:
            taken[u.transcript_id].append((u.start, u.end))
        for tid, ranges in coder.coding.scope.items():
            touched = _Touch(taken.get(tid, []))
            for start, end in ranges:
                if not touched.any(start, end):
                    sel = at(user, tid, start, end, None)
                    sel.no_code = True
                    sel.judged_at = coder.range_dates.get((tid, start, end), coder.created_at)
        for (tid, start, end), notes in coder.range_notes.items():
            at(user, tid, start, end, None).notes += notes
    return sels


class _Touch:
    """Whether any of some ranges overlaps a given range (sorted starts, running max
    of ends: a range starting before ``end`` overlaps when it ends after ``start``)."""

    def __init__(self, ranges: list[Range]):
        ordered = sorted(ranges)
        self.starts = [a for a, _ in ordered]
        self.max_end: list[int] = []
        top = -1
        for _, b in ordered:
            top = max(top, b)
            self.max_end.append(top)

    def any(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self.starts, end)
        return i > 0 and self.max_end[i - 1] > start


def project_xml(
    plan: ExportPlan, *, origin: str = "qualflow"
) -> tuple[bytes, dict[str, bytes], RefiExport]:
    """The ``project.qde`` XML and the ``sources/`` files of a plan."""
    return _Writer(plan, origin).write()


class _Writer:
    """Writes one plan; keeps the GUIDs handed out and the notes referred to."""

    def __init__(self, plan: ExportPlan, origin: str):
        self.plan = plan
        self.origin = origin
        self.report = RefiExport(path="", notices=list(plan.notices))
        self.guids = _Guids()
        self.users = {u.guid: u for u in plan.users}
        for coder in plan.coders:
            self.users.setdefault(coder.user.guid, coder.user)
        self.notes: dict[str, ExportNote] = {}
        self.code_guid: dict[str, str] = {}
        self.source_guid: dict[str, str] = {}

    def q(self, tag: str) -> str:
        return f"{{{NS_PROJECT}}}{tag}"

    def write(self) -> tuple[bytes, dict[str, bytes], RefiExport]:
        from lxml import etree

        plan, report = self.plan, self.report
        sels = _selections(plan)
        extra = {c for s in sels.values() for _, c, _ in s.codings} - set(plan.codebook.titles())
        if extra:
            report.notices.append(
                f"{len(extra)} codes used in codings are not in codebook "
                f"'{plan.codebook.name}' ({', '.join(sorted(extra)[:5])}"
                f"{'...' if len(extra) > 5 else ''}); exported as codes"
            )
        for g in [*self.users, *plan.notes]:
            self.guids.used.add(g.lower())
        root = etree.Element(
            self.q("Project"),
            nsmap={None: NS_PROJECT, "xsi": "http://www.w3.org/2001/XMLSchema-instance"},
            **self._project_attrs(),
        )
        self._users(root)
        self._codebook(root, extra)
        for src in plan.sources:
            self.source_guid[src.transcript.id] = self.guids.take(
                src.guid, "source", src.transcript.id
            )
        _cases(root, plan, self.source_guid, self.q)
        files = self._sources(root, sels)
        self._notes(root)
        self._sets(root)
        if plan.project.get("description"):
            etree.SubElement(root, self.q("Description")).text = _clean(plan.project["description"])
        for g in plan.project.get("notes", []):
            if g in self.notes:
                etree.SubElement(root, self.q("NoteRef"), targetGUID=g)
        if self.guids.replaced:
            report.notices.append(
                f"{self.guids.replaced} GUIDs kept from imports were used twice; fresh ones written"
            )
        for u in self.users.values():
            report.users.setdefault(u.name, 0)
        data = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
        return data, files, report

    def _project_attrs(self) -> dict[str, str]:
        project = self.plan.project
        attrs = {"name": _clean(self.plan.name), "origin": self.origin}
        if project.get("creatingUser") in self.users:
            attrs["creatingUserGUID"] = project["creatingUser"]
        attrs["creationDateTime"] = _stamp(project.get("creationDateTime"))
        if project.get("modifyingUser") in self.users and project.get("modifiedDateTime"):
            attrs["modifyingUserGUID"] = project["modifyingUser"]
            attrs["modifiedDateTime"] = _stamp(project["modifiedDateTime"])
        return attrs

    def _users(self, root: etree._Element) -> None:
        from lxml import etree

        if not self.users:
            return
        holder = etree.SubElement(root, self.q("Users"))
        for u in self.users.values():
            el = etree.SubElement(holder, self.q("User"), guid=u.guid, name=_clean(u.name))
            el.set("id", _clean(u.id or u.key))

    def _codebook(self, root: etree._Element, extra: set[str]) -> None:
        from lxml import etree

        nodes = code_nodes(self.plan.codebook, extra, self.plan.known_codes)
        for top in nodes:
            for node in top.walk():
                node.guid = self.guids.take(node.guid, "code", node.title)
                self.code_guid[node.title] = node.guid
                for g in node.note_guids:
                    if g in self.plan.notes:
                        self.notes.setdefault(g, self.plan.notes[g])
        if nodes:
            book = etree.SubElement(root, self.q("CodeBook"))
            codes = etree.SubElement(book, self.q("Codes"))
            codes_xml(codes, nodes, NS_PROJECT, note_refs=set(self.plan.notes))
        self.report.codes = sum(1 for top in nodes for n in top.walk() if n.codable)

    def _sources(self, root: etree._Element, sels: dict[str, _Selection]) -> dict[str, bytes]:
        from lxml import etree

        files: dict[str, bytes] = {}
        by_source: dict[str, list[_Selection]] = defaultdict(list)
        for sel in sels.values():
            by_source[sel.transcript_id].append(sel)
        if not self.plan.sources:
            return files
        holder = etree.SubElement(root, self.q("Sources"))
        for src in self.plan.sources:
            t = src.transcript
            sguid = self.source_guid[t.id]
            files[f"sources/{sguid}.txt"] = t.text.encode("utf-8")
            attrs = {
                "guid": sguid,
                "name": _clean(t.name),
                "plainTextPath": f"internal://{sguid}.txt",
                **self._who(src.stamps),
            }
            el = etree.SubElement(holder, self.q("TextSource"), **attrs)
            if src.description:
                etree.SubElement(el, self.q("Description")).text = _clean(src.description)
            for sel in sorted(by_source.get(t.id, []), key=lambda s: (s.start, s.end, s.key)):
                self._selection(el, sel)
            for g in src.note_guids:
                if g in self.plan.notes:
                    self._note_ref(el, self.plan.notes[g])
        self.report.sources = len(self.plan.sources)
        return files

    def _selection(self, parent: etree._Element, sel: _Selection) -> None:
        from lxml import etree

        info = self.plan.selections.get(sel.key, SelectionInfo())
        creator = info.creating_user if info.creating_user in self.users else sel.user.guid
        dates = [_stamp(d.created_at) for _, _, d in sel.codings if d.created_at is not None]
        attrs = {"guid": self.guids.take(info.guid, "selection", sel.key)}
        if info.name:
            attrs["name"] = _clean(info.name)
        attrs["startPosition"] = str(sel.start)
        attrs["endPosition"] = str(sel.end)
        attrs |= self._who(
            {
                "creatingUser": creator,
                "creationDateTime": info.created_at or min(dates, default=sel.judged_at),
                "modifyingUser": info.modifying_user,
                "modifiedDateTime": info.modified_at,
            }
        )
        el = etree.SubElement(parent, self.q("PlainTextSelection"), **attrs)
        description = info.description
        if description is None and sel.no_code and not sel.codings:
            description = NO_CODE_APPLIES
        if description:
            etree.SubElement(el, self.q("Description")).text = _clean(description)
        for user, code, detail in sel.codings:
            cattrs = {
                "guid": self.guids.take(detail.guid, "coding", sel.key, user.key, code),
                "creatingUser": user.guid,
            }
            if detail.created_at is not None:
                cattrs["creationDateTime"] = _stamp(detail.created_at)
            coding = etree.SubElement(el, self.q("Coding"), **cattrs)
            etree.SubElement(coding, self.q("CodeRef"), targetGUID=self.code_guid[code])
            for note in detail.notes:
                self._note_ref(coding, note)
            self.report.codings += 1
            self.report.users[user.name] = self.report.users.get(user.name, 0) + 1
        for note in [*info.notes, *sel.notes]:
            self._note_ref(el, note)
        self.report.selections += 1

    def _note_ref(self, parent: etree._Element, note: ExportNote) -> None:
        from lxml import etree

        self.notes.setdefault(note.guid, note)
        etree.SubElement(parent, self.q("NoteRef"), targetGUID=note.guid)

    def _notes(self, root: etree._Element) -> None:
        from lxml import etree

        plan = self.plan
        for g in [*plan.free_notes, *plan.project.get("notes", [])]:
            if g in plan.notes:
                self.notes.setdefault(g, plan.notes[g])
        if not self.notes:
            return
        holder = etree.SubElement(root, self.q("Notes"))
        for n in self.notes.values():
            attrs = {"guid": n.guid, "name": _clean(n.name or "note")}
            creator = n.user.guid if n.user is not None else n.stamps.get("creatingUser")
            attrs |= self._who(
                {**n.stamps, "creatingUser": creator, "creationDateTime": n.created_at}
            )
            el = etree.SubElement(holder, self.q("Note"), **attrs)
            etree.SubElement(el, self.q("PlainTextContent")).text = _clean(n.text)
        self.report.notes = len(self.notes)

    def _sets(self, root: etree._Element) -> None:
        """Sets kept from imports, with the members that are part of this export."""
        from lxml import etree

        written, dropped = [], 0
        seen: set[str] = set()
        for s in self.plan.sets:
            if s["guid"] in seen:
                continue
            seen.add(s["guid"])
            codes = [self.code_guid[t] for t in s.get("codes", []) if t in self.code_guid]
            sources = [self.source_guid[t] for t in s.get("sources", []) if t in self.source_guid]
            notes = [g for g in s.get("notes", []) if g in self.notes]
            dropped += sum(len(s.get(k, [])) for k in ("codes", "sources", "notes"))
            dropped -= len(codes) + len(sources) + len(notes)
            written.append((s, codes, sources, notes))
        if dropped:
            self.report.notices.append(
                f"{dropped} set members left out (codes, sources or notes not in this export)"
            )
        if not written:
            return
        holder = etree.SubElement(root, self.q("Sets"))
        for s, codes, sources, notes in written:
            el = etree.SubElement(holder, self.q("Set"), guid=s["guid"], name=_clean(s["name"]))
            if s.get("description"):
                etree.SubElement(el, self.q("Description")).text = _clean(s["description"])
            for g in codes:
                etree.SubElement(el, self.q("MemberCode"), targetGUID=g)
            for g in sources:
                etree.SubElement(el, self.q("MemberSource"), targetGUID=g)
            for g in notes:
                etree.SubElement(el, self.q("MemberNote"), targetGUID=g)
        self.report.sets = len(written)

    def _who(self, stamps: dict[str, Any]) -> dict[str, str]:
        """Creating/modifying user and date attributes (users only when written)."""
        out: dict[str, str] = {}
        if stamps.get("creatingUser") in self.users:
            out["creatingUser"] = stamps["creatingUser"]
        if stamps.get("creationDateTime"):
            out["creationDateTime"] = _stamp(stamps["creationDateTime"])
        if stamps.get("modifyingUser") in self.users:
            out["modifyingUser"] = stamps["modifyingUser"]
        if stamps.get("modifiedDateTime"):
            out["modifiedDateTime"] = _stamp(stamps["modifiedDateTime"])
        return out


def _cases(root: etree._Element, plan: ExportPlan, source_guid: dict[str, str], q) -> None:
    """Participants as Cases (with their attributes as Variables) linked to sources."""
    from lxml import etree

    people = plan.participants
    transcripts = [s.transcript for s in plan.sources]
    used = sorted({t.participant_id for t in transcripts if t.participant_id in people})
    if not used:
        return
    keys = sorted({k for pid in used for k in people[pid]})
    if keys:
        variables = etree.SubElement(root, q("Variables"))
        for k in keys:
            etree.SubElement(
                variables,
                q("Variable"),
                guid=guid("variable", k),
                name=_clean(k),
                typeOfVariable="Text",
            )
    cases = etree.SubElement(root, q("Cases"))
    for pid in used:
        case = etree.SubElement(cases, q("Case"), guid=guid("case", pid), name=_clean(pid))
        for k in keys:
            if k in people[pid]:
                vv = etree.SubElement(case, q("VariableValue"))
                etree.SubElement(vv, q("VariableRef"), targetGUID=guid("variable", k))
                etree.SubElement(vv, q("TextValue")).text = _clean(str(people[pid][k]))
        for t in transcripts:
            if t.participant_id == pid:
                etree.SubElement(case, q("SourceRef"), targetGUID=source_guid[t.id])
