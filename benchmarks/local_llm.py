"""The embedded local model (SmolLM2-135M via llama.cpp) on the example transcripts.

    .venv/bin/python benchmarks/local_llm.py [--passages 12] [--k 5] [--max-tokens 160]

Ingests examples/ into a temporary workspace, retrieves k candidate codes per
passage from the study codebook (real index), starts the embedded server and codes
the first N codable passages through the same LLMCoder path as production. Prints
server start-up time, passages/s, the share of passages that came back ok (and
with at least one valid code) or needs_human, the invalid-proposal rate and the
tokens used. SmolLM2-135M is tiny: a high needs_human rate is the honest figure.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=12)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()

    from qualflow.codebook import load_codebook
    from qualflow.coders.llm import LLMCoder
    from qualflow.index import CodeIndex
    from qualflow.ingest import ingest_paths
    from qualflow.local_llm import LocalLLMServer
    from qualflow.models import Usage
    from qualflow.pipeline import build_requests
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            Path(tmp) / "ws",
            llm_max_tokens=args.max_tokens,
            llm_timeout=300.0,
            llm_max_retries=0,
            llm_concurrency=1,
            llm_batch_size=args.batch,
        )
        store = open_store(settings)
        suffixes = {".txt", ".md", ".srt", ".vtt", ".docx", ".odt"}
        paths = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in suffixes)
        ingest_paths(store, [p for p in paths if p.name != "README.md"], settings)
        passages = store.passages(codable_only=True)[: args.passages]
        codebook = load_codebook("benchmark-practices")
        index = CodeIndex.ensure(codebook, settings)
        requests = build_requests(store, passages, codebook, index=index, k=args.k)

        started = time.perf_counter()
        with LocalLLMServer() as server:
            up = time.perf_counter() - started
            coder = LLMCoder(
                base_url=server.base_url,
                api_key=None,
                model=server.model,
                settings=settings,
                cache=None,
            )
            t0 = time.perf_counter()
            out = coder.propose(requests, codebook)
            elapsed = time.perf_counter() - t0
        store.close()

    status = collections.Counter(ps.status for ps in out)
    with_codes = sum(ps.status == "ok" and bool(ps.proposals) for ps in out)
    valid = sum(len(ps.proposals) for ps in out)
    invalid = sum(len(ps.invalid) for ps in out)
    usage = sum((ps.usage for ps in out), Usage())
    n = len(out)
    print(
        f"model={coder.model} passages={n} k={args.k} max_tokens={args.max_tokens} "
        f"batch={args.batch} threads={server.n_threads}"
    )
    print(f"server start-up {up:.1f}s; coding {elapsed:.1f}s = {n / elapsed:.3f} passages/s")
    print(
        f"ok={status['ok']}/{n} ({status['ok'] / n:.0%}), ok with >=1 code={with_codes}, "
        f"needs_human={status['needs_human']}/{n} ({status['needs_human'] / n:.0%})"
    )
    total = valid + invalid
    rate = invalid / total if total else 0.0
    print(f"proposals: valid={valid} invalid={invalid} (invalid rate {rate:.0%})")
    print(
        f"tokens: prompt={usage.prompt_tokens} completion={usage.completion_tokens} "
        f"calls={usage.calls} ({usage.prompt_tokens / max(1, n):.0f} prompt tokens/passage)"
    )
    kinds = collections.Counter(
        kind
        for ps in out
        for p in ps.invalid
        for kind in ("does not exist in the codebook", "not a verbatim quote", "outside [0, 1]")
        if kind in (p.invalid_reason or "")
    )
    print(
        "invalid proposals by problem: "
        + (", ".join(f"{k}={v}" for k, v in kinds.most_common()) or "none")
    )
    unparsed = [ps for ps in out if "does not match the schema" in (ps.reason or "")]
    cut = sum(not (ps.raw_response or "").rstrip().endswith("}") for ps in unparsed)
    print(f"unparsed answers: {len(unparsed)}, of which {cut} end mid-JSON (token cap)")
    reasons = collections.Counter(
        (ps.reason or "").split(":")[0][:60] for ps in out if ps.status != "ok"
    )
    for reason, count in reasons.most_common(5):
        print(f"  needs_human reason x{count}: {reason}")


if __name__ == "__main__":
    sys.exit(main())
