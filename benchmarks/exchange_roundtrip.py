"""Import the SERDIF Taguette project, export it as .qdpx, re-import it; print figures.

Usage:
    .venv/bin/python benchmarks/exchange_roundtrip.py [TAGUETTE_SQLITE]

Defaults to ../shared/corpora/serdif-usability/taguette-project.sqlite3. Prints the
counts (transcripts, codes, highlights, passages coded), the share of highlights whose
code lands on a passage they overlap, whether the .qdpx validates and re-imports onto
identical codings and the same highlights (codes, exact offsets), and wall-clock
timings of each step (one process, fresh SQLite stores in a temporary folder).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from qualflow.exchange.refiqda import export_qdpx, find_schema_dir, import_qdpx
    from qualflow.exchange.taguette import import_taguette
    from qualflow.highlights import load_highlights
    from qualflow.resources import shared_dir
    from qualflow.store import Store

    args = sys.argv[1:] if argv is None else argv
    if args:
        path = Path(args[0])
    else:
        shared = shared_dir()
        if shared is None:
            print("no file given and ../shared is absent", file=sys.stderr)
            return 2
        path = shared / "corpora" / "serdif-usability" / "taguette-project.sqlite3"
    schema_dir = find_schema_dir()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{tmp}/a.sqlite3")
        t0 = time.perf_counter()
        result = import_taguette(store, path)
        t_import = time.perf_counter() - t0
        gold = store.gold(result.gold_set)
        coder = next(iter(gold))
        passages = store.passages()
        by_transcript: dict[str, list] = {}
        for p in passages:
            by_transcript.setdefault(p.transcript_id, []).append(p)
        highlights = [h for h in load_highlights(store) if h.code]
        landed = sum(
            any(
                h.code in gold[coder][p.id]
                and p.char_start < h.char_end
                and h.char_start < p.char_end
                for p in by_transcript[h.transcript_id]
            )
            for h in highlights
        )
        t0 = time.perf_counter()
        report = export_qdpx(store, Path(tmp) / "out.qdpx", schema_dir=schema_dir)
        t_export = time.perf_counter() - t0
        fresh = Store.open(f"sqlite:///{tmp}/b.sqlite3")
        t0 = time.perf_counter()
        back = import_qdpx(fresh, Path(tmp) / "out.qdpx", schema_dir=schema_dir, gold_set="g")
        t_reimport = time.perf_counter() - t0

        def by_span(s: Store, coding: dict) -> dict:
            ps = {p.id: p for p in s.passages()}
            names = {t.id: t.name for t in s.transcripts()}
            return {
                (names[ps[k].transcript_id], ps[k].char_start, ps[k].char_end): v
                for k, v in coding.items()
            }

        def spans(s: Store, source: str) -> Counter:
            names = {t.id: t.name for t in s.transcripts()}
            groups: dict[tuple, set] = {}
            for h in load_highlights(s, source=source):
                key = (names[h.transcript_id], h.external_id, h.char_start, h.char_end)
                groups.setdefault(key, set()).update([h.code] if h.code else [])
            return Counter((k[0], k[2], k[3], frozenset(v)) for k, v in groups.items())

        (back_coder,) = fresh.gold("g")
        same = by_span(store, gold[coder]) == by_span(fresh, fresh.gold("g")[back_coder])
        original_spans = spans(store, result.gold_set)
        same_spans = original_spans == spans(fresh, "g")
        size = (Path(tmp) / "out.qdpx").stat().st_size
        store.close()
        fresh.close()
    coded = sum(1 for codes in gold[coder].values() if codes)
    print(f"taguette import: {result.summary()}")
    print(f"  highlight-tag links landing on an overlapping passage: {landed}/{len(highlights)}")
    print(f"  passages coded: {coded}/{len(passages)} ({coded / len(passages):.1%})")
    print(f"  wall time: {t_import:.2f} s")
    validated = "validated" if schema_dir else "NOT validated (no schema)"
    print(f"qdpx export: {report.summary()}; {size / 1024:.0f} KiB; {validated}")
    print(f"  wall time: {t_export:.2f} s")
    print(f"qdpx re-import into a fresh store: {back.summary()}")
    print(f"  wall time: {t_reimport:.2f} s")
    print(f"round trip identical passage codings: {same}")
    n = sum(original_spans.values())
    print(f"round trip identical highlights (codes and exact offsets): {same_spans} ({n})")
    return 0 if same and same_spans else 1


if __name__ == "__main__":
    raise SystemExit(main())
