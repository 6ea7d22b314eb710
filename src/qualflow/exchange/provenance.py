"""Proposals and review decisions with full provenance, as CSV or JSONL.

One row per machine proposal (valid or not; a unit a coder answered with no code gets
one row with an empty code), and one row per review decision (the append-only log,
undo entries included), each carrying everything needed to analyse it in pandas or R:

- the span: transcript (name and version id), participant, ``span_start``/``span_end``
  (code points into the transcript text, end exclusive) and ``span_text``, the text
  they cover; a proposal that could not be placed (invalid) has no span;
- the unit it was found in: the chunk (or, for runs made before chunks, the passage)
  the coder call saw: id, segmentation, index, offsets and text;
- the coder, model, prompt version and codebook version, time, rationale, the quote as
  the coder gave it (``evidence``, with where it was found) and confidence;
- for decisions: the reviewer, the action, the codes before and after, the unit
  decided on, and the span and provenance of the proposal acted on.

JSONL keeps lists as lists; CSV joins them with ``"; "``. Every CSV cell goes through
``qualflow.cells.safe_cell``: a memo or quote starting with ``=`` (or ``+``, ``-``,
``@``, a tab, a carriage return) gets a leading apostrophe, so a spreadsheet shows it
as text instead of running it as a formula. Without text (``with_text=False``) the
span and unit texts are left out.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qualflow.cells import safe_cell
from qualflow.db import (
    DecisionRow,
    PassageRow,
    ProposalRow,
    ProposalSetRow,
    TranscriptRow,
    UserRow,
)
from qualflow.store import Store

TEXT_COLUMNS = {"span_text", "unit_text", "proposal_text"}
"""Columns holding transcript text, left out without text."""

UNIT_COLUMNS = [
    "transcript",
    "transcript_id",
    "participant",
    "unit_id",
    "unit_segmentation",
    "unit_index",
    "unit_start",
    "unit_end",
    "unit_text",
]

PROPOSAL_COLUMNS = [
    "proposal_id",
    "proposal_set_id",
    "run_id",
    "transcript",
    "transcript_id",
    "participant",
    "span_start",
    "span_end",
    "span_text",
    "unit_id",
    "unit_segmentation",
    "unit_index",
    "unit_start",
    "unit_end",
    "unit_text",
    "coder",
    "model",
    "prompt_version",
    "codebook_version",
    "created_at",
    "status",
    "status_reason",
    "attempts",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "code",
    "confidence",
    "rationale",
    "evidence",
    "evidence_start",
    "evidence_end",
    "located",
    "in_candidates",
    "valid",
    "invalid_reason",
]

DECISION_COLUMNS = [
    "decision_id",
    "created_at",
    "reviewer",
    "action",
    "code",
    "codes_before",
    "codes_after",
    "memo",
    "undoes_id",
    "state_version",
    *UNIT_COLUMNS,
    "proposal_id",
    "proposal_code",
    "proposal_start",
    "proposal_end",
    "proposal_text",
    "proposal_confidence",
    "proposal_rationale",
    "proposal_evidence",
    "coder",
    "model",
    "prompt_version",
    "codebook_version",
    "run_id",
]


class ProvenanceError(ValueError):
    """An export that cannot be written (unknown format)."""


class _Units:
    """Units (chunks or passages) by id with their transcript, and transcript texts
    for span texts; read in batches (SQL engines cap bound parameters)."""

    def __init__(self, s: Session, unit_ids: set[str]):
        ids = sorted(unit_ids)
        rows = []
        for i in range(0, len(ids), 5000):
            rows += s.execute(
                select(PassageRow, TranscriptRow.name, TranscriptRow.participant_id)
                .join(TranscriptRow, TranscriptRow.id == PassageRow.transcript_id)
                .where(PassageRow.id.in_(ids[i : i + 5000]))
            ).all()
        self.info: dict[str, dict[str, Any]] = {
            p.id: {
                "transcript": name,
                "transcript_id": p.transcript_id,
                "participant": participant or "",
                "unit_id": p.id,
                "unit_segmentation": p.segmentation,
                "unit_index": p.index,
                "unit_start": p.char_start,
                "unit_end": p.char_end,
                "unit_text": p.text,
            }
            for p, name, participant in rows
        }
        tids = sorted({i["transcript_id"] for i in self.info.values()})
        self.texts: dict[str, str] = dict(
            s.execute(
                select(TranscriptRow.id, TranscriptRow.text).where(TranscriptRow.id.in_(tids))
            )
            .tuples()
            .all()
        )

    def unit(self, unit_id: str) -> dict[str, Any]:
        return dict(self.info.get(unit_id, {"unit_id": unit_id}))

    def text(self, unit_id: str, start: int | None, end: int | None) -> str | None:
        """The transcript text ``[start, end)`` of the unit's transcript."""
        tid = self.info.get(unit_id, {}).get("transcript_id")
        if tid not in self.texts or start is None or end is None:
            return None
        return self.texts[tid][start:end]


