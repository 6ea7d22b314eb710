"""Carry review work over to a new version of an edited transcript.

Re-ingesting an edited transcript stores a new version whose units (chunks, sentence
passages) all have new ids. Without a carry-over, every finished review of the old
version would leave the queue. Here, each unit of the old version that holds review
work (coding tracks, assignments) or a machine answer (proposal sets) is matched to a
unit of the new version with the same text and the same layout (the same turns, same
speakers, the same stretches codable); for a match:

- the proposal sets are copied (``proposal_sets.carried_from`` names the old unit, the
  run stays the one that produced them), offsets moved to the new version, so the
  unchanged text is not coded again;
- the assignments are copied (same reviewer, double coding, blindness);
- each coding track becomes a ``carry`` decision on the new unit: its spans (moved),
  done, flagged, memo, "no code applies" and what happened to each proposal.

Old units with review work and no match had their text changed: they need review
again, and the report says how many. Nothing of the old version is changed or deleted.
The chunks of the new version are cut here (the same pure function a coding run uses,
so the run finds them stored).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from qualflow.db import (
    AssignmentRow,
    DecisionRow,
    PassageRow,
    ProposalRow,
    ProposalSetRow,
    TranscriptRow,
)
from qualflow.models import Passage, Transcript
from qualflow.review.decisions import Conflict, track_state, tracks, write_carried
from qualflow.review.units import ReviewSpan
from qualflow.store import Store

if TYPE_CHECKING:
    from qualflow.settings import Settings


@dataclass
class CarryReport:
    """What a new transcript version took over from the previous one."""

    transcript: str
    previous: str  # transcript id of the previous version
    current: str  # transcript id of the new version
    units_with_work: int = 0  # old units holding reviews, assignments or answers
    units_carried: int = 0  # of them matched to an unchanged unit of the new version
    proposal_sets: int = 0
    assignments: int = 0
    finished_reviews: int = 0  # coding tracks carried that were done
    reviews_in_progress: int = 0  # coding tracks carried that were not done yet
    review_again: int = 0  # old units with review work whose text changed
    review_again_units: list[str] = field(default_factory=list)  # their old ids

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """What an operator reads after ingest."""
        if not self.units_with_work:
            return [f"{self.transcript}: the previous version held no review work or answer"]
        out = [
            f"{self.transcript}: carried over from the previous version, text unchanged: "
            f"{self.units_carried} of {self.units_with_work} units "
            f"({self.finished_reviews} finished reviews, {self.reviews_in_progress} in "
            f"progress, {self.assignments} assignments, {self.proposal_sets} machine "
            "answers, which a coding run will not ask for again)"
        ]
        if self.review_again:
            out.append(
                f"{self.transcript}: {self.review_again} reviewed units changed and need "
                "review again"
            )
        return out


def previous_version(store: Store, transcript: Transcript) -> str | None:
    """The id of the version stored before ``transcript`` under its name, if any."""
    with store.session() as s:
        return s.scalar(
            select(TranscriptRow.id)
            .where(TranscriptRow.name == transcript.name, TranscriptRow.id != transcript.id)
            .order_by(TranscriptRow.version.desc())
            .limit(1)
        )


def carry_over(store: Store, transcript: Transcript, settings: Settings) -> CarryReport | None:
    """Carry review work and machine answers from the previous version of
    ``transcript`` (just stored as a new version) to its unchanged units."""
    old_id = previous_version(store, transcript)
    if old_id is None:
        return None
    report = CarryReport(transcript=transcript.name, previous=old_id, current=transcript.id)
    worked = _units_with_work(store, old_id)
    report.units_with_work = len(worked)
    by_segmentation: dict[str, list[Passage]] = defaultdict(list)
    for unit in store.passages(ids=sorted(worked)):
        by_segmentation[unit.segmentation].append(unit)
    for segmentation, old_units in sorted(by_segmentation.items()):
        new_units = _units_of(store, transcript, segmentation, settings)
        for old, new in _match(old_units, new_units):
            if new is None:
                if worked[old.id]:
                    report.review_again += 1
                    report.review_again_units.append(old.id)
                continue
            report.units_carried += 1
            _carry_unit(store, old, new, report)
    store.set_meta(META_PREFIX + transcript.name, report.to_dict())
    return report


META_PREFIX = "review_carry:"


def carry_reports(store: Store) -> list[CarryReport]:
    """The last carry-over of every transcript whose carried-to version is current."""
    from qualflow.db import WorkspaceMetaRow

    with store.session() as s:
        rows = s.execute(
            select(WorkspaceMetaRow.value).where(WorkspaceMetaRow.key.like(META_PREFIX + "%"))
        ).all()
        current = set(s.scalars(select(TranscriptRow.id).where(TranscriptRow.is_current)))
    reports = [CarryReport(**value) for (value,) in rows if isinstance(value, dict)]
    return sorted((r for r in reports if r.current in current), key=lambda r: r.transcript)


def _units_with_work(store: Store, transcript_id: str) -> dict[str, bool]:
    """Units of a transcript version with review work or answers: id -> has review
    work (tracks or assignments), not only machine answers."""
    with store.session() as s:
        units = select(PassageRow.id).where(PassageRow.transcript_id == transcript_id)
        answered = set(s.scalars(select(ProposalSetRow.passage_id).where(
            ProposalSetRow.passage_id.in_(units))))  # fmt: skip
        reviewed = set(s.scalars(select(DecisionRow.passage_id).where(
            DecisionRow.passage_id.in_(units))))  # fmt: skip
        reviewed |= set(s.scalars(select(AssignmentRow.passage_id).where(
            AssignmentRow.passage_id.in_(units))))  # fmt: skip
    return {pid: pid in reviewed for pid in answered | reviewed}


def _units_of(
    store: Store, transcript: Transcript, segmentation: str, settings: Settings
) -> list[Passage]:
    """The new version's units of a segmentation, cut and stored when missing."""
    from qualflow.chunk import chunks_for, parse_budget
    from qualflow.segment import Codability, segment

    found = store.passages(transcript_id=transcript.id, segmentation=segmentation)
    if found:
        return found
    budget = parse_budget(segmentation)
    if budget is not None:
        units = chunks_for(transcript, settings.model_copy(update={"chunk_words": budget}))
    else:
        units = segment(transcript, segmentation, codability=Codability.from_settings(settings))
    store.add_passages(units)
    return store.passages(transcript_id=transcript.id, segmentation=segmentation)


