"""Time and peak memory of ``agreement.compare()`` (1000 bootstrap resamples) as passages grow.

Two constructed codings (invented data, not a study): 85 codes with Zipf-like use
(code k used in proportion to 1/k), a third of the passages coded by the reference
with 1-5 codes each; the other coder keeps each of those codes with probability 0.7,
adds a random code to a fifth of the passages and codes a tenth of the uncoded
ones. That gives a realistic spread of distinct code sets (thousands at 100k
passages), which is what the set-valued alpha grows with.

Each size runs in a fresh child process; the peak resident memory (VmHWM, reset just
before the call) minus the memory held before ``compare()`` starts is that call's alone.

    .venv/bin/python benchmarks/agreement_speed.py                   # 10k, 30k, 100k passages
    .venv/bin/python benchmarks/agreement_speed.py --sizes 100000 --n-boot 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def constructed_codings(
    n: int, n_codes: int = 85, seed: int = 0
) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """Reference and other coder over ``n`` passages (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    codes = [f"{k // 10:02d}.code{k:02d}" for k in range(n_codes)]
    weights = 1 / np.arange(1, n_codes + 1)
    weights /= weights.sum()
    a: dict[str, frozenset[str]] = {}
    b: dict[str, frozenset[str]] = {}
    coded = rng.random(n) < 1 / 3
    sizes = np.minimum(rng.geometric(0.55, n), 5)
    for i in range(n):
        pid = f"p{i:06d}"
        ref: set[str] = set()
        if coded[i]:
            ref = {codes[k] for k in rng.choice(n_codes, sizes[i], replace=False, p=weights)}
        other = {c for c in sorted(ref) if rng.random() < 0.7}
        if (ref and rng.random() < 0.2) or (not ref and rng.random() < 0.1):
            other.add(codes[rng.choice(n_codes, p=weights)])
        a[pid], b[pid] = frozenset(ref), frozenset(other)
    return a, b


def _status_mib(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Set the peak resident memory (VmHWM) to the current one (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def measure(a: dict, b: dict, n_boot: int) -> dict:
    """compare(a, b) once: seconds, peak resident memory above the start, figures."""
    from qualflow import agreement as ag

    distinct = len(set(a.values()) | set(b.values()))
    pairs = len({(a[p], b[p]) for p in a.keys() & b.keys()})
    import scipy.sparse  # noqa: F401  (a dependency's import is not compare()'s memory)

    _reset_peak()
    before = _status_mib("VmRSS")
    started = time.perf_counter()
    result = ag.compare(a, b, n_boot=n_boot, seed=0)
    seconds = time.perf_counter() - started
    peak = _status_mib("VmHWM")
    o = result.overall

    def triple(m: str) -> list[float | None]:
        return [o[m].value, o[m].low, o[m].high]

    return {
        "passages": result.n_passages,
        "codes": len(result.codes),
        "distinct_sets": distinct,
        "set_pairs": pairs,
        "seconds": seconds,
        "peak_mib": peak - before,
        "masi_alpha": triple("masi_alpha"),
        "pooled_kappa": triple("pooled_kappa"),
        "micro_f1": triple("micro_f1"),
    }


def from_file(path: Path) -> tuple[dict, dict]:
    """Two codings from a JSON file ``{"a": {passage: [codes]}, "b": {...}}``."""
    data = json.loads(path.read_text())
    return tuple({p: frozenset(cs) for p, cs in data[k].items()} for k in ("a", "b"))  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--codes", type=int, default=85)
    ap.add_argument(
        "--codings", type=Path, help='one run on codings from a JSON file {"a": ..., "b": ...}'
    )
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.codings:
        print(json.dumps(measure(*from_file(args.codings), args.n_boot)))
        return
    if args.child:
        a, b = constructed_codings(args.child, args.codes)
        print(json.dumps(measure(a, b, args.n_boot)))
        return
    print(
        f"{'passages':>9} {'codes':>5} {'sets':>6} {'set pairs':>9} {'compare s':>9} "
        f"{'peak MiB':>8}  masi alpha [95% CI]        pooled kappa [95% CI]"
    )
    for n in args.sizes:
        command = [sys.executable, __file__, "--child", str(n)]
        command += ["--n-boot", str(args.n_boot), "--codes", str(args.codes)]
        out = subprocess.run(
            command,
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        alpha, kappa = r["masi_alpha"], r["pooled_kappa"]
        print(
            f"{r['passages']:>9} {r['codes']:>5} {r['distinct_sets']:>6} {r['set_pairs']:>9} "
            f"{r['seconds']:>9.2f} {r['peak_mib']:>8.0f}  "
            f"{alpha[0]:.4f} [{alpha[1]:.4f}, {alpha[2]:.4f}]  "
            f"{kappa[0]:.4f} [{kappa[1]:.4f}, {kappa[2]:.4f}]",
            flush=True,
        )


if __name__ == "__main__":
    main()
