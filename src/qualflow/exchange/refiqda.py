"""REFI-QDA: read and write ``.qdc`` codebooks, read and import ``.qdpx`` projects.

The exchange standard of NVivo, ATLAS.ti, MAXQDA, QualCoder and others
(www.qdasoftware.org). A ``.qdc`` is one XML file (namespace
``urn:QDA-XML:codebook:1.0``); a ``.qdpx`` is a zip holding ``project.qde`` (namespace
``urn:QDA-XML:project:1.0``) and a ``sources/`` folder with the documents. Writing a
project is ``qualflow.exchange.qdpx_export``.

Decisions made here (see docs/interop.md):

- Code hierarchy: nested ``<Code>`` elements become dot-joined titles
  (``rq1_definition.concepts.logic``), qualflow's own hierarchy convention; codes with
  ``isCodable="false"`` are folders: part of the path, not codes. A code name that
  itself contains a dot is kept and reported, since it reads as two levels.
- Text: a ``TextSource``'s plain text (``plainTextPath`` inside ``sources/`` or
  ``PlainTextContent``) is stored verbatim as the transcript text, so that
  ``startPosition``/``endPosition`` (Unicode code points, per the standard) line up
  without any mapping, whatever the line endings. Sources with only rich text (DOCX),
  PDFs, pictures, audio and video are skipped with the reason reported.
- Codings are spans: each user is a coder whose selections become ``Span`` objects
  with their exact offsets (``RefiProject.span_codings``), stored as highlights and as
  a gold coder (``qualflow.exchange.spans``). A user's scope is the whole text of each
  source they coded; when they marked text explicitly as "no code applies" (a
  selection without a coding described so, as qualflow writes it), their scope in
  that source is the text of their selections.
- What qualflow has no model for (GUIDs, colours, folder descriptions, memos, sets,
  users who coded nothing, dates and creating users) is kept with the import
  (``qualflow.exchange.records``) and written back by the export.
- Known harmless deviations of real tools are accepted with a notice (Taguette's
  codebook has an empty ``<Sets/>``, which the schema does not allow).
- Validation against the official schemas: ``Settings.refi_schema_dir``, else
  ``../shared/refi-qda`` when present, else skipped with a notice in the result.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from qualflow.exchange.records import ImportRecord, coding_key, save_import_record
from qualflow.exchange.spans import (
    merge_ranges,
    restrict,
    retarget,
    save_gold_spans,
    scope_record,
)
from qualflow.exchange.taguette import label_speakers
from qualflow.highlights import Highlight
from qualflow.models import Code, Codebook, Range, Span, SpanCoding, Transcript, utcnow
from qualflow.store import DuplicateTranscriptError, Store

if TYPE_CHECKING:
    from lxml import etree

    from qualflow.exchange.qdpx_export import RefiExport

log = logging.getLogger(__name__)

NS_PROJECT = "urn:QDA-XML:project:1.0"
NS_CODEBOOK = "urn:QDA-XML:codebook:1.0"
SCHEMA_FILES = {"project": "Project.xsd", "codebook": "Codebook.xsd"}
NO_CODE_APPLIES = "no code applies"
"""Description of a selection without a coding that marks an explicit judgement."""
_GUID_NS = uuid.UUID("5b0f0d5e-8d0e-4d55-9a52-6a1f0c3e7a11")
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# Containers the schemas require to hold at least one child; an empty one holds
# nothing, so it is dropped before validation (Taguette writes an empty <Sets/>).
_CONTAINERS = {
    "Users",
    "Codes",
    "Variables",
    "Cases",
    "Sources",
    "Notes",
    "Links",
    "Sets",
    "Graphs",
}
NO_VALIDATE_HINT = "to read it anyway, skip the schema check with --no-validate"

Kind = Literal["project", "codebook"]


class RefiError(ValueError):
    """A REFI-QDA file that cannot be read or written; names the file and the reason."""


# ---------------------------------------------------------------------- schemas


def find_schema_dir(configured: Path | str | None = None) -> Path | None:
    """Where the REFI-QDA schemas are: the configured folder, ../shared/refi-qda, or None."""
    if configured:
        folder = Path(configured)
        missing = [f for f in SCHEMA_FILES.values() if not (folder / f).is_file()]
        if missing:
            raise RefiError(
                f"refi_schema_dir {folder}: {', '.join(missing)} not found there "
                "(it must hold the REFI-QDA Project.xsd and Codebook.xsd)"
            )
        return folder
    from qualflow.resources import shared_dir

    shared = shared_dir()
    if shared is not None:
        folder = shared / "refi-qda"
        if all((folder / f).is_file() for f in SCHEMA_FILES.values()):
            return folder
    return None


@lru_cache(maxsize=8)
def _schema(path: str) -> etree.XMLSchema:
    from lxml import etree

    try:
        return etree.XMLSchema(etree.parse(path))
    except (OSError, etree.XMLSyntaxError, etree.XMLSchemaParseError) as exc:
        raise RefiError(f"{path}: cannot load the schema ({exc})") from exc


def _parse_xml(data: bytes, label: str) -> etree._Element:
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno is not None else "?"
        raise RefiError(f"{label}: not well-formed XML: line {line}: {exc.msg}") from exc


def validate(
    root: etree._Element,
    kind: Kind,
    schema_dir: Path | None,
    label: str,
    *,
    hint: str | None = NO_VALIDATE_HINT,
) -> str | None:
    """Check ``root`` against the schema; raise ``RefiError`` naming the line, the
    message and (``hint``) how to read the file anyway if invalid; return a notice (and
    validate nothing) when no schema is known."""
    if schema_dir is None:
        notice = (
            f"{label}: not validated against the REFI-QDA schema (none found: set "
            "refi_schema_dir to a folder holding Project.xsd and Codebook.xsd)"
        )
        log.warning(notice)
        return notice
    schema = _schema(str(Path(schema_dir) / SCHEMA_FILES[kind]))
    if schema.validate(root):
        return None
    errors = [f"line {e.line}: {e.message}" for e in list(schema.error_log)[:5]]
    more = len(schema.error_log) - len(errors)
    raise RefiError(
        f"{label}: does not validate against {SCHEMA_FILES[kind]}: "
        + "; ".join(errors)
        + (f" (and {more} more)" if more > 0 else "")
        + (f"; {hint}" if hint else "")
    )


def tolerate(root: etree._Element, label: str) -> list[str]:
    """Remove known harmless deviations of real tools from ``root``; one notice each.

    An empty container (``<Sets/>``, ``<Notes/>``...) holds nothing, but the schemas
    want at least one child in it: Taguette's ``codebook.qdc`` ends with ``<Sets/>``.
    """
    notices = []
    for el in list(root.iter()):
        name = _local(el)
        if name in _CONTAINERS and not any(_local(c) for c in el):
            parent = el.getparent()
            if parent is not None:
                parent.remove(el)
                notices.append(
                    f"{label}: empty <{name}/> ignored (the schema wants at least one "
                    f"element in it; {_origin_hint(root)}it holds nothing)"
                )
    return notices


def _origin_hint(root: etree._Element) -> str:
    origin = root.get("origin") or ""
    return f"written by {origin}; " if origin else ""


# ---------------------------------------------------------------------- parsed project


@dataclass
class Stamps:
    """Who made an element and when, as the file says (ISO text, GUIDs)."""

    creating_user: str | None = None
    created: str | None = None
    modifying_user: str | None = None
    modified: str | None = None

    @classmethod
    def of(cls, el: etree._Element, user_attr: str = "creatingUser") -> Stamps:
        modifying = "modifyingUserGUID" if user_attr.endswith("GUID") else "modifyingUser"
        return cls(
            el.get(user_attr),
            el.get("creationDateTime"),
            el.get(modifying),
            el.get("modifiedDateTime"),
        )

    def record(self) -> dict[str, str]:
        return _compact(
            {
                "creatingUser": self.creating_user,
                "creationDateTime": self.created,
                "modifyingUser": self.modifying_user,
                "modifiedDateTime": self.modified,
            }
        )


@dataclass
class RefiCode:
    guid: str
    name: str
    title: str
    description: str
    codable: bool
    color: str | None = None
    note_guids: list[str] = field(default_factory=list)


@dataclass
class RefiUser:
    guid: str
    name: str | None = None
    id: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.id or self.guid


@dataclass
class RefiNote:
    guid: str
    name: str | None
    text: str
    stamps: Stamps = field(default_factory=Stamps)


@dataclass
class RefiCoding:
    guid: str
    code_guid: str
    user_guid: str | None
    notes: list[str] = field(default_factory=list)
    note_guids: list[str] = field(default_factory=list)
    created: str | None = None


@dataclass
class RefiSelection:
    guid: str
    start: int
    end: int
    user_guid: str | None
    codings: list[RefiCoding] = field(default_factory=list)
    name: str | None = None
    description: str | None = None
    note_guids: list[str] = field(default_factory=list)
    stamps: Stamps = field(default_factory=Stamps)

    @property
    def marks_no_code(self) -> bool:
        """A selection without a coding that says "no code applies" (qualflow writes
        these for explicit judgements; the standard has no other way to say it)."""
        return not self.codings and (self.description or "").strip().lower() == NO_CODE_APPLIES


@dataclass
class RefiSource:
    guid: str
    name: str
    text: str | None
    origin: str
    selections: list[RefiSelection] = field(default_factory=list)
    description: str | None = None
    note_guids: list[str] = field(default_factory=list)
    stamps: Stamps = field(default_factory=Stamps)

    @property
    def transcript_name(self) -> str:
        return Path(self.name).stem if Path(self.name).suffix.lower() == ".txt" else self.name

    _transcript: Transcript | None = field(default=None, repr=False, compare=False)

    def transcript(self, path: str) -> Transcript:
        """This source's text as a transcript (verbatim text, paragraphs as turns)."""
        if self._transcript is None:
            self._transcript = source_transcript(
                self.transcript_name, self.text or "", f"{path}#{self.guid}"
            )
        return self._transcript


