"""How qualflow's parts grow with the study: a replicated SERDIF corpus at several sizes.

The 11 SERDIF development transcripts (``../shared/corpora/serdif-usability/raw``,
read in place) are written out as plain-text transcripts until a size (a number of
transcripts) is reached: the first 11 as they are, every further copy with one word
changed in every sentence (so every passage is new to the store, the response cache
and the coders; sentence boundaries are checked to be unchanged). 11 transcripts
hold 3,065 codable passages, 40 about 11,000. The human coder's Taguette highlights
give every replicated sentence its gold codes (the half-coverage rule of
``qualflow.spans``).

At each size, in a fresh temporary workspace, the parts that exist today run the way a
user runs them, and print their figures:

- ``ingest``: ``qualflow ingest``;
- ``code similarity`` / ``rerun similarity``: ``qualflow code --coder similarity``,
  then again unchanged (0 rows expected);
- ``code llm`` / ``rerun llm``: ``qualflow code --coder llm`` against the fake
  OpenAI-compatible server (``tests/fake_openai.py``, zero latency, "no code applies"
  answers), then again (0 requests expected);
- ``run llm``: ``qualflow run --coder llm`` (the Prefect flow, its temporary API in
  the process) over the same units under another model name (so every unit is new
  to it), zero latency: compare its wall time with ``code llm``;
- ``dispatch C=4`` / ``C=8`` / ``C=16``: ``qualflow code --coder llm`` with
  ``llm_concurrency`` C while the fake server waits ``--latency`` seconds (default
  0.3) before every answer, each under its own model name. ``ratio`` is the request
  rate the endpoint saw (from the first to the last request's arrival) over the ideal
  C / latency; ``wall ratio`` the same over the command's whole wall time (start-up,
  ingest check and planning included);
- ``agreement``: ``agreement.compare(gold, similarity coding)`` with 1000 resamples, in
  a child process for its time and peak memory.

Every coding part also prints ``first/last tenth``: units per second over the first
and the last tenth of the units it stored (by the time each answer was made), which
shows whether a run slows down as it goes.

A part is a function ``(Size) -> dict`` registered in ``PARTS``; add review pages the
same way.

    .venv/bin/python benchmarks/scale.py                        # 11 and 40 transcripts
    .venv/bin/python benchmarks/scale.py --transcripts 11 100 --parts ingest "code llm"
    .venv/bin/python benchmarks/scale.py --transcripts 40 --parts ingest "code llm" "run llm"
    .venv/bin/python benchmarks/scale.py --transcripts 40 --latency 0.3 \
        --parts ingest "dispatch C=4" "dispatch C=8" "dispatch C=16"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

SERDIF = REPO.parent / "shared" / "corpora" / "serdif-usability"
CODEBOOK = SERDIF / "codebooks" / "codebook_20220303_8.csv"
QUALFLOW = [sys.executable, "-m", "qualflow"]
_WORD = re.compile(r"[^\W\d_]{4,}|[^\W\d_]+")  # a word of 4+ letters, else any word


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """Replicated transcripts on disk and the gold codes of their sentences."""

    folder: Path
    transcripts: int
    codable: int
    gold: dict[tuple[str, int], frozenset[str]]  # (file stem, passage index) -> codes


def changed_text(text: str, copy: int) -> str:
    """``text`` with one word of every sentence changed (copy 0: unchanged)."""
    from qualflow.segment import sentence_spans

    if copy == 0:
        return text
    out, last = [], 0
    for start, end in sentence_spans(text):
        m = _WORD.search(text, start, end)
        if m is None:
            continue
        out.append(text[last : m.end()] + f"x{copy}")
        last = m.end()
    out.append(text[last:])
    return "".join(out)


def _as_text(transcript: Any, copy: int) -> str:
    """A transcript as 'Name: text' paragraphs (what the text reader reads back)."""
    parts = []
    for turn in transcript.turns:
        body = changed_text(turn.text, copy)
        parts.append(f"{turn.speaker}: {body}" if turn.speaker else body)
    return "\n\n".join(parts) + "\n"


def _gold_by_sentence(originals: dict[str, Any]) -> dict[tuple[str, int], frozenset[str]]:
    """(transcript name, passage index) -> the human's codes for each original sentence."""
    from model_spans import human_spans
    from qualflow import spans as sp
    from qualflow.models import SpanCoding
    from qualflow.segment import segment

    gold: dict[tuple[str, int], frozenset[str]] = {}
    with sqlite3.connect(f"file:{SERDIF / 'taguette-project.sqlite3'}?mode=ro", uri=True) as db:
        for name, t in originals.items():
            found, _ = human_spans(db, name, t)
            passages = segment(t, "sentence")
            coding = SpanCoding("human", found, {t.id: [(0, len(t.text))]})
            codes = sp.to_sentences(coding, passages, inside=False)
            gold.update({(name, p.index): codes[p.id] for p in passages})
    return gold


