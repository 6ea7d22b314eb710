"""Import a Taguette project: its SQLite database, or its CSV exports.

A Taguette document is HTML (a ``<p>`` per line, ``<h2>``/``<h3>`` headings, empty
paragraphs, entities such as ``&lt;``). A highlight's ``start_offset``/``end_offset``
are UTF-8 *byte* offsets into the document's text content: the HTML with the tags
removed and the entities decoded, the newlines between paragraphs included (what a
browser's text nodes hold). So the transcript text qualflow stores for a Taguette
document is exactly that text content, verbatim (not whitespace-normalized like the
other readers), and offsets are converted from bytes to code points. Turns are the
block elements (paragraphs, headings), stripped of surrounding blanks, with exact
offsets: ``text[turn.char_start:turn.char_end] == turn.text``.

Tags become a flat codebook (a tag path is the code title). Each Taguette user's
highlights become a ``SpanCoding`` with exact offsets (``read_taguette`` gives them
without touching the store), stored as a gold coder by ``qualflow.exchange.spans``
(highlights, plus their projection onto passages for passage-level readers). A
highlight without a tag is reported, never turned into a code. What qualflow has no
model for (project description, logins, dates) goes to the import record, for exports.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import html
import io
import itertools
import re
import sqlite3
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from qualflow.cells import safe_cell
from qualflow.exchange.records import ImportRecord, save_import_record
from qualflow.exchange.spans import (
    codings_from_highlights,
    restrict,
    save_gold_spans,
    scope_record,
)
from qualflow.highlights import Highlight
from qualflow.models import Code, Codebook, Passage, SpanCoding, Transcript, Turn
from qualflow.store import DuplicateTranscriptError, Store

Segmenter = Callable[..., list[Passage]]

# Elements that end a line of text (a turn boundary) in Taguette's HTML.
_BLOCKS = {
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "tr",
    "td",
    "th",
    "table",
    "blockquote",
    "pre",
    "section",
    "article",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
}
_TAG_RE = re.compile(r"<[^>]*>")


class TaguetteError(ValueError):
    """A Taguette file that cannot be imported; names the file and the reason."""


@dataclass
class TaguetteImport:
    """What an import did, with everything it could not do."""

    source: str
    project: str
    gold_set: str
    codebook_version: str
    segmentation: str
    transcripts: list[str] = field(default_factory=list)
    codes: int = 0
    highlights: int = 0
    tag_links: int = 0
    untagged: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    coders: dict[str, int] = field(default_factory=dict)
    passages: int = 0
    coded_passages: int = 0
    span_codings: list[SpanCoding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.transcripts)} transcripts, {self.codes} codes, "
            f"{self.highlights} highlights ({self.tag_links} tag links), "
            f"{len(self.untagged)} untagged, {len(self.unmatched)} unmatched; "
            f"{self.coded_passages}/{self.passages} passages coded; gold set '{self.gold_set}'"
        )


# ---------------------------------------------------------------------- HTML -> text


class _TextExtractor(HTMLParser):
    """Text content of an HTML fragment plus the positions where blocks begin/end."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.length = 0
        self.breaks: list[int] = [0]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:
            self.breaks.append(self.length)

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCKS:
            self.breaks.append(self.length)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:
            self.breaks.append(self.length)

    def handle_data(self, data: str) -> None:
        self.parts.append(data)
        self.length += len(data)


def html_to_text(contents: str) -> tuple[str, list[tuple[int, int]]]:
    """Taguette's text content of a document and its line spans.

    Spans are split at block elements and at newlines and stripped of surrounding
    blanks; empty ones are dropped.
    """
    parser = _TextExtractor()
    parser.feed(contents)
    parser.close()
    text = "".join(parser.parts)
    cuts = sorted({*parser.breaks, len(text)})
    spans: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(cuts):
        pos = a
        for line in text[a:b].split("\n"):
            start = pos + (len(line) - len(line.lstrip()))
            end = pos + len(line.rstrip())
            if end > start:
                spans.append((start, end))
            pos += len(line) + 1
    return text, spans