def _signature(unit: Passage) -> tuple:
    """Same text and the same layout (turn pieces by speaker and codability)."""
    layout = tuple(
        (p.char_start - unit.char_start, p.char_end - unit.char_start, p.speaker, p.codable)
        for p in unit.layout()
    )
    return (unit.text, unit.speaker, layout)


def _match(
    old_units: Sequence[Passage], new_units: Sequence[Passage]
) -> list[tuple[Passage, Passage | None]]:
    """Each old unit with the new unit of the same signature (repeats paired in order)."""
    free: dict[tuple, list[Passage]] = defaultdict(list)
    for unit in sorted(new_units, key=lambda u: u.char_start):
        free[_signature(unit)].append(unit)
    out: list[tuple[Passage, Passage | None]] = []
    for unit in sorted(old_units, key=lambda u: u.char_start):
        candidates = free.get(_signature(unit))
        out.append((unit, candidates.pop(0) if candidates else None))
    return out


def _carry_unit(store: Store, old: Passage, new: Passage, report: CarryReport) -> None:
    shift = new.char_start - old.char_start
    mapping = _carry_answers(store, old, new, shift, report)
    _carry_assignments(store, old, new, report)
    for owner in tracks(store, old.id):
        state = track_state(store, owner, old.id)
        if state.last_effective_id is None:
            continue  # every decision undone: nothing to carry
        spans = [
            ReviewSpan(
                sp.code,
                sp.start + shift,
                sp.end + shift,
                sp.origin,
                mapping.get(sp.proposal_id) if sp.proposal_id is not None else None,
            )
            for sp in state.spans
        ]
        carry = {
            "from": old.id,
            "done": state.done,
            "flagged": state.flagged,
            "no_code": state.no_code,
            "memo": state.memo,
            "proposals": {
                str(mapping[pid]): status
                for pid, status in state.proposal_status.items()
                if pid in mapping
            },
        }
        try:
            write_carried(store, owner, owner, new.id, spans, carry)
        except Conflict:  # the new unit has decisions already: never overwritten
            continue
        if state.done:
            report.finished_reviews += 1
        else:
            report.reviews_in_progress += 1


