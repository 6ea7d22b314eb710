"""Word-processor files: DOCX (python-docx) and ODT (odfpy).

Both become paragraphs (blocks of lines: a manual line break starts a new line) that
``turns_from_blocks`` turns into turns, with 'Name:' labels where the file has them.
Headings (DOCX 'Title'/'Heading N' styles, ODT ``text:h``) are document structure, not
speech: they are left out and the first one is kept as ``metadata['title']``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

TEXT_NS = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
OFFICE_NS = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
TABLE_NS = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"

# Elements whose text is not part of the spoken transcript: footnotes/endnotes,
# comments, tracked deletions, frames (text boxes, captions), field declarations.
_ODT_SKIP = {
    (TEXT_NS, "note"),
    (TEXT_NS, "tracked-changes"),
    (TEXT_NS, "sequence-decls"),
    (TEXT_NS, "variable-decls"),
    (TEXT_NS, "user-field-decls"),
    (TEXT_NS, "table-of-content"),
    (OFFICE_NS, "annotation"),
    (OFFICE_NS, "annotation-end"),
    (OFFICE_NS, "forms"),
    ("urn:oasis:names:tc:opendocument:xmlns:drawing:1.0", "frame"),
}


def read_docx(data: bytes) -> tuple[list[list[str]], dict[str, str]]:
    """Paragraphs in body order (tables too: one paragraph per row), plus core metadata."""
    import docx
    from docx.table import Table

    doc = docx.Document(io.BytesIO(data))
    heading_ids = _heading_style_ids(doc)
    blocks: list[list[str]] = []
    headings: list[str] = []
    for item in doc.iter_inner_content():
        if isinstance(item, Table):
            blocks.extend(_table_rows(item))
        elif (item._p.style or heading_ids.default) in heading_ids:
            headings.append(item.text)
        else:
            blocks.append(item.text.split("\n"))
    props = doc.core_properties
    meta = {k: v for k, v in (("title", props.title), ("comments", props.comments)) if v}
    if headings and "title" not in meta:
        meta["title"] = " ".join(headings[0].split())
    return blocks, meta


class _StyleIds(set):
    """Paragraph style ids that are headings, plus the document's default style id."""

    default: str | None = None


def _heading_style_ids(doc: Any) -> _StyleIds:
    """Ids of the 'Title' and 'Heading N' paragraph styles, found once per document.

    Asking python-docx for each paragraph's ``style`` scans every style of the
    document per paragraph (measured: 95% of the reading time, 6 ms per paragraph);
    a paragraph's style id is read directly instead and looked up here.
    """
    from docx.enum.style import WD_STYLE_TYPE

    ids = _StyleIds()
    for style in doc.styles:
        try:
            if style.type != WD_STYLE_TYPE.PARAGRAPH:
                continue
            name = style.name or ""
        except (KeyError, ValueError):  # a style the document defines badly
            continue
        if name == "Title" or name.startswith("Heading"):
            ids.add(style.style_id)
        if style.element.default:
            ids.default = style.style_id
    return ids


def _table_rows(table: Any) -> list[list[str]]:
    """A transcript table row 'Speaker | [time |] text' reads as 'Speaker: text'."""
    rows: list[list[str]] = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = " ".join(cell.text.split())
            if text and (not cells or cells[-1] != text):  # merged cells repeat
                cells.append(text)
        if len(cells) >= 2 and len(cells[0]) <= 40 and ":" not in cells[0]:
            rows.append([f"{cells[0]}: {cells[-1]}"])
        elif cells:
            rows.append([" ".join(cells)])
    return rows


def read_odt(data: bytes) -> tuple[list[list[str]], dict[str, str]]:
    """Paragraphs and headings in document order (lists, sections, tables included).

    odfpy skips an XML part it cannot parse and prints that part (transcript text) to
    stdout: its output is captured and dropped, and any output at all fails the file.
    """
    from odf.opendocument import load

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        doc = load(io.BytesIO(data))
    if captured.tell():
        raise ValueError(
            f"odfpy could not parse a part of the document ({captured.tell()} characters "
            "of parser output withheld: they hold document text)"
        )
    blocks: list[list[str]] = []
    headings: list[str] = []
    _collect(doc.text, blocks, headings)
    meta = {"title": " ".join(headings[0].split())} if headings else {}
    return blocks, meta


def _collect(node: Any, blocks: list[list[str]], headings: list[str]) -> None:
    for child in node.childNodes:
        if child.nodeType != child.ELEMENT_NODE or child.qname in _ODT_SKIP:
            continue
        if child.qname in {(TEXT_NS, "p"), (TEXT_NS, "h")}:
            lines = [""]
            _inline(child, lines)
            if child.qname == (TEXT_NS, "h"):
                headings.append(" ".join(lines))
            else:
                blocks.append(lines)
        else:
            _collect(child, blocks, headings)


def _inline(node: Any, lines: list[str]) -> None:
    """Text of a paragraph: <text:s c="n"/> spaces, tabs, line breaks, nested spans."""
    for child in node.childNodes:
        if child.nodeType == child.TEXT_NODE:
            lines[-1] += child.data
            continue
        if child.nodeType != child.ELEMENT_NODE or child.qname in _ODT_SKIP:
            continue
        ns, tag = child.qname
        if ns == TEXT_NS and tag == "s":
            lines[-1] += " " * int(child.attributes.get((TEXT_NS, "c"), "1") or 1)
        elif ns == TEXT_NS and tag == "tab":
            lines[-1] += "\t"
        elif ns == TEXT_NS and tag == "line-break":
            lines.append("")
        else:
            _inline(child, lines)