def strip_tags(snippet: str) -> str:
    """A Taguette snippet (HTML) as plain text: tags removed, entities decoded."""
    return html.unescape(_TAG_RE.sub("", snippet))


class ByteOffsets:
    """Converts UTF-8 byte offsets into code-point offsets of one text."""

    def __init__(self, text: str):
        self.starts: list[int] = []
        pos = 0
        for ch in text:
            self.starts.append(pos)
            pos += len(ch.encode("utf-8"))
        self.total = pos

    def to_char(self, byte_offset: int) -> int | None:
        """The code-point offset, or None if out of range or inside a character."""
        if byte_offset == self.total:
            return len(self.starts)
        i = bisect.bisect_left(self.starts, byte_offset)
        if 0 <= byte_offset < self.total and i < len(self.starts) and self.starts[i] == byte_offset:
            return i
        return None


_LABEL = re.compile(r"([^\s:][^:\n]{0,40}?):[ \t]+")


def label_speakers(text: str, spans: list[tuple[int, int]]) -> list[Turn]:
    """Turns for line spans, with ``Name:`` labels as speakers.

    A label counts only when the same label opens at least two lines of the text and
    has at most four words, so that "Location: Dublin" in running prose is not taken
    for a speaker. The label is left out of the turn's span (as the other readers do).
    """
    found: list[tuple[int, int, re.Match[str] | None]] = []
    counts: Counter[str] = Counter()
    for a, b in spans:
        m = _LABEL.match(text, a, b)
        if m and m.end() < b and len(m.group(1).split()) <= 4:
            counts[m.group(1).strip()] += 1
            found.append((a, b, m))
        else:
            found.append((a, b, None))
    turns: list[Turn] = []
    for a, b, m in found:
        speaker = None
        if m is not None and counts[m.group(1).strip()] >= 2:
            speaker, a = m.group(1).strip(), m.end()
        turns.append(
            Turn(index=len(turns), speaker=speaker, text=text[a:b], char_start=a, char_end=b)
        )
    return turns


def document_transcript(
    *, name: str, contents: str, source_path: str, metadata: dict[str, str] | None = None
) -> Transcript:
    """A Taguette HTML document as a transcript with verbatim text and exact turns."""
    text, spans = html_to_text(contents)
    content_hash = hashlib.sha256(contents.encode("utf-8")).hexdigest()
    turns = label_speakers(text, spans)
    return Transcript(
        id=Transcript.make_id(name, content_hash),
        name=name,
        source_path=source_path,
        content_hash=content_hash,
        format="taguette",
        text=text,
        turns=turns,
        metadata=dict(metadata or {}),
    )


# ---------------------------------------------------------------------- database: reading


@dataclass
class TaguetteDocument:
    """One document of the project: its id, name, creation time and transcript."""

    id: int
    name: str
    created: str | None
    transcript: Transcript


@dataclass
class TaguetteProject:
    """A Taguette project as read from its database, before anything is stored.

    ``highlights`` holds one entry per (highlight, tag) with exact code-point offsets
    (a highlight without a tag has ``code=None``); ``span_codings`` gives the same as
    one ``SpanCoding`` per coder.
    """

    path: str
    id: int
    name: str
    description: str
    created: str | None
    codebook: Codebook
    documents: list[TaguetteDocument] = field(default_factory=list)
    highlights: list[Highlight] = field(default_factory=list)
    highlight_dates: dict[str, str] = field(default_factory=dict)
    logins: list[str] = field(default_factory=list)
    default_coder: str = "taguette"
    located: int = 0
    untagged: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def span_codings(self) -> list[SpanCoding]:
        """One coding per Taguette user, with exact spans. With one user, the scope is
        every document (not highlighted = no code); with several, each user's scope is
        the documents that user highlighted in (colleagues often split the documents)."""
        texts = {d.transcript.id: len(d.transcript.text) for d in self.documents}
        coders = sorted({h.coder for h in self.highlights}) or [self.default_coder]
        if len(coders) == 1:
            scopes = {coders[0]: {tid: [(0, n)] for tid, n in texts.items()}}
        else:
            scopes = {c: {} for c in coders}
            for h in self.highlights:
                scopes[h.coder][h.transcript_id] = [(0, texts[h.transcript_id])]
        return codings_from_highlights(self.highlights, scopes)


