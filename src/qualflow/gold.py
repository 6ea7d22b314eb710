"""Gold sets: human codings of passages, imported from JSONL and read back as coders.

A gold JSONL file has one record per line, one of two shapes::

    {"transcript": "I-3_interview", "start": 120, "end": 188, "codes": [...], "coder": "ann"}
    {"transcript": "I-3_interview", "text": "passage text", "codes": [...], "coder": "ann"}

``transcript`` is a transcript name (its current version) or id. With offsets
(code points into the transcript's normalized text), the record codes every passage
of that transcript whose characters it covers by at least ``min_overlap`` (a record
may span several passages, as a highlight does). With ``text``, it codes the one
passage whose text equals it (whitespace-normalized), or else the one passage that
contains it; ``transcript`` is then optional but disambiguates. ``codes: []`` means
the coder decided no code applies. Records for the same passage and coder are merged.
``"origin": "constructed"`` declares the record constructed example data (not human
coding); its coder is then never used as a human in a human baseline.

Every problem names the file, the line and the reason; bad lines are skipped and the
rest are imported. Codes not in the codebook are reported and left out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qualflow.models import Codebook, Coding, Passage, Transcript
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
    coders: dict[str, int] = field(default_factory=dict)  # coder -> passages stored
    problems: list[str] = field(default_factory=list)
    unknown_codes: Counter[str] = field(default_factory=Counter)
    constructed: set[str] = field(default_factory=set)  # coders declared constructed

    def summary(self) -> str:
        coders = ", ".join(f"{c}: {n}" for c, n in sorted(self.coders.items())) or "none"
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
            f"(passages per coder: {coders}); {len(self.problems)} problems{unknown}{constructed}"
        )


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


class PassageIndex:
    """Finds stored passages (one segmentation) by transcript + offsets or by text."""

    def __init__(self, store: Store, segmentation: str | None = None):
        self.transcripts: list[Transcript] = store.transcripts()
        self.by_name = {t.name: t for t in self.transcripts}
        self.by_id = {t.id: t for t in self.transcripts}
        self.passages: dict[str, list[Passage]] = {}
        for p in store.passages(segmentation=segmentation):
            self.passages.setdefault(p.transcript_id, []).append(p)
        segs = {p.segmentation for ps in self.passages.values() for p in ps}
        if segmentation is None and len(segs) > 1:
            raise GoldError(
                f"the store holds several segmentations ({', '.join(sorted(segs))}); "
                "say which one the gold set codes"
            )
        self.by_text: dict[str, list[Passage]] = {}
        for ps in self.passages.values():
            for p in ps:
                self.by_text.setdefault(_norm(p.text), []).append(p)

    def transcript(self, ref: str) -> Transcript | None:
        return self.by_id.get(ref) or self.by_name.get(ref)

    def by_offsets(self, t: Transcript, start: int, end: int, min_overlap: float) -> list[Passage]:
        hits = []
        for p in self.passages.get(t.id, []):
            overlap = min(end, p.char_end) - max(start, p.char_start)
            length = p.char_end - p.char_start
            if overlap > 0 and length > 0 and overlap >= min_overlap * length:
                hits.append(p)
        return hits

    def by_passage_text(self, text: str, t: Transcript | None) -> list[Passage]:
        key = _norm(text)
        exact = [p for p in self.by_text.get(key, []) if t is None or p.transcript_id == t.id]
        if exact:
            return exact
        pool = (
            self.passages.get(t.id, []) if t else [p for ps in self.passages.values() for p in ps]
        )
        return [p for p in pool if key and key in _norm(p.text)]


def _record_passages(
    rec: dict[str, Any], index: PassageIndex, min_overlap: float
) -> tuple[list[Passage], str | None]:
    """The passages a record codes, or an error reason."""
    t = None
    if "transcript" in rec:
        if not isinstance(rec["transcript"], str):
            return [], "'transcript' must be a string (a transcript name or id)"
        t = index.transcript(rec["transcript"])
        if t is None:
            return [], f"unknown transcript '{rec['transcript']}' (ingest it first)"
    if "start" in rec or "end" in rec:
        if t is None:
            return [], "offsets need a 'transcript'"
        start, end = rec.get("start"), rec.get("end")
        if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end:
            return [], f"'start'/'end' must be integers with 0 <= start < end, got {start}, {end}"
        if end > len(t.text):
            return [], f"'end' {end} is past the end of transcript '{t.name}' ({len(t.text)} chars)"
        hits = index.by_offsets(t, start, end, min_overlap)
        if not hits:
            return [], f"no passage of '{t.name}' is covered by [{start}, {end}) >= {min_overlap}"
        return hits, None
    if "text" in rec:
        if not isinstance(rec["text"], str) or not rec["text"].strip():
            return [], "'text' must be a non-empty string"
        hits = index.by_passage_text(rec["text"], t)
        if not hits:
            where = f" in '{t.name}'" if t else ""
            return [], f"no passage{where} has or contains this text: {rec['text'][:60]!r}"
        if len(hits) > 1:
            names = sorted({index.by_id[p.transcript_id].name for p in hits})
            return [], (
                f"text matches {len(hits)} passages (in {', '.join(names)}); "
                "add 'transcript' or use offsets"
            )
        return hits, None
    return [], "a record needs 'start' and 'end' (with 'transcript') or 'text'"


def parse_records(
    lines: Iterable[str],
    index: PassageIndex,
    *,
    source: str,
    default_coder: str | None = None,
    codebook: Codebook | None = None,
    min_overlap: float = 0.5,
) -> tuple[dict[str, dict[str, set[str]]], GoldImport]:
    """Parse JSONL gold lines into coder -> passage id -> codes, with a report."""
    report = GoldImport(path=source, gold_set="")
    known = set(codebook.titles()) if codebook else None
    out: dict[str, dict[str, set[str]]] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        report.lines += 1
        where = f"{source}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            report.problems.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(rec, dict):
            report.problems.append(f"{where}: a record must be a JSON object")
            continue
        coder = rec.get("coder", default_coder)
        if not isinstance(coder, str) or not coder.strip():
            report.problems.append(f"{where}: missing 'coder' (and no default coder given)")
            continue
        codes = rec.get("codes")
        if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
            report.problems.append(f"{where}: 'codes' must be a list of code titles")
            continue
        if rec.get("origin", ORIGIN_HUMAN) not in ORIGINS:
            report.problems.append(f"{where}: 'origin' must be one of {sorted(ORIGINS)}")
            continue
        passages, reason = _record_passages(rec, index, min_overlap)
        if reason:
            report.problems.append(f"{where}: {reason}")
            continue
        unknown = [c for c in codes if known is not None and c not in known]
        if unknown:
            report.unknown_codes.update(unknown)
            report.problems.append(f"{where}: codes not in the codebook, left out: {unknown}")
        kept = {c.strip() for c in codes if c not in unknown}
        for p in passages:
            out.setdefault(coder, {}).setdefault(p.id, set()).update(kept)
        if rec.get("origin") == ORIGIN_CONSTRUCTED:
            report.constructed.add(coder)
        report.records += 1
    return out, report


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
    """Import a JSONL gold file into ``gold_set`` (per coder, replacing same passages).

    ``coder`` is the default for records without one; ``codebook`` (stored if not
    yet) checks the codes and versions the gold codings.
    """
    path = Path(path)
    if not path.is_file():
        raise GoldError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldError(f"{path}: cannot read as UTF-8 text ({exc})") from exc
    index = PassageIndex(store, segmentation)
    if not index.transcripts:
        raise GoldError(f"{path}: the store holds no transcripts to match gold records to")
    codings, report = parse_records(
        lines,
        index,
        source=str(path),
        default_coder=coder,
        codebook=codebook,
        min_overlap=min_overlap,
    )
    report.gold_set = gold_set
    version = store.save_codebook(codebook) if codebook else None
    for name, coding in codings.items():
        frozen: Coding = {pid: frozenset(cs) for pid, cs in coding.items()}
        report.coders[name] = store.save_gold(gold_set, name, frozen, version)
        if name in report.constructed:  # never stands as a human coder in a report
            store.set_gold_origin(gold_set, name, ORIGIN_CONSTRUCTED)
    if report.lines and not report.records:
        raise GoldError(f"{path}: no valid record; first problems: {report.problems[:3]}")
    return report


def export_gold(store: Store, gold_set: str, path: Path | str) -> int:
    """Write a stored gold set as JSONL (transcript name + offsets + text); returns lines."""
    passages = {}
    names = {t.id: t.name for t in store.transcripts(current_only=False)}
    rows = []
    codings = store.gold(gold_set)
    origins = {coder: store.gold_origin(gold_set, coder) for coder in codings}
    for coder, coding in sorted(codings.items()):
        missing = [pid for pid in coding if pid not in passages]
        for p in store.passages(ids=missing):
            passages[p.id] = p
        for pid, codes in coding.items():
            p = passages[pid]
            rows.append(
                (
                    names.get(p.transcript_id, p.transcript_id),
                    p.char_start,
                    coder,
                    {
                        "transcript": names.get(p.transcript_id, p.transcript_id),
                        "start": p.char_start,
                        "end": p.char_end,
                        "text": p.text,
                        "codes": sorted(codes),
                        "coder": coder,
                        **({"origin": origin} if (origin := origins[coder]) else {}),
                    },
                )
            )
    rows.sort(key=lambda r: r[:3])
    Path(path).write_text(
        "".join(json.dumps(r[3], ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return len(rows)
