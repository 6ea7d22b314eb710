"""The LLM coder: any OpenAI-compatible chat model, with pydantic structured output.

One code path for every model: LangChain's ``ChatOpenAI`` reaches OpenAI, vLLM,
Ollama, LM Studio, llama.cpp or the embedded local model by ``base_url``. For each
batch of units (chunks of consecutive turns; ``settings.llm_batch_size`` per call)
the coder renders the prompt from ``prompts/``, asks through ``LLMClient`` (limits,
retries, cache, cost) and gets, for every code that applies, verbatim quotes. Each
quote is placed as a span in a coded turn of the unit (``validate.place``: exactly,
then tolerantly; offsets into the original text). An answer with an invalid proposal
is re-asked once with the validation errors; what still fails becomes a
``needs_human`` ProposalSet with the raw response and the reason; nothing raises for
one bad unit.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, create_model, field_validator

from qualflow.llm_calls import CallResult, LLMCallError, LLMClient, ResponseCache, cache_key
from qualflow.models import Code, Codebook, CodingRequest, ProposalSet, Usage
from qualflow.prompts import excerpt_view, fence, load_prompt
from qualflow.validate import RawCode, check_answer, must_reask

if TYPE_CHECKING:
    from qualflow.privacy import Pseudonymizer
    from qualflow.settings import Settings

log = logging.getLogger(__name__)

Method = Literal["function_calling", "json_schema", "json_mode"]


# --------------------------------------------------------------------------- answer schema


class ProposedCode(BaseModel):
    """One code that applies, with the stretches of talk that carry it."""

    code: str = Field(description="Exact code title from the codebook.")
    quotes: list[str] = Field(
        description="Verbatim quotes from the coded turns, each from a single turn: the "
        "whole stretch of talk (complete sentences) that carries the code."
    )
    rationale: str = Field(description="Why the code applies, in one or two sentences.")
    confidence: float = Field(
        description="Confidence between 0 and 1.",
        json_schema_extra={"minimum": 0, "maximum": 1},
    )

    @field_validator("quotes", mode="before")
    @classmethod
    def _one_quote(cls, value: Any) -> Any:
        """A single quote given as a string is read as a list of one."""
        return [value] if isinstance(value, str) else value


class CodingAnswer(BaseModel):
    """The codes that apply to the excerpt; an empty list when no code applies."""

    codes: list[ProposedCode] = Field(description="Codes that apply (may be empty).")


class ExcerptAnswer(BaseModel):
    """The codes that apply to one excerpt."""

    excerpt_id: str = Field(description="The excerpt id as given, e.g. C1.")
    codes: list[ProposedCode] = Field(description="Codes that apply (may be empty).")


class BatchAnswer(BaseModel):
    """The codes for every excerpt given; an empty codes list where no code applies."""

    excerpts: list[ExcerptAnswer]


def answer_schema(titles: Sequence[str], labels: Sequence[str] = ()) -> type[BaseModel]:
    """The answer model of one call: ``code`` limited to ``titles``, ``excerpt_id`` to
    ``labels`` (batched calls; no labels -> ``CodingAnswer`` shape).

    The limits live in the JSON schema sent with the request (``enum``; confidence
    carries ``minimum``/``maximum`` in every schema): OpenAI honours them and
    llama.cpp turns the tool's schema into a grammar (it honours ``enum``, not the
    number bounds). Parsing stays as lenient as the static models so that
    ``validate.check`` judges each proposal and records its reason; validation is
    unchanged. Models are cached per (sorted titles, labels).
    """
    return _answer_schema(tuple(sorted(set(titles))), tuple(labels))


@functools.lru_cache(maxsize=256)
def _answer_schema(titles: tuple[str, ...], labels: tuple[str, ...]) -> type[BaseModel]:
    if not titles:
        code_model: type[BaseModel] = ProposedCode
    else:
        code_model = create_model(
            "ProposedCode",
            __base__=ProposedCode,
            __doc__=ProposedCode.__doc__,
            code=(
                str,
                Field(
                    description="Exact code title, one of the codebook titles listed.",
                    json_schema_extra={"enum": list(titles)},
                ),
            ),
        )
    codes_field = (list[code_model], Field(description="Codes that apply (may be empty)."))
    if not labels:
        return create_model(
            "CodingAnswer", __base__=CodingAnswer, __doc__=CodingAnswer.__doc__, codes=codes_field
        )
    excerpt = create_model(
        "ExcerptAnswer",
        __base__=ExcerptAnswer,
        __doc__=ExcerptAnswer.__doc__,
        excerpt_id=(
            str,
            Field(
                description="The excerpt id as given, e.g. C1.",
                json_schema_extra={"enum": list(labels)},
            ),
        ),
        codes=codes_field,
    )
    return create_model(
        "BatchAnswer",
        __base__=BatchAnswer,
        __doc__=BatchAnswer.__doc__,
        excerpts=(list[excerpt], ...),
    )


# --------------------------------------------------------------------------- one batch


@dataclass
class _Item:
    label: str
    request: CodingRequest
    outcome: tuple[list, list] | None = None  # (valid, invalid)
    errors: list[str] = field(default_factory=list)
    earlier: list = field(default_factory=list)  # invalid proposals of the first ask
    verdict: str | None = None  # the whole answer needs a human (no re-ask)

    @property
    def failed(self) -> bool:
        return bool(self.errors)


class LLMCoder:
    """Coder protocol implementation over an OpenAI-compatible endpoint.

    ``model_label`` is the model name recorded as provenance when it differs from
    the name sent to the server. ``examples`` maps code titles to human-coded example
    texts (few-shot); up to ``settings.llm_few_shot`` are shown per candidate.
    With ``settings.pseudonymize``, names, emails, phone numbers and URLs are replaced
    before any call to a non-loopback endpoint (by ``pseudonymizer``, or an in-memory
    one); a ``pseudonymizer`` given while ``settings.pseudonymize`` is off is applied
    to every call, loopback included.
    """

    kind = "llm"

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        model: str,
        settings: Settings,
        cache: ResponseCache | None,
        prompt: str = "propose",
        method: Method = "function_calling",
        model_label: str | None = None,
        examples: Mapping[str, list[str]] | None = None,
        pseudonymizer: Pseudonymizer | None = None,
    ):
        self.settings = settings
        self.client = LLMClient(
            base_url=base_url,
            api_key=api_key,
            model=model,
            settings=settings,
            method=method,
            cache=cache,
        )
        self.prompt = load_prompt(prompt)
        self.prompt_version = self.prompt.version
        self.model = model_label or model
        self.method = method
        self.examples = dict(examples or {})
        self.pseudonymizer = pseudonymizer if not self.client.loopback else None
        if settings.pseudonymize and not self.client.loopback and pseudonymizer is None:
            from qualflow.privacy import Pseudonymizer

            log.warning("pseudonymizing without a store: the mapping is kept in memory only")
            self.pseudonymizer = Pseudonymizer.from_settings(settings, store=None)
        if pseudonymizer is not None and not settings.pseudonymize:
            self.pseudonymizer = pseudonymizer  # given explicitly: always applied

    # ------------------------------------------------------------------ dispatch

    @property
    def call_size(self) -> int:
        """Units per LLM request (``llm_batch_size``)."""
        return max(1, self.settings.llm_batch_size)

    @property
    def parallel_calls(self) -> int:
        """Calls in flight at once (``llm_concurrency``)."""
        return max(1, self.settings.llm_concurrency)

    # ------------------------------------------------------------------ protocol

    def propose(self, requests: Sequence[CodingRequest], codebook: Codebook) -> list[ProposalSet]:
        size = self.call_size
        batches = [list(requests[i : i + size]) for i in range(0, len(requests), size)]
        if self.pseudonymizer is not None:
            self.pseudonymizer.learn(requests)
        workers = max(1, min(self.settings.llm_concurrency, len(batches)))
        if workers == 1:
            results = [self._safe_batch(b, codebook) for b in batches]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm") as pool:
                results = list(pool.map(lambda b: self._safe_batch(b, codebook), batches))
        return [ps for batch in results for ps in batch]

    def messages(
        self, requests: Sequence[CodingRequest], codebook: Codebook
    ) -> list[tuple[str, str]]:
        """The (role, text) messages one call for these requests would send (no call)."""
        items = [_Item(label=f"C{i + 1}", request=r) for i, r in enumerate(requests)]
        return self._messages(items, codebook, len(items) > 1)

    def schema(self, requests: Sequence[CodingRequest], codebook: Codebook) -> type[BaseModel]:
        """The answer model one call for these requests would send (its JSON schema,
        with the enum of the code titles shown, is part of every request)."""
        items = [_Item(label=f"C{i + 1}", request=r) for i, r in enumerate(requests)]
        shown = [c.title for c in self._codes(items, codebook)]
        return answer_schema(shown, [it.label for it in items] if len(items) > 1 else ())

    # ------------------------------------------------------------------ internals

    def _safe_batch(self, batch: list[CodingRequest], codebook: Codebook) -> list[ProposalSet]:
        try:
            return self._batch(batch, codebook)
        except Exception as exc:  # a bug or an unexpected error must not stop the run
            log.exception("LLM coder failed on a batch of %d unit(s)", len(batch))
            return [
                self._set(r, codebook, status="needs_human", reason=f"coder error: {exc!r}")
                for r in batch
            ]

    def _batch(self, batch: list[CodingRequest], codebook: Codebook) -> list[ProposalSet]:
        items = [_Item(label=f"C{i + 1}", request=r) for i, r in enumerate(batch)]
        batched = len(items) > 1
        shown = [c.title for c in self._codes(items, codebook)]
        schema = answer_schema(shown, [it.label for it in items] if batched else ())
        messages = self._messages(items, codebook, batched)
        usage = Usage()
        asks = 0
        last_text: str | None = None
        call_error: str | None = None
        transient = False
        try:
            asks = 1
            first = self._ask(messages, schema)
            usage, last_text = usage + first.usage, first.text
            self._judge(items, first, codebook, batched)
            failing = [it for it in items if it.failed]
            if failing:
                for it in failing:
                    it.earlier = [_attempt(p, 1) for p in it.outcome[1]] if it.outcome else []
                reask = self.prompt.reask(
                    self._restore(first.text),
                    [e for it in failing for e in _prefixed(it, batched)],
                    [it.label for it in failing] if batched else [],
                )
                asks += 1
                second = self._ask([*messages, ("human", reask)], schema)
                usage, last_text = usage + second.usage, second.text
                self._judge(failing, second, codebook, batched)
        except LLMCallError as exc:
            usage = usage + exc.usage
            call_error = str(exc)
            transient = exc.retryable
            last_text = exc.last_response or last_text
        return [
            self._final(
                it, codebook, asks, call_error, last_text, _share(usage, i, len(items)), transient
            )
            for i, it in enumerate(items)
        ]

    def _final(
        self,
        it: _Item,
        codebook: Codebook,
        asks: int,
        call_error: str | None,
        last_text: str | None,
        usage: Usage,
        transient: bool = False,
    ) -> ProposalSet:
        """The ProposalSet of one item once its asks are over.

        An item the endpoint never answered because of a transient fault (429, 5xx,
        timeout, connection) after all retries is ``failed``: the pipeline records it
        and leaves it uncoded, so the next run retries it instead of parking it as
        ``needs_human`` for good.
        """
        unanswered = it.outcome is None or (call_error is not None and it.failed)
        if it.outcome is None and transient and call_error:
            return self._set(
                it.request,
                codebook,
                status="failed",
                reason=f"endpoint unavailable: {call_error} [asked {asks} time"
                f"{'s' if asks != 1 else ''}]",
                raw=None,
                attempts=asks,
                usage=usage,
                outcome=([], list(it.earlier)),
            )
        if it.verdict and it.outcome is not None and call_error is None:
            valid, invalid = it.outcome
            return self._set(
                it.request,
                codebook,
                status="needs_human",
                reason=f"{it.verdict} [asked {asks} time{'s' if asks != 1 else ''}]",
                raw=self._restore(last_text) if last_text is not None else None,
                attempts=asks,
                usage=usage,
                outcome=(valid, [*it.earlier, *invalid]),
            )
        if not unanswered and not it.failed:
            valid, invalid = it.outcome or ([], [])
            return self._set(
                it.request,
                codebook,
                status="ok",
                attempts=asks,
                usage=usage,
                outcome=(valid, [*it.earlier, *invalid]),
            )
        reasons = list(it.errors)
        if call_error:
            reasons.append(call_error)
        valid, invalid = it.outcome or ([], [])
        return self._set(
            it.request,
            codebook,
            status="needs_human",
            reason="; ".join(reasons) + f" [asked {asks} time{'s' if asks != 1 else ''}]",
            raw=self._restore(last_text) if last_text is not None else None,
            attempts=asks,
            usage=usage,
            outcome=(valid, [*it.earlier, *invalid]),
        )

    def _ask(self, messages: list[tuple[str, str]], schema: type[BaseModel]) -> CallResult:
        key = cache_key(
            params=self.client.params(),
            prompt=self.prompt.name,
            prompt_version=self.prompt_version,
            schema=schema.model_json_schema(),
            messages=messages,
        )
        response_format = None
        if self.method == "json_mode" and self.client.loopback:
            # llama.cpp constrains JSON mode to a schema given in response_format.
            response_format = {"type": "json_object", "schema": schema.model_json_schema()}
        return self.client.call(messages, schema, key=key, response_format=response_format)

    def _messages(
        self, items: list[_Item], codebook: Codebook, batched: bool
    ) -> list[tuple[str, str]]:
        codes = self._codes(items, codebook)
        views = [excerpt_view(it.label, it.request) for it in items]
        if self.pseudonymizer is not None:
            views = [self.pseudonymizer.view(v) for v in views]
            codes = [self.pseudonymizer.code(c) for c in codes]
        system = self.prompt.system(batched=batched, json_mode=self.method == "json_mode")
        return [("system", system), ("human", self.prompt.user(codes, views))]

    def _codes(self, items: list[_Item], codebook: Codebook) -> list[Code]:
        """Candidate codes of the batch (union, in order); the whole codebook if none."""
        seen: dict[str, Code] = {}
        for it in items:
            for cand in it.request.candidates:
                seen.setdefault(cand.code.title, cand.code)
        codes = list(seen.values()) or list(codebook.codes)
        k = self.settings.llm_few_shot
        if k <= 0 or not self.examples:
            return codes
        texts = {" ".join(it.request.unit.text.split()) for it in items}
        out = []
        for code in codes:
            extra = [
                e for e in self.examples.get(code.title, []) if not any(e in t for t in texts)
            ][:k]
            out.append(
                code.model_copy(update={"examples": [*code.examples, *extra]}) if extra else code
            )
        return out

    def _judge(
        self, items: list[_Item], result: CallResult, codebook: Codebook, batched: bool
    ) -> None:
        """Parse and validate an answer for ``items``; sets each item's outcome and errors."""
        per_label = _answers(result, [it.label for it in items], batched)
        for it in items:
            it.errors, it.verdict = [], None
            answer = per_label.get(it.label)
            if isinstance(answer, str):
                it.errors = [answer]
                it.outcome = ([], [])
                continue
            raws = [self._restore_raw(r) for r in answer]
            candidates = {c.code.title for c in it.request.candidates} or set(codebook.titles())
            valid, invalid, verdict = check_answer(
                raws,
                it.request,
                codebook,
                candidates,
                max_code_share=self.settings.implausible_code_share,
            )
            it.outcome = (valid, invalid)
            it.errors = [p.invalid_reason for p in invalid if must_reask(p)]
            it.verdict = verdict

    def _restore(self, text: str | None) -> str:
        if text is None:
            return ""
        return self.pseudonymizer.restore(text) if self.pseudonymizer else text

    def _restore_raw(self, raw: RawCode) -> RawCode:
        if self.pseudonymizer is None:
            return raw
        restore = self.pseudonymizer.restore
        return RawCode(
            code=raw.code,
            quotes=[restore(q) if isinstance(q, str) else q for q in raw.quotes],
            rationale=restore(raw.rationale) if isinstance(raw.rationale, str) else raw.rationale,
            confidence=raw.confidence,
        )

    def _set(
        self,
        request: CodingRequest,
        codebook: Codebook,
        *,
        status: str,
        reason: str | None = None,
        raw: str | None = None,
        attempts: int = 1,
        usage: Usage | None = None,
        outcome: tuple[list, list] | None = None,
    ) -> ProposalSet:
        valid, invalid = outcome or ([], [])
        return ProposalSet(
            passage_id=request.passage.id,
            coder=self.kind,
            model=self.model,
            prompt_version=self.prompt_version,
            codebook_version=codebook.version,
            status=status,  # type: ignore[arg-type]
            proposals=valid,
            invalid=invalid,
            reason=reason,
            raw_response=raw,
            attempts=attempts,
            usage=usage or Usage(),
        )


