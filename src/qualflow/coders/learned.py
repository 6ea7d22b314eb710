"""The learned baseline: one-vs-rest logistic regression on MiniLM embeddings.

Features are the passage embedding concatenated with the embedding of the text
just before it (``index.previous_text``: the end of the previous turn or of the
passage's own turn; zeros when there is none). Each code gets a balanced logistic
regression; its decision threshold is tuned on out-of-fold predictions over the
training data (folds grouped by participant when participants are known), or
0.5 for codes with too few examples. A passage where no code passes gets "no
code". Trained explicitly (``qualflow train learned``, ``qualflow.training``) from
named gold sets and/or review decisions; it is the cheap baseline every LLM run is
compared against.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qualflow.coders.sentence_runs import runs_to_proposals, unit_sentences
from qualflow.embeddings import DIMENSIONS, MiniLMEmbedding
from qualflow.index import previous_text
from qualflow.models import Codebook, CodingRequest, PassageContext, ProposalSet, short_hash

if TYPE_CHECKING:
    from qualflow.settings import Settings

FORMAT_VERSION = 2
"""Saved-file format; version 1 files (no name or training provenance) still load."""
MIN_POSITIVES_TO_TUNE = 4


def features(contexts: Sequence[PassageContext], embedder: MiniLMEmbedding) -> np.ndarray:
    """Passage embedding ++ previous-turn embedding (zeros when there is none)."""
    passages = embedder.embed([c.passage.text for c in contexts])
    previous = np.zeros((len(contexts), DIMENSIONS), dtype=np.float32)
    texts = [previous_text(c) for c in contexts]
    with_before = [i for i, t in enumerate(texts) if t]
    if with_before:
        previous[with_before] = embedder.embed([texts[i] for i in with_before])
    return np.hstack([passages, previous])


def training_hash(
    contexts: Sequence[PassageContext],
    code_sets: Sequence[frozenset[str]],
    hyperparameters: Sequence[Any] = (),
) -> str:
    """Hash of what the coder's output depends on: the training texts (passage and the
    text before it), their codes, and the hyperparameters (C, folds, tuning)."""
    rows = sorted(
        (c.passage.text, previous_text(c), tuple(sorted(codes)))
        for c, codes in zip(contexts, code_sets, strict=True)
    )
    return short_hash(*rows, *hyperparameters, length=12)


def best_threshold(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The probability cut-off maximizing F1 for one code on held-out predictions."""
    best_f1, best_t = -1.0, 0.5
    for t in np.round(np.arange(0.05, 0.96, 0.025), 3):
        predicted = probabilities >= t
        tp = float(np.sum(predicted & truth))
        denominator = float(np.sum(predicted) + np.sum(truth))
        f1 = 2 * tp / denominator if denominator else 0.0
        if f1 > best_f1:
            best_f1, best_t = f1, float(t)
    return best_t


