"""SERDIF usability corpus as evaluation data for the retrieval and baseline benchmarks.

Read straight from ``../shared/corpora/serdif-usability/`` (never copied into the
repository): ``highlights.csv`` gives the gold codes, the Taguette database the
document text and the highlight offsets (UTF-8 byte offsets into the text with
the HTML stripped and entities decoded), from which the sentence before each
passage is taken. Two kinds of unit:

- highlight units: one per distinct highlighted content within a document, gold =
  every tag of the rows with that content (all have at least one code);
- sentence units: every sentence of every transcript, gold = the tags of the
  highlights covering it (about a quarter carry no code), i.e. what coding the
  11 transcripts from scratch means.
"""

from __future__ import annotations

import csv
import html
import re
import sqlite3
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERDIF = REPO.parent / "shared" / "corpora" / "serdif-usability"
CODEBOOK = SERDIF / "codebooks" / "codebook_20220303_8.csv"
STUDY_CODEBOOK = REPO.parent / "shared" / "study" / "codebook.tsv"
TRAIN = {f"P{i}" for i in range(1, 9)}
TEST = {"P9", "P10", "P11"}
_SENTENCE = re.compile(r".+?(?:[.!?]+(?=\s|$)|$)")


@dataclass
class Unit:
    document: str
    participant: str
    start: int
    end: int
    text: str
    previous: str
    gold: frozenset[str]


def require_corpus() -> None:
    if not SERDIF.is_dir():
        sys.exit(f"SERDIF corpus not found at {SERDIF}")


def plain(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def documents() -> dict[str, str]:
    """Document name -> plain text (Taguette's offset space)."""
    with sqlite3.connect(SERDIF / "taguette-project.sqlite3") as db:
        return {
            name: plain(body) for name, body in db.execute("select name, contents from documents")
        }


def participant(document: str) -> str:
    return document.split("_", 1)[0]


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of each line (paragraph) of the text."""
    spans = []
    for line in re.finditer(r"[^\n]+", text):
        for piece in _SENTENCE.finditer(line.group()):
            stripped = piece.group().strip()
            if stripped:
                start = line.start() + piece.start() + piece.group().index(stripped)
                spans.append((start, start + len(stripped)))
    return spans


def previous_sentence(text: str, start: int, spans: list[tuple[int, int]]) -> str:
    before = [s for s in spans if s[1] <= start]
    return text[before[-1][0] : before[-1][1]] if before else ""


def _highlight_spans() -> list[tuple[str, int, int, str]]:
    """(document, char start, char end, content) per highlight, from the Taguette DB."""
    with sqlite3.connect(SERDIF / "taguette-project.sqlite3") as db:
        names = dict(db.execute("select id, name from documents"))
        bodies = {names[i]: plain(b) for i, b in db.execute("select id, contents from documents")}
        rows = db.execute("select document_id, start_offset, end_offset from highlights")
        out = []
        for doc_id, start, end in rows:
            raw = bodies[names[doc_id]].encode("utf-8")
            c_start = len(raw[:start].decode("utf-8"))
            content = raw[start:end].decode("utf-8")
            out.append((names[doc_id], c_start, c_start + len(content), content))
        return out


def gold_by_content() -> dict[tuple[str, str], frozenset[str]]:
    """highlights.csv grouped: (document, whitespace-normalized content) -> tags."""
    groups: dict[tuple[str, str], set[str]] = defaultdict(set)
    with (SERDIF / "highlights.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            groups[(row["document"], " ".join(row["content"].split()))].add(row["tag"])
    return {key: frozenset(tags) for key, tags in groups.items()}


def highlight_units() -> list[Unit]:
    """One unit per distinct highlighted content in a document (all coded)."""
    docs = documents()
    spans = {name: sentences(text) for name, text in docs.items()}
    gold = gold_by_content()
    seen: dict[tuple[str, str], Unit] = {}
    for document, start, end, content in sorted(_highlight_spans()):
        key = (document, " ".join(content.split()))
        if key in seen or key not in gold:
            continue
        seen[key] = Unit(
            document=document,
            participant=participant(document),
            start=start,
            end=end,
            text=" ".join(content.split()),
            previous=previous_sentence(docs[document], start, spans[document]),
            gold=gold[key],
        )
    missing = set(gold) - set(seen)
    if missing:
        print(f"warning: {len(missing)} highlights.csv contents not located in the documents")
    return list(seen.values())


def sentence_units() -> list[Unit]:
    """Every sentence of every transcript; gold = tags of highlights covering it."""
    docs = documents()
    gold = gold_by_content()
    by_doc: dict[str, list[tuple[int, int, frozenset[str]]]] = defaultdict(list)
    for document, start, end, content in _highlight_spans():
        tags = gold.get((document, " ".join(content.split())), frozenset())
        by_doc[document].append((start, end, tags))
    units = []
    for document, text in sorted(docs.items()):
        spans = sentences(text)
        for i, (start, end) in enumerate(spans):
            codes: set[str] = set()
            for h_start, h_end, tags in by_doc[document]:
                overlap = min(end, h_end) - max(start, h_start)
                if overlap > 0 and overlap >= 0.5 * min(end - start, h_end - h_start):
                    codes |= tags
            units.append(
                Unit(
                    document=document,
                    participant=participant(document),
                    start=start,
                    end=end,
                    text=text[start:end],
                    previous=text[spans[i - 1][0] : spans[i - 1][1]] if i else "",
                    gold=frozenset(codes),
                )
            )
    return units


def load_codebook(path: Path):
    """The codebook through qualflow's loader (CSV/TSV with multi-line descriptions)."""
    from qualflow.codebook import load_codebook as load

    return load(path)


def contexts(units: list[Unit]):
    """PassageContext objects for units (previous sentence as the turn before)."""
    from qualflow.models import ContextTurn, Passage, PassageContext

    out = []
    for i, u in enumerate(units):
        passage = Passage(
            id=f"{u.document}:{u.start}-{u.end}",
            transcript_id=u.document,
            index=i,
            turn_index=0,
            char_start=u.start,
            char_end=u.end,
            text=u.text,
        )
        before = [ContextTurn(speaker=None, text=u.previous)] if u.previous else []
        out.append(PassageContext(passage=passage, before=before, participant_id=u.participant))
    return out
