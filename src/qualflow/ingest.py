"""Ingest: transcript files -> Transcript + Passages in the store, one file at a time.

A bad file is reported (file and reason) and recorded as a failure; the rest of the
batch goes on, whatever went wrong with one file (a store error included). Re-ingesting
an unchanged file is a no-op; changed content under the same name becomes a new
version; identical content under another name is refused. Two processes ingesting the
same file at once both succeed: one stores it, the other finds it ``unchanged``.
What a reader kept but flags (caption cues with unusable timing) is listed in the
file's ``warnings`` and in the transcript's ``metadata["read_warnings"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from qualflow.participants import load_participants, match_participant
from qualflow.readers import SUPPORTED_SUFFIXES
from qualflow.settings import Settings
from qualflow.store import DuplicateTranscriptError, Store

if TYPE_CHECKING:
    from qualflow.segment import Codability

log = logging.getLogger(__name__)

_SKIPPED_NAMES = ("readme", "license", "licence", "changelog")

FileStatus = Literal["new", "new_version", "unchanged", "error", "skipped"]


class FileOutcome(BaseModel):
    path: str
    status: FileStatus
    transcript_id: str | None = None
    passages: int = 0
    reason: str | None = None
    warnings: list[str] = Field(default_factory=list)
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

    @property
    def warnings(self) -> list[str]:
        return [w for f in self.files for w in f.warnings]


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
    from qualflow.segment import Codability

    mode = segmentation or settings.segmentation
    codability = Codability.from_settings(settings)
    files, skipped = expand_paths(paths)
    report = IngestReport(files=list(skipped))
    participant_ids = _participant_ids(store, settings)
    max_xml = int(settings.reader_max_xml_mb * 1_000_000)
    for path in files:
        report.files.append(
            _ingest_one(store, settings, path, mode, codability, participant_ids, max_xml)
        )
    return report


def _ingest_one(
    store: Store,
    settings: Settings,
    path: Path,
    mode: str,
    codability: Codability,
    participant_ids: list[str],
    max_xml: int,
) -> FileOutcome:
    """Read, segment and store one file; any failure becomes an ``error`` outcome."""
    from sqlalchemy.exc import SQLAlchemyError

    from qualflow.readers import ReadError, read_transcript
    from qualflow.segment import segment

    warnings: list[str] = []
    try:
        if not path.exists():
            raise ReadError(path, "no such file")
        transcript = read_transcript(path, max_xml_bytes=max_xml, warnings=warnings)
        if warnings:
            transcript.metadata["read_warnings"] = " | ".join(warnings)
        if transcript.participant_id is None:
            transcript.participant_id = match_participant(transcript.name, participant_ids)
        passages = segment(transcript, mode, codability=codability)
        status = store.save_transcript(transcript, passages)
    except (ReadError, DuplicateTranscriptError, ValueError, OSError, SQLAlchemyError) as exc:
        reason = _reason(path, exc)
        log.warning("ingest failed: %s", reason)
        _record(store, path, reason)
        return FileOutcome(path=str(path), status="error", reason=reason)
    for warning in warnings:
        log.warning("ingest: %s", warning)
    log.info("ingested %s (%s, %d passages)", path.name, status, len(passages))
    return FileOutcome(
        path=str(path),
        status=status,
        transcript_id=transcript.id,
        passages=len(passages),
        warnings=warnings,
        carried=_carry_over(store, transcript, settings) if status == "new_version" else None,
    )


def _reason(path: Path, exc: BaseException) -> str:
    """What went wrong, naming the file; a store error by its kind, not its SQL."""
    from sqlalchemy.exc import SQLAlchemyError

    from qualflow.readers import ReadError

    if isinstance(exc, ReadError):
        return str(exc)
    if isinstance(exc, SQLAlchemyError):
        detail = getattr(exc, "orig", None) or exc
        return f"{path}: the store refused the transcript ({type(detail).__name__}: {detail})"
    return f"{path}: {exc}"


def _record(store: Store, path: Path, reason: str) -> None:
    """Record a failure; a store that cannot even do that only loses the record."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        store.record_failure("ingest", str(path), reason)
    except SQLAlchemyError as exc:
        log.warning("could not record the failure of %s: %s", path, type(exc).__name__)


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
