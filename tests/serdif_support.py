"""The SERDIF development corpus for the span benchmarks and tests, read in place.

``../shared/corpora/serdif-usability`` (GPL-3.0 data, never copied into the repository)
holds the ODT transcripts, the Taguette project with the human highlights, and span
codings of P3, P6 and P10 by a strong language model (``model-spans/spans.jsonl``, whose
``turn_index`` is the order of qualflow's ODT reader's turns). The human highlights are
byte offsets into Taguette's own text of each document; ``human_spans`` carries them
onto the ODT reading by aligning the two texts word by word (they differ only in blanks,
the ``MODERATOR:`` labels and one hyphen), so both coders are spans of the same text.
"""

from __future__ import annotations

import difflib
import json
import re
import sqlite3
from pathlib import Path

from qualflow.models import Range, Span, SpanCoding, Transcript

REPO = Path(__file__).resolve().parents[1]
SERDIF = REPO.parent / "shared" / "corpora" / "serdif-usability"
MODEL_SPANS = SERDIF / "model-spans" / "spans.jsonl"
TAGUETTE = SERDIF / "taguette-project.sqlite3"
CODEBOOK = SERDIF / "codebooks" / "codebook_20220303_8.csv"
DOCUMENTS = ("P3_GMT20211125", "P6_GMT20211126", "P10_GMT20211130")
README_FIGURES = {"sentences": 922, "precision": 0.67, "recall": 0.55, "f1": 0.61}
"""The corpus README's figures for the model, scored straight from the file against the
human coder on the codable sentences, a sentence taking a code when spans of that code
cover at least half of it."""


def available() -> bool:
    return MODEL_SPANS.is_file() and TAGUETTE.is_file()


def odt(name: str) -> Path:
    return SERDIF / "raw" / f"{name}.odt"


def nonblank_alignment(source: str, target: str) -> dict[int, int]:
    """Offset in ``source`` -> offset in ``target`` for every character of the words
    the two texts share, in order (``difflib`` on their words: blanks do not count)."""
    words = [list(re.finditer(r"\S+", text)) for text in (source, target)]
    matcher = difflib.SequenceMatcher(
        None, [m.group() for m in words[0]], [m.group() for m in words[1]], autojunk=False
    )
    out: dict[int, int] = {}
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            src, dst = words[0][a + k].start(), words[1][b + k].start()
            out.update((src + i, dst + i) for i in range(len(words[0][a + k].group())))
    return out


def human_spans(
    db: sqlite3.Connection, name: str, transcript: Transcript
) -> tuple[list[Span], list[str]]:
    """The Taguette highlights of document ``name`` as spans of ``transcript`` (the ODT
    reading of the same document), one per highlight and tag; problems listed."""
    from qualflow.exchange.taguette import ByteOffsets, document_transcript, strip_tags

    did, contents = db.execute(
        "SELECT id, contents FROM documents WHERE name = ?", (f"{name}.odt",)
    ).fetchone()
    taguette = document_transcript(name=name, contents=contents, source_path=str(TAGUETTE))
    to_target = nonblank_alignment(taguette.text, transcript.text)
    offsets = ByteOffsets(taguette.text)
    spans: list[Span] = []
    problems: list[str] = []
    rows = db.execute(
        "SELECT h.id, h.start_offset, h.end_offset, h.snippet, t.path FROM highlights h "
        "JOIN highlight_tags ht ON ht.highlight_id = h.id JOIN tags t ON t.id = ht.tag_id "
        "WHERE h.document_id = ? ORDER BY h.start_offset, h.id, t.path",
        (did,),
    )
    for hid, start, end, snippet, code in rows:
        cs, ce = offsets.to_char(start), offsets.to_char(end)
        if cs is None or ce is None or taguette.text[cs:ce] != strip_tags(snippet):
            problems.append(f"{name}: highlight {hid}: offsets do not match its snippet")
            continue
        mapped = [to_target[i] for i in range(cs, ce) if i in to_target]
        if not mapped:
            problems.append(f"{name}: highlight {hid}: no character of it is in the ODT text")
            continue
        spans.append(Span(transcript.id, mapped[0], mapped[-1] + 1, code))
    return spans, problems


def human_coding(transcripts: dict[str, Transcript], scope: dict[str, list[Range]]) -> SpanCoding:
    """The study's coder on the given ODT transcripts (name -> transcript), as spans."""
    spans: list[Span] = []
    with sqlite3.connect(f"file:{TAGUETTE}?mode=ro", uri=True) as db:
        for name, t in transcripts.items():
            found, _ = human_spans(db, name, t)
            spans += found
    return SpanCoding("human (Taguette)", spans, scope)


def model_lines() -> list[dict]:
    return [json.loads(x) for x in MODEL_SPANS.read_text(encoding="utf-8").splitlines() if x]


def model_file_spans(transcripts: dict[str, Transcript]) -> tuple[list[Span], list[str]]:
    """Each model span placed by its verbatim quote inside its turn (straight from the
    file: no chunks, no prompt, no validation)."""
    spans: list[Span] = []
    problems: list[str] = []
    for n, row in enumerate(model_lines(), 1):
        t = transcripts[row["transcript"]]
        turn = t.turns[row["turn_index"]]
        at = turn.text.find(row["quote"])
        if at < 0:
            problems.append(f"line {n}: quote not found in turn {row['turn_index']}")
            continue
        if turn.text.find(row["quote"], at + 1) >= 0:
            problems.append(f"line {n}: quote occurs twice in turn {row['turn_index']}")
        start = turn.char_start + at
        spans.append(Span(t.id, start, start + len(row["quote"]), row["code"]))
    return spans, problems
