"""REFI-QDA: read and write ``.qdc`` codebooks and ``.qdpx`` projects.

The exchange standard of NVivo, ATLAS.ti, MAXQDA, QualCoder and others
(www.qdasoftware.org). A ``.qdc`` is one XML file (namespace
``urn:QDA-XML:codebook:1.0``); a ``.qdpx`` is a zip holding ``project.qde`` (namespace
``urn:QDA-XML:project:1.0``) and a ``sources/`` folder with the documents.

Decisions made here (see docs/interop.md):

- Code hierarchy: nested ``<Code>`` elements become dot-joined titles
  (``rq1_definition.concepts.logic``), qualflow's own hierarchy convention; on export
  each dotted title becomes a nested code, and ancestors that are not codes themselves
  are written with ``isCodable="false"`` (and skipped again on import). A code name
  that itself contains a dot is kept and reported, since it reads as two levels.
- Text: a ``TextSource``'s plain text (``plainTextPath`` inside ``sources/`` or
  ``PlainTextContent``) is stored verbatim as the transcript text, so that
  ``startPosition``/``endPosition`` (Unicode code points, per the standard) line up
  without any mapping, whatever the line endings. Sources with only rich text (DOCX),
  PDFs, pictures, audio and video are skipped with the reason reported.
- Users: each ``<User>`` is a coder. On import, each user's codings become a gold
  coder (named after the user) in one gold set; a user's passages without any
  selection, in the sources that user coded, count as "no code" (the standard has no
  way to say "looked at it, no code applies"). On export, every machine coder (coder
  kind + model + prompt version), every human reviewer and every gold coder is its own
  ``<User>``, so that other tools can compare them; a machine coding carries a
  ``<Note>`` (via ``NoteRef``) with its rationale, evidence, confidence, model, prompt
  version and codebook version.
- Selections: on export, one ``PlainTextSelection`` per coded passage (its exact span)
  holding one ``Coding`` per (user, code). GUIDs are derived from content (uuid5), so
  exporting twice gives the same file.
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
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

from qualflow.exchange.taguette import label_speakers
from qualflow.highlights import Highlight, map_highlights, passages_by_ids, save_highlights
from qualflow.models import Code, Codebook, Coding, Passage, Transcript, utcnow
from qualflow.store import DuplicateTranscriptError, Store

if TYPE_CHECKING:
    from lxml import etree

log = logging.getLogger(__name__)

NS_PROJECT = "urn:QDA-XML:project:1.0"
NS_CODEBOOK = "urn:QDA-XML:codebook:1.0"
SCHEMA_FILES = {"project": "Project.xsd", "codebook": "Codebook.xsd"}
_GUID_NS = uuid.UUID("5b0f0d5e-8d0e-4d55-9a52-6a1f0c3e7a11")
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

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


def validate(root: etree._Element, kind: Kind, schema_dir: Path | None, label: str) -> str | None:
    """Check ``root`` against the schema; raise ``RefiError`` naming the line and the
    message if invalid; return a notice (and validate nothing) when no schema is known."""
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
    )


# ---------------------------------------------------------------------- parsed project


@dataclass
class RefiCode:
    guid: str
    name: str
    title: str
    description: str
    codable: bool


@dataclass
class RefiUser:
    guid: str
    name: str | None = None
    id: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.id or self.guid


@dataclass
class RefiCoding:
    guid: str
    code_guid: str
    user_guid: str | None
    notes: list[str] = field(default_factory=list)


@dataclass
class RefiSelection:
    guid: str
    start: int
    end: int
    user_guid: str | None
    codings: list[RefiCoding] = field(default_factory=list)


@dataclass
class RefiSource:
    guid: str
    name: str
    text: str | None
    origin: str
    selections: list[RefiSelection] = field(default_factory=list)


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


def _local(el: etree._Element) -> str:
    tag = el.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(el: etree._Element, name: str) -> list[etree._Element]:
    return [c for c in el if _local(c) == name]


def _child_text(el: etree._Element, name: str) -> str | None:
    found = _children(el, name)
    return (found[0].text or "") if found else None


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


# ---------------------------------------------------------------------- reading


def read_qdc(
    path: Path | str, *, schema_dir: Path | None = None, check_schema: bool = True
) -> tuple[Codebook, list[str]]:
    """A ``.qdc`` codebook file as a qualflow codebook, plus notices."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RefiError(f"{path}: cannot read ({exc})") from exc
    root = _parse_xml(data, str(path))
    if _local(root) != "CodeBook":
        raise RefiError(f"{path}: root element is <{_local(root)}>, a .qdc has <CodeBook>")
    notices: list[str] = []
    if check_schema:
        notice = validate(root, "codebook", schema_dir, str(path))
        notices += [notice] if notice else []
    codes = _codebook_codes(root, notices)
    project = RefiProject(name=path.stem, origin=root.get("origin", ""), path=str(path))
    project.codes = codes
    codebook = project.codebook()
    if not codebook.codes:
        raise RefiError(f"{path}: the codebook holds no codable code")
    return codebook, notices


