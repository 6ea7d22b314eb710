"""Open a coder by name: ``llm``, ``similarity[:NAME]``, ``learned[:NAME]``, or an
importable spec.

``open_coder`` is a context manager because the LLM coder may own a process (the
embedded llama.cpp server) that must stop when the run ends. An importable spec
``package.module:name`` names a callable ``(settings, store, index)`` returning a
coder or a context manager yielding one: a way to plug in a custom coder (the tests
use it to run a real flow process with a slow, scripted coder). A plug-in gets the
codebook index whatever ``retrieval_k`` is, unless the callable says
``needs_index = False``.

Nothing trains here: ``learned:NAME`` and ``similarity:NAME`` load coders trained
with ``qualflow train`` (``qualflow.training``); plain ``learned`` is the one trained
learned coder of the workspace, and an error that says how to train one when there is
none. Every coder carries what it learned from (``training``) and which few-shot
examples it was shown (``few_shot``); :func:`run_provenance` turns that into the run's
``params``. Every parameter that changes a coder's output is in its ``model`` label,
so changing one makes an incremental run code the passages again.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qualflow.coders.base import Coder
    from qualflow.models import Codebook
    from qualflow.settings import Settings
    from qualflow.store import Store

CODER_KINDS = ("llm", "similarity", "learned")
TRAINED_KINDS = ("learned", "similarity")


class CoderError(ValueError):
    """A coder that cannot be opened (unknown name, not trained, ...)."""


def parse_kind(kind: str) -> tuple[str, str | None]:
    """``learned:dev`` -> (``learned``, ``dev``); ``llm`` -> (``llm``, None); a plug-in
    spec ``module:callable`` is returned whole."""
    base, sep, name = kind.partition(":")
    if base in TRAINED_KINDS:
        if sep and not name:
            raise CoderError(f"coder '{kind}': give the trained coder's name after the colon")
        return base, name or None
    return kind, None


def needs_index(kind: str, settings: Settings) -> bool:
    """Whether a run with this coder needs the codebook's vector index."""
    base, _ = parse_kind(kind)
    if base == "similarity":
        return True
    if base == "learned":
        return False
    if base != "llm" and ":" in base:  # a plug-in: give it the index unless it declines
        return bool(getattr(_import_spec(base), "needs_index", True))
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

    ``codebook`` is the codebook the run codes against (default: the index's or the
    workspace setting); a trained coder must share codes with it.
    """
    base, name = parse_kind(kind)
    if base == "llm":
        from qualflow.local_llm import coder_from_settings

        with coder_from_settings(settings, store) as coder:
            coder.model = keyed_label(coder.model, _llm_key_params(coder, settings))
            yield coder
    elif base == "similarity":
        yield _similarity(settings, index, name)
    elif base == "learned":
        yield _learned(settings, store, codebook or _codebook(settings, index), name)
    elif ":" in base:
        made = _import_spec(base)(settings, store, index)
        if isinstance(made, AbstractContextManager):
            with made as coder:
                yield coder
        else:
            yield made
    else:
        raise CoderError(
            f"unknown coder '{kind}': use one of {', '.join(CODER_KINDS)} (learned:NAME and "
            "similarity:NAME for trained ones) or an importable 'module:callable'"
        )


def run_provenance(coder: Any) -> dict[str, Any]:
    """``runs.params`` entries for what the coder learned from and was shown:
    ``training`` and ``few_shot`` (absent when it learned from / was shown nothing)."""
    out: dict[str, Any] = {}
    if training := getattr(coder, "training", None):
        out["training"] = dict(training)
    if few_shot := getattr(coder, "few_shot", None):
        out["few_shot"] = dict(few_shot)
    return out


def keyed_label(model: str, params: list[str]) -> str:
    """A model label with the output-changing parameters appended (``a|k=10|...``)."""
    return "|".join([model, *params]) if params else model


def _llm_key_params(coder: Any, settings: Settings) -> list[str]:
    """LLM parameters that change its answers, each only when not at its neutral value
    (so the labels of default runs stay as they were): retrieved candidates instead of
    the whole codebook, few-shot examples (how many per code, from where), temperature
    and passages per call. Which examples were shown is in the run's ``few_shot``; new
    review decisions change them without recoding everything already coded."""
    params = []
    if settings.retrieval_k > 0:
        params.append(f"k={settings.retrieval_k}")
    few_shot = getattr(coder, "few_shot", None)
    if few_shot:
        params.append(f"few_shot={few_shot['per_code']}:{'+'.join(few_shot['sources'])}")
    if settings.llm_temperature != 0:
        params.append(f"temperature={settings.llm_temperature:g}")
    if settings.llm_batch_size != 1:
        params.append(f"batch={settings.llm_batch_size}")
    return params


def _similarity(settings: Settings, index: Any, name: str | None) -> Coder:
    from qualflow.coders.similarity import (
        DEFAULT_MAX_CODES,
        DEFAULT_NOTE,
        DEFAULT_THRESHOLD,
        SimilarityCoder,
    )

    if index is None:
        raise CoderError("the similarity coder needs the codebook index")
    if name is not None:
        coder = _load_trained(settings, "similarity", name, index=index)
    else:
        coder = SimilarityCoder(
            index,
            threshold=settings.similarity_threshold,
            max_codes=settings.similarity_max_codes,
        )
        if (coder.threshold, coder.max_codes) == (DEFAULT_THRESHOLD, DEFAULT_MAX_CODES):
            coder.training = {
                "model": "similarity",
                "sources": [],
                "transcripts": [],
                "units": 0,
                "label_hash": "",
                "note": DEFAULT_NOTE,
            }
    if settings.retrieval_k > 0:  # candidates restrict the eligible codes
        coder.key_params.append(f"k={settings.retrieval_k}")
    return coder


def _codebook(settings: Settings, index: Any) -> Codebook:
    if index is not None and getattr(index, "codebook", None) is not None:
        return index.codebook
    from qualflow.codebook import load_codebook

    return load_codebook(settings.codebook)


def _learned(settings: Settings, store: Store, codebook: Codebook, name: str | None) -> Coder:
    """The trained learned coder ``name`` (or the workspace's only one), checked to
    share codes with the codebook the run codes against."""
    from qualflow.training import TrainingError, default_trained_name

    if name is None:
        try:
            name = default_trained_name(settings, "learned", store.gold_sets())
        except TrainingError as exc:
            raise CoderError(str(exc)) from exc
    coder = _load_trained(settings, "learned", name)
    shared = set(coder.codes) & set(codebook.titles())
    if not shared:
        raise CoderError(
            f"the learned coder '{name}' knows none of the codes of codebook "
            f"'{codebook.name}' (version {codebook.version}): it was trained for codebook "
            f"version {coder.codebook_version}; train one for this codebook"
        )
    return coder


def _load_trained(settings: Settings, kind: str, name: str, *, index: Any = None) -> Any:
    from qualflow.training import TrainingError, load_trained

    try:
        return load_trained(settings, kind, name, index=index).coder
    except TrainingError as exc:
        raise CoderError(str(exc)) from exc


def _import_spec(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise CoderError(f"cannot import coder '{spec}': {exc}") from exc
