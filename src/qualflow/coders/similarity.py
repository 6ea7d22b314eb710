"""The similarity baseline: no LLM, codes whose definition is close to the passage.

Every code is scored by the cosine similarity between the passage embedding and
the code's indexed vector (``CodeIndex``); the codes above a threshold (at most
``max_codes``, best first) apply to the sentence, sentence by sentence, and runs of
adjacent sentences with the same code become one span (``sentence_runs``).
``calibrate`` picks the threshold that maximizes micro-F1 on coded training passages.
When a request carries candidates, only those are eligible, as for any coder that
sees a retrieved shortlist.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qualflow.coders.sentence_runs import runs_to_proposals, unit_sentences
from qualflow.index import CodeIndex, Query
from qualflow.models import Codebook, CodingRequest, ProposalSet

DEFAULT_THRESHOLD = 0.25
"""Calibrated on SERDIF highlights (0.26; 0.16 on all sentences): run ``calibrate`` on
your own coded passages when you have them."""
DEFAULT_MAX_CODES = 3
DEFAULT_NOTE = (
    "threshold 0.25 and max codes 3 are the defaults calibrated on highlights of the SERDIF "
    "development corpus (participants P1-P8, benchmarks/baseline_coders.py); figures on "
    "those transcripts are not held out for these two constants"
)
"""Provenance note of a similarity coder left at the calibrated defaults."""


def micro_f1(predicted: Sequence[frozenset[str]], gold: Sequence[frozenset[str]]) -> float:
    """Micro-averaged F1 over passages (true positives pooled across codes)."""
    tp = sum(len(p & g) for p, g in zip(predicted, gold, strict=True))
    n_pred = sum(len(p) for p in predicted)
    n_gold = sum(len(g) for g in gold)
    return 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0


def _rationale(code: str, score: float, sentences: int) -> str:
    where = f"best of {sentences} sentences" if sentences > 1 else "one sentence"
    return f"cosine similarity {score:.2f} to the code definition ({where})"


def check_codebook(index_version: str, codebook: Codebook, coder: str) -> None:
    if index_version != codebook.version:
        raise ValueError(
            f"{coder} coder was built for codebook version {index_version}, "
            f"asked to code against {codebook.name!r} version {codebook.version}"
        )


class SimilarityCoder:
    """Applies the codes whose definition embedding is closest to the passage."""

    kind = "similarity"
    prompt_version = ""

    def __init__(
        self,
        index: CodeIndex,
        threshold: float = DEFAULT_THRESHOLD,
        max_codes: int = DEFAULT_MAX_CODES,
        with_previous: bool = False,
    ) -> None:
        if max_codes < 1:
            raise ValueError(f"similarity max codes must be at least 1, not {max_codes}")
        self.index = index
        self.threshold = threshold
        self.max_codes = max_codes
        self.with_previous = with_previous
        self.key_params: list[str] = []
        """More output-changing parameters for the label (e.g. the retrieval k)."""
        self.training: dict | None = None
        """What threshold and max codes were calibrated on (``runs.params["training"]``)."""

    @property
    def model(self) -> str:
        """Provenance and incremental key: the embedding model plus every parameter that
        changes the output (threshold, max codes, previous text, example-enriched code
        vectors, ``key_params``), so changing one codes the passages again."""
        from qualflow.index import collection_name

        parts = [self.index.model, f"threshold={self.threshold:g}", f"max_codes={self.max_codes}"]
        if self.with_previous:
            parts.append("previous")
        plain = collection_name(self.index.codebook, self.index.embedder)
        if self.index.name != plain:
            parts.append(f"vectors={self.index.name.rsplit('-', 1)[-1]}")
        return "|".join([*parts, *self.key_params])

    def select(self, scores: np.ndarray, eligible: np.ndarray | None = None) -> list[int]:
        """Indices of the codes to apply for one row of scores, best first."""
        row = scores if eligible is None else np.where(eligible, scores, -1.0)
        order = np.argsort(-row, kind="stable")[: self.max_codes]
        return [int(i) for i in order if row[i] >= self.threshold]

    def propose(self, requests: Sequence[CodingRequest], codebook: Codebook) -> list[ProposalSet]:
        """Per sentence of each unit, the codes above the threshold; runs of adjacent
        sentences with the same code become one span."""
        check_codebook(self.index.version, codebook, self.kind)
        if not requests:
            return []
        titles = [c.title for c in self.index.codebook.codes]
        groups = [unit_sentences(r) for r in requests]
        contexts = [ctx for group in groups for ctx in group]
        scores = self.index.scores(contexts, with_previous=self.with_previous) if contexts else []
        out, i = [], 0
        for request, group in zip(requests, groups, strict=True):
            eligible = None
            if request.candidates:
                shortlist = {c.code.title for c in request.candidates}
                eligible = np.array([t in shortlist for t in titles])
            decisions = []
            for ctx in group:
                row = scores[i]
                i += 1
                chosen = self.select(row, eligible) if ctx.passage.text.strip() else []
                decisions.append({titles[j]: float(row[j]) for j in chosen})
            proposals = runs_to_proposals(request, decisions, _rationale)
            out.append(
                ProposalSet(
                    passage_id=request.unit.id,
                    coder=self.kind,
                    model=self.model,
                    prompt_version=self.prompt_version,
                    codebook_version=codebook.version,
                    proposals=proposals,
                )
            )
        return out

    def predict(self, queries: Sequence[Query]) -> list[frozenset[str]]:
        """Code sets for plain texts or contexts (whole codebook eligible)."""
        titles = [c.title for c in self.index.codebook.codes]
        scores = self.index.scores(queries, with_previous=self.with_previous)
        return [frozenset(titles[i] for i in self.select(row)) for row in scores]

    def calibrate(self, texts: Sequence[Query], gold_code_sets: Sequence[frozenset[str]]) -> float:
        """Set (and return) the threshold maximizing micro-F1 on these coded passages.

        ``max_codes`` is tuned too (from 1 up to its current value): with about one
        code per passage, fewer codes at a lower threshold often score better.
        """
        if len(texts) != len(gold_code_sets) or not texts:
            raise ValueError("calibrate needs as many gold code sets as texts (at least one)")
        titles = [c.title for c in self.index.codebook.codes]
        scores = self.index.scores(texts, with_previous=self.with_previous)
        gold = np.array([[t in g for t in titles] for g in gold_code_sets], dtype=bool)
        n_gold = sum(len(g) for g in gold_code_sets)
        order = np.argsort(-scores, axis=1, kind="stable")
        ranked = np.take_along_axis(scores, order, axis=1)
        hits = np.take_along_axis(gold, order, axis=1)
        best = (-1.0, self.threshold, self.max_codes)
        for m in range(1, self.max_codes + 1):
            for threshold in np.round(np.arange(0.05, 0.96, 0.01), 2):
                chosen = ranked[:, :m] >= threshold
                tp = int((chosen & hits[:, :m]).sum())
                total = int(chosen.sum()) + n_gold
                f1 = 2 * tp / total if total else 0.0
                if f1 > best[0]:
                    best = (f1, float(threshold), m)
        _, self.threshold, self.max_codes = best
        return self.threshold