def read_qdpx(
    path: Path | str,
    *,
    schema_dir: Path | None = None,
    check_schema: bool = True,
    strict: bool = True,
) -> RefiProject:
    """Read a ``.qdpx`` project: codes, users, text sources and their coded selections.

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
    )
    if check_schema:
        notice = validate(root, "project", schema_dir, label)
        project.notices += [notice] if notice else []
    for users in _children(root, "Users"):
        for u in _children(users, "User"):
            project.users[u.get("guid", "")] = RefiUser(
                u.get("guid", ""), u.get("name"), u.get("id")
            )
    project.codes = _codebook_codes(root, project.notices)
    notes = _notes(zf, root, main)
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
                selection = _selection(sel, notes)
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
    if out_of_range:
        if strict:
            raise RefiError(f"{label}: " + "; ".join(out_of_range))
        project.notices.extend(out_of_range)
    return project


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
    return RefiSource(guid=guid, name=name, text=text, origin=origin)


def _notes(zf: zipfile.ZipFile, root: etree._Element, main: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for holder in _children(root, "Notes"):
        for note in _children(holder, "Note"):
            text = _child_text(note, "PlainTextContent")
            if text is None and note.get("plainTextPath"):
                for member in _member(main, note.get("plainTextPath", "")):
                    text = _zip_text(zf, member)
                    if text is not None:
                        break
            out[note.get("guid", "")] = text or ""
    return out


def _selection(sel: etree._Element, notes: dict[str, str]) -> RefiSelection:
    guid = sel.get("guid", "")
    try:
        start, end = int(sel.get("startPosition", "")), int(sel.get("endPosition", ""))
    except ValueError as exc:
        raise RefiError(f"selection {guid}: startPosition/endPosition are not integers") from exc
    out = RefiSelection(guid=guid, start=start, end=end, user_guid=sel.get("creatingUser"))
    sel_notes = [notes.get(r.get("targetGUID", ""), "") for r in _children(sel, "NoteRef")]
    for c in _children(sel, "Coding"):
        refs = _children(c, "CodeRef")
        if not refs:
            continue
        coding_notes = [notes.get(r.get("targetGUID", ""), "") for r in _children(c, "NoteRef")]
        out.codings.append(
            RefiCoding(
                guid=c.get("guid", ""),
                code_guid=refs[0].get("targetGUID", ""),
                user_guid=c.get("creatingUser") or out.user_guid,
                notes=[n for n in coding_notes + sel_notes if n],
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
    """Import a ``.qdpx`` project: sources -> transcripts, codebook, codings -> gold.

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
    titles = project.code_titles()
    by_text = {t.text: t for t in store.transcripts()}
    highlights: list[Highlight] = []
    passages: dict[str, list[Passage]] = {}
    for src in project.sources:
        text = src.text or ""
        transcript = by_text.get(text) or source_transcript(
            Path(src.name).stem if Path(src.name).suffix.lower() == ".txt" else src.name,
            text,
            f"{path}#{src.guid}",
        )
        made = segment(
            transcript,
            mode=segmentation,
            interviewer_speakers=tuple(interviewer_speakers),
            code_interviewer=code_interviewer,
        )
        try:
            if transcript.text in by_text:
                store.add_passages(made)
            elif store.save_transcript(transcript, made) == "new_version":
                result.notices.append(
                    f"source '{src.name}': stored as a new version of transcript "
                    f"'{transcript.name}' (the previous version is no longer current)"
                )
        except DuplicateTranscriptError as exc:
            result.problems.append(f"source '{src.name}': not imported: {exc}")
            continue
        result.transcripts.append(transcript.id)
        passages[transcript.id] = store.passages(
            transcript_id=transcript.id, segmentation=mode_name(segmentation)
        )
        for sel in src.selections:
            result.selections += 1
            for coding in sel.codings:
                title = titles.get(coding.code_guid)
                if title is None:
                    result.problems.append(
                        f"selection {sel.guid}: coding {coding.guid} refers to unknown code "
                        f"{coding.code_guid}"
                    )
                    continue
                result.codings += 1
                highlights.append(
                    Highlight(
                        transcript_id=transcript.id,
                        char_start=sel.start,
                        char_end=sel.end,
                        code=title,
                        coder=project.user_label(coding.user_guid),
                        snippet=text[sel.start : sel.end],
                        external_id=sel.guid,
                        memo="\n\n".join(coding.notes) or None,
                    )
                )
    save_highlights(store, f"refi:{project.name}", highlights)
    for coder, coding in _codings_per_coder(passages, highlights, min_overlap).items():
        store.save_gold(result.gold_set, coder, coding, result.codebook_version)
        result.coders[coder] = sum(1 for codes in coding.values() if codes)
    return result


