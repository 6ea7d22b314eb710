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

Tags become a flat codebook (a tag path is the code title), highlights become rows
of the ``highlights`` table and, mapped onto the passages with
``qualflow.highlights.map_highlights``, a gold coder's codings. A highlight without a
tag is reported, never turned into a code.
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
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from qualflow.highlights import Highlight, coding_by_coder, save_highlights
from qualflow.models import Code, Codebook, Passage, Transcript, Turn
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
    problems: list[str] = field(default_factory=list)

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


# ---------------------------------------------------------------------- database import


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
    ``segmenter`` is given), tags a codebook, highlights rows of the ``highlights``
    table and gold codings in ``gold_set`` (default ``taguette:<project name>``), one
    gold coder per Taguette user who made highlights.
    """
    from qualflow.segment import mode_name

    path = Path(path)
    segmentation = mode_name(segmentation)
    db = _open_taguette(path)
    try:
        project = _project(db, path, project_id)
        pid, pname = project
        gold = gold_set or f"taguette:{pname}"
        result = TaguetteImport(
            source=str(path),
            project=pname,
            gold_set=gold,
            codebook_version="",
            segmentation=segmentation,
        )
        codebook, tag_titles = _codebook(db, pid, pname, path)
        result.codebook_version = store.save_codebook(codebook)
        result.codes = len(codebook.codes)
        default_coder = _default_coder(db, pid)
        coder_of = _highlight_authors(db, pid)
        docs = db.execute(
            "SELECT id, name, filename, description, contents FROM documents "
            "WHERE project_id = ? ORDER BY id",
            (pid,),
        ).fetchall()
        tags_of: dict[int, list[int]] = defaultdict(list)
        for hid, tid in db.execute(
            "SELECT ht.highlight_id, ht.tag_id FROM highlight_tags ht "
            "JOIN highlights h ON h.id = ht.highlight_id "
            "JOIN documents d ON d.id = h.document_id WHERE d.project_id = ? "
            "ORDER BY ht.highlight_id, ht.tag_id",
            (pid,),
        ):
            tags_of[hid].append(tid)
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

    segment_fn = segmenter or _default_segmenter()
    source = f"taguette:{pname}"
    participant_ids = [p.id for p in store.participants()]
    all_passages: list[Passage] = []
    all_highlights: list[Highlight] = []
    for did, dname, filename, description, contents in docs:
        name = Path(dname or filename or f"document-{did}").stem
        transcript = document_transcript(
            name=name,
            contents=contents or "",
            source_path=f"{path}#document={did}",
            metadata={
                "taguette_document_id": str(did),
                "taguette_filename": filename or "",
                "taguette_project": pname,
                **({"description": description} if description else {}),
            },
        )
        transcript.participant_id = _match_participant(name, participant_ids)
        passages = segment_fn(
            transcript,
            mode=segmentation,
            interviewer_speakers=tuple(interviewer_speakers),
            code_interviewer=code_interviewer,
        )
        try:
            outcome = store.save_transcript(transcript, passages)
        except DuplicateTranscriptError as exc:
            result.problems.append(f"document {did} '{dname}': not imported: {exc}")
            result.unmatched.extend(
                f"highlight {hid}: its document {did} was not imported" for hid, *_ in rows_of[did]
            )
            continue
        if outcome == "new_version":
            result.problems.append(
                f"document {did} '{dname}': stored as a new version of transcript '{name}' "
                "(the previous version, e.g. ingested from the original file, is no longer "
                "current)"
            )
        if transcript.participant_id:
            store.set_participant(transcript.id, transcript.participant_id)
        result.transcripts.append(transcript.id)
        stored = store.passages(transcript_id=transcript.id, segmentation=segmentation)
        all_passages.extend(stored or passages)
        offsets = ByteOffsets(transcript.text)
        for hid, start, end, snippet in rows_of[did]:
            span = _locate(transcript.text, offsets, start, end, snippet)
            if isinstance(span, str):
                result.unmatched.append(f"highlight {hid} in '{dname}': {span}")
                continue
            cs, ce = span
            tids = tags_of.get(hid, [])
            result.highlights += 1
            if not tids:
                result.untagged.append(
                    f"highlight {hid} in '{dname}' [{cs}:{ce}] has no tag: "
                    "kept as a highlight, not as a code"
                )
            for tid in tids or [None]:
                title = tag_titles.get(tid) if tid is not None else None
                if tid is not None and title is None:
                    result.problems.append(f"highlight {hid}: unknown tag id {tid}")
                    continue
                result.tag_links += title is not None
                all_highlights.append(
                    Highlight(
                        transcript_id=transcript.id,
                        char_start=cs,
                        char_end=ce,
                        code=title,
                        coder=coder_of.get(hid, default_coder),
                        snippet=transcript.text[cs:ce],
                        external_id=str(hid),
                    )
                )
    save_highlights(store, source, all_highlights)
    _save_gold(store, result, all_passages, all_highlights, min_overlap)
    return result


def _save_gold(
    store: Store,
    result: TaguetteImport,
    passages: list[Passage],
    highlights: list[Highlight],
    min_overlap: float,
) -> None:
    """One gold coder per Taguette user. With one user, every passage counts (not
    highlighted = no code); with several, each user's coding covers the documents that
    user highlighted in (colleagues often split the documents between them)."""
    result.passages = len(passages)
    codings = coding_by_coder(passages, highlights, min_overlap=min_overlap)
    if not codings and passages:
        codings = {"taguette": {p.id: frozenset() for p in passages}}
    if len(codings) > 1:
        seen: dict[str, set[str]] = defaultdict(set)
        for h in highlights:
            seen[h.coder].add(h.transcript_id)
        where = {p.id: p.transcript_id for p in passages}
        codings = {
            coder: {pid: c for pid, c in coding.items() if where[pid] in seen[coder]}
            for coder, coding in codings.items()
        }
    for coder, coding in codings.items():
        store.save_gold(result.gold_set, coder, coding, result.codebook_version)
        coded = sum(1 for codes in coding.values() if codes)
        result.coders[coder] = coded
        result.coded_passages = max(result.coded_passages, coded)


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


def _project(db: sqlite3.Connection, path: Path, project_id: int | None) -> tuple[int, str]:
    rows = db.execute("SELECT id, name FROM projects ORDER BY id").fetchall()
    if project_id is not None:
        for pid, name in rows:
            if pid == project_id:
                return pid, name
        raise TaguetteError(f"{path}: no project with id {project_id}")
    if not rows:
        raise TaguetteError(f"{path}: the database holds no project")
    if len(rows) > 1:
        listing = ", ".join(f"{pid}={name!r}" for pid, name in rows)
        raise TaguetteError(f"{path}: several projects ({listing}); choose one with project_id")
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


def _highlight_authors(db: sqlite3.Connection, pid: int) -> dict[int, str]:
    """Highlight id -> login of the user whose last ``highlight_add`` made it.

    A live Taguette database keeps these ids; an exported project renumbers its
    highlights (the commands then hold other ids), and ``_default_coder`` applies.
    """
    import json

    authors: dict[int, str] = {}
    try:
        rows = db.execute(
            "SELECT user_login, payload FROM commands WHERE project_id = ? "
            "AND payload LIKE '%highlight_add%' ORDER BY id",
            (pid,),
        ).fetchall()
    except sqlite3.Error:
        return authors
    for login, payload in rows:
        try:
            data = json.loads(payload)
        except (TypeError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("highlight_id"), int):
            authors[data["highlight_id"]] = login
    return authors


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
    passages = [
        p
        for tid in sorted(touched)
        for p in store.passages(transcript_id=tid, segmentation=segmentation)
    ]
    if touched and not passages:
        result.problems.append(
            f"no passages with segmentation '{segmentation}' for the matched transcripts"
        )
    save_highlights(store, f"taguette-csv:{highlights_csv.name}", highlights)
    _save_gold(store, result, passages, highlights, min_overlap)
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
