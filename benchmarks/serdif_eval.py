"""Agreement of the machine coders with the human coder of the SERDIF corpus (P1-P11).

    .venv/bin/python benchmarks/serdif_eval.py [--out eval/results] [--n-boot 1000]

1. Imports the Taguette project (``../shared/corpora/serdif-usability``) with
   ``qualflow.exchange.taguette.import_taguette``: transcripts, the codebook and the
   author's highlights mapped to sentence passages as gold set ``serdif``.
2. Codes every passage with the learned coder (logistic regression on MiniLM) and the
   similarity coder, each trained/calibrated *without the participant it codes*:
   participant-grouped folds P1-P3, P4-P6, P7-P8, P9-P11 (the last is the held-out
   test set of benchmarks/baseline_coders.py). Each coder's out-of-fold proposals are
   stored as one run.
3. Evaluates learned vs the human coder, with the similarity coder as the baseline
   (``qualflow.evaluate``), writes serdif-learned.{json,html,md} and
   serdif-similarity.{json,html,md}, and prints the figures.

SERDIF has a single human coder, so there is no human-human baseline here: the
figures say how far the machine is from that one person, not from human agreement.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERDIF = REPO.parent / "shared" / "corpora" / "serdif-usability"
FOLDS = [["P1", "P2", "P3"], ["P4", "P5", "P6"], ["P7", "P8"], ["P9", "P10", "P11"]]
GOLD_SET = "serdif"


def participant(name: str) -> str:
    found = re.match(r"(P\d+)", name)
    return found.group(1) if found else name


def import_corpus(store):
    from qualflow.exchange.taguette import import_taguette

    result = import_taguette(
        store, SERDIF / "taguette-project.sqlite3", segmentation="sentence", gold_set=GOLD_SET
    )
    print(f"taguette import: {result.summary()}")
    for problem in result.problems[:5]:
        print(f"  problem: {problem}")
    return store.codebook(result.codebook_version)


def code_out_of_fold(store, settings, codebook, reference):
    """Out-of-fold proposal sets of the learned and similarity coders, stored as runs."""
    from qualflow.coders.learned import LearnedCoder
    from qualflow.coders.similarity import SimilarityCoder
    from qualflow.index import CodeIndex
    from qualflow.pipeline import build_requests
    from qualflow.store import ProposalKey

    names = {t.id: t.name for t in store.transcripts()}
    passages = store.passages(ids=list(reference))
    requests = build_requests(store, passages, codebook)
    part = {r.passage.id: participant(names[r.passage.transcript_id]) for r in requests}
    index = CodeIndex.ensure(codebook, settings)
    kinds = {
        "learned": "logreg-minilm:4-fold-by-participant",
        "similarity": f"{index.model}:threshold-per-fold",
    }
    runs = {
        kind: store.start_run(
            ProposalKey(kind, model, "", codebook.version), params={"folds": FOLDS}
        )
        for kind, model in kinds.items()
    }
    for fold in FOLDS:
        test = [r for r in requests if part[r.passage.id] in fold]
        train = [r for r in requests if part[r.passage.id] not in fold]
        if not test:
            continue
        started = time.perf_counter()
        x_train = [r.context for r in train]
        y_train = [reference[r.passage.id] for r in train]
        learned = LearnedCoder().fit(x_train, y_train)
        sim = SimilarityCoder(index)
        threshold = sim.calibrate(x_train, y_train)
        sets = {
            "learned": learned.propose(test, codebook),
            "similarity": sim.propose(test, codebook),
        }
        for kind, produced in sets.items():
            for ps in produced:
                ps.model = kinds[kind]
                store.save_proposal_set(ps, run_id=runs[kind])
        print(
            f"fold {'+'.join(fold)}: train {len(train)}, test {len(test)} passages; "
            f"similarity threshold {threshold:.2f}; {time.perf_counter() - started:.0f}s"
        )
    for run_id in runs.values():
        store.finish_run(run_id, status="completed")
    return runs, part


def code_with_llm(store, settings, codebook, passage_ids: list[str], sample: int) -> int | None:
    """The embedded local LLM (whole 22-code codebook in the prompt) on a passage sample."""
    import random

    from qualflow.coders.factory import open_coder
    from qualflow.pipeline import build_requests, persist, proposal_key

    chosen = sorted(random.Random(0).sample(sorted(passage_ids), min(sample, len(passage_ids))))
    passages = store.passages(ids=chosen)
    requests = build_requests(store, passages, codebook)  # k = 0: every code is a candidate
    started = time.perf_counter()
    with open_coder("llm", settings, store, codebook=codebook) as coder:
        run_id = store.start_run(proposal_key(coder, codebook), params={"sample": sample})
        for i in range(0, len(requests), 4):
            persist(store, coder.propose(requests[i : i + 4], codebook), run_id=run_id)
    store.finish_run(run_id, status="completed")
    seconds = time.perf_counter() - started
    statuses = Counter(ps.status for ps in store.proposal_sets(run_id=run_id))
    print(
        f"llm: {len(requests)} passages in {seconds:.0f}s ({seconds / len(requests):.1f}s each); "
        f"answers: {dict(statuses)}"
    )
    return run_id


def stored_runs(store):
    """The learned and similarity runs of an earlier invocation in this workspace."""
    from sqlalchemy import select

    from qualflow.db import RunRow

    with store.session() as s:
        rows = s.scalars(select(RunRow).where(RunRow.status == "completed")).all()
        found = {
            r.coder: (r.id, r.codebook_version)
            for r in rows
            if r.params.get("folds") or r.params.get("sample")
        }
    if not store.gold(GOLD_SET) or {"learned", "similarity"} - set(found):
        return None
    runs = {kind: found[kind][0] for kind in ("learned", "similarity", "llm") if kind in found}
    return runs, store.codebook(found["learned"][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("eval/results"))
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="With --workspace: re-evaluate the runs an earlier invocation stored there.",
    )
    parser.add_argument(
        "--llm-sample",
        type=int,
        default=0,
        help="Also code N held-out passages with the local LLM.",
    )
    args = parser.parse_args()
    if not SERDIF.is_dir():
        sys.exit(f"SERDIF corpus not found at {SERDIF}")
    from qualflow import agreement as ag
    from qualflow import evaluate as ev
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(args.workspace or Path(tmp))
        store = open_store(settings)
        started = time.perf_counter()
        previous = stored_runs(store) if args.reuse else None
        if previous:
            runs, codebook = previous
            print(f"reusing the stored gold set and runs {runs} in {settings.workspace}")
        else:
            codebook = import_corpus(store)
        (coder_name, reference), *more = store.gold(GOLD_SET).items()
        if more:
            print(f"note: gold set has {len(more) + 1} coders; using '{coder_name}'")
        if previous:
            names = {t.id: t.name for t in store.transcripts()}
            part = {
                p.id: participant(names[p.transcript_id])
                for p in store.passages(ids=list(reference))
            }
        else:
            runs, part = code_out_of_fold(store, settings, codebook, reference)
        ref = ev.Resolved(f"{GOLD_SET}:{coder_name}", reference)
        learned = ev.resolve(store, f"run:{runs['learned']}")
        learned.name = f"learned (run {runs['learned']})"
        similarity = ev.resolve(store, f"run:{runs['similarity']}")
        similarity.name = f"similarity (run {runs['similarity']})"
        common = dict(codebook=codebook, n_boot=args.n_boot, seed=0, min_support=10)
        scope = {
            "segmentation": "sentence",
            "split": "4 folds by participant: " + " | ".join(",".join(f) for f in FOLDS),
        }
        outputs = []
        for name, coder, baseline in (
            ("serdif-learned", learned, similarity),
            ("serdif-similarity", similarity, None),
        ):
            began = time.perf_counter()
            results = ev.evaluate(
                ref,
                coder,
                baseline=baseline,
                experiment=name,
                scope=scope,
                description="SERDIF P1-P11, out-of-fold machine codings vs the study's coder",
                clusters=part,
                **common,
            )
            figures_s = time.perf_counter() - began
            outputs.append(ev.write_outputs(results, args.out))
            print(
                f"{name}: figures in {figures_s:.1f}s, with reports "
                f"{time.perf_counter() - began:.1f}s ({args.n_boot} resamples)"
            )
            flat = ag.compare(ref.coding, coder.coding, n_boot=args.n_boot).overall
            for key in ("pooled_kappa", "micro_f1"):
                clustered = results["agreement"]["overall"][key]
                print(
                    f"  {key}: {flat[key].value:.3f}; 95% CI resampling participants "
                    f"[{clustered['low']:.3f}, {clustered['high']:.3f}], resampling passages "
                    f"[{flat[key].low:.3f}, {flat[key].high:.3f}]"
                )
        held_out = [pid for pid, p in part.items() if p in FOLDS[-1]]
        test_only = ev.evaluate(
            ref,
            learned,
            passages=held_out,
            experiment="serdif-learned-p9-p11",
            clusters=part,
            **common,
        )
        ev.write_outputs(test_only, args.out)
        for out in outputs:
            print()
            print(out.markdown)
            print(f"wrote {out.json_path}, {out.html_path}")
        if args.llm_sample:
            try:
                llm_run = runs.get("llm") or code_with_llm(
                    store, settings, codebook, held_out, args.llm_sample
                )
                llm = ev.resolve(store, f"run:{llm_run}")
                llm.name = f"local llm (run {llm_run})"
                llm_results = ev.evaluate(
                    ref,
                    llm,
                    baseline=learned,
                    experiment="serdif-llm-sample",
                    scope=scope,
                    **common,
                )
                out = ev.write_outputs(llm_results, args.out)
                print()
                print(out.markdown)
            except Exception as exc:  # report, keep the figures above
                print(f"\nlocal LLM sample not evaluated: {type(exc).__name__}: {exc}")
        o = test_only["agreement"]["overall"]
        print(
            f"\nheld-out P9-P11 only ({test_only['scope']['passages']} passages): "
            f"learned micro-F1 {o['micro_f1']['value']:.3f} "
            f"[{o['micro_f1']['low']:.3f}, {o['micro_f1']['high']:.3f}], "
            f"pooled kappa {o['pooled_kappa']['value']:.3f}"
        )
        print(f"total {time.perf_counter() - started:.0f}s")
        store.close()


if __name__ == "__main__":
    main()
