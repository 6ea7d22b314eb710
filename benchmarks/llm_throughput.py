"""LLM coder throughput against the fake OpenAI-compatible server with injected latency.

    .venv/bin/python benchmarks/llm_throughput.py [--passages 64] [--concurrency 8]
        [--latency 0.5] [--batch 1]

The fake server (tests/fake_openai.py) runs in its own process, so its request
handling does not compete with the coder for the GIL. Every request waits
``latency`` seconds there (a stand-in for a hosted model's response time); the
coder runs ``concurrency`` requests at once. The ideal is ``concurrency / latency``
requests per second; the script prints passages/s and the ratio to that ideal
(goal: >= 0.9). Every answer is a valid proposal, so the figure includes prompt
rendering, structured-output parsing and validation.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.llm_helpers import CODEBOOK, request  # noqa: E402

from qualflow.coders.llm import LLMCoder  # noqa: E402
from qualflow.settings import load_settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fake_openai",
            "--latency",
            str(args.latency),
            "--code",
            "01.use.daily",
            "--evidence",
            "every day",
            "--batch",
            str(args.batch),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(
                Path(tmp),
                llm_concurrency=args.concurrency,
                llm_batch_size=args.batch,
                llm_timeout=30.0,
            )
            coder = LLMCoder(
                base_url=base_url,
                api_key="bench",
                model="gpt-4o-mini",
                settings=settings,
                cache=None,
            )
            reqs = [
                request(f"Passage {i}: I look at it every day.", f"p{i}")
                for i in range(args.passages)
            ]
            coder.propose(reqs[: args.concurrency * args.batch], CODEBOOK)  # warm-up
            started = time.perf_counter()
            out = coder.propose(reqs, CODEBOOK)
            elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=10)

    ok = sum(ps.status == "ok" and bool(ps.proposals) for ps in out)
    calls = -(-len(reqs) // args.batch)
    ideal = args.concurrency / args.latency  # requests per second
    achieved = calls / elapsed
    print(
        f"passages={args.passages} concurrency={args.concurrency} latency={args.latency}s "
        f"batch={args.batch}"
    )
    print(f"calls={calls} valid_sets={ok}/{len(out)} elapsed={elapsed:.2f}s")
    print(
        f"passages/s={len(out) / elapsed:.2f} requests/s={achieved:.2f} "
        f"ideal requests/s={ideal:.2f} ratio={achieved / ideal:.3f} (goal >= 0.9)"
    )


if __name__ == "__main__":
    main()