# --------------------------------------------------------------------------- helpers


def _answers(result: CallResult, labels: list[str], batched: bool) -> dict[str, Any]:
    """label -> list[RawCode], or an error string for that excerpt."""
    if result.parsed is None:
        reason = result.parse_error or "the answer could not be parsed"
        return dict.fromkeys(labels, reason)
    if not batched:
        return {labels[0]: [_raw(c) for c in result.parsed.codes]}
    out: dict[str, Any] = {}
    for ea in result.parsed.excerpts:
        label = ea.excerpt_id.strip()
        if label in labels and label not in out:
            out[label] = [_raw(c) for c in ea.codes]
    for label in labels:
        out.setdefault(label, f"the answer has no entry for excerpt {label}")
    return out


def _raw(c: ProposedCode) -> RawCode:
    return RawCode(
        code=c.code, quotes=list(c.quotes), rationale=c.rationale, confidence=c.confidence
    )


def _attempt(p, n: int):
    return p.model_copy(update={"invalid_reason": f"attempt {n}: {p.invalid_reason}"})


def _prefixed(item: _Item, batched: bool) -> list[str]:
    return [f"{item.label}: {e}" if batched else e for e in item.errors]


def _share(usage: Usage, i: int, n: int) -> Usage:
    """Item ``i``'s share of a batch's usage: tokens and cost split evenly (remainders to
    the first items), the calls counted on the first passage, so sums over sets are exact."""

    def part(total: int) -> int:
        return total // n + (1 if i < total % n else 0)

    return Usage(
        prompt_tokens=part(usage.prompt_tokens),
        completion_tokens=part(usage.completion_tokens),
        calls=usage.calls if i == 0 else 0,
        cost_usd=usage.cost_usd / n,
    )


__all__ = [
    "BatchAnswer",
    "CodingAnswer",
    "ExcerptAnswer",
    "LLMCoder",
    "ProposedCode",
    "answer_schema",
    "fence",
]