def _carry_answers(
    store: Store, old: Passage, new: Passage, shift: int, report: CarryReport
) -> dict[int, int]:
    """Copy the old unit's proposal sets that the new unit lacks; old -> new proposal id
    (for sets the new unit already has, proposals are paired by code and span)."""
    mapping: dict[int, int] = {}
    with store.session() as s:
        have = {
            (r.coder, r.model, r.prompt_version, r.codebook_version): r.id
            for r in s.scalars(select(ProposalSetRow).where(ProposalSetRow.passage_id == new.id))
        }
        for old_set in s.scalars(
            select(ProposalSetRow)
            .where(ProposalSetRow.passage_id == old.id)
            .order_by(ProposalSetRow.id)
        ):
            key = (old_set.coder, old_set.model, old_set.prompt_version, old_set.codebook_version)
            props = s.scalars(
                select(ProposalRow).where(ProposalRow.set_id == old_set.id).order_by(ProposalRow.id)
            ).all()
            if key in have:
                mapping |= _pair(s, props, have[key], shift)
                continue
            copy = ProposalSetRow(
                **{c: getattr(old_set, c) for c in _SET_COLUMNS},
                passage_id=new.id,
                carried_from=old.id,
            )
            s.add(copy)
            s.flush()
            for p in props:
                row = ProposalRow(
                    **{c: getattr(p, c) for c in _PROPOSAL_COLUMNS},
                    set_id=copy.id,
                    passage_id=new.id,
                    start=_moved(p.start, shift),
                    end=_moved(p.end, shift),
                    evidence_start=_moved(p.evidence_start, shift),
                    evidence_end=_moved(p.evidence_end, shift),
                )
                s.add(row)
                s.flush()
                mapping[p.id] = row.id
            have[key] = copy.id
            report.proposal_sets += 1
    return mapping


def _pair(s: Any, props: Sequence[ProposalRow], set_id: int, shift: int) -> dict[int, int]:
    ours = {
        (p.code, p.start, p.end): p.id
        for p in s.scalars(select(ProposalRow).where(ProposalRow.set_id == set_id))
    }
    out = {}
    for p in props:
        found = ours.get((p.code, _moved(p.start, shift), _moved(p.end, shift)))
        if found is not None:
            out[p.id] = found
    return out


def _moved(offset: int | None, shift: int) -> int | None:
    return None if offset is None else offset + shift


_SET_COLUMNS = (
    "run_id", "coder", "model", "prompt_version", "codebook_version", "status", "reason",
    "raw_response", "attempts", "prompt_tokens", "completion_tokens", "cost_usd",
    "created_at",
)  # fmt: skip
_PROPOSAL_COLUMNS = (
    "code", "rationale", "evidence", "located", "confidence", "in_candidates", "valid",
    "invalid_reason",
)  # fmt: skip


def _carry_assignments(store: Store, old: Passage, new: Passage, report: CarryReport) -> None:
    with store.session() as s:
        taken = set(
            s.scalars(select(AssignmentRow.user_id).where(AssignmentRow.passage_id == new.id))
        )
        for a in s.scalars(
            select(AssignmentRow)
            .where(AssignmentRow.passage_id == old.id)
            .order_by(AssignmentRow.id)
        ):
            if a.user_id in taken:
                continue
            s.add(
                AssignmentRow(
                    passage_id=new.id,
                    user_id=a.user_id,
                    double_coded=a.double_coded,
                    blind_to_machine=a.blind_to_machine,
                )
            )
            report.assignments += 1
