"""Re-run benchmark: code the examples/ transcripts twice and count the second run's calls.

The second run over unchanged input must make 0 coder calls and 0 LLM requests: the
pipeline skips every passage already coded under the same (coder, model, prompt
version, codebook version) key before any request is built.

    .venv/bin/python benchmarks/rerun.py                  # llm (fake server) + similarity
    .venv/bin/python benchmarks/rerun.py --coder similarity

The LLM coder is the real ``LLMCoder`` talking HTTP to the fake OpenAI-compatible
server of the tests (``tests/fake_openai.py``), so no model and no network is needed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class Counting:
    """Wraps a coder and counts ``propose`` calls and passages sent."""

    def __init__(self, coder: Any):
        self.coder = coder
        self.kind, self.model, self.prompt_version = coder.kind, coder.model, coder.prompt_version
        self.calls = 0
        self.passages = 0

    def propose(self, requests, codebook):
        self.calls += 1
        self.passages += len(requests)
        return self.coder.propose(requests, codebook)


def one_run(kind: str, workspace: Path, fake: Any) -> dict[str, Any]:
    from qualflow import pipeline
    from qualflow.coders.factory import needs_index, open_coder
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    settings = load_settings(workspace)
    if fake is not None:
        settings.llm_base_url = fake.base_url
    store = open_store(settings)
    try:
        started = time.perf_counter()
        ids, failures = pipeline.ingest(store, [REPO / "examples"], settings)
        book = pipeline.run_codebook(settings)
        index = pipeline.open_index(book, settings) if needs_index(kind, settings) else None
        requests_before = fake.chat_count if fake is not None else 0
        with open_coder(kind, settings, store, index, codebook=book) as coder:
            counting = Counting(coder)
            summary = pipeline.run_coding(
                store,
                counting,
                book,
                settings,
                index=index,
                transcript_ids=ids,
                ingest_failures=failures,
            )
        return {
            "passages": summary.passages,
            "coded": summary.coded,
            "coder_calls": counting.calls,
            "llm_requests": (fake.chat_count - requests_before) if fake is not None else 0,
            "seconds": time.perf_counter() - started,
        }
    finally:
        store.close()


def bench(kind: str) -> bool:
    from tests.fake_openai import FakeOpenAI

    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        fake = FakeOpenAI().start() if kind == "llm" else None
        try:
            first = one_run(kind, workspace, fake)
            second = one_run(kind, workspace, fake)
        finally:
            if fake is not None:
                fake.close()
    print(
        f"{kind:<10} passages={first['passages']:<4} "
        f"run 1: coded={first['coded']:<4} coder_calls={first['coder_calls']:<4} "
        f"llm_requests={first['llm_requests']:<4} ({first['seconds']:.1f} s) | "
        f"run 2: coded={second['coded']} coder_calls={second['coder_calls']} "
        f"llm_requests={second['llm_requests']} ({second['seconds']:.1f} s)"
    )
    return second["coder_calls"] == 0 and second["llm_requests"] == 0 and second["coded"] == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coder", choices=["llm", "similarity", "both"], default="both")
    args = parser.parse_args()
    kinds = ["llm", "similarity"] if args.coder == "both" else [args.coder]
    ok = all([bench(kind) for kind in kinds])
    print("second run made no coder call" if ok else "FAIL: the second run called the coder")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
