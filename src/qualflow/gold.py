"""Gold sets as JSONL: human codings as spans, imported into the store and written back.

A gold JSONL file has one record per line, one of two shapes::

    {"transcript": "I-3_interview", "start": 120, "end": 188, "codes": [...], "coder": "ann"}
    {"transcript": "I-3_interview", "text": "passage text", "codes": [...], "coder": "ann"}

``transcript`` is a transcript name (its current version) or a transcript id (any
version). ``"origin": "constructed"`` declares the record constructed example data (not
human coding); its coder is then never used as a human in a human baseline.

- **With offsets** (code points into the transcript's normalized text, end exclusive)
  the record is an exact span: the coder coded the text ``[start, end)`` (it joins the
  coder's scope) and each code is a span over exactly that text. No passage is
  involved, so a highlight inside a sentence or across several stays what it is. A
  ``text`` given with the offsets (``export_gold`` writes one) must be the text there
  (whitespace-normalized): a mismatch is reported, as offsets made on another version
  of the transcript would be.
- **With text only**, the record names a passage (of ``segmentation``): the one whose
  text equals it (whitespace-normalized), or else the one passage that contains it;
  ``transcript`` is then optional but disambiguates. The passage joins the scope and
  each code is a span over the passage.
- ``codes: []`` means the coder read that text and no code applies: scope, no span.

Importing replaces, per coder, the spans and scope the set holds inside the text the
new records cover; everything else of the set stays (so importing a file twice stores
it once). Every problem names the file, the line and the reason; bad lines are
skipped and the rest are imported. Codes not in the codebook are reported and left out.

``export_gold`` writes each coder's spans with offsets and text (one record per
stretch of text, its codes together) and the scope no span covers as ``codes: []``
records, so export -> import gives the same spans and scope.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete

from qualflow.db import GoldScopeRow, GoldSpanRow
from qualflow.exchange.spans import (
    join_ranges,
    merge_ranges,
    project_to_sentences,
    scope_sentences,
)
from qualflow.models import Codebook, Passage, Range, Span, SpanCoding, Transcript
from qualflow.store import Store

ORIGIN_HUMAN = "human"
ORIGIN_CONSTRUCTED = "constructed"
ORIGINS = {ORIGIN_HUMAN, ORIGIN_CONSTRUCTED}
"""A record's optional ``origin``: ``constructed`` marks example data written to
exercise the tools; such a coder never stands as a human coder in a report."""


class GoldError(ValueError):
    """A gold file that cannot be imported at all (missing, unreadable, nothing valid)."""


@dataclass
class GoldImport:
    """What an import stored and everything it could not."""

    path: str
    gold_set: str
    lines: int = 0
    records: int = 0
    coders: dict[str, int] = field(default_factory=dict)  # coder -> spans stored
    sentences: dict[str, int] = field(default_factory=dict)  # coder -> sentences coded
    problems: list[str] = field(default_factory=list)
    unknown_codes: Counter[str] = field(default_factory=Counter)
    constructed: set[str] = field(default_factory=set)  # coders declared constructed

    def summary(self) -> str:
        coders = ", ".join(f"{c}: {n}" for c, n in sorted(self.coders.items())) or "none"
        sentences = ", ".join(f"{c}: {n}" for c, n in sorted(self.sentences.items()))
        coded = f"; sentences carrying a code: {sentences}" if sentences else ""
        unknown = (
            f"; unknown codes left out: {dict(self.unknown_codes)}" if self.unknown_codes else ""
        )
        constructed = (
            f"; constructed example data (not human): {', '.join(sorted(self.constructed))}"
            if self.constructed
            else ""
        )
        return (
            f"{self.records}/{self.lines} records imported into gold set '{self.gold_set}' "
            f"(spans per coder: {coders}{coded}); {len(self.problems)} problems{unknown}"
            f"{constructed}"
        )


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


class TranscriptIndex:
    """Finds stored transcripts by name (current version) or id (any version), and,
    for records given by text, passages of one segmentation (read on first use)."""

    def __init__(self, store: Store, segmentation: str | None = None):
        self.store = store
        self.segmentation = segmentation
        self.transcripts: list[Transcript] = store.transcripts()
        self.by_name = {t.name: t for t in self.transcripts}
        self.by_id = {t.id: t for t in store.transcripts(current_only=False)}
        self._passages: dict[str, list[Passage]] | None = None
        self._by_text: dict[str, list[Passage]] = {}

    def transcript(self, ref: str) -> Transcript | None:
        return self.by_id.get(ref) or self.by_name.get(ref)

    def passages(self) -> dict[str, list[Passage]]:
        """Passages of the segmentation, by transcript; GoldError when none was named
        and the store holds several."""
        if self._passages is None:
            found: dict[str, list[Passage]] = {}
            for p in self.store.passages(segmentation=self.segmentation):
                found.setdefault(p.transcript_id, []).append(p)
            segs = {p.segmentation for ps in found.values() for p in ps}
            if self.segmentation is None and len(segs) > 1:
                raise GoldError(
                    f"the store holds several segmentations ({', '.join(sorted(segs))}); "
                    "say which one the records given by text name (--segmentation)"
                )
            self._passages = found
            for ps in found.values():
                for p in ps:
                    self._by_text.setdefault(_norm(p.text), []).append(p)
        return self._passages

    def by_passage_text(self, text: str, t: Transcript | None) -> list[Passage]:
        passages = self.passages()
        key = _norm(text)
        exact = [p for p in self._by_text.get(key, []) if t is None or p.transcript_id == t.id]
        if exact:
            return exact
        pool = passages.get(t.id, []) if t else [p for ps in passages.values() for p in ps]
        return [p for p in pool if key and key in _norm(p.text)]


PassageIndex = TranscriptIndex
"""The earlier name (records used to be matched onto passages only)."""


def _record_range(rec: dict[str, Any], index: TranscriptIndex) -> tuple[tuple | None, str | None]:
    """The stretch ``(transcript id, start, end)`` a record codes, or an error reason."""
    t = None
    if "transcript" in rec:
        if not isinstance(rec["transcript"], str):
            return None, "'transcript' must be a string (a transcript name or id)"
        t = index.transcript(rec["transcript"])
        if t is None:
            return None, f"unknown transcript '{rec['transcript']}' (ingest it first)"
    if "start" in rec or "end" in rec:
        return _offsets_range(rec, t)
    if "text" in rec:
        return _text_range(rec, t, index)
    return None, "a record needs 'start' and 'end' (with 'transcript') or 'text'"


def _offsets_range(rec: dict[str, Any], t: Transcript | None) -> tuple[tuple | None, str | None]:
    if t is None:
        return None, "offsets need a 'transcript'"
    start, end = rec.get("start"), rec.get("end")
    if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end:
        return None, f"'start'/'end' must be integers with 0 <= start < end, got {start}, {end}"
    if end > len(t.text):
        return None, f"'end' {end} is past the end of transcript '{t.name}' ({len(t.text)} chars)"
    there = t.text[start:end]
    if not there.strip():
        return None, f"[{start}, {end}) of '{t.name}' holds only blanks"
    given = rec.get("text")
    if given is not None and (not isinstance(given, str) or _norm(given) != _norm(there)):
        return None, (
            f"'text' is not the text at [{start}, {end}) of '{t.name}' "
            f"({there[:40]!r} there; offsets made on another version?)"
        )
    return (t.id, start, end), None


def _text_range(
    rec: dict[str, Any], t: Transcript | None, index: TranscriptIndex
) -> tuple[tuple | None, str | None]:
    if not isinstance(rec["text"], str) or not rec["text"].strip():
        return None, "'text' must be a non-empty string"
    try:
        hits = index.by_passage_text(rec["text"], t)
    except GoldError as exc:
        return None, str(exc)
    if not hits:
        where = f" in '{t.name}'" if t else ""
        return None, f"no passage{where} has or contains this text: {rec['text'][:60]!r}"
    if len(hits) > 1:
        names = sorted({index.by_id[p.transcript_id].name for p in hits})
        return None, (
            f"text matches {len(hits)} passages (in {', '.join(names)}); "
            "add 'transcript' or use offsets"
        )
    (p,) = hits
    return (p.transcript_id, p.char_start, p.char_end), None


def parse_records(
    lines: Iterable[str],
    index: TranscriptIndex,
    *,
    source: str,
    default_coder: str | None = None,
    codebook: Codebook | None = None,
) -> tuple[dict[str, SpanCoding], GoldImport]:
    """Parse JSONL gold lines into one ``SpanCoding`` per coder, with a report."""
    report = GoldImport(path=source, gold_set="")
    known = set(codebook.titles()) if codebook else None
    spans: dict[str, set[Span]] = defaultdict(set)
    scope: dict[str, dict[str, list[Range]]] = defaultdict(lambda: defaultdict(list))
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        report.lines += 1
        where = f"{source}:{n}"
        parsed, reason = _parse_line(line, index, default_coder)
        if reason:
            report.problems.append(f"{where}: {reason}")
            continue
        coder, codes, (tid, start, end), origin = parsed
        if origin == ORIGIN_CONSTRUCTED:
            report.constructed.add(coder)
        unknown = [c for c in codes if known is not None and c not in known]
        if unknown:
            report.unknown_codes.update(unknown)
            report.problems.append(f"{where}: codes not in the codebook, left out: {unknown}")
        scope[coder][tid].append((start, end))
        spans[coder].update(Span(tid, start, end, c.strip()) for c in codes if c not in unknown)
        report.records += 1
    codings = {
        coder: SpanCoding(coder, sorted(spans[coder]), {t: sorted(r) for t, r in ranges.items()})
        for coder, ranges in scope.items()
    }
    return codings, report


def _parse_line(
    line: str, index: TranscriptIndex, default_coder: str | None
) -> tuple[Any, str | None]:
    """(coder, codes, (transcript id, start, end), origin) of one line, or an error reason."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(rec, dict):
        return None, "a record must be a JSON object"
    coder = rec.get("coder", default_coder)
    if not isinstance(coder, str) or not coder.strip():
        return None, "missing 'coder' (and no default coder given)"
    codes = rec.get("codes")
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        return None, "'codes' must be a list of code titles"
    if any(not c.strip() for c in codes):
        return None, "'codes' holds an empty title"
    origin = rec.get("origin", ORIGIN_HUMAN)
    if origin not in ORIGINS:
        return None, f"'origin' must be one of {sorted(ORIGINS)}"
    place, reason = _record_range(rec, index)
    if reason:
        return None, reason
    return (coder, codes, place, origin), None