@dataclass
class Source:
    """The original transcripts and their sentences' gold codes, read once."""

    originals: dict[str, Any]
    gold: dict[tuple[str, int], frozenset[str]]

    @classmethod
    def read(cls) -> Source:
        from qualflow.readers import read_transcript

        originals = {p.stem: read_transcript(p) for p in sorted((SERDIF / "raw").glob("*.odt"))}
        return cls(originals, _gold_by_sentence(originals))


def build_corpus(folder: Path, transcripts: int, source: Source) -> Corpus:
    """Write ``transcripts`` transcripts (cycling through the originals, copy k of each
    with changed words); checks that the sentence boundaries did not move."""
    from qualflow.readers import read_transcript
    from qualflow.segment import segment

    folder.mkdir(parents=True, exist_ok=True)
    names = list(source.originals)
    gold: dict[tuple[str, int], frozenset[str]] = {}
    codable = 0
    for i in range(transcripts):
        name, copy = names[i % len(names)], i // len(names)
        original = source.originals[name]
        stem = f"{name}-c{copy}"
        path = folder / f"{stem}.txt"
        path.write_text(_as_text(original, copy), encoding="utf-8")
        cut = segment(read_transcript(path), "sentence")
        if [p.codable for p in cut] != [p.codable for p in segment(original, "sentence")]:
            raise SystemExit(f"{path}: sentence boundaries changed with the changed words")
        codable += sum(p.codable for p in cut)
        gold.update({(stem, p.index): source.gold[(name, p.index)] for p in cut})
    return Corpus(folder, transcripts, codable, gold)


# --------------------------------------------------------------------------- one size


