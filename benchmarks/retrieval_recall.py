"""Retrieval recall@k against prompt tokens, on SERDIF (and prompt size on the study codebook).

    .venv/bin/python benchmarks/retrieval_recall.py [--examples 5] [--seed 0]

Recall@k: the share of gold (passage, code) pairs whose code is among the k
candidates (micro), and the share of passages whose gold codes are all among
them. Two kinds of unit, both on the held-out participants P9-P11; code vectors
enriched with examples use coded passages of P1-P8 only:

1. highlight units (benchmarks/serdif.py): each distinct highlighted content, with
   the sentence before it or the turn (Taguette paragraph) before it as "previous";
2. sentence passages as ``qualflow`` stores and codes them: the Taguette project
   imported into a temporary workspace (moderator turns and task lines read aloud are
   context, ``guide_patterns`` as in eval/experiments.yaml), codable coded sentences of
   P9-P11, "previous" = ``index.previous_text`` (the previous turn, or the start of the
   passage's own turn). This is what ``qualflow retrieve --gold serdif --participants
   P9,P10,P11 -k 3,5,10,20 [--with-previous]`` prints, through the same functions
   (``qualflow.retrieval_eval``).

Every variant goes through ``CodeIndex`` (a real Chroma collection in a temporary
workspace); "centroid" is ``CodeIndex.ensure(..., examples=...)``: the code-text vector
averaged with the example vectors. Prompt tokens are those of the candidate
definitions ("- title: description" lines); cl100k is not available offline
(tiktoken downloads it), so tokens = characters / 4.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serdif

KS = (3, 5, 10, 20)


def tokens(text: str) -> int:
    return max(1, round(len(text) / 4))


def definition(code) -> str:
    return f"- {code.title}: {' '.join(code.description.split())}"


def training_examples(codebook, units, n: int, seed: int) -> dict[str, list[str]]:
    """n coded example sentences per code from training units (random, seeded)."""
    rng = random.Random(seed)
    by_code: dict[str, list[str]] = defaultdict(list)
    for u in units:
        for code in sorted(u.gold):
            by_code[code].append(u.text)
    out = {}
    for code in codebook.codes:
        pool = by_code.get(code.title, [])
        out[code.title] = rng.sample(pool, min(n, len(pool)))
    return out


def enriched(codebook, examples: dict[str, list[str]]):
    """The codebook with the examples in each code's embedded text."""
    codes = [c.model_copy(update={"examples": examples.get(c.title, [])}) for c in codebook.codes]
    return codebook.model_copy(update={"codes": codes, "name": codebook.name + "-enriched"})


def recall_table(ranked: list[list[str]], gold: list[frozenset[str]], defs: dict[str, int]):
    rows = {}
    n_pairs = sum(len(g) for g in gold)
    for k in (*KS, len(defs)):
        found = sum(len(g & set(r[:k])) for r, g in zip(ranked, gold, strict=True))
        complete = sum(g <= set(r[:k]) for r, g in zip(ranked, gold, strict=True))
        prompt = np.mean([sum(defs[t] for t in r[:k]) for r in ranked])
        rows[k] = (found / n_pairs, complete / len(gold), prompt)
    return rows


def ranked_by_index(index, units, with_previous: bool) -> list[list[str]]:
    contexts = serdif.contexts(units)
    results = index.retrieve_many(contexts, 0, with_previous=with_previous)
    return [[c.code.title for c in cands] for cands in results]


def with_previous_turn(units):
    """The units with "previous" = the paragraph (turn) before the one the unit starts in."""
    import dataclasses
    import re

    docs = serdif.documents()
    out = []
    for u in units:
        text = docs[u.document]
        lines = [m for m in re.finditer(r"[^\n]+", text) if m.group().strip()]
        before = [m for m in lines if m.end() <= u.start]
        out.append(dataclasses.replace(u, previous=before[-1].group().strip() if before else ""))
    return out