def _codings_per_coder(
    passages: dict[str, list[Passage]], highlights: list[Highlight], min_overlap: float
) -> dict[str, Coding]:
    """Each coder's codings over the passages of the transcripts that coder coded."""
    by_coder: dict[str, list[Highlight]] = defaultdict(list)
    for h in highlights:
        by_coder[h.coder].append(h)
    out: dict[str, Coding] = {}
    for coder, hs in sorted(by_coder.items()):
        scope = [p for tid in dict.fromkeys(h.transcript_id for h in hs) for p in passages[tid]]
        out[coder] = map_highlights(scope, hs, min_overlap=min_overlap)
    return out


def import_qdc(
    store: Store, path: Path | str, *, schema_dir: Path | None = None, check_schema: bool = True
) -> tuple[str, Codebook, list[str]]:
    """Store a ``.qdc`` codebook; returns (version, codebook, notices)."""
    codebook, notices = read_qdc(path, schema_dir=schema_dir, check_schema=check_schema)
    return store.save_codebook(codebook), codebook, notices


# ---------------------------------------------------------------------- writing


def guid(*parts: object) -> str:
    """A stable GUID derived from content (the same export gives the same file)."""
    return str(uuid.uuid5(_GUID_NS, "\x1f".join(str(p) for p in parts)))


def _clean(text: str) -> str:
    """Text that XML 1.0 can hold (control characters dropped)."""
    return _XML_BAD.sub("", text)


def _stamp(when: datetime | None) -> str:
    when = when or utcnow()
    if when.tzinfo is None:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class ExportUser:
    key: str
    name: str
    kind: str  # machine | reviewer | gold

    @property
    def guid(self) -> str:
        return guid("user", self.key)


@dataclass
class ExportCoding:
    passage_id: str
    code: str
    user: ExportUser
    note: str | None = None
    created_at: datetime | None = None


@dataclass
class RefiExport:
    path: str
    sources: int = 0
    codes: int = 0
    selections: int = 0
    codings: int = 0
    notes: int = 0
    users: dict[str, int] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def summary(self) -> str:
        users = ", ".join(f"{u}: {n}" for u, n in self.users.items()) or "none"
        return (
            f"{self.path}: {self.sources} sources, {self.codes} codes, {self.selections} "
            f"selections, {self.codings} codings, {self.notes} notes; codings per user: {users}"
        )