@dataclass
class Size:
    """One size of the corpus and its workspace; parts record what they need here."""

    transcripts: int
    corpus: Corpus
    workspace: Path
    env: dict[str, str]
    fake: Any
    latency: float = 0.3
    notes: dict[str, Any] = field(default_factory=dict)

    def qualflow(self, *args: str, env: dict[str, str] | None = None) -> float:
        """Run a qualflow command in the workspace; its wall time in seconds."""
        started = time.perf_counter()
        done = subprocess.run(
            [*QUALFLOW, *args, "--workspace", str(self.workspace)],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"qualflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return time.perf_counter() - started

    def count(self, sql: str) -> int:
        with sqlite3.connect(self.workspace / "data" / "qualflow.sqlite3") as db:
            return int(db.execute(sql).fetchone()[0])

    def proposal_sets(self) -> int:
        return self.count("SELECT count(*) FROM proposal_sets")

    def answer_times(self, model: str) -> list[float]:
        """When each stored answer of ``model`` was made (seconds, sorted)."""
        from datetime import datetime

        with sqlite3.connect(self.workspace / "data" / "qualflow.sqlite3") as db:
            rows = db.execute(
                "SELECT created_at FROM proposal_sets WHERE model = ?", (model,)
            ).fetchall()
        return sorted(datetime.fromisoformat(r[0]).timestamp() for r in rows)


def ingest(size: Size) -> dict[str, Any]:
    seconds = size.qualflow("ingest", str(size.corpus.folder))
    codable = size.count("SELECT count(*) FROM passages WHERE codable")
    return {"s": seconds, "codable passages": codable, "passages/s": codable / seconds}


def _code(size: Size, coder: str) -> dict[str, Any]:
    rows, requests = size.proposal_sets(), size.fake.chat_count
    seconds = size.qualflow("code", "--coder", coder)
    added = size.proposal_sets() - rows
    out = {"s": seconds, "rows": added, "passages/s": added / seconds if added else 0.0}
    if coder == "llm":
        out["requests"] = size.fake.chat_count - requests
    return out


def code_similarity(size: Size) -> dict[str, Any]:
    return _code(size, "similarity")


def code_llm(size: Size) -> dict[str, Any]:
    out = _code(size, "llm")
    if out["rows"]:
        out.update(tenths(size.answer_times("gpt-4o-mini")))
    return out


def tenths(times: list[float]) -> dict[str, Any]:
    """Units per second over the first and the last tenth of the answers."""
    k = len(times) // 10
    if k < 2:
        return {}
    first = k / max(times[k] - times[0], 1e-9)
    last = k / max(times[-1] - times[-1 - k], 1e-9)
    return {"first/last tenth units/s": f"{first:.1f}/{last:.1f}"}


def _llm_command(
    size: Size, command: str, model: str, *, concurrency: int = 4, latency: float = 0.0
) -> dict[str, Any]:
    """``qualflow <command> --coder llm`` under its own model name (every unit new)."""
    rows, seen = size.proposal_sets(), len(size.fake.requests)
    size.fake.latency = latency
    try:
        seconds = size.qualflow(
            command,
            "--coder",
            "llm",
            env={"QUALFLOW_LLM_MODEL": model, "QUALFLOW_LLM_CONCURRENCY": str(concurrency)},
        )
    finally:
        size.fake.latency = 0.0
    added = size.proposal_sets() - rows
    arrivals = [
        r["time"] for r in size.fake.requests[seen:] if r["path"].endswith("/chat/completions")
    ]
    out: dict[str, Any] = {
        "s": seconds,
        "units": added,
        "units/s": added / seconds if added else 0.0,
        "requests": len(arrivals),
    }
    if latency and len(arrivals) > 1:
        ideal = concurrency / latency
        rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
        out.update(
            {
                "requests/s": rate,
                "ideal": ideal,
                "ratio": rate / ideal,
                "wall ratio": len(arrivals) / seconds / ideal,
            }
        )
    out.update(tenths(size.answer_times(model)))
    return out


def run_llm(size: Size) -> dict[str, Any]:
    return _llm_command(size, "run", "fake-flow")


def _dispatch(concurrency: int) -> Callable[[Size], dict[str, Any]]:
    def part(size: Size) -> dict[str, Any]:
        return _llm_command(
            size, "code", f"fake-c{concurrency}", concurrency=concurrency, latency=size.latency
        )

    return part


def agreement(size: Size) -> dict[str, Any]:
    """compare(gold, similarity coding) in a child process: time and peak memory."""
    from qualflow.evaluate import resolve
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    store = open_store(load_settings(size.workspace))
    try:
        machine = resolve(store, "proposals:similarity").coding
        names = {t.id: t.name for t in store.transcripts()}
        gold = {
            p.id: size.corpus.gold[(names[p.transcript_id], p.index)]
            for p in store.passages(codable_only=True)
            if p.id in machine
        }
    finally:
        store.close()
    path = size.workspace / "codings.json"
    path.write_text(
        json.dumps(
            {
                "a": {k: sorted(v) for k, v in gold.items()},
                "b": {k: sorted(v) for k, v in machine.items()},
            }
        )
    )
    out = subprocess.run(
        [sys.executable, str(BENCH / "agreement_speed.py"), "--codings", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "s": r["seconds"],
        "peak MiB": r["peak_mib"],
        "passages": r["passages"],
        "micro F1": r["micro_f1"][0],
    }


PARTS: list[tuple[str, Callable[[Size], dict[str, Any]]]] = [
    ("ingest", ingest),
    ("code similarity", code_similarity),
    ("rerun similarity", code_similarity),
    ("code llm", code_llm),
    ("rerun llm", code_llm),
    ("run llm", run_llm),
    ("dispatch C=4", _dispatch(4)),
    ("dispatch C=8", _dispatch(8)),
    ("dispatch C=16", _dispatch(16)),
    ("agreement", agreement),
]
"""Parts in the order they run (later parts may rely on earlier ones' results)."""


# --------------------------------------------------------------------------- main


def _env(workspace: Path, base_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "QUALFLOW_CODEBOOK": str(CODEBOOK),
            "QUALFLOW_LLM_BASE_URL": base_url,
            "QUALFLOW_LLM_API_KEY": "fake-key-for-the-fake-server",
            "QUALFLOW_LLM_CONCURRENCY": "4",
            "PREFECT_HOME": str(workspace / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
    )
    return env


def _cell(figures: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if v < 10 else f"{v:.1f}"
        return str(v)

    return ", ".join(f"{k} {fmt(v)}" for k, v in figures.items())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transcripts", type=int, nargs="+", default=[11, 40])
    names = [n for n, _ in PARTS]
    ap.add_argument("--parts", nargs="+", default=names, choices=names)
    ap.add_argument("--keep", type=Path, help="keep the workspaces under this folder")
    ap.add_argument(
        "--latency", type=float, default=0.3, help="seconds per answer in the dispatch parts"
    )
    args = ap.parse_args(argv)
    if not SERDIF.is_dir():
        sys.exit(f"SERDIF corpus not found at {SERDIF}")
    from tests.fake_openai import FakeOpenAI

    root = args.keep or Path(tempfile.mkdtemp(prefix="qualflow-scale-"))
    results: dict[str, dict[int, dict[str, Any]]] = {n: {} for n in args.parts}
    started = time.perf_counter()
    source = Source.read()
    print(
        f"read the 11 transcripts and the human highlights in {time.perf_counter() - started:.1f} s"
    )
    codable: dict[int, int] = {}
    with FakeOpenAI(latency=0.0) as fake:
        for n in args.transcripts:
            corpus = build_corpus(root / f"corpus-{n}", n, source)
            codable[n] = corpus.codable
            workspace = root / f"workspace-{n}"
            subprocess.run([*QUALFLOW, "init", str(workspace)], check=True, capture_output=True)
            size = Size(n, corpus, workspace, _env(workspace, fake.base_url), fake, args.latency)
            print(f"\n== {n} transcripts, {corpus.codable} codable sentences", flush=True)
            for name, part in PARTS:
                if name in args.parts:
                    results[name][n] = part(size)
                    print(f"{name:<18} {_cell(results[name][n])}", flush=True)
    print("\n| part | " + " | ".join(f"{codable[n]:,} passages" for n in args.transcripts) + " |")
    print("| --- |" + " --- |" * len(args.transcripts))
    for name in args.parts:
        cells = [_cell(results[name].get(n, {})) for n in args.transcripts]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
