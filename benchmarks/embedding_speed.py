"""Embedding speed, code-index build time and retrieval speed on this machine.

    .venv/bin/python benchmarks/embedding_speed.py [--passages 2000] [--repeat 3]

Passages are SERDIF transcript sentences when ../shared is present (otherwise
synthetic sentences); the codebook is the 85-code study codebook (or SERDIF's).
Prints the best of ``--repeat`` runs and the load average, since other work on
the machine slows every figure down.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serdif


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def passages(n: int) -> list[str]:
    if serdif.SERDIF.is_dir():
        texts = [u.text for u in serdif.sentence_units()]
    else:
        texts = [f"Participant sentence {i} about how often benchmarks are used." for i in range(n)]
    return (texts * (n // max(1, len(texts)) + 1))[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from qualflow.codebook import load_codebook
    from qualflow.embeddings import MiniLMEmbedding
    from qualflow.index import CodeIndex
    from qualflow.settings import load_settings

    print(f"cpus {os.cpu_count()}, load average at start {os.getloadavg()[0]:.1f}")
    started = time.perf_counter()
    embedder = MiniLMEmbedding()
    embedder.load()
    print(f"model load (sha256 check + ONNX session): {time.perf_counter() - started:.2f}s")

    texts = passages(args.passages)
    mean_chars = sum(map(len, texts)) / len(texts)
    for batch in (8, 32, 128):
        e = MiniLMEmbedding(batch_size=batch)
        seconds = best_of(args.repeat, lambda e=e: e.embed(texts))
        print(
            f"embed {len(texts)} passages (mean {mean_chars:.0f} chars), batch {batch}: "
            f"{seconds:.2f}s = {len(texts) / seconds:.0f} passages/s"
        )

    book_path = serdif.STUDY_CODEBOOK if serdif.STUDY_CODEBOOK.is_file() else serdif.CODEBOOK
    codebook = load_codebook(book_path)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp))
        started = time.perf_counter()
        index = CodeIndex.ensure(codebook, settings)
        build = time.perf_counter() - started
        started = time.perf_counter()
        CodeIndex.ensure(codebook, settings)
        reuse = time.perf_counter() - started
        print(
            f"index {len(codebook.codes)} codes of {book_path.name}: build {build:.2f}s, "
            f"reuse {reuse * 1000:.0f} ms"
        )
        for k in (10, 20, 0):
            seconds = best_of(args.repeat, lambda k=k: index.retrieve_many(texts, k))
            label = "whole codebook" if k == 0 else f"k={k}"
            print(
                f"retrieve_many {len(texts)} passages, {label}: {seconds:.2f}s = "
                f"{len(texts) / seconds:.0f} passages/s"
            )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