def _code_tree(codebook: Codebook, extra: set[str]) -> dict[str, dict]:
    """Nested dict of title segments; every node knows its full title."""
    tree: dict[str, dict] = {}
    for title in [*codebook.titles(), *sorted(extra - set(codebook.titles()))]:
        node = tree
        for part in title.split("."):
            node = node.setdefault(part, {})
    return tree


def _codes_xml(
    parent: etree._Element,
    tree: dict[str, dict],
    codebook: Codebook,
    extra: set[str],
    ns: str,
    prefix: str = "",
) -> None:
    from lxml import etree

    for name, children in tree.items():
        title = f"{prefix}.{name}" if prefix else name
        code = codebook.get(title)
        codable = code is not None or title in extra
        el = etree.SubElement(
            parent,
            f"{{{ns}}}Code",
            guid=guid("code", title),
            name=_clean(name),
            isCodable="true" if codable else "false",
        )
        if code is not None and code.description:
            etree.SubElement(el, f"{{{ns}}}Description").text = _clean(code.description)
        _codes_xml(el, children, codebook, extra, ns, title)


def codebook_xml(codebook: Codebook, *, origin: str = "qualflow") -> bytes:
    """A ``.qdc`` document for a codebook."""
    from lxml import etree

    root = etree.Element(f"{{{NS_CODEBOOK}}}CodeBook", nsmap={None: NS_CODEBOOK}, origin=origin)
    codes = etree.SubElement(root, f"{{{NS_CODEBOOK}}}Codes")
    _codes_xml(codes, _code_tree(codebook, set()), codebook, set(), NS_CODEBOOK)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def export_qdc(
    codebook: Codebook,
    path: Path | str,
    *,
    schema_dir: Path | None = None,
    check_schema: bool = True,
) -> list[str]:
    """Write a ``.qdc`` codebook (validated when a schema is known); returns notices."""
    data = codebook_xml(codebook)
    notices: list[str] = []
    if check_schema:
        notice = validate(_parse_xml(data, str(path)), "codebook", schema_dir, str(path))
        notices += [notice] if notice else []
    Path(path).write_bytes(data)
    return notices


def collect_codings(
    store: Store,
    *,
    machine: bool = True,
    reviewers: bool = True,
    gold: bool = True,
    run_ids: list[int] | None = None,
    gold_sets: list[str] | None = None,
) -> list[ExportCoding]:
    """Every coding in the store, each with the user (coder) it belongs to."""
    out: list[ExportCoding] = []
    if machine:
        sets = (
            [ps for rid in run_ids for ps in store.proposal_sets(run_id=rid)]
            if run_ids is not None
            else store.proposal_sets()
        )
        for ps in sets:
            if ps.status != "ok":
                continue
            pv = ps.prompt_version[:12]
            user = ExportUser(
                key=f"machine:{ps.coder}:{ps.model}:{ps.prompt_version}",
                name=f"{ps.model} [{ps.coder}" + (f", prompt {pv}]" if pv else "]"),
                kind="machine",
            )
            for p in ps.proposals:
                note = "\n".join(
                    [
                        "qualflow machine coding",
                        f"code: {p.code}",
                        f"coder: {ps.coder}",
                        f"model: {ps.model}",
                        f"prompt version: {ps.prompt_version or '-'}",
                        f"codebook version: {ps.codebook_version}",
                        f"confidence: {p.confidence:.2f}",
                        f"rationale: {p.rationale}",
                        f"evidence: {p.evidence}",
                    ]
                )
                out.append(ExportCoding(ps.passage_id, p.code, user, note, ps.created_at))
    if reviewers:
        from qualflow.review.decisions import reviewer_codings

        for username, coding in sorted(reviewer_codings(store).items()):
            user = ExportUser(key=f"reviewer:{username}", name=username, kind="reviewer")
            out += [
                ExportCoding(pid, code, user) for pid, codes in coding.items() for code in codes
            ]
    if gold:
        for gs in gold_sets if gold_sets is not None else store.gold_sets():
            for coder, coding in sorted(store.gold(gs).items()):
                user = ExportUser(key=f"gold:{gs}:{coder}", name=f"{coder} [{gs}]", kind="gold")
                out += [
                    ExportCoding(pid, code, user) for pid, codes in coding.items() for code in codes
                ]
    return out


