"""What an imported project holds beyond texts, codes and codings, kept for exports.

A REFI-QDA project carries GUIDs for its codes, sources, users, selections and notes,
code colours, folder descriptions, memos, sets, dates and the user who made each
thing; a Taguette project its name, description, logins and the time of each
highlight. qualflow's own models have no place for these, so an import keeps them as
JSON in ``exchange_imports`` (one row per import target: the gold set it filled, or
``codebook:<version>`` for a codebook) and the REFI-QDA
export puts them back: a project goes back into the tool it came from with its own
GUIDs (so that tool merges instead of duplicating) and loses nothing it can hold.

The JSON (every part optional)::

    project:    {name, origin, description, creatingUser, creationDateTime,
                 modifyingUser, modifiedDateTime, notes: [note guid]}
    users:      [{guid, name, id, label}]          label = the gold coder's name
    codes:      {title: {guid, color, description, codable, notes: [note guid]}}
    sources:    {transcript id: {guid, name, description, creatingUser,
                 creationDateTime, modifyingUser, modifiedDateTime, notes: [...]}}
    selections: {external id: {guid, name, description, creatingUser, creationDateTime,
                 modifyingUser, modifiedDateTime, notes: [...],
                 codings: {"<coder>\\x1f<code>": {guid, creationDateTime, notes: [...]}}}}
    notes:      {guid: {name, text, creatingUser, creationDateTime, modifyingUser,
                 modifiedDateTime}}
    free_notes: [note guid]                         project memos nothing refers to
    sets:       [{guid, name, description, codes: [title], sources: [transcript id],
                 notes: [note guid]}]
    scopes:     {coder: {transcript id: [[start, end]]}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select

from qualflow.db import ExchangeImportRow
from qualflow.models import utcnow
from qualflow.store import Store


@dataclass
class ImportRecord:
    target: str
    format: str
    name: str
    path: str
    data: dict[str, Any] = field(default_factory=dict)
    imported_at: datetime | None = None


def coding_key(coder: str, code: str) -> str:
    """Key of one coding inside a selection record."""
    return f"{coder}\x1f{code}"


def save_import_record(store: Store, record: ImportRecord) -> None:
    """Keep (or replace) the record of the import that filled ``record.target``."""
    with store.session() as s:
        s.execute(delete(ExchangeImportRow).where(ExchangeImportRow.target == record.target))
        s.add(
            ExchangeImportRow(
                target=record.target,
                format=record.format,
                name=record.name,
                path=record.path,
                data=record.data,
                imported_at=record.imported_at or utcnow(),
            )
        )


def import_records(store: Store) -> list[ImportRecord]:
    """Every import record, oldest first (a later import wins where they disagree)."""
    with store.session() as s:
        rows = s.scalars(select(ExchangeImportRow).order_by(ExchangeImportRow.imported_at)).all()
        return [
            ImportRecord(r.target, r.format, r.name, r.path, dict(r.data or {}), r.imported_at)
            for r in rows
        ]


def stamp(value: datetime | str | None) -> str | None:
    """A date as the ISO text the records keep."""
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()
