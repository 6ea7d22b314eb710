"""A capable model's span coding of three SERDIF transcripts, scored against the human coder.

Reads ``../shared/corpora/serdif-usability/model-spans/spans.jsonl`` (span codings of
P3, P6 and P10 by a strong language model; see the corpus README) in place, never
copying it:

1. the three ODT transcripts through ``qualflow.readers.read_transcript`` (the model's
   ``turn_index`` is the order of that reader's turns);
2. each model span placed by its quote inside its turn (exact match; a quote not
   found is reported, not guessed);
3. the human highlights of the same documents from the Taguette project database
   (UTF-8 byte offsets into Taguette's text, converted with
   ``qualflow.exchange.taguette.ByteOffsets``), carried over to the ODT text by
   aligning the two texts character by character, blanks left out: the texts differ
   only in blanks, in the ``MODERATOR:`` labels (speaker labels in the ODT reader,
   text in Taguette) and in one hyphen;
4. both codings projected with ``qualflow.spans`` onto the codable sentences
   (``qualflow.segment``, interviewer turns not codable) and codable turns, and
   compared at span, sentence and turn level.

Both coders read every turn (the model "went through each transcript", turns with no
span judged to carry no code; Taguette: unhighlighted text carries no code), so each
coder's scope is the codable text: the codable turns.

    .venv/bin/python benchmarks/model_spans.py [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serdif_support import (
    DOCUMENTS,
    MODEL_SPANS,
    README_FIGURES,
    SERDIF,
    TAGUETTE,
    human_spans,
    model_file_spans,
    model_lines,
)

from qualflow import agreement as ag
from qualflow import spans as sp
from qualflow.models import Range, Span, SpanCoding
from qualflow.readers import read_transcript
from qualflow.segment import is_interviewer, segment


def fmt(e: ag.Estimate) -> str:
    if e.value is None:
        return "undefined"
    if e.low is None:
        return f"{e.value:.3f}"
    return f"{e.value:.3f} [{e.low:.2f}, {e.high:.2f}]"


def grid_line(label: str, pair: ag.PairAgreement) -> str:
    a = sum(c.positives_a for c in pair.codes)
    b = sum(c.positives_b for c in pair.codes)
    both = sum(c.both for c in pair.codes)
    o = pair.overall
    return (
        f"{label:<34} units {pair.n_passages:>4}  human {a:>4}  model {b:>4}  both {both:>4}  "
        f"P {fmt(o['micro_precision'])}  R {fmt(o['micro_recall'])}  F1 {fmt(o['micro_f1'])}  "
        f"kappa {fmt(o['pooled_kappa'])}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-boot", type=int, default=1000, help="resamples of the 3 transcripts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not MODEL_SPANS.is_file() or not TAGUETTE.is_file():
        sys.exit(f"SERDIF corpus with model spans not found under {SERDIF}")
    t0 = time.perf_counter()
    transcripts = {n: read_transcript(SERDIF / "raw" / f"{n}.odt") for n in DOCUMENTS}
    lines = model_lines()
    machine, problems = model_file_spans(transcripts)
    human: list[Span] = []
    with sqlite3.connect(f"file:{TAGUETTE}?mode=ro", uri=True) as db:
        for name, t in transcripts.items():
            found, trouble = human_spans(db, name, t)
            human.extend(found)
            problems.extend(trouble)

    sentences, turns = [], []
    scope: dict[str, list[Range]] = {}
    for t in transcripts.values():
        sentences += [p for p in segment(t, "sentence") if p.codable]
        codable = [x for x in t.turns if not is_interviewer(x.speaker)]
        scope[t.id] = [(x.char_start, x.char_end) for x in codable]
        turns += sp.turn_units(t, indices=[x.index for x in codable])
    human_coding = SpanCoding("human (Taguette)", human, scope)
    model_coding = SpanCoding("model", machine, scope)
    clusters = {t.id: name for name, t in transcripts.items()}
    outside = sum(not sp.overlap_with(scope[s.transcript_id], s.start, s.end) for s in machine)

    print(
        f"transcripts {len(transcripts)}  turns {sum(len(t.turns) for t in transcripts.values())} "
        f"(codable {len(turns)})  codable sentences {len(sentences)}"
    )
    print(
        f"model spans {len(machine)} of {len(lines)} lines placed "
        f"({outside} on interviewer turns, outside the codable text); "
        f"human highlight-tags {len(human)}"
    )
    for p in problems:
        print("  problem:", p)
    codes = sorted({s.code for s in human} | {s.code for s in machine})

    print("\nsentence level (micro over codes; interval: transcripts resampled)")
    for label, inside in (("qualflow rule (half, or inside)", True), ("half coverage only", False)):
        pair = ag.compare(
            sp.to_sentences(human_coding, sentences, inside=inside, orphans=inside),
            sp.to_sentences(model_coding, sentences, inside=inside, orphans=inside),
            codes=codes,
            n_boot=args.n_boot,
            seed=args.seed,
            clusters={p.id: p.transcript_id for p in sentences},
        )
        print(grid_line(label, pair))
    print(
        f"corpus README (half coverage): units {README_FIGURES['sentences']}  "
        f"P {README_FIGURES['precision']}  R {README_FIGURES['recall']}  F1 {README_FIGURES['f1']}"
    )

    levels = sp.agreement_at_levels(
        human_coding,
        model_coding,
        sentences=sentences,
        turns=turns,
        codes=codes,
        n_boot=args.n_boot,
        seed=args.seed,
        clusters=clusters,
    )
    print("\nturn level (a turn carries C when a span of C overlaps it)")
    print(grid_line("codable turns", levels.turn))
    span = levels.span
    o = span.overall
    chars = {k: sum(getattr(c, k) for c in span.codes) for k in sp.SPAN_COUNTS}
    print(f"\nspan level over {span.scope_chars} codable characters (min share {span.min_share})")
    print(
        f"characters  human {chars['chars_reference']}  model {chars['chars_other']}  "
        f"both {chars['chars_both']}  P {fmt(o['micro_char_precision'])}  "
        f"R {fmt(o['micro_char_recall'])}  F1 {fmt(o['micro_char_f1'])}"
    )
    print(
        f"highlights  human {chars['spans_reference']} (found {chars['spans_found']})  "
        f"model {chars['spans_other']} (matched {chars['spans_matched']})  "
        f"P {fmt(o['micro_highlight_precision'])}  R {fmt(o['micro_highlight_recall'])}  "
        f"F1 {fmt(o['micro_highlight_f1'])}"
    )
    print(
        f"macro over {len(span.codes)} codes: char F1 {fmt(o['macro_char_f1'])}  "
        f"highlight F1 {fmt(o['macro_highlight_f1'])}"
    )
    merged = Counter(s.code for s in sp.normalize(human_coding).spans)
    print(
        f"(human highlight-tags {len(human)} -> {sum(merged.values())} after merging "
        "overlapping or touching highlights of one code)"
    )
    print(f"\n{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