@dataclass
class RefiSet:
    guid: str
    name: str
    description: str | None = None
    code_guids: list[str] = field(default_factory=list)
    source_guids: list[str] = field(default_factory=list)
    note_guids: list[str] = field(default_factory=list)


@dataclass
class RefiProject:
    name: str
    origin: str
    path: str
    creating_user: str | None = None
    users: dict[str, RefiUser] = field(default_factory=dict)
    codes: list[RefiCode] = field(default_factory=list)
    sources: list[RefiSource] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    description: str | None = None
    stamps: Stamps = field(default_factory=Stamps)
    note_guids: list[str] = field(default_factory=list)
    notes: dict[str, RefiNote] = field(default_factory=dict)
    sets: list[RefiSet] = field(default_factory=list)

    def codebook(self) -> Codebook:
        """The codable codes as a qualflow codebook (titles are dotted paths)."""
        seen: dict[str, Code] = {}
        for c in self.codes:
            if c.codable and c.title not in seen:
                seen[c.title] = Code(title=c.title, description=c.description)
        return Codebook(name=self.name, source=self.path, codes=list(seen.values()))

    def code_titles(self) -> dict[str, str]:
        return {c.guid: c.title for c in self.codes}

    def user_label(self, guid: str | None) -> str:
        guid = guid or self.creating_user
        if guid is None:
            return "refi-qda"
        user = self.users.get(guid)
        return user.label if user else guid

    def highlights(self, problems: list[str] | None = None) -> list[Highlight]:
        """Every coding as a highlight (one per coding, offsets as in the file) and
        every selection without a coding as a highlight without a code. The transcript
        id is the one ``RefiSource.transcript`` gives. Codings of unknown codes are
        left out and reported in ``problems``."""
        titles = self.code_titles()
        out: list[Highlight] = []
        for src in self.sources:
            tid = src.transcript(self.path).id
            text = src.text or ""
            for sel in src.selections:
                base = dict(
                    transcript_id=tid,
                    char_start=sel.start,
                    char_end=sel.end,
                    snippet=text[sel.start : sel.end],
                    external_id=sel.guid,
                )
                sel_notes = [self.notes[g].text for g in sel.note_guids if g in self.notes]
                if not sel.codings:
                    memo = "\n\n".join(n for n in sel_notes if n) or None
                    out.append(Highlight(**base, coder=self.user_label(sel.user_guid), memo=memo))
                for coding in sel.codings:
                    title = titles.get(coding.code_guid)
                    if title is None:
                        if problems is not None:
                            problems.append(
                                f"selection {sel.guid}: coding {coding.guid} refers to unknown "
                                f"code {coding.code_guid}"
                            )
                        continue
                    memo = "\n\n".join(n for n in coding.notes if n) or None
                    out.append(
                        Highlight(
                            **base, code=title, coder=self.user_label(coding.user_guid), memo=memo
                        )
                    )
        return out

    def span_codings(self) -> list[SpanCoding]:
        """One ``SpanCoding`` per user who coded: their codings as exact spans, their
        scope the whole text of each source they coded, or, in a source where they
        marked text as "no code applies", the text of their selections there."""
        titles = self.code_titles()
        spans: dict[str, list[Span]] = {}
        ranges: dict[str, dict[str, list[Range]]] = {}
        marked: dict[str, set[str]] = {}
        lengths: dict[str, int] = {}
        for src in self.sources:
            tid = src.transcript(self.path).id
            lengths[tid] = len(src.text or "")
            for sel in src.selections:
                users = {self.user_label(c.user_guid) for c in sel.codings}
                users = users or {self.user_label(sel.user_guid)}
                for user in users:
                    spans.setdefault(user, [])
                    ranges.setdefault(user, {}).setdefault(tid, []).append((sel.start, sel.end))
                    if sel.marks_no_code:
                        marked.setdefault(user, set()).add(tid)
                for coding in sel.codings:
                    title = titles.get(coding.code_guid)
                    if title is not None:
                        user = self.user_label(coding.user_guid)
                        spans[user].append(Span(tid, sel.start, sel.end, title))
        out = []
        for user in sorted(spans):
            scope = {
                tid: merge_ranges(r) if tid in marked.get(user, ()) else [(0, lengths[tid])]
                for tid, r in ranges[user].items()
            }
            out.append(SpanCoding(coder=user, spans=spans[user], scope=scope))
        return out


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    """The values that are set (for the import record)."""
    return {k: v for k, v in values.items() if v not in (None, "", [], {})}


