"""Similarity and learned baseline coders on SERDIF: micro-F1 on held-out participants.

    .venv/bin/python benchmarks/baseline_coders.py

Train on P1-P8 (learned coder: logistic regression per code, thresholds tuned on
participant-grouped folds; similarity coder: threshold calibrated for micro-F1),
test on P9-P11. Two unit sets (see benchmarks/serdif.py): highlight units (every
unit coded) and sentence units (every sentence of the transcripts, 23% uncoded).
Then times coding all 11 transcripts (sentence units) through ``propose`` with
each coder, as the pipeline calls it: passages/s.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serdif


def per_code_f1(predicted, gold, codes) -> dict[str, tuple[float, int]]:
    out = {}
    for code in codes:
        tp = sum(code in p and code in g for p, g in zip(predicted, gold, strict=True))
        n_pred = sum(code in p for p in predicted)
        n_gold = sum(code in g for g in gold)
        out[code] = (2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0, n_gold)
    return out


def requests_for(units, index, k: int):
    from qualflow.models import CodingRequest

    contexts = serdif.contexts(units)
    candidates = index.retrieve_many(contexts, k)
    return [
        CodingRequest(context=c, candidates=cs) for c, cs in zip(contexts, candidates, strict=True)
    ]


def evaluate(name, units, codebook, index, settings) -> dict:
    from qualflow.coders.learned import LearnedCoder
    from qualflow.coders.similarity import SimilarityCoder, micro_f1
    from qualflow.index import CodeIndex
    from retrieval_recall import training_examples

    train = [u for u in units if u.participant in serdif.TRAIN]
    test = [u for u in units if u.participant in serdif.TEST]
    gold = [u.gold for u in test]
    print(f"\n## {name}: train P1-P8 {len(train)}, test P9-P11 {len(test)}")

    sim = SimilarityCoder(index)
    started = time.perf_counter()
    threshold = sim.calibrate(serdif.contexts(train), [u.gold for u in train])
    sim_pred = sim.predict(serdif.contexts(test))
    seconds = time.perf_counter() - started
    print(
        f"similarity: threshold {threshold:.2f}, max codes {sim.max_codes} "
        f"(calibrated in {seconds:.1f}s), micro-F1 {micro_f1(sim_pred, gold):.3f}"
    )

    examples = training_examples(codebook, train, 5, 0)
    rich_index = CodeIndex.ensure(codebook, settings, examples=examples)
    rich = SimilarityCoder(rich_index)
    rich.calibrate(serdif.contexts(train), [u.gold for u in train])
    rich_pred = rich.predict(serdif.contexts(test))
    print(
        f"similarity, code vectors enriched with 5 P1-P8 examples: threshold "
        f"{rich.threshold:.2f}, max codes {rich.max_codes}, "
        f"micro-F1 {micro_f1(rich_pred, gold):.3f}"
    )

    started = time.perf_counter()
    learned = LearnedCoder().fit(serdif.contexts(train), [u.gold for u in train])
    fit_s = time.perf_counter() - started
    learned_pred = learned.predict(serdif.contexts(test))
    print(f"learned: fit {fit_s:.1f}s, micro-F1 {micro_f1(learned_pred, gold):.3f}")

    plain = LearnedCoder(tune_thresholds=False).fit(serdif.contexts(train), [u.gold for u in train])
    plain_pred = plain.predict(serdif.contexts(test))
    print(f"learned, threshold 0.5 everywhere: micro-F1 {micro_f1(plain_pred, gold):.3f}")

    codes = codebook.titles()
    sim_codes = per_code_f1(sim_pred, gold, codes)
    learned_codes = per_code_f1(learned_pred, gold, codes)
    print("\n| code | test passages | similarity F1 | learned F1 |")
    print("| --- | --- | --- | --- |")
    for code in sorted(codes, key=lambda c: -learned_codes[c][1]):
        print(
            f"| {code} | {learned_codes[code][1]} | {sim_codes[code][0]:.2f} | "
            f"{learned_codes[code][0]:.2f} |"
        )
    none_gold = sum(not g for g in gold)
    if none_gold:
        correct_none = sum(not p and not g for p, g in zip(learned_pred, gold, strict=True))
        print(f"uncoded test passages: {none_gold}; learned coder left {correct_none} uncoded")
    return {"similarity": sim, "learned": learned}


def time_coding(units, codebook, index, coders) -> None:
    print(f"\n## coding all 11 transcripts: {len(units)} sentence passages")
    for k in (0, 10):
        requests = requests_for(units[:50], index, k)  # warm-up (model load)
        started = time.perf_counter()
        requests = requests_for(units, index, k)
        retrieve_s = time.perf_counter() - started
        label = "whole codebook" if k == 0 else f"k={k}"
        print(f"retrieval ({label}): {retrieve_s:.2f}s, {len(units) / retrieve_s:.0f} passages/s")
    for name, coder in coders.items():
        started = time.perf_counter()
        sets = coder.propose(requests, codebook)
        seconds = time.perf_counter() - started
        coded = sum(bool(s.proposals) for s in sets)
        print(
            f"{name}: propose {seconds:.2f}s, {len(units) / seconds:.0f} passages/s "
            f"({coded} passages given a code); with retrieval "
            f"{len(units) / (seconds + retrieve_s):.0f} passages/s"
        )


def main() -> None:
    serdif.require_corpus()
    from qualflow.index import CodeIndex
    from qualflow.settings import load_settings

    codebook = serdif.load_codebook(serdif.CODEBOOK)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp))
        index = CodeIndex.ensure(codebook, settings)
        evaluate("highlight units", serdif.highlight_units(), codebook, index, settings)
        sentences = serdif.sentence_units()
        coders = evaluate("sentence units", sentences, codebook, index, settings)
        time_coding(sentences, codebook, index, coders)


if __name__ == "__main__":
    main()
