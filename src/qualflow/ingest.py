"""Ingest: transcript files -> Transcript + Passages in the store, one file at a time.

A bad file is reported (file and reason) and recorded as a failure; the rest of the
batch goes on. Re-ingesting an unchanged file is a no-op; changed content under the
same name becomes a new version; identical content under another name is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from qualflow.participants import load_participants, match_participant
from qualflow.readers import SUPPORTED_SUFFIXES
from qualflow.settings import Settings
from qualflow.store import DuplicateTranscriptError, Store

log = logging.getLogger(__name__)

_SKIPPED_NAMES = ("readme", "license", "licence", "changelog")

FileStatus = Literal["new", "new_version", "unchanged", "error", "skipped"]


class FileOutcome(BaseModel):
    path: str
    status: FileStatus
    transcript_id: str | None = None
    passages: int = 0
    reason: str | None = None
    carried: dict | None = Field(
        default=None,
        description="A new version: the review work and machine answers carried over from "
        "the previous version to its unchanged units (review.carry.CarryReport).",
    )


class IngestReport(BaseModel):
    files: list[FileOutcome] = Field(default_factory=list)

    def count(self, status: FileStatus) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def errors(self) -> list[FileOutcome]:
        return [f for f in self.files if f.status == "error"]

    @property
    def transcript_ids(self) -> list[str]:
        return [f.transcript_id for f in self.files if f.transcript_id]


def expand_paths(paths: Iterable[Path | str]) -> tuple[list[Path], list[FileOutcome]]:
    """Files to ingest (folders walked recursively), and what was skipped in folders."""
    files: list[Path] = []
    skipped: list[FileOutcome] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if any(part.startswith(".") for part in child.relative_to(path).parts):
                    continue
                if child.suffix.lower() not in SUPPORTED_SUFFIXES or child.stem.lower().startswith(
                    _SKIPPED_NAMES
                ):
                    skipped.append(
                        FileOutcome(
                            path=str(child), status="skipped", reason="not a transcript file type"
                        )
                    )
                    continue
                files.append(child)
        else:
            files.append(path)
    return files, skipped


def ingest_paths(
    store: Store,
    paths: Iterable[Path | str],
    settings: Settings,
    *,
    segmentation: str | None = None,
) -> IngestReport:
    """Read, segment and store every transcript under ``paths``."""
    from qualflow.readers import ReadError, read_transcript
    from qualflow.segment import Codability, segment

    mode = segmentation or settings.segmentation
    codability = Codability.from_settings(settings)
    files, skipped = expand_paths(paths)
    report = IngestReport(files=list(skipped))
    participant_ids = _participant_ids(store, settings)
    for path in files:
        try:
            if not path.exists():
                raise ReadError(path, "no such file")
            transcript = read_transcript(path)
            if transcript.participant_id is None:
                transcript.participant_id = match_participant(transcript.name, participant_ids)
            passages = segment(transcript, mode, codability=codability)
            status = store.save_transcript(transcript, passages)
        except (ReadError, DuplicateTranscriptError, ValueError, OSError) as exc:
            reason = str(exc) if isinstance(exc, ReadError) else f"{path}: {exc}"
            log.warning("ingest failed: %s", reason)
            store.record_failure("ingest", str(path), reason)
            report.files.append(FileOutcome(path=str(path), status="error", reason=reason))
            continue
        log.info("ingested %s (%s, %d passages)", path.name, status, len(passages))
        report.files.append(
            FileOutcome(
                path=str(path),
                status=status,
                transcript_id=transcript.id,
                passages=len(passages),
                carried=_carry_over(store, transcript, settings)
                if status == "new_version"
                else None,
            )
        )
    return report


def _carry_over(store: Store, transcript, settings: Settings) -> dict | None:
    """Reviews and answers of the previous version's unchanged units, carried over (the
    review area owns the rules: ``review/carry.py``)."""
    from qualflow.review.carry import carry_over

    carried = carry_over(store, transcript, settings)
    if carried is None:
        return None
    log.info(
        "%s: %d of %d units carried from the previous version, %d to review again",
        transcript.name,
        carried.units_carried,
        carried.units_with_work,
        carried.review_again,
    )
    return carried.to_dict()


def _participant_ids(store: Store, settings: Settings) -> list[str]:
    if settings.participants_file:
        path = Path(settings.participants_file)
        if not path.is_absolute():
            path = settings.workspace / path
        store.save_participants(load_participants(path))
    return [p.id for p in store.participants()]