def _local(el: etree._Element) -> str:
    tag = el.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(el: etree._Element, name: str) -> list[etree._Element]:
    return [c for c in el if _local(c) == name]


def _child_text(el: etree._Element, name: str) -> str | None:
    found = _children(el, name)
    return (found[0].text or "") if found else None


def _refs(el: etree._Element, name: str = "NoteRef") -> list[str]:
    return [r.get("targetGUID", "") for r in _children(el, name)]


def _codes(parent: etree._Element, prefix: str, out: list[RefiCode], notices: list[str]) -> None:
    for el in _children(parent, "Code"):
        name = el.get("name", "")
        if "." in name:
            notices.append(
                f"code '{name}' ({el.get('guid')}) has a dot in its name, which qualflow "
                "reads as a hierarchy level"
            )
        title = f"{prefix}.{name}" if prefix else name
        out.append(
            RefiCode(
                guid=el.get("guid", ""),
                name=name,
                title=title,
                description=(_child_text(el, "Description") or "").strip(),
                codable=el.get("isCodable", "true").strip().lower() in {"true", "1"},
                color=el.get("color"),
                note_guids=_refs(el),
            )
        )
        _codes(el, title, out, notices)


def _codebook_codes(root: etree._Element, notices: list[str]) -> list[RefiCode]:
    codes: list[RefiCode] = []
    books = [root] if _local(root) == "CodeBook" else _children(root, "CodeBook")
    for book in books:
        for holder in _children(book, "Codes"):
            _codes(holder, "", codes, notices)
    titles = [c.title for c in codes if c.codable]
    for dup in sorted({t for t in titles if titles.count(t) > 1}):
        notices.append(f"code title '{dup}' occurs more than once; codings of both are merged")
    return codes


