"""Per-request overhead of the fake OpenAI-compatible server (tests/fake_openai.py).

Starts the server in its own process (as the throughput benchmarks do) with zero
injected latency and sends sequential chat requests over one keep-alive connection:
first with a plain ``httpx`` client (the transport under the OpenAI SDK), then with
the OpenAI SDK itself. Prints milliseconds per request (median, mean, 95th
percentile) and the server's own CPU per request. Anything above the server's CPU
and the client's work is waiting: the point of this benchmark is that there is none
(a response written in two pieces without TCP_NODELAY stalls about 40 ms per request
on Linux: Nagle's algorithm holds the body until the headers are acknowledged, and
the client delays that acknowledgement).

    .venv/bin/python benchmarks/fake_endpoint.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = {
    "model": "fake-model",
    "messages": [
        {"role": "system", "content": "You code interview passages. " * 40},
        {"role": "user", "content": "Passage: we run the benchmark every day. " * 10},
    ],
}


def _server_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timings(send, n: int) -> list[float]:
    for _ in range(5):  # warm up: connection, imports, JIT-free caches
        send()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        send()
        out.append((time.perf_counter() - started) * 1000)
    return out


def _line(label: str, ms: list[float], server_cpu_ms: float) -> str:
    p95 = sorted(ms)[int(0.95 * (len(ms) - 1))]
    return (
        f"{label:<22} {len(ms):>5} {statistics.median(ms):>8.2f} {statistics.fmean(ms):>8.2f} "
        f"{p95:>8.2f} {server_cpu_ms:>11.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args(argv)
    import httpx
    import openai

    server = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_openai", "--code", "X", "--evidence", "every day"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().strip()  # type: ignore[union-attr]
        print(f"fake server {base_url}, {args.requests} sequential requests each, zero latency")
        print(f"{'client':<22} {'n':>5} {'median':>8} {'mean':>8} {'p95':>8} {'server CPU':>11}")
        print(f"{'':<22} {'':>5} {'ms':>8} {'ms':>8} {'ms':>8} {'ms/request':>11}")
        with httpx.Client(base_url=base_url, timeout=10) as client:

            def raw() -> None:
                r = client.post("/chat/completions", json=BODY)
                r.raise_for_status()
                json.loads(r.content)

            cpu = _server_cpu(server.pid)
            ms = _timings(raw, args.requests)
            used = (_server_cpu(server.pid) - cpu) * 1000 / (args.requests + 5)
            print(_line("httpx (keep-alive)", ms, used))
        sdk = openai.OpenAI(base_url=base_url, api_key="not-a-key", max_retries=0)

        def chat() -> None:
            sdk.chat.completions.create(**BODY)

        cpu = _server_cpu(server.pid)
        ms = _timings(chat, args.requests)
        used = (_server_cpu(server.pid) - cpu) * 1000 / (args.requests + 5)
        print(_line("openai SDK", ms, used))
        sdk.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