def import_gold(
    store: Store,
    path: Path | str,
    gold_set: str,
    *,
    coder: str | None = None,
    codebook: Codebook | None = None,
    segmentation: str | None = None,
    min_overlap: float = 0.5,
) -> GoldImport:
    """Import a JSONL gold file into ``gold_set`` as spans (see the module docstring).

    ``coder`` is the default for records without one; ``codebook`` (stored if not
    yet) checks the codes and versions the gold codings; ``segmentation`` names the
    passages records given by text refer to; ``min_overlap`` is the share of a
    sentence a coder's spans must cover for the report to count it as coded (the
    sentence rule of ``docs/spans.md``).
    """
    path = Path(path)
    if not path.is_file():
        raise GoldError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldError(f"{path}: cannot read as UTF-8 text ({exc})") from exc
    index = TranscriptIndex(store, segmentation)
    if not index.by_id:
        raise GoldError(f"{path}: the store holds no transcripts to match gold records to")
    codings, report = parse_records(
        lines, index, source=str(path), default_coder=coder, codebook=codebook
    )
    report.gold_set = gold_set
    if report.lines and not report.records:
        raise GoldError(f"{path}: no valid record; first problems: {report.problems[:3]}")
    version = store.save_codebook(codebook) if codebook else None
    for name, coding in sorted(codings.items()):
        report.coders[name] = save_coder_spans(store, gold_set, coding, version)
        sentences = project_to_sentences(
            coding, scope_sentences(store, coding), threshold=min_overlap
        )
        report.sentences[name] = sum(1 for codes in sentences.values() if codes)
        if name in report.constructed:  # never stands as a human coder in a report
            store.set_gold_origin(gold_set, name, ORIGIN_CONSTRUCTED)
    return report