def _sets(root: etree._Element) -> list[RefiSet]:
    """The project's (or a codebook's) sets; a codebook's ``MemberCode`` names its code
    with ``guid``, a project's with ``targetGUID``."""
    books = [root] if _local(root) == "CodeBook" else [root, *_children(root, "CodeBook")]
    return [
        RefiSet(
            guid=el.get("guid", ""),
            name=el.get("name", ""),
            description=_child_text(el, "Description"),
            code_guids=[
                m.get("targetGUID") or m.get("guid", "") for m in _children(el, "MemberCode")
            ],
            source_guids=_refs(el, "MemberSource"),
            note_guids=_refs(el, "MemberNote"),
        )
        for book in books
        for holder in _children(book, "Sets")
        for el in _children(holder, "Set")
    ]


# ---------------------------------------------------------------------- reading


def read_qdc(
    path: Path | str, *, schema_dir: Path | None = None, check_schema: bool = True
) -> tuple[Codebook, list[str]]:
    """A ``.qdc`` codebook file as a qualflow codebook, plus notices."""
    codebook, _, notices = read_qdc_codes(path, schema_dir=schema_dir, check_schema=check_schema)
    return codebook, notices


def read_qdc_codes(
    path: Path | str, *, schema_dir: Path | None = None, check_schema: bool = True
) -> tuple[Codebook, RefiProject, list[str]]:
    """A ``.qdc`` as a qualflow codebook, the file's codes, folders and sets as read
    (GUIDs, colours, folder descriptions; a project without sources), and notices."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RefiError(f"{path}: cannot read ({exc})") from exc
    root = _parse_xml(data, str(path))
    if _local(root) != "CodeBook":
        raise RefiError(f"{path}: root element is <{_local(root)}>, a .qdc has <CodeBook>")
    notices = tolerate(root, str(path))
    if check_schema:
        notice = validate(root, "codebook", schema_dir, str(path))
        notices += [notice] if notice else []
    codes = _codebook_codes(root, notices)
    project = RefiProject(name=path.stem, origin=root.get("origin", ""), path=str(path))
    project.codes = codes
    project.sets = _sets(root)
    codebook = project.codebook()
    if not codebook.codes:
        raise RefiError(f"{path}: the codebook holds no codable code")
    return codebook, project, notices


def read_qdpx(
    path: Path | str,
    *,
    schema_dir: Path | None = None,
    check_schema: bool = True,
    strict: bool = True,
) -> RefiProject:
    """Read a ``.qdpx`` project: codes, users, notes, sets, text sources and their
    selections.

    With ``strict``, selections whose offsets fall outside their source's text raise
    ``RefiError`` (naming each selection's GUID); otherwise they are skipped and
    reported in ``notices``.
    """
    path = Path(path)
    if not path.is_file():
        raise RefiError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise RefiError(
            f"{path}: not a zip archive (a .qdpx is a zip holding project.qde and sources/)"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            return _read_project(zf, path, schema_dir, check_schema, strict)
    except zipfile.BadZipFile as exc:
        raise RefiError(f"{path}: damaged zip archive ({exc})") from exc


def _read_project(
    zf: zipfile.ZipFile, path: Path, schema_dir: Path | None, check_schema: bool, strict: bool
) -> RefiProject:
    qde = [n for n in zf.namelist() if n.lower().endswith(".qde")]
    if not qde:
        raise RefiError(f"{path}: no project.qde inside the archive")
    main = next((n for n in qde if n.lower() == "project.qde"), sorted(qde, key=len)[0])
    label = f"{path}!{main}"
    root = _parse_xml(zf.read(main), label)
    if _local(root) != "Project":
        raise RefiError(f"{label}: root element is <{_local(root)}>, expected <Project>")
    project = RefiProject(
        name=root.get("name", path.stem),
        origin=root.get("origin", ""),
        path=str(path),
        creating_user=root.get("creatingUserGUID"),
        description=_child_text(root, "Description"),
        stamps=Stamps.of(root, "creatingUserGUID"),
        note_guids=_refs(root),
    )
    project.notices += tolerate(root, label)
    if check_schema:
        notice = validate(root, "project", schema_dir, label)
        project.notices += [notice] if notice else []
    for users in _children(root, "Users"):
        for u in _children(users, "User"):
            project.users[u.get("guid", "")] = RefiUser(
                u.get("guid", ""), u.get("name"), u.get("id")
            )
    project.codes = _codebook_codes(root, project.notices)
    project.notes = _notes(zf, root, main)
    project.sets = _sets(root)
    out_of_range: list[str] = []
    for holder in _children(root, "Sources"):
        for el in holder:
            kind = _local(el)
            if kind != "TextSource":
                if kind:
                    project.notices.append(
                        f"{kind} '{el.get('name') or el.get('guid')}' skipped: only text "
                        "sources are imported"
                    )
                continue
            source = _text_source(zf, el, main, project.notices)
            if source is None:
                continue
            for sel in _children(el, "PlainTextSelection"):
                selection = _selection(sel, project.notes)
                n = len(source.text or "")
                if not 0 <= selection.start <= selection.end <= n:
                    out_of_range.append(
                        f"selection {selection.guid} in source '{source.name}': "
                        f"startPosition={selection.start} endPosition={selection.end} out of "
                        f"range (the text has {n} characters)"
                    )
                    continue
                source.selections.append(selection)
            if _children(el, "Coding"):
                project.notices.append(
                    f"source '{source.name}': {len(_children(el, 'Coding'))} codings of the "
                    "whole source skipped (only coded selections are imported)"
                )
            project.sources.append(source)
    project.notices += _not_imported(root)
    if out_of_range:
        if strict:
            raise RefiError(f"{label}: " + "; ".join(out_of_range))
        project.notices.extend(out_of_range)
    return project


def _not_imported(root: etree._Element) -> list[str]:
    """One notice per kind of element qualflow does not import, with counts."""
    counts = {
        "Cases (qualflow's cases are its participants)": len(root.findall(".//{*}Case")),
        "Variables": len(root.findall(".//{*}Variables/{*}Variable")),
        "variable values of sources": len(root.findall(".//{*}TextSource/{*}VariableValue")),
        "Links": len(root.findall(".//{*}Link")),
        "Graphs": len(root.findall(".//{*}Graph")),
    }
    return [f"{n} {what} not imported" for what, n in counts.items() if n]


def _zip_text(zf: zipfile.ZipFile, member: str) -> str | None:
    try:
        raw = zf.read(member)
    except KeyError:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RefiError(f"{zf.filename}!{member}: not UTF-8 text ({exc.reason})") from exc
    return text.removeprefix("\ufeff")


def _member(main: str, ref: str) -> list[str]:
    """Zip member names a plainTextPath may refer to (internal:// means sources/)."""
    base = PurePosixPath(main).parent
    if ref.startswith("internal://"):
        rel = ref.removeprefix("internal://")
        return [str(base / "sources" / rel).lstrip("./"), f"sources/{rel}"]
    rel = ref.removeprefix("relative://")
    return [str(base / "sources" / rel).lstrip("./"), f"sources/{rel}", rel]


def _text_source(
    zf: zipfile.ZipFile, el: etree._Element, main: str, notices: list[str]
) -> RefiSource | None:
    guid = el.get("guid", "")
    ref_name = PurePosixPath(el.get("plainTextPath", "").split("://")[-1]).stem
    name = el.get("name") or ref_name or guid
    content = _child_text(el, "PlainTextContent")
    text: str | None = None
    origin = "PlainTextContent"
    rich = el.get("richTextPath")
    if content is not None:
        text = content
    elif el.get("plainTextPath"):
        ref = el.get("plainTextPath", "")
        origin = ref
        for member in _member(main, ref):
            text = _zip_text(zf, member)
            if text is not None:
                break
        if text is None:
            ext = Path(ref.removeprefix("file://")).expanduser()
            if ext.is_absolute() and ext.is_file():
                text = ext.read_text(encoding="utf-8-sig")
            else:
                notices.append(f"source '{name}' skipped: its plain text '{ref}' is not found")
                return None
    else:
        notices.append(
            f"source '{name}' skipped: no plain text (only "
            f"{'rich text ' + repr(rich) if rich else 'metadata'}"
            "); export it with plain text from the other tool"
        )
        return None
    if not text.strip():
        notices.append(f"source '{name}' skipped: its plain text is empty")
        return None
    return RefiSource(
        guid=guid,
        name=name,
        text=text,
        origin=origin,
        description=_child_text(el, "Description"),
        note_guids=_refs(el),
        stamps=Stamps.of(el),
    )


def _notes(zf: zipfile.ZipFile, root: etree._Element, main: str) -> dict[str, RefiNote]:
    out: dict[str, RefiNote] = {}
    for holder in _children(root, "Notes"):
        for note in _children(holder, "Note"):
            text = _child_text(note, "PlainTextContent")
            if text is None and note.get("plainTextPath"):
                for member in _member(main, note.get("plainTextPath", "")):
                    text = _zip_text(zf, member)
                    if text is not None:
                        break
            guid = note.get("guid", "")
            out[guid] = RefiNote(guid, note.get("name"), text or "", Stamps.of(note))
    return out


def _selection(sel: etree._Element, notes: dict[str, RefiNote]) -> RefiSelection:
    guid = sel.get("guid", "")
    try:
        start, end = int(sel.get("startPosition", "")), int(sel.get("endPosition", ""))
    except ValueError as exc:
        raise RefiError(f"selection {guid}: startPosition/endPosition are not integers") from exc
    out = RefiSelection(
        guid=guid,
        start=start,
        end=end,
        user_guid=sel.get("creatingUser"),
        name=sel.get("name"),
        description=_child_text(sel, "Description"),
        note_guids=_refs(sel),
        stamps=Stamps.of(sel),
    )
    sel_notes = [notes[g].text if g in notes else "" for g in out.note_guids]
    for c in _children(sel, "Coding"):
        refs = _children(c, "CodeRef")
        if not refs:
            continue
        note_guids = _refs(c)
        coding_notes = [notes[g].text if g in notes else "" for g in note_guids]
        out.codings.append(
            RefiCoding(
                guid=c.get("guid", ""),
                code_guid=refs[0].get("targetGUID", ""),
                user_guid=c.get("creatingUser") or out.user_guid,
                notes=[n for n in coding_notes + sel_notes if n],
                note_guids=note_guids,
                created=c.get("creationDateTime"),
            )
        )
    return out


# ---------------------------------------------------------------------- importing


@dataclass
class RefiImport:
    """What a REFI-QDA import stored, and everything it skipped or could not do."""

    source: str
    project: str
    origin: str
    gold_set: str
    codebook_version: str | None
    segmentation: str
    transcripts: list[str] = field(default_factory=list)
    codes: int = 0
    selections: int = 0
    codings: int = 0
    coders: dict[str, int] = field(default_factory=dict)
    span_codings: list[SpanCoding] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        coders = ", ".join(f"{c}: {n}" for c, n in sorted(self.coders.items())) or "none"
        return (
            f"{len(self.transcripts)} transcripts, {self.codes} codes, {self.selections} "
            f"selections, {self.codings} codings (coded passages per coder: {coders}); "
            f"gold set '{self.gold_set}'; {len(self.notices)} notices, "
            f"{len(self.problems)} problems"
        )


def source_transcript(name: str, text: str, source_path: str, fmt: str = "refi-qda") -> Transcript:
    """A plain text kept verbatim as a transcript; turns are its paragraphs.

    When the text is hard-wrapped or its lines are mostly separated by blank lines,
    paragraphs are blank-line separated blocks; otherwise every line is a paragraph. A
    paragraph opening with a ``Name:`` label used at least twice is that speaker's turn,
    the label left out of the turn's span (``taguette.label_speakers``).
    ``text[t.char_start:t.char_end] == t.text``.
    """
    content_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    lines: list[tuple[int, str]] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        lines.append((pos, line))
        pos += len(line)
    blank_separated = _paragraph_mode([line for _, line in lines])
    blocks: list[tuple[int, int]] = []
    start: int | None = None
    for at, line in lines:
        if not line.strip():
            if start is not None:
                blocks.append((start, at))
                start = None
            continue
        if start is None:
            start = at
        if not blank_separated:
            blocks.append((start, at + len(line)))
            start = None
    if start is not None:
        blocks.append((start, len(text)))
    spans: list[tuple[int, int]] = []
    for a, b in blocks:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            spans.append((a, b))
    turns = label_speakers(text, spans)
    return Transcript(
        id=Transcript.make_id(name, content_hash),
        name=name,
        source_path=source_path,
        content_hash=content_hash,
        format=fmt,
        text=text,
        turns=turns,
    )


def _paragraph_mode(lines: list[str]) -> bool:
    """Whether paragraphs are blank-line separated blocks (rather than single lines):
    the lines are wrapped prose (most next lines start in lower case), or blank lines
    separate non-blank lines at least as often as non-blank lines follow each other."""
    pairs = list(itertools.pairwise(lines))
    adjacent = [(a, b) for a, b in pairs if a.strip() and b.strip()]
    gaps = sum(1 for a, b in pairs if a.strip() and not b.strip())
    if not adjacent:
        return True
    continued = sum(1 for _, b in adjacent if b.lstrip()[:1].islower())
    return continued >= 0.5 * len(adjacent) or gaps >= len(adjacent)


def import_qdpx(
    store: Store,
    path: Path | str,
    *,
    schema_dir: Path | None = None,
    check_schema: bool = True,
    segmentation: str = "sentence",
    gold_set: str | None = None,
    min_overlap: float = 0.5,
    interviewer_speakers: tuple[str, ...] | list[str] = (),
    code_interviewer: bool = False,
    strict: bool = True,
) -> RefiImport:
    """Import a ``.qdpx`` project: sources -> transcripts, codebook, each user's codings
    -> a gold coder (exact spans, see ``qualflow.exchange.spans``), and what qualflow has
    no model for -> the import record.

    A source whose text equals a stored current transcript's text reuses that
    transcript (so a project qualflow exported comes back onto the same passages).
    """
    from qualflow.segment import mode_name, segment

    segmentation = mode_name(segmentation)  # a bad mode fails before anything is stored
    project = read_qdpx(path, schema_dir=schema_dir, check_schema=check_schema, strict=strict)
    codebook = project.codebook()
    result = RefiImport(
        source=str(path),
        project=project.name,
        origin=project.origin,
        gold_set=gold_set or f"refi:{project.name}",
        codebook_version=store.save_codebook(codebook) if codebook.codes else None,
        segmentation=segmentation,
        codes=len(codebook.codes),
        notices=list(project.notices),
    )
    by_text = {t.text: t for t in store.transcripts()}
    moved: dict[str, str] = {}  # transcript id the source would get -> the one it got
    for src in project.sources:
        made = src.transcript(str(path))
        transcript = by_text.get(made.text) or made
        passages = segment(
            transcript,
            mode=segmentation,
            interviewer_speakers=tuple(interviewer_speakers),
            code_interviewer=code_interviewer,
        )
        try:
            if transcript is not made:
                store.add_passages(passages)
            elif store.save_transcript(transcript, passages) == "new_version":
                result.notices.append(
                    f"source '{src.name}': stored as a new version of transcript "
                    f"'{transcript.name}' (the previous version is no longer current)"
                )
        except DuplicateTranscriptError as exc:
            result.problems.append(f"source '{src.name}': not imported: {exc}")
            continue
        moved[made.id] = transcript.id
        result.transcripts.append(transcript.id)
        result.selections += len(src.selections)
    highlights = [
        h.model_copy(update={"transcript_id": moved[h.transcript_id]})
        for h in project.highlights(result.problems)
        if h.transcript_id in moved
    ]
    result.codings = sum(1 for h in highlights if h.code is not None)
    kept = set(moved.values())
    result.span_codings = [restrict(retarget(c, moved), kept) for c in project.span_codings()]
    result.coders = save_gold_spans(
        store,
        result.gold_set,
        result.span_codings,
        highlights,
        codebook_version=result.codebook_version,
        segmentation=segmentation,
        min_overlap=min_overlap,
    )
    save_import_record(
        store,
        ImportRecord(
            result.gold_set,
            "refi-qda",
            project.name,
            str(path),
            project_record(project, moved, result.span_codings),
        ),
    )
    return result


def project_record(
    project: RefiProject, moved: dict[str, str], codings: list[SpanCoding]
) -> dict[str, Any]:
    """What the project holds beyond texts, codes and codings, for the import record
    (``qualflow.exchange.records``); sources are keyed by the transcript they became."""
    titles = project.code_titles()
    tid_of = {
        src.guid: moved[src.transcript(project.path).id]
        for src in project.sources
        if src.transcript(project.path).id in moved
    }
    selections: dict[str, Any] = {}
    for src in project.sources:
        if src.guid not in tid_of:
            continue
        for sel in src.selections:
            codings_rec = {
                coding_key(project.user_label(c.user_guid), titles[c.code_guid]): _compact(
                    {"guid": c.guid, "creationDateTime": c.created, "notes": c.note_guids}
                )
                for c in sel.codings
                if c.code_guid in titles
            }
            selections[sel.guid] = _compact(
                {
                    "guid": sel.guid,
                    "name": sel.name,
                    "description": sel.description,
                    "notes": sel.note_guids,
                    "codings": codings_rec,
                    **sel.stamps.record(),
                }
            )
    referenced = {g for c in project.codes for g in c.note_guids}
    referenced |= {g for src in project.sources for g in src.note_guids}
    referenced |= {g for src in project.sources for s in src.selections for g in s.note_guids}
    referenced |= {
        g
        for src in project.sources
        for s in src.selections
        for c in s.codings
        for g in c.note_guids
    }
    referenced |= {g for st in project.sets for g in st.note_guids}
    return {
        "project": _compact(
            {
                "name": project.name,
                "origin": project.origin,
                "description": project.description,
                "notes": project.note_guids,
                **project.stamps.record(),
            }
        ),
        "users": [
            _compact({"guid": u.guid, "name": u.name, "id": u.id, "label": u.label})
            for u in project.users.values()
        ],
        "codes": _codes_record(project),
        "sources": {
            tid_of[src.guid]: _compact(
                {
                    "guid": src.guid,
                    "name": src.name,
                    "description": src.description,
                    "notes": src.note_guids,
                    **src.stamps.record(),
                }
            )
            for src in project.sources
            if src.guid in tid_of
        },
        "selections": selections,
        "notes": {
            g: _compact({"name": n.name, "text": n.text, **n.stamps.record()})
            for g, n in project.notes.items()
        },
        "free_notes": [
            g for g in project.notes if g not in referenced and g not in project.note_guids
        ],
        "sets": _sets_record(project, tid_of),
        "scopes": scope_record(codings),
    }


def _codes_record(project: RefiProject) -> dict[str, Any]:
    return {
        c.title: _compact(
            {
                "guid": c.guid,
                "color": c.color,
                "description": c.description,
                "codable": c.codable,
                "notes": c.note_guids,
            }
        )
        for c in project.codes
    }


def _sets_record(project: RefiProject, tid_of: dict[str, str]) -> list[dict[str, Any]]:
    titles = project.code_titles()
    return [
        _compact(
            {
                "guid": st.guid,
                "name": st.name,
                "description": st.description,
                "codes": [titles[g] for g in st.code_guids if g in titles],
                "sources": [tid_of[g] for g in st.source_guids if g in tid_of],
                "notes": st.note_guids,
            }
        )
        for st in project.sets
    ]


def import_qdc(
    store: Store, path: Path | str, *, schema_dir: Path | None = None, check_schema: bool = True
) -> tuple[str, Codebook, list[str]]:
    """Store a ``.qdc`` codebook, with its codes' GUIDs and colours and its folders'
    descriptions kept for exports; returns (version, codebook, notices)."""
    codebook, read, notices = read_qdc_codes(path, schema_dir=schema_dir, check_schema=check_schema)
    version = store.save_codebook(codebook)
    record = {"codes": _codes_record(read), "sets": _sets_record(read, {})}
    target = f"codebook:{version}"
    save_import_record(
        store, ImportRecord(target, "refi-qda-codebook", codebook.name, str(path), record)
    )
    return version, codebook, notices


# ---------------------------------------------------------------------- writing


def guid(*parts: object) -> str:
    """A stable GUID derived from content (the same export gives the same file)."""
    return str(uuid.uuid5(_GUID_NS, "\x1f".join(str(p) for p in parts)))


def _clean(text: str) -> str:
    """Text that XML 1.0 can hold (control characters dropped)."""
    return _XML_BAD.sub("", text)


def _stamp(when: datetime | str | None) -> str:
    """An ``xsd:dateTime`` (now when None; ISO text as kept by an import record)."""
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    when = when or utcnow()
    if when.tzinfo is None:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


_RGB = re.compile(r"#([A-Fa-f0-9]{6}|[A-Fa-f0-9]{3})")


@dataclass
class CodeNode:
    """One ``<Code>`` to write: a code of the codebook or a folder on the way to one."""

    title: str
    guid: str
    codable: bool
    description: str = ""
    color: str | None = None
    note_guids: list[str] = field(default_factory=list)
    children: list[CodeNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.title.rsplit(".", 1)[-1]

    def walk(self) -> list[CodeNode]:
        return [self, *(n for c in self.children for n in c.walk())]


def code_nodes(
    codebook: Codebook, extra: set[str], known: dict[str, dict[str, Any]] | None = None
) -> list[CodeNode]:
    """The code tree to write: each dotted title becomes nested codes, ancestors that
    are not codes are folders (``isCodable="false"``). ``known`` (title -> GUID, colour,
    description, as an import kept them) gives codes and folders their original GUIDs
    and colours and folders their descriptions; a code's description is the codebook's."""
    known = known or {}
    roots: list[CodeNode] = []
    nodes: dict[str, CodeNode] = {}
    codable = set(codebook.titles()) | extra
    for title in [*codebook.titles(), *sorted(extra - set(codebook.titles()))]:
        parts = title.split(".")
        for depth in range(1, len(parts) + 1):
            path = ".".join(parts[:depth])
            if path in nodes:
                continue
            info = known.get(path, {})
            code = codebook.get(path)
            color = info.get("color")
            node = CodeNode(
                title=path,
                guid=info.get("guid") or guid("code", path),
                codable=path in codable,
                description=code.description if code else (info.get("description") or ""),
                color=color if color and _RGB.fullmatch(color) else None,
                note_guids=list(info.get("notes", [])),
            )
            nodes[path] = node
            (nodes[".".join(parts[: depth - 1])].children if depth > 1 else roots).append(node)
    return roots


def codes_xml(
    parent: etree._Element,
    nodes: list[CodeNode],
    ns: str,
    *,
    note_refs: set[str] | None = None,
) -> None:
    """Write ``nodes`` as nested ``<Code>`` elements; NoteRefs (project files only) to
    the notes in ``note_refs``."""
    from lxml import etree

    for node in nodes:
        attrs = {
            "guid": node.guid,
            "name": _clean(node.name),
            "isCodable": "true" if node.codable else "false",
        }
        if node.color:
            attrs["color"] = node.color
        el = etree.SubElement(parent, f"{{{ns}}}Code", **attrs)
        if node.description:
            etree.SubElement(el, f"{{{ns}}}Description").text = _clean(node.description)
        for g in node.note_guids if note_refs is not None else ():
            if g in note_refs:
                etree.SubElement(el, f"{{{ns}}}NoteRef", targetGUID=g)
        codes_xml(el, node.children, ns, note_refs=note_refs)


def codebook_xml(
    codebook: Codebook,
    *,
    origin: str = "qualflow",
    known: dict[str, dict[str, Any]] | None = None,
    sets: list[dict[str, Any]] | None = None,
) -> bytes:
    """A ``.qdc`` document for a codebook (GUIDs, colours, folder descriptions and code
    sets from ``known``/``sets`` when an import kept them)."""
    from lxml import etree

    ns = NS_CODEBOOK
    root = etree.Element(f"{{{ns}}}CodeBook", nsmap={None: ns}, origin=origin)
    codes = etree.SubElement(root, f"{{{ns}}}Codes")
    nodes = code_nodes(codebook, set(), known)
    codes_xml(codes, nodes, ns)
    by_title = {n.title: n.guid for root_node in nodes for n in root_node.walk()}
    kept = [s for s in sets or [] if any(t in by_title for t in s.get("codes", []))]
    if kept:
        holder = etree.SubElement(root, f"{{{ns}}}Sets")
        for s in kept:
            el = etree.SubElement(holder, f"{{{ns}}}Set", guid=s["guid"], name=_clean(s["name"]))
            if s.get("description"):
                etree.SubElement(el, f"{{{ns}}}Description").text = _clean(s["description"])
            for t in s.get("codes", []):
                if t in by_title:
                    etree.SubElement(el, f"{{{ns}}}MemberCode", guid=by_title[t])
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def export_qdc(
    codebook: Codebook,
    path: Path | str,
    *,
    schema_dir: Path | None = None,
    check_schema: bool = True,
    store: Store | None = None,
) -> list[str]:
    """Write a ``.qdc`` codebook (validated when a schema is known); returns notices.
    With ``store``, codes keep the GUIDs and colours an import gave them."""
    from qualflow.exchange.qdpx_export import known_codes

    known, sets = known_codes(store) if store is not None else ({}, [])
    data = codebook_xml(codebook, known=known, sets=sets)
    notices: list[str] = []
    if check_schema:
        root = _parse_xml(data, str(path))
        notice = validate(root, "codebook", schema_dir, str(path), hint=None)
        notices += [notice] if notice else []
    Path(path).write_bytes(data)
    return notices


def export_qdpx(store: Store, path: Path | str, **options: Any) -> RefiExport:
    """Write the study as a ``.qdpx``; see ``qualflow.exchange.qdpx_export.export_qdpx``."""
    from qualflow.exchange.qdpx_export import export_qdpx as export

    return export(store, path, **options)