def project_xml(
    store: Store,
    codings: list[ExportCoding],
    *,
    name: str,
    codebook: Codebook | None = None,
    transcripts: list[Transcript] | None = None,
    origin: str = "qualflow",
) -> tuple[bytes, dict[str, bytes], RefiExport]:
    """The ``project.qde`` XML and the ``sources/`` files of an export."""
    from lxml import etree

    ns = NS_PROJECT
    q = lambda tag: f"{{{ns}}}{tag}"  # noqa: E731
    transcripts = transcripts if transcripts is not None else store.transcripts()
    report = RefiExport(path="")
    codebook = codebook or Codebook(name=name, codes=[])
    wanted = {t.id for t in transcripts}
    passages = {
        p.id: p
        for p in passages_by_ids(store, (c.passage_id for c in codings))
        if p.transcript_id in wanted
    }
    codings = [c for c in codings if c.passage_id in passages]
    extra = {c.code for c in codings} - set(codebook.titles())
    if extra:
        report.notices.append(
            f"{len(extra)} codes used in codings are not in codebook '{codebook.name}' "
            f"({', '.join(sorted(extra)[:5])}{'...' if len(extra) > 5 else ''}); exported as codes"
        )
    users = {c.user.key: c.user for c in codings}
    now = _stamp(None)
    root = etree.Element(
        q("Project"),
        nsmap={None: ns, "xsi": "http://www.w3.org/2001/XMLSchema-instance"},
        name=_clean(name),
        origin=origin,
        creationDateTime=now,
    )
    if users:
        users_el = etree.SubElement(root, q("Users"))
        for u in users.values():
            etree.SubElement(
                users_el, q("User"), guid=u.guid, name=_clean(u.name), id=_clean(u.key)
            )
    titles = [*codebook.titles(), *sorted(extra)]
    if titles:
        book = etree.SubElement(root, q("CodeBook"))
        codes_el = etree.SubElement(book, q("Codes"))
        _codes_xml(codes_el, _code_tree(codebook, extra), codebook, extra, ns)
    report.codes = len(titles)
    _cases(store, root, transcripts, q)
    by_passage: dict[str, list[ExportCoding]] = defaultdict(list)
    for c in codings:
        by_passage[c.passage_id].append(c)
    files: dict[str, bytes] = {}
    notes: list[tuple[str, ExportCoding]] = []
    sources_el = etree.SubElement(root, q("Sources")) if transcripts else None
    for t in transcripts:
        sguid = guid("source", t.id)
        files[f"sources/{sguid}.txt"] = t.text.encode("utf-8")
        src = etree.SubElement(
            sources_el,
            q("TextSource"),
            guid=sguid,
            name=_clean(t.name),
            plainTextPath=f"internal://{sguid}.txt",
        )
        mine = sorted(
            (passages[pid] for pid in by_passage if passages[pid].transcript_id == t.id),
            key=lambda p: (p.char_start, p.char_end, p.id),
        )
        for p in mine:
            sel = etree.SubElement(
                src,
                q("PlainTextSelection"),
                guid=guid("selection", p.id),
                name=f"{p.segmentation} {p.index}",
                startPosition=str(p.char_start),
                endPosition=str(p.char_end),
            )
            report.selections += 1
            seen: set[tuple[str, str]] = set()
            for c in sorted(by_passage[p.id], key=lambda c: (c.user.key, c.code)):
                if (c.user.key, c.code) in seen:
                    continue
                seen.add((c.user.key, c.code))
                cguid = guid("coding", p.id, c.user.key, c.code)
                attrs = {"guid": cguid, "creatingUser": c.user.guid}
                if c.created_at is not None:
                    attrs["creationDateTime"] = _stamp(c.created_at)
                coding = etree.SubElement(sel, q("Coding"), **attrs)
                etree.SubElement(coding, q("CodeRef"), targetGUID=guid("code", c.code))
                if c.note:
                    nguid = guid("note", cguid)
                    etree.SubElement(coding, q("NoteRef"), targetGUID=nguid)
                    notes.append((nguid, c))
                report.codings += 1
                report.users[c.user.name] = report.users.get(c.user.name, 0) + 1
    report.sources = len(transcripts)
    if notes:
        notes_el = etree.SubElement(root, q("Notes"))
        for nguid, c in notes:
            note = etree.SubElement(
                notes_el,
                q("Note"),
                guid=nguid,
                name=_clean(f"rationale: {c.code}"),
                creatingUser=c.user.guid,
                creationDateTime=_stamp(c.created_at),
            )
            etree.SubElement(note, q("PlainTextContent")).text = _clean(c.note or "")
        report.notes = len(notes)
    data = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return data, files, report