def proposal_records(
    store: Store, *, run_ids: list[int] | None = None, with_text: bool = True
) -> Iterator[dict[str, Any]]:
    """One record per proposal (and per empty answer), oldest first."""
    with store.session() as s:
        q = select(ProposalSetRow).order_by(ProposalSetRow.id)
        if run_ids is not None:
            q = q.where(ProposalSetRow.run_id.in_(run_ids))
        sets = s.scalars(q).all()
        props: dict[int, list[ProposalRow]] = {}
        if sets:
            for p in s.scalars(
                select(ProposalRow)
                .where(ProposalRow.set_id.in_([r.id for r in sets]))
                .order_by(ProposalRow.id)
            ):
                props.setdefault(p.set_id, []).append(p)
        units = _Units(s, {r.passage_id for r in sets})
    for ps in sets:
        base = {
            "proposal_set_id": ps.id,
            "run_id": ps.run_id,
            **units.unit(ps.passage_id),
            "coder": ps.coder,
            "model": ps.model,
            "prompt_version": ps.prompt_version,
            "codebook_version": ps.codebook_version,
            "created_at": ps.created_at,
            "status": ps.status,
            "status_reason": ps.reason,
            "attempts": ps.attempts,
            "prompt_tokens": ps.prompt_tokens,
            "completion_tokens": ps.completion_tokens,
            "cost_usd": ps.cost_usd,
        }
        for p in props.get(ps.id) or [None]:
            row = dict(base)
            row["proposal_id"] = p.id if p else None
            if p is not None:
                row.update(
                    span_start=p.start,
                    span_end=p.end,
                    span_text=units.text(ps.passage_id, p.start, p.end),
                    code=p.code,
                    confidence=p.confidence,
                    rationale=p.rationale,
                    evidence=p.evidence,
                    evidence_start=p.evidence_start,
                    evidence_end=p.evidence_end,
                    located=p.located,
                    in_candidates=p.in_candidates,
                    valid=p.valid,
                    invalid_reason=p.invalid_reason,
                )
            yield _without_text(row) if not with_text else row


def decision_records(store: Store, *, with_text: bool = True) -> Iterator[dict[str, Any]]:
    """One record per review decision, in log order, with the unit decided on and the
    span and provenance of the proposal acted on."""
    with store.session() as s:
        rows = s.scalars(select(DecisionRow).order_by(DecisionRow.id)).all()
        users = dict(s.execute(select(UserRow.id, UserRow.username)).tuples().all())
        pids = {r.proposal_id for r in rows if r.proposal_id is not None}
        proposals: dict[int, tuple[ProposalRow, ProposalSetRow]] = {}
        if pids:
            for p, ps in s.execute(
                select(ProposalRow, ProposalSetRow)
                .join(ProposalSetRow, ProposalSetRow.id == ProposalRow.set_id)
                .where(ProposalRow.id.in_(list(pids)))
            ).all():
                proposals[p.id] = (p, ps)
        unit_ids = {r.passage_id for r in rows} | {ps.passage_id for _, ps in proposals.values()}
        units = _Units(s, unit_ids)
    for r in rows:
        row: dict[str, Any] = {
            "decision_id": r.id,
            "created_at": r.created_at,
            "reviewer": users.get(r.user_id, str(r.user_id)),
            "action": r.action,
            "code": r.code,
            "codes_before": list(r.before or []),
            "codes_after": list(r.after or []),
            "memo": r.memo,
            "undoes_id": r.undoes_id,
            "state_version": r.state_version,
            **units.unit(r.passage_id),
            "proposal_id": r.proposal_id,
        }
        if r.proposal_id in proposals:
            p, ps = proposals[r.proposal_id]
            row.update(
                proposal_code=p.code,
                proposal_start=p.start,
                proposal_end=p.end,
                proposal_text=units.text(ps.passage_id, p.start, p.end),
                proposal_confidence=p.confidence,
                proposal_rationale=p.rationale,
                proposal_evidence=p.evidence,
                coder=ps.coder,
                model=ps.model,
                prompt_version=ps.prompt_version,
                codebook_version=ps.codebook_version,
                run_id=ps.run_id,
            )
        yield _without_text(row) if not with_text else row


def _without_text(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in TEXT_COLUMNS}


# ---------------------------------------------------------------------- writers


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _csv_value(value: Any) -> Any:
    if isinstance(value, list):
        value = "; ".join(str(v) for v in value)
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None:
        return ""
    return safe_cell(value)


def write_records(
    records: Iterator[dict[str, Any]] | list[dict[str, Any]],
    path: Path | str,
    columns: list[str],
    fmt: str | None = None,
) -> int:
    """Write records as CSV or JSONL (by ``fmt`` or extension); returns the row count."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in {"csv", "jsonl"}:
        raise ProvenanceError(f"{path}: unknown format '{fmt}' (csv or jsonl)")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for rec in records:
                writer.writerow({c: _csv_value(rec.get(c)) for c in columns})
                n += 1
        else:
            for rec in records:
                ordered = {c: rec.get(c) for c in columns}
                fh.write(json.dumps(ordered, ensure_ascii=False, default=_json_default) + "\n")
                n += 1
    return n


def export_proposals(
    store: Store,
    path: Path | str,
    *,
    run_ids: list[int] | None = None,
    with_text: bool = True,
    fmt: str | None = None,
) -> int:
    columns = [c for c in PROPOSAL_COLUMNS if with_text or c not in TEXT_COLUMNS]
    return write_records(
        proposal_records(store, run_ids=run_ids, with_text=with_text), path, columns, fmt
    )


def export_decisions(
    store: Store, path: Path | str, *, with_text: bool = True, fmt: str | None = None
) -> int:
    columns = [c for c in DECISION_COLUMNS if with_text or c not in TEXT_COLUMNS]
    return write_records(decision_records(store, with_text=with_text), path, columns, fmt)
