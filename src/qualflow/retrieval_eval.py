"""Retrieval recall@k over human-coded passages, several k in one pass.

For every coded passage of a gold set (codable passages only, codes of the codebook
only, read through ``qualflow.training.training_labels``), the codebook is ranked
once (one embedding batch, ``CodeIndex.retrieve_many`` with k = 0) and recall is read
off the ranking at each k:

- recall@k: share of gold (passage, code) pairs whose code is among the top k (micro);
- covered@k: share of passages whose gold codes are all among the top k;
- prompt tokens: mean tokens of the top-k code definitions per passage (the
  ``- title: description`` lines a prompt would carry), at characters / 4 (a cl100k
  tokenizer needs a download).

``qualflow retrieve --gold SET -k 5,10,20`` prints it; ``benchmarks/retrieval_recall.py``
uses the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qualflow.models import Code, Codebook
    from qualflow.store import Store
    from qualflow.training import TrainingSources


@dataclass
class RecallAtK:
    k: int
    recall: float
    covered: float
    prompt_tokens: float


@dataclass
class RetrievalEval:
    """Recall@k of one index over one set of coded passages."""

    passages: int
    pairs: int
    with_previous: bool
    rows: list[RecallAtK] = field(default_factory=list)
    transcripts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        lines = [
            "| k | recall@k (codes) | passages fully covered | prompt tokens/passage |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r.k or 'all'} | {r.recall:.2f} | {r.covered:.2f} | {r.prompt_tokens:.0f} |"
            for r in self.rows
        ]
        return "\n".join(lines)


def definition_tokens(code: Code) -> int:
    """Tokens of a code's line in a prompt (``- title: description``), characters / 4."""
    text = f"- {code.title}: {' '.join(code.description.split())}"
    return max(1, round(len(text) / 4))


def recall_at_k(
    ranked: Sequence[Sequence[str]],
    gold: Sequence[frozenset[str]],
    ks: Sequence[int],
    tokens: Mapping[str, int],
) -> list[RecallAtK]:
    """Recall@k, covered@k and prompt tokens for rankings of code titles (best first).

    ``k <= 0`` means the whole ranking (the whole codebook)."""
    if len(ranked) != len(gold) or not gold:
        raise ValueError("recall@k needs one ranking per coded passage (at least one)")
    pairs = sum(len(g) for g in gold)
    if not pairs:
        raise ValueError("recall@k needs passages with at least one gold code")
    rows = []
    for k in ks:
        n = k if k > 0 else max(len(r) for r in ranked)
        tops = [set(r[:n]) for r in ranked]
        found = sum(len(g & top) for g, top in zip(gold, tops, strict=True))
        complete = sum(g <= top for g, top in zip(gold, tops, strict=True))
        prompt = sum(sum(tokens.get(t, 0) for t in r[:n]) for r in ranked) / len(ranked)
        rows.append(RecallAtK(k, found / pairs, complete / len(gold), prompt))
    return rows


def evaluate_retrieval(
    store: Store,
    index: Any,
    codebook: Codebook,
    sources: TrainingSources,
    ks: Sequence[int],
    *,
    with_previous: bool = False,
) -> RetrievalEval:
    """Recall@k of ``index`` over the coded passages ``sources`` name (one batch)."""
    from qualflow.training import training_labels

    labels = training_labels(store, codebook, sources)
    coded = {pid: codes for pid, codes in labels.labels.items() if codes}
    passages = _in_order(store, list(coded))
    contexts = store.contexts(passages)
    ranked = [
        [c.code.title for c in candidates]
        for candidates in index.retrieve_many(contexts, 0, with_previous=with_previous)
    ]
    gold = [coded[c.passage.id] for c in contexts]
    tokens = {c.title: definition_tokens(c) for c in codebook.codes}
    return RetrievalEval(
        passages=len(gold),
        pairs=sum(len(g) for g in gold),
        with_previous=with_previous,
        rows=recall_at_k(ranked, gold, ks, tokens),
        transcripts=labels.transcripts,
        sources=labels.sources,
    )


def _in_order(store: Store, ids: list[str], chunk: int = 500) -> list[Any]:
    found = {}
    for i in range(0, len(ids), chunk):
        found.update((p.id, p) for p in store.passages(ids=ids[i : i + chunk]))
    return [found[i] for i in ids if i in found]