def read_taguette(path: Path | str, *, project_id: int | None = None) -> TaguetteProject:
    """Read a Taguette project database: documents as transcripts (verbatim text),
    tags as a codebook, highlights with exact offsets and their authors."""
    path = Path(path)
    db = _open_taguette(path)
    try:
        pid, pname, description, created = _project(db, path, project_id)
        codebook, tag_titles = _codebook(db, pid, pname, path)
        project = TaguetteProject(
            path=str(path),
            id=pid,
            name=pname,
            description=description or "",
            created=created,
            codebook=codebook,
            default_coder=_default_coder(db, pid),
        )
        project.logins = _logins(db, pid)
        coder_of, project.highlight_dates = _highlight_authors(db, pid)
        if _is_exported_file(db):
            project.notices.append(
                f"{path}: a Taguette 'Export project' file: Taguette writes every coder "
                "as 'admin' into it, so all highlights come in as one coder, 'admin'. If "
                "several people coded, import the live Taguette database (the server's "
                "database file) with --project-id to keep each coder"
            )
        docs = db.execute(
            "SELECT id, name, filename, description, contents, created FROM documents "
            "WHERE project_id = ? ORDER BY id",
            (pid,),
        ).fetchall()
        tags_of = _tags_of(db, pid)
        rows_of: dict[int, list[tuple[int, int, int, str]]] = defaultdict(list)
        for hid, did, start, end, snippet in db.execute(
            "SELECT h.id, h.document_id, h.start_offset, h.end_offset, h.snippet "
            "FROM highlights h JOIN documents d ON d.id = h.document_id "
            "WHERE d.project_id = ? ORDER BY h.document_id, h.start_offset, h.id",
            (pid,),
        ):
            rows_of[did].append((hid, start, end, snippet))
    finally:
        db.close()
    for did, dname, filename, description, contents, created in docs:
        transcript = document_transcript(
            name=Path(dname or filename or f"document-{did}").stem,
            contents=contents or "",
            source_path=f"{path}#document={did}",
            metadata={
                "taguette_document_id": str(did),
                "taguette_filename": filename or "",
                "taguette_project": pname,
                **({"description": description} if description else {}),
            },
        )
        project.documents.append(TaguetteDocument(did, dname, _text(created), transcript))
        offsets = ByteOffsets(transcript.text)
        for row in rows_of[did]:
            located = _locate(transcript.text, offsets, *row[1:])
            _add_highlight(project, transcript, dname, row, located, tags_of, tag_titles, coder_of)
    return project


def _add_highlight(
    project: TaguetteProject,
    transcript: Transcript,
    dname: str,
    row: tuple[int, int, int, str],
    span: tuple[int, int] | str,
    tags_of: dict[int, list[int]],
    tag_titles: dict[int, str],
    coder_of: dict[int, str],
) -> None:
    """Add one highlight located in its document (``span``, or why it is not), once per
    tag."""
    hid = row[0]
    if isinstance(span, str):
        project.unmatched.append(f"highlight {hid} in '{dname}': {span}")
        return
    cs, ce = span
    tids = tags_of.get(hid, [])
    project.located += 1
    if not tids:
        project.untagged.append(
            f"highlight {hid} in '{dname}' [{cs}:{ce}] has no tag: "
            "kept as a highlight, not as a code"
        )
    for tid in tids or [None]:
        title = tag_titles.get(tid) if tid is not None else None
        if tid is not None and title is None:
            project.problems.append(f"highlight {hid}: unknown tag id {tid}")
            continue
        project.highlights.append(
            Highlight(
                transcript_id=transcript.id,
                char_start=cs,
                char_end=ce,
                code=title,
                coder=coder_of.get(hid, project.default_coder),
                snippet=transcript.text[cs:ce],
                external_id=str(hid),
            )
        )


