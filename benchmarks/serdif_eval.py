"""SERDIF development corpus (P1-P11): agreement at span, sentence and turn level.

    .venv/bin/python benchmarks/serdif_eval.py [--out eval/results] [--no-run] [--n-boot 1000]

Runs the SERDIF experiments of eval/experiments.yaml through ``qualflow eval`` (the
corpus is read in place from ../shared/corpora/serdif-usability, never copied; each
experiment has its scratch workspace under OUT/workspaces/NAME) and prints, from the
results JSON they write:

1. each experiment's figures at the three levels (the tables of docs/agreement.md);
2. the per-sentence decisions of the chunked runs against the same coders coding one
   sentence per call (``coding_unit: passage``, as qualflow coded before chunks);
3. the study's *Moderator assist* code with the moderator's turns as context
   (``qualflow code``'s default) and coded (``code_interviewer: true``).

``--no-run`` only reads the results already in OUT (e.g. after
``qualflow eval serdif-learned-cv ... --out OUT``). Every figure printed here is
therefore what the CLI command gives; nothing is computed outside ``qualflow eval``.
About an hour on 2 busy cores, most of it training the learned coders.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERDIF = REPO.parent / "shared" / "corpora" / "serdif-usability"
EXPERIMENTS = {
    "serdif-learned-cv": "learned, 4-fold CV by participant, P1-P11",
    "serdif-learned-split": "learned, train P1-P8, test P9-P11",
    "serdif-similarity-split": "similarity, calibrated on P1-P8, test P9-P11",
    "serdif-learned-cv-interviewer": "learned CV, moderator turns coded",
    "serdif-similarity-split-interviewer": "similarity split, moderator turns coded",
    "serdif-learned-cv-sentence-units": "learned CV, one sentence per call",
    "serdif-similarity-split-sentence-units": "similarity split, one sentence per call",
}
SAME_CODER = (
    ("serdif-learned-cv", "serdif-learned-cv-sentence-units"),
    ("serdif-similarity-split", "serdif-similarity-split-sentence-units"),
)
MODERATOR = (
    ("serdif-learned-cv", "serdif-learned-cv-interviewer"),
    ("serdif-similarity-split", "serdif-similarity-split-interviewer"),
)
MODERATOR_CODE = "Moderator assist"


def run(names: list[str], out: Path, n_boot: int) -> None:
    """``qualflow eval NAME... --out OUT`` from the project root (one process)."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "qualflow", "eval", *names, "--out", str(out)]
    command += ["--n-boot", str(n_boot)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"qualflow eval failed:\n{done.stderr[-3000:]}")
    print(f"qualflow eval {' '.join(names)}: {time.perf_counter() - started:.0f} s")


def load(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def ci(est: dict | None) -> str:
    from qualflow.report import fmt_ci

    return fmt_ci(est) if est else "–"


def print_levels(name: str, what: str, results: dict) -> None:
    """One experiment's three levels, as the Markdown rows docs/agreement.md shows."""
    from qualflow.report import level_rows, share

    print(f"\n{name}: {what} ({results['scope']['coder']}, {results['scope']['passages']} units)")
    print("| level | rests on | coverage | precision | recall | F1 | pooled kappa |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in level_rows(results):
        print(
            f"| {r['label']} | {r['rests_on']} | {share(r['coverage'])} | {ci(r['precision'])} "
            f"| {ci(r['recall'])} | {ci(r['f1'])} | {ci(r['kappa'])} |"
        )
    span = results["levels"]["span"]["agreement"]["overall"]
    print(
        f"macro: char F1 {ci(span['macro_char_f1'])}, highlight F1 "
        f"{ci(span['macro_highlight_f1'])}, sentence F1 "
        f"{ci(results['agreement']['overall']['macro_f1'])}, turn F1 "
        f"{ci(results['levels']['turn']['agreement']['overall']['macro_f1'])}"
    )


def print_same_decisions(chunked: dict, by_sentence: dict) -> None:
    """How many sentences get other codes when the coder sees chunks instead of sentences."""
    a, b = chunked["coding"]["coder"], by_sentence["coding"]["coder"]
    both = set(a) & set(b)
    differ = sorted(p for p in both if sorted(a[p]) != sorted(b[p]))
    fa = chunked["agreement"]["overall"]
    fb = by_sentence["agreement"]["overall"]
    print(
        f"\n{chunked['experiment']} vs {by_sentence['experiment']}: {len(both)} sentences "
        f"answered by both ({len(a)} / {len(b)}), {len(differ)} with other codes; micro F1 "
        f"{ci(fa['micro_f1'])} vs {ci(fb['micro_f1'])}, pooled kappa "
        f"{ci(fa['pooled_kappa'])} vs {ci(fb['pooled_kappa'])}"
    )
    for pid in differ[:10]:
        print(f"  {pid}: chunks {a[pid]} / one sentence per call {b[pid]}")


def _code(section: dict | None, code: str) -> dict:
    return next((c for c in (section or {}).get("codes", []) if c["code"] == code), {})


def print_moderator(context: dict, coded: dict) -> None:
    """The moderator's code at every level, moderator turns as context vs coded."""
    print(f"\n{MODERATOR_CODE}: {context['experiment']} vs {coded['experiment']}")
    print("| run | sentences | reference / coder sentences | sentence F1 | char F1 | turn F1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for results in (context, coded):
        sentence = _code(results["agreement"], MODERATOR_CODE)
        span = _code(results["levels"]["span"]["agreement"], MODERATOR_CODE)
        turn = _code(results["levels"]["turn"]["agreement"], MODERATOR_CODE)
        print(
            f"| {results['experiment']} | {results['scope']['passages']} "
            f"| {sentence.get('positives_a', 0)} / {sentence.get('positives_b', 0)} "
            f"| {ci(sentence.get('f1'))} | {ci(span.get('char_f1'))} | {ci(turn.get('f1'))} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("eval/results"))
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--no-run", action="store_true", help="Read the results in OUT only.")
    parser.add_argument("--only", nargs="*", help="Experiments to run (default: all).")
    args = parser.parse_args()
    if not SERDIF.is_dir():
        print(f"skipped: SERDIF corpus not found at {SERDIF}")
        return
    out = args.out if args.out.is_absolute() else REPO / args.out
    names = args.only or list(EXPERIMENTS)
    if not args.no_run:
        run(names, out, args.n_boot)
    results = {name: load(out, name) for name in EXPERIMENTS}
    for name, what in EXPERIMENTS.items():
        if results[name] and results[name].get("levels", {}).get("computed"):
            print_levels(name, what, results[name])
        else:
            print(f"\n{name}: no results with three levels in {out} (run it without --no-run)")
    for chunked, by_sentence in SAME_CODER:
        if results[chunked] and results[by_sentence]:
            print_same_decisions(results[chunked], results[by_sentence])
    for context, coded in MODERATOR:
        if results[context] and results[coded]:
            print_moderator(results[context], results[coded])


if __name__ == "__main__":
    main()
