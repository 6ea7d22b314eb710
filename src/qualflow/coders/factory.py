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

if TYPE_CHECKING:
    from qualflow.coders.base import Coder
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
def open_coder(kind: str, settings: Settings, store: Store, index: Any = None) -> Iterator[Coder]:
    """Yield a ready coder of ``kind``; resources it owns are released on exit."""
    if kind == "llm":
        from qualflow.local_llm import coder_from_settings

        with coder_from_settings(settings, store) as coder:
            yield coder
    elif kind == "similarity":
        yield _similarity(settings, index)
    elif kind == "learned":
        yield _learned(settings, store)
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


def _learned(settings: Settings, store: Store) -> Coder:
    from qualflow.coders.learned import LearnedCoder

    return LearnedCoder.from_workspace(settings, store)


def _import_spec(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise CoderError(f"cannot import coder '{spec}': {exc}") from exc