def _tags_of(db: sqlite3.Connection, pid: int) -> dict[int, list[int]]:
    tags_of: dict[int, list[int]] = defaultdict(list)
    for hid, tid in db.execute(
        "SELECT ht.highlight_id, ht.tag_id FROM highlight_tags ht "
        "JOIN highlights h ON h.id = ht.highlight_id "
        "JOIN documents d ON d.id = h.document_id WHERE d.project_id = ? "
        "ORDER BY ht.highlight_id, ht.tag_id",
        (pid,),
    ):
        tags_of[hid].append(tid)
    return tags_of


def _text(value: object) -> str | None:
    return None if value is None else str(value)


# ---------------------------------------------------------------------- database: import


def import_taguette(
    store: Store,
    path: Path | str,
    *,
    segmentation: str = "sentence",
    gold_set: str | None = None,
    min_overlap: float = 0.5,
    interviewer_speakers: tuple[str, ...] | list[str] = (),
    code_interviewer: bool = False,
    project_id: int | None = None,
    segmenter: Segmenter | None = None,
) -> TaguetteImport:
    """Import a Taguette project database into the store.

    Documents become transcripts (segmented with ``qualflow.segment.segment`` unless
    ``segmenter`` is given), tags a codebook, and each Taguette user who made highlights
    a gold coder in ``gold_set`` (default ``taguette:<project name>``) with exact spans
    (``qualflow.exchange.spans``); project, document and highlight details go to the
    import record for exports.
    """
    from qualflow.segment import mode_name

    segmentation = mode_name(segmentation)
    project = read_taguette(path, project_id=project_id)
    gold = gold_set or f"taguette:{project.name}"
    result = TaguetteImport(
        source=str(path),
        project=project.name,
        gold_set=gold,
        codebook_version=store.save_codebook(project.codebook),
        segmentation=segmentation,
        codes=len(project.codebook.codes),
        untagged=list(project.untagged),
        unmatched=list(project.unmatched),
        problems=list(project.problems),
        notices=list(project.notices),
    )
    segment_fn = segmenter or _default_segmenter()
    participant_ids = [p.id for p in store.participants()]
    stored: set[str] = set()
    for doc in project.documents:
        transcript = doc.transcript
        transcript.participant_id = _match_participant(transcript.name, participant_ids)
        passages = segment_fn(
            transcript,
            mode=segmentation,
            interviewer_speakers=tuple(interviewer_speakers),
            code_interviewer=code_interviewer,
        )
        try:
            outcome = store.save_transcript(transcript, passages)
        except DuplicateTranscriptError as exc:
            result.problems.append(f"document {doc.id} '{doc.name}': not imported: {exc}")
            result.unmatched.extend(
                f"highlight {h}: its document {doc.id} was not imported"
                for h in dict.fromkeys(
                    h.external_id for h in project.highlights if h.transcript_id == transcript.id
                )
            )
            continue
        if outcome == "new_version":
            result.problems.append(
                f"document {doc.id} '{doc.name}': stored as a new version of transcript "
                f"'{transcript.name}' (the previous version, e.g. ingested from the original "
                "file, is no longer current)"
            )
        if transcript.participant_id:
            store.set_participant(transcript.id, transcript.participant_id)
        stored.add(transcript.id)
        result.transcripts.append(transcript.id)
        result.passages += len(
            store.passages(transcript_id=transcript.id, segmentation=segmentation) or passages
        )
    highlights = [h for h in project.highlights if h.transcript_id in stored]
    result.highlights = len({(h.transcript_id, h.external_id) for h in highlights})
    result.tag_links = sum(1 for h in highlights if h.code is not None)
    result.span_codings = [restrict(c, stored) for c in project.span_codings()]
    result.coders = save_gold_spans(
        store,
        gold,
        result.span_codings,
        highlights,
        codebook_version=result.codebook_version,
        segmentation=segmentation,
        min_overlap=min_overlap,
    )
    result.coded_passages = max(result.coders.values(), default=0)
    save_import_record(
        store,
        ImportRecord(gold, "taguette", project.name, str(path), _record(project, result)),
    )
    return result


