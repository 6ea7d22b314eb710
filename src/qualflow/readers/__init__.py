"""Transcript readers: one entry point, ``read_transcript``, for every supported format.

The reader is chosen by extension and content together: a ``.txt`` holding WebVTT
is read as WebVTT, a ``.vtt`` without the WEBVTT header is an error, a ZIP is
opened as DOCX or ODT by what it contains (after ``archive.check_container``: bounded
in size, every parsed XML part complete).

A file is read completely or not at all: anything a reader cannot take in fails the
file with its reason, except caption cues with unusable timing, whose speech is kept
without times and reported in ``warnings`` (file, line, reason).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from qualflow.models import Transcript
from qualflow.readers.archive import DEFAULT_MAX_XML_BYTES, check_container
from qualflow.readers.base import RawTurn, ReadError, build_transcript, normalize

__all__ = ["SUPPORTED_SUFFIXES", "ReadError", "normalize", "read_transcript"]

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".vtt", ".srt"}
OFFICE_SUFFIXES = {".docx", ".odt"}
SUPPORTED_SUFFIXES = frozenset(TEXT_SUFFIXES | OFFICE_SUFFIXES)

_SIGNATURES = {
    b"%PDF": "PDF files are not supported; export the transcript as DOCX or text",
    b"\xd0\xcf\x11\xe0": "legacy Word/OLE files (.doc) are not supported; save as DOCX",
    b"{\\rtf": "RTF files are not supported; save as DOCX or text",
}


def read_transcript(
    path: Path,
    *,
    name: str | None = None,
    max_xml_bytes: int = DEFAULT_MAX_XML_BYTES,
    warnings: list[str] | None = None,
) -> Transcript:
    """Read one transcript file; raises ``ReadError`` naming the file and the reason.

    ``max_xml_bytes``: the most XML a DOCX/ODT may unpack to (setting
    ``reader_max_xml_mb``). ``warnings`` collects what was read but is worth a look
    (``"<file>:<line>: <reason>"``, never transcript text), e.g. caption cues whose
    timing could not be used.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise ReadError(
            path, f"unsupported format '{suffix or path.name}' (supported: {supported})"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ReadError(path, f"cannot read file: {e.strerror or e}") from e
    if not data.strip():
        raise ReadError(path, "empty file")
    for magic, reason in _SIGNATURES.items():
        if data.startswith(magic):
            raise ReadError(path, reason)
    if data.startswith(b"PK\x03\x04"):
        fmt = _zip_format(path, data)
        check_container(path, data, fmt, max_xml_bytes)
        return _read_office(path, data, fmt, name)
    if suffix in OFFICE_SUFFIXES:
        raise ReadError(path, f"not a {suffix[1:].upper()} file (no ZIP container)")
    text = _decode(path, data)
    fmt, turns, meta = _read_text(path, suffix, text, warnings)
    return build_transcript(path, data, fmt, turns, name=name, metadata=meta)


def _zip_format(path: Path, data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = set(zf.namelist())
            mimetype = zf.read("mimetype").strip() if "mimetype" in names else b""
    except zipfile.BadZipFile as e:
        raise ReadError(path, f"damaged ZIP container: {e}") from e
    if "word/document.xml" in names:
        return "docx"
    if mimetype == b"application/vnd.oasis.opendocument.text" or (
        "content.xml" in names and not mimetype
    ):
        return "odt"
    kind = mimetype.decode("ascii", "replace") if mimetype else "unknown ZIP content"
    raise ReadError(
        path, f"unsupported format: a ZIP archive that is neither DOCX nor ODT ({kind})"
    )


def _read_office(path: Path, data: bytes, fmt: str, name: str | None) -> Transcript:
    from qualflow.readers.base import turns_from_blocks
    from qualflow.readers.office import read_docx, read_odt
    from qualflow.readers.text import is_otter, read_otter

    try:
        blocks, meta = read_docx(data) if fmt == "docx" else read_odt(data)
    except ReadError:
        raise
    except Exception as e:  # damaged XML inside a valid ZIP, missing parts, ...
        raise ReadError(path, f"cannot parse {fmt.upper()}: {type(e).__name__}: {e}") from e
    # Otter and Teams also export DOCX with 'Name  0:03' header lines: keep the times.
    flat = "\n\n".join("\n".join(b) for b in blocks)
    turns = read_otter(flat) if is_otter(flat) else turns_from_blocks(blocks)
    return build_transcript(path, data, fmt, turns, name=name, metadata=meta)


def _decode(path: Path, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise ReadError(path, f"undecodable UTF-16 bytes at byte {e.start}") from e
    if b"\x00" in data[:8192]:
        utf16 = _looks_like_utf16(data)
        if utf16:
            raise ReadError(
                path,
                f"the text looks like {utf16} without a byte-order mark (NUL bytes between "
                f"the letters); save it as UTF-8 (e.g. iconv -f {utf16.replace(' ', '')} "
                f"-t UTF-8 '{path.name}' > '{path.stem}.utf8{path.suffix}'), then ingest "
                "that file",
            )
        raise ReadError(path, "binary data (NUL bytes), not a text transcript")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ReadError(
            path, f"undecodable bytes: not valid UTF-8 at byte {e.start} (save the file as UTF-8)"
        ) from e
    controls = sum(1 for c in text[:8192] if ord(c) < 32 and c not in "\t\n\r\f\v")
    if controls > 8 and controls > len(text[:8192]) // 100:
        raise ReadError(path, "binary data (control characters), not a text transcript")
    return text


def _looks_like_utf16(data: bytes) -> str | None:
    """'UTF-16 LE' or 'UTF-16 BE' when the NUL bytes sit where UTF-16 puts them for
    mostly Latin text (every other byte) and the bytes decode as text that way."""
    sample = data[:8192]
    sample = sample[: len(sample) // 2 * 2]
    if len(sample) < 4:
        return None
    even_nul = sample[0::2].count(0) / (len(sample) // 2)
    odd_nul = sample[1::2].count(0) / (len(sample) // 2)
    for codec, label, nul_share in (
        ("utf-16-le", "UTF-16 LE", odd_nul),
        ("utf-16-be", "UTF-16 BE", even_nul),
    ):
        if nul_share < 0.3 or min(even_nul, odd_nul) > 0.05:
            continue
        try:
            text = sample.decode(codec)
        except UnicodeDecodeError:
            continue
        printable = sum(1 for c in text if c.isprintable() or c in "\r\n\t")
        if printable >= 0.95 * len(text):
            return label
    return None


def _read_text(
    path: Path, suffix: str, text: str, warnings: list[str] | None = None
) -> tuple[str, list[RawTurn], dict[str, str]]:
    from qualflow.readers import captions
    from qualflow.readers.text import is_otter, read_markdown, read_otter, read_text

    if suffix == ".vtt" and not captions.is_vtt(text):
        raise ReadError(path, "not a WebVTT file: the first line is not 'WEBVTT'")
    if suffix == ".srt" and not captions.is_srt(text):
        raise ReadError(path, "not a SubRip file: no 'hh:mm:ss,mmm --> hh:mm:ss,mmm' timing line")
    if captions.is_vtt(text) or captions.is_srt(text):
        fmt = "vtt" if captions.is_vtt(text) else "srt"
        notes: list[str] = []
        problems: list[str] = []
        turns = captions.merge_cues(captions.parse_cues(text, notes=notes, problems=problems))
        if warnings is not None:
            warnings.extend(f"{path}:{p}" for p in problems)
        meta = {"notes": " | ".join(notes)} if notes else {}
        return fmt, turns, meta
    if is_otter(text):
        return "otter", read_otter(text), {}
    if suffix in {".md", ".markdown"}:
        turns, meta = read_markdown(text)
        return "markdown", turns, meta
    turns = read_text(text)
    fmt = "text" if any(t.speaker for t in turns) else "paragraphs"
    return fmt, turns, {}
