"""Checks on a DOCX/ODT container before a library unpacks it.

python-docx and odfpy inflate and parse whatever the ZIP holds: a small file can hold
hundreds of megabytes of XML (a ZIP bomb: minutes of CPU and gigabytes of memory),
and odfpy reads a part whose XML is cut off as far as it goes, prints that XML to
stdout and carries on with half a transcript. So before either library runs:

- the XML the container would inflate to is bounded by ``max_xml_bytes`` (the
  ``reader_max_xml_mb`` setting), read from the ZIP directory without inflating
  anything; no other member may be larger either. Python's ``zipfile`` (which both
  libraries use) never inflates a member past its declared size and fails its CRC
  check when the data is longer, so the declared sizes are a real bound;
- every XML part the reader parses must be complete, well-formed XML, checked with a
  streaming parser; a damaged part fails the whole file with the part's name and
  the parser's position (never its text). Entity declarations are refused (office
  formats never use them; they are how XML entity bombs work).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from xml.parsers import expat

from qualflow.readers.base import ReadError

DEFAULT_MAX_XML_BYTES = 32_000_000
"""The ``reader_max_xml_mb`` default: six times the XML of a 16,000-turn document
(5 MB), read at about 1 s and 15-20 MB of memory per MB of XML (benchmarks/
office_read.py, docs/transcripts.md)."""

PARTS = {
    "docx": ("[Content_Types].xml", "word/document.xml", "word/styles.xml", "docProps/core.xml"),
    "odt": ("META-INF/manifest.xml", "content.xml", "styles.xml", "meta.xml", "settings.xml"),
}
"""The XML parts each reader parses (checked when present)."""

_CHUNK = 1 << 16


def check_container(
    path: Path, data: bytes, fmt: str, max_xml_bytes: int = DEFAULT_MAX_XML_BYTES
) -> None:
    """Raise ``ReadError`` for a DOCX/ODT that is too big unpacked or holds damaged XML."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            _check_sizes(path, fmt, infos, max_xml_bytes)
            names = {i.filename for i in infos}
            for part in PARTS.get(fmt, ()):
                if part in names:
                    _check_xml(path, zf, part)
    except zipfile.BadZipFile as exc:  # e.g. a member's data does not match its CRC
        raise ReadError(path, f"damaged ZIP container: {exc}") from exc


def _is_xml(name: str) -> bool:
    return name.lower().endswith((".xml", ".rels"))


def _check_sizes(path: Path, fmt: str, infos: list[zipfile.ZipInfo], max_xml_bytes: int) -> None:
    limit = f"{max_xml_bytes / 1e6:.0f} MB (setting reader_max_xml_mb)"
    xml = sum(i.file_size for i in infos if _is_xml(i.filename))
    if xml > max_xml_bytes:
        packed = sum(i.compress_size for i in infos)
        raise ReadError(
            path,
            f"the {fmt.upper()} would unpack to {xml / 1e6:.1f} MB of XML from "
            f"{packed / 1e6:.1f} MB, over the limit of {limit}; not unpacked "
            "(a ZIP bomb, or a document far larger than a transcript)",
        )
    for info in infos:
        if not _is_xml(info.filename) and info.file_size > max_xml_bytes:
            raise ReadError(
                path,
                f"member '{info.filename}' would unpack to {info.file_size / 1e6:.1f} MB, "
                f"over the limit of {limit}; not unpacked",
            )


def _check_xml(path: Path, zf: zipfile.ZipFile, part: str) -> None:
    """Parse one part as a stream; complete and well-formed, or a ReadError."""
    parser = expat.ParserCreate()

    def no_entities(name: str, *_args: object) -> None:
        raise ReadError(path, f"{part} declares the XML entity '{name}' (refused)")

    parser.EntityDeclHandler = no_entities
    try:
        with zf.open(part) as fh:
            while chunk := fh.read(_CHUNK):
                parser.Parse(chunk, False)
            parser.Parse(b"", True)
    except expat.ExpatError as exc:
        reason = expat.errors.messages.get(exc.code, "not well-formed")
        where = f"line {exc.lineno}, column {exc.offset}"
        ends_early = exc.code in {
            expat.errors.codes.get(expat.errors.XML_ERROR_NO_ELEMENTS),
            expat.errors.codes.get(expat.errors.XML_ERROR_UNCLOSED_TOKEN),
            expat.errors.codes.get(expat.errors.XML_ERROR_PARTIAL_CHAR),
        }
        if ends_early or _at_end(parser, zf, part):
            reason = f"the XML ends before the document does ({reason})"
        raise ReadError(
            path, f"damaged document: {part} is not complete XML: {reason} at {where}"
        ) from exc


def _at_end(parser: expat.XMLParserType, zf: zipfile.ZipFile, part: str) -> bool:
    """Whether the parser stopped at the very end of the part (a cut-off file)."""
    try:
        return parser.CurrentByteIndex >= zf.getinfo(part).file_size - 1
    except KeyError:
        return False