def save_coder_spans(
    store: Store, gold_set: str, coding: SpanCoding, codebook_version: str | None
) -> int:
    """Store one coder's spans and scope in a gold set, replacing the coder's spans and
    scope that lie inside the new scope (the rest of the set stays); returns the spans
    written."""
    scope = {tid: merge_ranges(ranges) for tid, ranges in coding.scope.items()}
    with store.session() as s:
        for tid, ranges in scope.items():
            for start, end in ranges:
                for table in (GoldSpanRow, GoldScopeRow):
                    s.execute(
                        delete(table).where(
                            table.gold_set == gold_set,
                            table.coder == coding.coder,
                            table.transcript_id == tid,
                            table.char_start >= start,
                            table.char_end <= end,
                        )
                    )
        place = {"gold_set": gold_set, "coder": coding.coder, "codebook_version": codebook_version}
        s.add_all(
            GoldScopeRow(**place, transcript_id=tid, char_start=a, char_end=b)
            for tid, ranges in sorted(scope.items())
            for a, b in ranges
        )
        s.add_all(
            GoldSpanRow(
                **place,
                transcript_id=sp.transcript_id,
                char_start=sp.start,
                char_end=sp.end,
                code=sp.code,
            )
            for sp in sorted(set(coding.spans))
        )
    return len(set(coding.spans))