def store_passages(settings, codebook, examples: int, seed: int) -> None:
    """Recall on the sentence passages ``qualflow`` codes (the CLI path), P9-P11."""
    import functools

    from qualflow.exchange.taguette import import_taguette
    from qualflow.index import CodeIndex
    from qualflow.retrieval_eval import evaluate_retrieval
    from qualflow.segment import Codability, segment
    from qualflow.store import open_store
    from qualflow.training import TrainingSources, training_labels

    store = open_store(settings)
    policy = Codability.build(guide_patterns=[r"^\d+(\.[a-z])? [A-Z]"])
    import_taguette(
        store,
        serdif.SERDIF / "taguette-project.sqlite3",
        gold_set="serdif",
        segmenter=functools.partial(segment, codability=policy),
    )
    test = TrainingSources(gold=["serdif"], participants=sorted(serdif.TEST))
    train = TrainingSources(gold=["serdif"], participants=sorted(serdif.TRAIN))
    labels = training_labels(store, codebook, train)
    by_code: dict[str, list[str]] = defaultdict(list)
    texts = {p.id: p.text for p in store.passages(ids=list(labels.labels))}
    for pid, codes in sorted(labels.labels.items()):
        for code in sorted(codes):
            by_code[code].append(texts[pid])
    rng = random.Random(seed)
    chosen = {c: rng.sample(v, min(examples, len(v))) for c, v in sorted(by_code.items())}
    plain = CodeIndex.ensure(codebook, settings)
    centroid = CodeIndex.ensure(codebook, settings, examples=chosen)
    ks = [*KS, 0]
    print(
        "\n## Sentence passages as qualflow codes them (codable, coded; held-out P9-P11)\n"
        "command: qualflow retrieve --gold serdif --participants P9,P10,P11 -k 3,5,10,20,0 "
        "[--with-previous]"
    )
    for title, index, previous in (
        ("code text, query = passage", plain, False),
        ("code text, query = previous turn + passage", plain, True),
        (f"centroid ({examples} P1-P8 examples), query = passage", centroid, False),
        (f"centroid ({examples} P1-P8 examples), query = previous turn + passage", centroid, True),
    ):
        started = time.perf_counter()
        result = evaluate_retrieval(store, index, codebook, test, ks, with_previous=previous)
        seconds = time.perf_counter() - started
        print(f"\n{title} ({result.passages} passages, {result.pairs} codes, {seconds:.1f}s)")
        print(result.markdown())
    store.close()


def print_table(title: str, rows, n_units: int) -> None:
    print(f"\n{title} ({n_units} passages)")
    print("| k | recall@k (codes) | passages fully covered | prompt tokens/passage |")
    print("| --- | --- | --- | --- |")
    for k, (recall, complete, prompt) in rows.items():
        print(f"| {k} | {recall:.2f} | {complete:.2f} | {prompt:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    serdif.require_corpus()

    from qualflow.index import CodeIndex
    from qualflow.settings import load_settings

    codebook = serdif.load_codebook(serdif.CODEBOOK)
    units = serdif.highlight_units()
    train = [u for u in units if u.participant in serdif.TRAIN]
    test = [u for u in units if u.participant in serdif.TEST]
    gold = [u.gold for u in test]
    defs = {c.title: tokens(definition(c)) for c in codebook.codes}
    print(
        f"SERDIF codebook {serdif.CODEBOOK.name}: {len(codebook.codes)} codes, "
        f"whole codebook = {sum(defs.values())} tokens of definitions"
    )
    print(f"highlight units: {len(units)} (train P1-P8 {len(train)}, test P9-P11 {len(test)})")

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp))
        started = time.perf_counter()
        plain = CodeIndex.ensure(codebook, settings)
        print(f"index build: {time.perf_counter() - started:.2f}s")
        examples = training_examples(codebook, train, args.examples, args.seed)
        rich = CodeIndex.ensure(enriched(codebook, examples), settings)
        centroid = CodeIndex.ensure(codebook, settings, examples=examples)

        turn_test = with_previous_turn(test)
        variants = {
            "code text (title + description)": ranked_by_index(plain, test, False),
            "code text, query = previous sentence + passage": ranked_by_index(plain, test, True),
            "code text, query = previous turn + passage": ranked_by_index(plain, turn_test, True),
            f"code text + {args.examples} training examples in the embedded text": ranked_by_index(
                rich, test, False
            ),
            f"centroid of code text and {args.examples} training example vectors": (
                ranked_by_index(centroid, test, False)
            ),
            f"centroid ({args.examples} examples), query with previous sentence": (
                ranked_by_index(centroid, test, True)
            ),
        }
        for title, ranked in variants.items():
            print_table(title, recall_table(ranked, gold, defs), len(test))
        all_ranked = ranked_by_index(plain, units, False)
        print_table(
            "code text, all participants P1-P11",
            recall_table(all_ranked, [u.gold for u in units], defs),
            len(units),
        )
        store_passages(settings, codebook, args.examples, args.seed)

    if serdif.STUDY_CODEBOOK.is_file():
        study = serdif.load_codebook(serdif.STUDY_CODEBOOK)
        sizes = [tokens(definition(c)) for c in study.codes]
        print(
            f"\nstudy codebook ({len(study.codes)} codes): whole codebook = {sum(sizes)} "
            f"tokens of definitions; mean {np.mean(sizes):.1f} tokens per code, so "
            + ", ".join(f"k={k}: ~{np.mean(sizes) * k:.0f}" for k in KS)
        )
        print(
            "(no gold-coded study passages exist here: recall on the study codebook is not "
            "measured)"
        )


if __name__ == "__main__":
    main()
