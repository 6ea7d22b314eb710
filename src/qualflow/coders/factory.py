"""Open a coder by name: ``llm``, ``similarity``, ``learned``, or an importable spec.

``open_coder`` is a context manager because the LLM coder may own a process (the
embedded llama.cpp server) that must stop when the run ends. An importable spec
``package.module:name`` names a callable ``(settings, store, index)`` returning a
coder or a context manager yielding one: a way to plug in a custom coder (the tests
use it to run a real flow process with a slow, scripted coder).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from qualflow.models import short_hash

if TYPE_CHECKING:
    from qualflow.coders.base import Coder
    from qualflow.models import Codebook
    from qualflow.settings import Settings
    from qualflow.store import Store

CODER_KINDS = ("llm", "similarity", "learned")


class CoderError(ValueError):
    """A coder that cannot be opened (unknown name, nothing to train on, ...)."""


def needs_index(kind: str, settings: Settings) -> bool:
    """Whether a run with this coder needs the codebook's vector index."""
    if kind == "similarity":
        return True
    if kind == "learned":
        return False
    return settings.retrieval_k > 0


@contextmanager
def open_coder(
    kind: str,
    settings: Settings,
    store: Store,
    index: Any = None,
    *,
    codebook: Codebook | None = None,
) -> Iterator[Coder]:
    """Yield a ready coder of ``kind``; resources it owns are released on exit.

    ``codebook`` is needed by the learned coder (which model file to load or train)
    and defaults to the index's codebook or the workspace setting.
    """
    if kind == "llm":
        from qualflow.local_llm import coder_from_settings

        with coder_from_settings(settings, store) as coder:
            yield coder
    elif kind == "similarity":
        yield _similarity(settings, index)
    elif kind == "learned":
        yield _learned(settings, store, codebook or _codebook(settings, index))
    elif ":" in kind:
        made = _import_spec(kind)(settings, store, index)
        if isinstance(made, AbstractContextManager):
            with made as coder:
                yield coder
        else:
            yield made
    else:
        raise CoderError(
            f"unknown coder '{kind}': use one of {', '.join(CODER_KINDS)} "
            "or an importable 'module:callable'"
        )


def _similarity(settings: Settings, index: Any) -> Coder:
    from qualflow.coders.similarity import SimilarityCoder

    if index is None:
        raise CoderError("the similarity coder needs the codebook index")
    threshold = getattr(settings, "similarity_threshold", None)
    if threshold is None:
        return SimilarityCoder(index)
    return SimilarityCoder(index, threshold=threshold)


def _codebook(settings: Settings, index: Any) -> Codebook:
    if index is not None and getattr(index, "codebook", None) is not None:
        return index.codebook
    from qualflow.codebook import load_codebook

    return load_codebook(settings.codebook)


def _learned(settings: Settings, store: Store, codebook: Codebook) -> Coder:
    """The workspace's learned coder for this codebook version and these gold codings:
    loaded if saved, otherwise trained on the gold codings in the store and saved.

    The saved file is keyed by the codebook version and a hash of the training labels,
    so changed gold codings train a new model instead of reusing a stale one.
    """
    from qualflow.coders.learned import LearnedCoder, default_path

    contexts, code_sets = training_data(store, codebook)
    if not contexts:
        saved = sorted(
            default_path(settings, codebook).parent.glob(f"learned-{codebook.version}*.joblib"),
            key=lambda p: p.stat().st_mtime,
        )
        if saved:
            return LearnedCoder.load(saved[-1])
        raise CoderError(
            "the learned coder has nothing to train on: no gold codings in the store "
            "and no saved model for this codebook version. Import a gold set first "
            "(qualflow gold import FILE.jsonl --set NAME, or qualflow import taguette|qdpx) "
            "or choose --coder llm or similarity."
        )
    labels = sorted(
        (c.passage.id, sorted(codes)) for c, codes in zip(contexts, code_sets, strict=True)
    )
    path = default_path(settings, codebook, short_hash(labels, length=12))
    if path.is_file():
        return LearnedCoder.load(path)
    try:
        coder = LearnedCoder().fit(contexts, code_sets)
    except ValueError as exc:
        raise CoderError(f"cannot train the learned coder on the gold codings: {exc}") from exc
    coder.save(path)
    return coder


def training_data(store: Store, codebook: Codebook) -> tuple[list[Any], list[frozenset[str]]]:
    """Gold-coded passages (codes outside this codebook dropped) with their code sets.

    Where several gold coders coded a passage, the first gold set's first coder wins
    (sorted by name): one label set per passage.
    """
    titles = set(codebook.titles())
    labels: dict[str, frozenset[str]] = {}
    for gold_set in sorted(store.gold_sets()):
        for _coder, coding in sorted(store.gold(gold_set).items()):
            for pid, codes in coding.items():
                labels.setdefault(pid, frozenset(c for c in codes if c in titles))
    passages = store.passages(ids=list(labels))
    contexts = store.contexts(passages)
    return contexts, [labels[c.passage.id] for c in contexts]


def _import_spec(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise CoderError(f"cannot import coder '{spec}': {exc}") from exc