def _cases(store: Store, root: etree._Element, transcripts: list[Transcript], q) -> None:
    """Participants as Cases (with their attributes as Variables) linked to sources."""
    from lxml import etree

    people = {p.id: p for p in store.participants()}
    used = sorted({t.participant_id for t in transcripts if t.participant_id in people})
    if not used:
        return
    keys = sorted({k for pid in used for k in people[pid].attributes})
    if keys:
        variables = etree.SubElement(root, q("Variables"))
        for k in keys:
            etree.SubElement(
                variables,
                q("Variable"),
                guid=guid("variable", k),
                name=_clean(k),
                typeOfVariable="Text",
            )
    cases = etree.SubElement(root, q("Cases"))
    for pid in used:
        case = etree.SubElement(cases, q("Case"), guid=guid("case", pid), name=_clean(pid))
        for k in keys:
            if k in people[pid].attributes:
                vv = etree.SubElement(case, q("VariableValue"))
                etree.SubElement(vv, q("VariableRef"), targetGUID=guid("variable", k))
                etree.SubElement(vv, q("TextValue")).text = _clean(str(people[pid].attributes[k]))
        for t in transcripts:
            if t.participant_id == pid:
                etree.SubElement(case, q("SourceRef"), targetGUID=guid("source", t.id))


def export_qdpx(
    store: Store,
    path: Path | str,
    *,
    name: str = "qualflow study",
    codebook_version: str | None = None,
    machine: bool = True,
    reviewers: bool = True,
    gold: bool = True,
    run_ids: list[int] | None = None,
    gold_sets: list[str] | None = None,
    transcript_ids: list[str] | None = None,
    schema_dir: Path | None = None,
    check_schema: bool = True,
) -> RefiExport:
    """Write a study as a ``.qdpx``: sources, codebook, every coder's codings."""
    path = Path(path)
    codebook = store.codebook(codebook_version) if codebook_version else store.codebook()
    if codebook_version and codebook is None:
        raise RefiError(f"no codebook with version {codebook_version} in the store")
    transcripts = store.transcripts()
    if transcript_ids is not None:
        wanted = set(transcript_ids)
        transcripts = [t for t in transcripts if t.id in wanted or t.name in wanted]
    codings = collect_codings(
        store,
        machine=machine,
        reviewers=reviewers,
        gold=gold,
        run_ids=run_ids,
        gold_sets=gold_sets,
    )
    data, files, report = project_xml(
        store, codings, name=name, codebook=codebook, transcripts=transcripts
    )
    report.path = str(path)
    if check_schema:
        notice = validate(_parse_xml(data, str(path)), "project", schema_dir, f"{path}!project.qde")
        report.notices += [notice] if notice else []
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project.qde", data)
        for member, content in files.items():
            zf.writestr(member, content)
    tmp.replace(path)
    return report
