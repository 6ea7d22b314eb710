"""Participant metadata from a CSV/TSV (first column = participant id, any other columns)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from qualflow.models import Participant


class ParticipantsError(ValueError):
    """A participants file that cannot be read; names the file and the row."""


def load_participants(path: Path) -> list[Participant]:
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParticipantsError(f"{path}: cannot read participants file ({exc})") from exc
    if not raw.strip():
        raise ParticipantsError(f"{path}: the file is empty")
    delimiter = (
        "\t" if path.suffix.lower() in {".tsv", ".tab"} or "\t" in raw.split("\n")[0] else ","
    )
    reader = csv.reader(io.StringIO(raw), delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    people: list[Participant] = []
    seen: set[str] = set()
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ParticipantsError(
                f"{path}: row {line} has {len(row)} columns, the header has {len(header)}"
            )
        pid = row[0].strip()
        if not pid:
            raise ParticipantsError(f"{path}: row {line} has no participant id")
        if pid in seen:
            raise ParticipantsError(f"{path}: row {line}: duplicate participant id '{pid}'")
        seen.add(pid)
        attrs = {h.lower(): v.strip() for h, v in zip(header[1:], row[1:], strict=True)}
        people.append(Participant(id=pid, attributes=attrs))
    return people


def match_participant(name: str, ids: list[str]) -> str | None:
    """The participant id contained in a transcript name (``I-5_otter`` -> ``I-5``).

    Ids must match as whole tokens, so ``I-1`` does not match ``I-15``; the longest
    matching id wins.
    """
    found = [
        pid
        for pid in ids
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(pid)}(?![A-Za-z0-9])", name, re.IGNORECASE)
    ]
    return max(found, key=len) if found else None
