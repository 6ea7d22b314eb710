"""Read and segment the SERDIF ODT corpus (or any folder) and print counts and timings.

Usage:
    .venv/bin/python benchmarks/ingest_speed.py [FOLDER] [--repeat N]

FOLDER defaults to ../shared/corpora/serdif-usability/raw. Timings are the best of
N repeats (default 5) of the whole folder, wall clock, one process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

MODES = ["sentence", "turn", "window:2", "window:3"]


def main(argv: list[str] | None = None) -> int:
    from qualflow.readers import SUPPORTED_SUFFIXES, read_transcript
    from qualflow.resources import shared_dir
    from qualflow.segment import segment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    folder = args.folder
    if folder is None:
        shared = shared_dir()
        if shared is None:
            print("no folder given and ../shared is absent", file=sys.stderr)
            return 2
        folder = shared / "corpora" / "serdif-usability" / "raw"
    files = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in SUPPORTED_SUFFIXES and not p.stem.lower().startswith("readme")
    )

    read_best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        transcripts = [read_transcript(p) for p in files]
        read_best = min(read_best, time.perf_counter() - t0)

    turns = sum(len(t.turns) for t in transcripts)
    chars = sum(len(t.text) for t in transcripts)
    words = sum(len(t.text.split()) for t in transcripts)
    print(f"folder: {folder}")
    print(f"files: {len(files)}  turns: {turns}  words: {words}  characters: {chars}")
    print(f"read (best of {args.repeat}): {read_best * 1000:.0f} ms total")
    print(f"{'mode':<10} {'passages':>9} {'codable':>8} {'mean chars':>11} {'segment ms':>11}")
    for mode in MODES:
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            passages = [p for t in transcripts for p in segment(t, mode)]
            best = min(best, time.perf_counter() - t0)
        for t in transcripts:  # the invariant the whole pipeline relies on
            for p in segment(t, mode):
                assert t.text[p.char_start : p.char_end] == p.text, (t.name, p.index)
        codable = sum(p.codable for p in passages)
        mean = sum(len(p.text) for p in passages) / max(1, len(passages))
        print(f"{mode:<10} {len(passages):>9} {codable:>8} {mean:>11.1f} {best * 1000:>11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