def export_gold(store: Store, gold_set: str, path: Path | str) -> int:
    """Write a stored gold set as JSONL spans (see the module docstring); returns lines.

    A transcript is named by its name when the span lies on its current version, else
    by its id (so the record cannot land on another version's text).
    """
    transcripts = {t.id: t for t in store.transcripts(current_only=False)}
    current = {t.id for t in store.transcripts()}
    rows = []
    for coder, coding in sorted(store.gold_codings(gold_set).items()):
        origin = store.gold_origin(gold_set, coder)
        for (tid, start, end), codes in sorted(_records(coding).items()):
            t = transcripts.get(tid)
            ref = t.name if t is not None and tid in current else tid
            record = {"transcript": ref, "start": start, "end": end}
            if t is not None:
                record["text"] = t.text[start:end]
            record |= {"codes": sorted(codes), "coder": coder}
            if origin:
                record["origin"] = origin
            rows.append(((ref, start, end, coder), record))
    rows.sort(key=lambda r: r[0])
    Path(path).write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for _, r in rows), encoding="utf-8"
    )
    return len(rows)


def _records(coding: SpanCoding) -> dict[tuple[str, int, int], set[str]]:
    """(transcript id, start, end) -> codes: each span's stretch with its codes, and
    each scope range that the spans do not cover whole, with no code."""
    out: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    covered: dict[str, list[Range]] = defaultdict(list)
    for sp in coding.spans:
        out[(sp.transcript_id, sp.start, sp.end)].add(sp.code)
        covered[sp.transcript_id].append((sp.start, sp.end))
    for tid, ranges in coding.scope.items():
        joined = join_ranges(covered.get(tid, []))
        for start, end in merge_ranges(ranges):
            if not any(a <= start and end <= b for a, b in joined):
                out.setdefault((tid, start, end), set())
    return out