class LearnedCoder:
    """Logistic regression per code on MiniLM embeddings (fit, save, load, propose)."""

    kind = "learned"
    prompt_version = ""

    def __init__(self, C: float = 1.0, folds: int = 5, tune_thresholds: bool = True) -> None:
        self.C = C
        self.folds = folds
        self.tune_thresholds = tune_thresholds
        self.codes: list[str] = []
        self.models: list[Any] = []
        self.thresholds: list[float] = []
        self.model = "logreg-minilm:untrained"
        self.trained_on = 0
        self.embedder = MiniLMEmbedding()
        self.name: str | None = None
        self.codebook_version: str | None = None
        self.training: dict[str, Any] | None = None
        """What it learned from (``runs.params["training"]``); set by ``qualflow.training``."""

    # ------------------------------------------------------------------ training

    def fit(
        self, contexts: Sequence[PassageContext], code_sets: Sequence[frozenset[str]]
    ) -> LearnedCoder:
        """Train on coded passages; codes never (or always) applied are skipped."""
        if len(contexts) != len(code_sets):
            raise ValueError(f"fit: {len(contexts)} passages but {len(code_sets)} code sets")
        if not contexts:
            raise ValueError("fit: no coded passages to train on")
        x = features(contexts, self.embedder)
        all_codes = sorted(set().union(*code_sets))
        y = np.array([[code in s for code in all_codes] for s in code_sets], dtype=bool)
        keep = [j for j in range(len(all_codes)) if 0 < y[:, j].sum() < len(contexts)]
        if not keep:
            raise ValueError("fit: no code has both positive and negative examples")
        self.codes = [all_codes[j] for j in keep]
        y = y[:, keep]
        groups = [c.participant_id or c.passage.transcript_id for c in contexts]
        self.models = [self._classifier().fit(x, y[:, j]) for j in range(len(self.codes))]
        self.thresholds = self._tuned_thresholds(x, y, groups)
        hyper = (self.C, self.folds, self.tune_thresholds)
        self.model = f"logreg-minilm:{training_hash(contexts, code_sets, hyper)}"
        self.trained_on = len(contexts)
        return self

    def _classifier(self) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000)

    def _tuned_thresholds(self, x: np.ndarray, y: np.ndarray, groups: list[str]) -> list[float]:
        """Per-code thresholds from out-of-fold probabilities (0.5 when not tunable)."""
        default = [0.5] * y.shape[1]
        n_groups = len(set(groups))
        if not self.tune_thresholds or len(x) < 2 * self.folds:
            return default
        from sklearn.model_selection import GroupKFold, KFold

        if n_groups >= self.folds:
            splits = list(GroupKFold(n_splits=self.folds).split(x, groups=groups))
        else:
            splits = list(KFold(self.folds, shuffle=True, random_state=0).split(x))
        out_of_fold = np.full(y.shape, np.nan)
        for j in range(y.shape[1]):
            if y[:, j].sum() < MIN_POSITIVES_TO_TUNE:
                continue
            for train, test in splits:
                labels = y[train, j]
                if labels.all() or not labels.any():
                    continue
                model = self._classifier().fit(x[train], labels)
                out_of_fold[test, j] = model.predict_proba(x[test])[:, 1]
        thresholds = []
        for j in range(y.shape[1]):
            seen = ~np.isnan(out_of_fold[:, j])
            if y[seen, j].sum() < MIN_POSITIVES_TO_TUNE:
                thresholds.append(0.5)
            else:
                thresholds.append(best_threshold(out_of_fold[seen, j], y[seen, j]))
        return thresholds

    # ------------------------------------------------------------------ prediction

    def probabilities(self, contexts: Sequence[PassageContext]) -> np.ndarray:
        """Shape (len(contexts), len(self.codes))."""
        if not self.models:
            raise RuntimeError("LearnedCoder is not trained: call fit() or load() first")
        x = features(contexts, self.embedder)
        return np.column_stack([m.predict_proba(x)[:, 1] for m in self.models])

    def predict(self, contexts: Sequence[PassageContext]) -> list[frozenset[str]]:
        p = self.probabilities(contexts)
        limits = np.array(self.thresholds)
        return [frozenset(self.codes[j] for j in np.flatnonzero(row >= limits)) for row in p]

    def propose(self, requests: Sequence[CodingRequest], codebook: Codebook) -> list[ProposalSet]:
        """Per sentence of each unit, the codes whose probability passes their
        threshold; runs of adjacent sentences with the same code become one span."""
        if not requests:
            return []
        known = set(codebook.titles())
        groups = [unit_sentences(r) for r in requests]
        contexts = [ctx for group in groups for ctx in group]
        p = self.probabilities(contexts) if contexts else np.zeros((0, len(self.codes)))
        out, i = [], 0
        for request, group in zip(requests, groups, strict=True):
            rows = p[i : i + len(group)]
            i += len(group)
            out.append(self._proposal_set(request, group, rows, known, codebook))
        return out

    def _proposal_set(
        self,
        request: CodingRequest,
        sentences: list[PassageContext],
        rows: np.ndarray,
        known: set[str],
        codebook: Codebook,
    ) -> ProposalSet:
        limits = np.array(self.thresholds)
        decisions = [
            {self.codes[j]: float(row[j]) for j in np.flatnonzero(row >= limits)}
            if ctx.passage.text.strip()
            else {}
            for ctx, row in zip(sentences, rows, strict=True)
        ]
        shortlist = {c.code.title for c in request.candidates}
        valid, invalid = [], []
        for proposal in runs_to_proposals(request, decisions, self._rationale):
            proposal.in_candidates = not shortlist or proposal.code in shortlist
            if proposal.code in known:
                valid.append(proposal)
            else:
                proposal.valid = False
                proposal.invalid_reason = f"code not in codebook version {codebook.version}"
                invalid.append(proposal)
        return ProposalSet(
            passage_id=request.unit.id,
            coder=self.kind,
            model=self.model,
            prompt_version=self.prompt_version,
            codebook_version=codebook.version,
            proposals=valid,
            invalid=invalid,
        )

    def _rationale(self, code: str, probability: float, sentences: int) -> str:
        j = self.codes.index(code)
        where = f", best of {sentences} sentences" if sentences > 1 else ""
        return (
            f"logistic regression probability {probability:.2f} (threshold "
            f"{self.thresholds[j]:.2f}, trained on {self.trained_on} passages{where})"
        )

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        import joblib

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": FORMAT_VERSION,
            "embedding": MiniLMEmbedding.name(),
            "model_sha256": self.embedder.model_sha256,
            "C": self.C,
            "codes": self.codes,
            "models": self.models,
            "thresholds": self.thresholds,
            "model": self.model,
            "trained_on": self.trained_on,
            "folds": self.folds,
            "tune_thresholds": self.tune_thresholds,
            "name": self.name,
            "codebook_version": self.codebook_version,
            "training": self.training,
        }
        joblib.dump(state, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LearnedCoder:
        """A saved coder. Only load files you wrote: joblib files can run code."""
        import joblib

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no saved learned coder")
        state = joblib.load(path)
        if not isinstance(state, dict) or state.get("format") not in (1, FORMAT_VERSION):
            raise ValueError(f"{path}: not a qualflow learned coder (format {FORMAT_VERSION})")
        coder = cls(
            C=state["C"],
            folds=state.get("folds", 5),
            tune_thresholds=state.get("tune_thresholds", True),
        )
        coder.codes, coder.models = state["codes"], state["models"]
        coder.thresholds, coder.model = state["thresholds"], state["model"]
        coder.trained_on = state["trained_on"]
        coder.embedder = MiniLMEmbedding(model_sha256=state["model_sha256"])
        coder.name = state.get("name")
        coder.codebook_version = state.get("codebook_version")
        coder.training = state.get("training")
        return coder


def default_path(settings: Settings, codebook: Codebook, data_hash: str = "") -> Path:
    """A file name for a learned coder of a codebook version (and training-label hash);
    coders trained with ``qualflow train`` live by name in ``qualflow.training``."""
    suffix = f"-{data_hash}" if data_hash else ""
    return settings.data_dir / "models" / f"learned-{codebook.version}{suffix}.joblib"