TAGUETTE_GUIDS = uuid.UUID("51B2B2B7-27EB-4ECB-9D56-E75B0A0496C2")
"""Taguette's own namespace for the GUIDs of its codebook export (``codebook.qdc``)."""


def tag_guid(path: str) -> str:
    """The GUID Taguette itself gives a tag in its ``codebook.qdc``."""
    return str(uuid.uuid5(TAGUETTE_GUIDS, path)).upper()


def user_guid(login: str) -> str:
    """A stable GUID for a Taguette login (Taguette has none)."""
    return str(uuid.uuid5(TAGUETTE_GUIDS, f"user:{login}"))


def _record(project: TaguetteProject, result: TaguetteImport) -> dict:
    """Project, users, documents and highlight details for the import record."""
    coders = {h.coder for h in project.highlights} | set(result.coders)
    logins = list(dict.fromkeys([*project.logins, *sorted(coders)]))
    users = [{"guid": user_guid(u), "name": u, "label": u} for u in logins]
    guid_of = {u["name"]: u["guid"] for u in users}
    selections: dict[str, dict[str, str]] = {}
    for h in project.highlights:
        if h.external_id and h.external_id not in selections:
            selections[h.external_id] = {"creatingUser": guid_of[h.coder]}
            if h.external_id in project.highlight_dates:
                selections[h.external_id]["creationDateTime"] = project.highlight_dates[
                    h.external_id
                ]
    return {
        "project": {
            k: v
            for k, v in {
                "name": project.name,
                "description": project.description,
                "creationDateTime": project.created,
            }.items()
            if v
        },
        "users": users,
        "codes": {c.title: {"guid": tag_guid(c.title)} for c in project.codebook.codes},
        "sources": {
            d.transcript.id: {"creationDateTime": d.created}
            for d in project.documents
            if d.transcript.id in result.transcripts and d.created
        },
        "selections": selections,
        "scopes": scope_record(result.span_codings),
    }


def _locate(
    text: str, offsets: ByteOffsets, start: int, end: int, snippet: str
) -> tuple[int, int] | str:
    """Code-point span of a highlight, checked against its snippet; or why not."""
    cs, ce = offsets.to_char(start), offsets.to_char(end)
    if cs is None or ce is None or ce < cs:
        reason = f"byte offsets {start}-{end} out of range or inside a character"
    elif text[cs:ce] == strip_tags(snippet):
        return cs, ce
    else:
        reason = f"text at byte offsets {start}-{end} does not match its snippet"
    plain = strip_tags(snippet)
    if plain.strip():
        hits = [m.start() for m in re.finditer(re.escape(plain), text)]
        if hits:
            guess = cs if cs is not None else len(text[: max(0, start)])
            best = min(hits, key=lambda h: abs(h - guess))
            return best, best + len(plain)
    return reason


def _open_taguette(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise TaguetteError(f"{path}: no such file")
    with path.open("rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise TaguetteError(f"{path}: not a SQLite database (a Taguette project is one)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = {"projects", "documents", "tags", "highlights", "highlight_tags"} - tables
    if missing:
        db.close()
        tables_missing = ", ".join(sorted(missing))
        raise TaguetteError(
            f"{path}: not a Taguette project database (missing tables: {tables_missing})"
        )
    return db


def _project(
    db: sqlite3.Connection, path: Path, project_id: int | None
) -> tuple[int, str, str, str | None]:
    rows = [
        (pid, name, desc, _text(created))
        for pid, name, desc, created in db.execute(
            "SELECT id, name, description, created FROM projects ORDER BY id"
        )
    ]
    if project_id is not None:
        for row in rows:
            if row[0] == project_id:
                return row
        raise TaguetteError(f"{path}: no project with id {project_id}")
    if not rows:
        raise TaguetteError(f"{path}: the database holds no project")
    if len(rows) > 1:
        listing = ", ".join(f"{pid}={name!r}" for pid, name, _, _ in rows)
        raise TaguetteError(
            f"{path}: several projects ({listing}); choose one with --project-id ID"
        )
    return rows[0]


def _codebook(
    db: sqlite3.Connection, pid: int, pname: str, path: Path
) -> tuple[Codebook, dict[int, str]]:
    counts = Counter(
        tid
        for (tid,) in db.execute(
            "SELECT ht.tag_id FROM highlight_tags ht JOIN tags t ON t.id = ht.tag_id "
            "WHERE t.project_id = ?",
            (pid,),
        )
    )
    rows = db.execute(
        "SELECT id, path, description FROM tags WHERE project_id = ? ORDER BY id", (pid,)
    ).fetchall()
    codes = [
        Code(title=tpath, description=(desc or "").strip(), count=counts.get(tid, 0))
        for tid, tpath, desc in rows
    ]
    return Codebook(name=pname, source=str(path), codes=codes), {
        tid: tpath for tid, tpath, _ in rows
    }


def _default_coder(db: sqlite3.Connection, pid: int) -> str:
    """The one Taguette user who coded the project, if the database says so."""
    logins: set[str] = set()
    try:
        logins = {
            r[0]
            for r in db.execute(
                "SELECT DISTINCT user_login FROM commands WHERE project_id = ? "
                "AND payload LIKE '%highlight_add%'",
                (pid,),
            )
        }
        if not logins:
            logins = {
                r[0]
                for r in db.execute(
                    "SELECT user_login FROM project_members WHERE project_id = ?", (pid,)
                )
            }
    except sqlite3.Error:
        return "taguette"
    return next(iter(logins)) if len(logins) == 1 else "taguette"


def _logins(db: sqlite3.Connection, pid: int) -> list[str]:
    """The project's members (users who may have coded nothing)."""
    try:
        return [
            r[0]
            for r in db.execute(
                "SELECT user_login FROM project_members WHERE project_id = ? ORDER BY user_login",
                (pid,),
            )
        ]
    except sqlite3.Error:
        return []


def _is_exported_file(db: sqlite3.Connection) -> bool:
    """Whether the database is a file Taguette's "Export project" wrote: Taguette then
    creates one user, ``admin``, without a password, and rewrites every command and
    membership to it, so the coders are lost in the file."""
    try:
        users = db.execute("SELECT login, hashed_password FROM users").fetchall()
        members = {r[0] for r in db.execute("SELECT user_login FROM project_members")}
    except sqlite3.Error:
        return False
    return users == [("admin", None)] and members <= {"admin"}


def _highlight_authors(db: sqlite3.Connection, pid: int) -> tuple[dict[int, str], dict[str, str]]:
    """Highlight id -> login of the user whose last ``highlight_add`` made it, and
    highlight id (text) -> the time of that command.

    A live Taguette database keeps these ids; an exported project renumbers its
    highlights and rewrites every login to ``admin`` (see ``_is_exported_file``).
    """
    import json

    authors: dict[int, str] = {}
    dates: dict[str, str] = {}
    try:
        rows = db.execute(
            "SELECT user_login, payload, date FROM commands WHERE project_id = ? "
            "AND payload LIKE '%highlight_add%' ORDER BY id",
            (pid,),
        ).fetchall()
    except sqlite3.Error:
        return authors, dates
    for login, payload, date in rows:
        try:
            data = json.loads(payload)
        except (TypeError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("highlight_id"), int):
            authors[data["highlight_id"]] = login
            if date is not None:
                dates[str(data["highlight_id"])] = str(date)
    return authors, dates


def _match_participant(name: str, ids: list[str]) -> str | None:
    if not ids:
        return None
    from qualflow.participants import match_participant

    return match_participant(name, ids)


def _default_segmenter() -> Segmenter:
    from qualflow.segment import segment

    return segment


# ---------------------------------------------------------------------- CSV exports


def read_codebook_csv(path: Path | str, *, name: str | None = None) -> Codebook:
    """Taguette's codebook export (``tag,description,number of highlights``)."""
    path = Path(path)
    rows = _read_csv(path, required=("tag",))
    codes: list[Code] = []
    seen: set[str] = set()
    for line, row in rows:
        title = (row.get("tag") or "").strip()
        if not title:
            raise TaguetteError(f"{path}: row {line} has no tag")
        if title in seen:
            raise TaguetteError(f"{path}: row {line}: duplicate tag '{title}'")
        seen.add(title)
        raw_count = (row.get("number of highlights") or "").strip()
        try:
            count = int(raw_count) if raw_count else None
        except ValueError as exc:
            raise TaguetteError(
                f"{path}: row {line}: 'number of highlights' is not a number: {raw_count!r}"
            ) from exc
        codes.append(
            Code(title=title, description=(row.get("description") or "").strip(), count=count)
        )
    if not codes:
        raise TaguetteError(f"{path}: no tags")
    return Codebook(name=name or path.stem, source=str(path), codes=codes)


def codebook_csv(codebook: Codebook) -> str:
    """A codebook as the CSV Taguette imports ("Import codebook"): ``tag`` and
    ``description`` columns, one row per code (the dotted title as the tag path).
    Cells that a spreadsheet would run as a formula are neutralised (``safe_cell``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["tag", "description"])
    for code in codebook.codes:
        writer.writerow([safe_cell(code.title), safe_cell(code.description)])
    return buf.getvalue()


def write_codebook_csv(codebook: Codebook, path: Path | str) -> int:
    """Write ``codebook_csv`` to ``path`` (UTF-8); returns the number of codes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(codebook_csv(codebook), encoding="utf-8")
    return len(codebook.codes)


def import_taguette_csv(
    store: Store,
    highlights_csv: Path | str,
    *,
    codebook_csv: Path | str | None = None,
    segmentation: str = "sentence",
    gold_set: str | None = None,
    coder: str = "taguette",
    min_overlap: float = 0.5,
) -> TaguetteImport:
    """Import Taguette's highlights export (``id,document,tag,content``).

    The transcripts must already be in the store (ingested from the original files,
    or from the Taguette database): ``document`` is matched to a transcript name
    (file name without extension) and ``content`` located in its text, ignoring
    differences in whitespace (Taguette's export joins paragraphs with a space).
    """
    from qualflow.segment import mode_name

    highlights_csv = Path(highlights_csv)
    segmentation = mode_name(segmentation)
    rows = _read_csv(highlights_csv, required=("id", "document", "tag", "content"))
    codebook = (
        read_codebook_csv(codebook_csv)
        if codebook_csv
        else Codebook(
            name=highlights_csv.stem,
            source=str(highlights_csv),
            codes=[
                Code(title=t)
                for t in dict.fromkeys((r.get("tag") or "").strip() for _, r in rows)
                if t
            ],
        )
    )
    gold = gold_set or f"taguette:{codebook.name}"
    result = TaguetteImport(
        source=str(highlights_csv),
        project=codebook.name,
        gold_set=gold,
        codebook_version=store.save_codebook(codebook),
        segmentation=segmentation,
        codes=len(codebook.codes),
    )
    known = set(codebook.titles())
    by_name = {t.name: t for t in store.transcripts()}
    groups: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
    for line, row in rows:
        groups[(row.get("id") or "").strip() or f"row{line}"].append((line, row))
    finders: dict[str, _Finder] = {}
    highlights: list[Highlight] = []
    for hid, members in groups.items():
        line, first = members[0]
        doc = (first.get("document") or "").strip()
        transcript = by_name.get(Path(doc).stem) or by_name.get(doc)
        if transcript is None:
            result.unmatched.append(f"{highlights_csv}: row {line}: no transcript named '{doc}'")
            continue
        if transcript.id not in finders:
            speakers = {t.speaker for t in transcript.turns if t.speaker}
            finders[transcript.id] = _Finder(transcript.text, speakers)
        finder = finders[transcript.id]
        span = finder.find(first.get("content") or "")
        if span is None:
            result.unmatched.append(
                f"{highlights_csv}: row {line} (highlight {hid}): content not found in "
                f"transcript '{transcript.name}'"
            )
            continue
        result.highlights += 1
        tags = [(r.get("tag") or "").strip() for _, r in members]
        if not any(tags):
            result.untagged.append(f"highlight {hid} in '{doc}' has no tag")
        for tag in tags:
            if tag and tag not in known:
                result.problems.append(f"highlight {hid}: tag '{tag}' is not in the codebook")
            result.tag_links += bool(tag)
            highlights.append(
                Highlight(
                    transcript_id=transcript.id,
                    char_start=span[0],
                    char_end=span[1],
                    code=tag or None,
                    coder=coder,
                    snippet=transcript.text[span[0] : span[1]],
                    external_id=hid,
                )
            )
    touched = {h.transcript_id for h in highlights}
    result.transcripts = sorted(touched)
    passages = sum(
        len(store.passages(transcript_id=tid, segmentation=segmentation)) for tid in touched
    )
    if touched and not passages:
        result.problems.append(
            f"no passages with segmentation '{segmentation}' for the matched transcripts"
        )
    result.passages = passages
    lengths = {t.id: len(t.text) for t in by_name.values() if t.id in touched}
    scope = {tid: [(0, n)] for tid, n in lengths.items()}
    result.span_codings = codings_from_highlights(highlights, {coder: scope})
    result.coders = save_gold_spans(
        store,
        gold,
        result.span_codings,
        highlights,
        codebook_version=result.codebook_version,
        segmentation=segmentation,
        min_overlap=min_overlap,
    )
    result.coded_passages = max(result.coders.values(), default=0)
    return result


def _read_csv(path: Path, *, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise TaguetteError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TaguetteError(f"{path}: cannot read as UTF-8 text ({exc})") from exc
    reader = csv.DictReader(io.StringIO(raw))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise TaguetteError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'})"
        )
    out = []
    try:
        for line, row in enumerate(reader, start=2):
            if None in row:
                raise TaguetteError(f"{path}: row {line} has more fields than the header")
            out.append((line, {k.strip().lower(): v or "" for k, v in row.items() if k}))
    except csv.Error as exc:
        raise TaguetteError(f"{path}: malformed CSV: {exc}") from exc
    return out


class _Finder:
    """Finds whitespace-normalized content in a text, in reading order, with offsets.

    Content that still carries speaker labels the transcript's reader took out of the
    text (``MODERATOR: ...`` in Taguette, a plain ``MODERATOR`` turn in qualflow) is
    found with those labels removed.
    """

    def __init__(self, text: str, speakers: set[str] | None = None):
        chars: list[str] = []
        self.pos: list[int] = []
        prev_space = True
        for i, ch in enumerate(text):
            if ch.isspace():
                if not prev_space:
                    chars.append(" ")
                    self.pos.append(i)
                prev_space = True
            else:
                chars.append(ch)
                self.pos.append(i)
                prev_space = False
        self.norm = "".join(chars)
        self.cursor = 0
        labels = sorted((s for s in speakers or () if s), key=len, reverse=True)
        self.labels = (
            re.compile(r"(?:(?<=\s)|^)(?:" + "|".join(map(re.escape, labels)) + r"):\s*")
            if labels
            else None
        )

    def find(self, content: str) -> tuple[int, int] | None:
        needle = " ".join(content.split())
        if not needle:
            return None
        span = self._find(needle)
        if span is None and self.labels is not None:
            stripped = " ".join(self.labels.sub(" ", needle).split())
            if stripped and stripped != needle:
                span = self._find(stripped)
        return span

    def _find(self, needle: str) -> tuple[int, int] | None:
        at = self.norm.find(needle, self.cursor)
        if at < 0:
            at = self.norm.find(needle)
        if at < 0:
            return None
        self.cursor = at + 1
        return self.pos[at], self.pos[at + len(needle) - 1] + 1
