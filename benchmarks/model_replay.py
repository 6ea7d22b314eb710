"""A capable model's SERDIF spans replayed through the real coding path, by unit.

    .venv/bin/python benchmarks/model_replay.py [--budgets 200] [--n-boot 1000]

``../shared/corpora/serdif-usability/model-spans/spans.jsonl`` holds span codings of
P3, P6 and P10 by a strong language model (read in place, never copied). The fake
OpenAI-compatible endpoint (``tests.fake_openai``) answers every request with the spans
of that file whose text lies inside the request's coded turns (``tests.model_replay``),
so a capable model's answers run through chunking, the rendered prompt, the structured
answer, quote placement, validation and storage, with no model on this machine. The
stored spans are then scored against the human coder (the study's Taguette highlights
carried onto the same ODT text) at span, sentence and turn level, next to the same
file scored directly (no pipeline).

Units compared: chunks of each budget, and one sentence per call ("the same answers
cut down to sentence units": each sentence is answered with the spans that lie inside
it, so a highlight running over several sentences cannot be given). Prompt tokens are
counted on the requests really sent, with the SmolLM2 tokenizer (as prompt_cost.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import serdif_support as serdif  # noqa: E402

from qualflow import spans as sp  # noqa: E402
from qualflow.models import SpanCoding  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="200")
    ap.add_argument("--sentences", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    if not serdif.available():
        sys.exit(f"SERDIF corpus with model spans not found under {serdif.SERDIF}")
    units = [(f"chunk:{b}", {"coding_unit": "chunk", "chunk_words": int(b)})
             for b in args.budgets.split(",")]  # fmt: skip
    if args.sentences:
        units.append(("sentence", {"coding_unit": "passage"}))
    tokens = _tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        direct = replay_direct(args.n_boot)
        print(_header(direct))
        print(_row("straight from the file", direct["levels"], direct))
        for label, update in units:
            result = replay(Path(tmp) / label.replace(":", "-"), update, tokens=tokens)
            result["levels"] = score(result["coding"], result["transcripts"], args.n_boot)
            print(_row(f"through the pipeline, {label}", result["levels"], result))


def replay(workspace: Path, update: dict, *, tokens=None) -> dict:
    """Ingest P3, P6, P10, code them with the replayed model, return what was stored."""
    from tests.fake_openai import FakeOpenAI
    from tests.model_replay import ModelReplay, load_model_spans

    from qualflow import pipeline
    from qualflow.codebook import load_codebook
    from qualflow.coders.factory import open_coder
    from qualflow.ingest import ingest_paths
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    settings = load_settings(workspace).model_copy(update=update)
    store = open_store(settings)
    try:
        ingest_paths(store, [serdif.odt(n) for n in serdif.DOCUMENTS], settings)
        transcripts = {t.name: t for t in store.transcripts()}
        book = load_codebook(str(serdif.CODEBOOK))
        placed = load_model_spans(serdif.MODEL_SPANS, transcripts.values())
        started = time.monotonic()
        with FakeOpenAI() as fake:
            responder = ModelReplay(placed.spans, transcripts.values())
            fake.responder = responder
            settings = settings.model_copy(
                update={
                    "llm_base_url": fake.base_url,
                    "llm_model": "replayed-model",
                    "llm_max_retries": 0,
                    "retrieval_k": 0,
                    "llm_concurrency": 4,
                }
            )
            with open_coder("llm", settings, store, codebook=book) as coder:
                summary = pipeline.run_coding(store, coder, book, settings)
            bodies = [r["body"] for r in fake.requests if r.get("body")]
        coding = store.span_coding("replayed", run_id=summary.run_id)
        sets = store.proposal_sets(run_id=summary.run_id)
        return {
            "summary": summary,
            "transcripts": transcripts,
            "coding": coding,
            "answered_spans": len(responder.answered),
            "invalid": sum(len(ps.invalid) for ps in sets),
            "located": {
                how: sum(1 for ps in sets for p in ps.proposals if p.located == how)
                for how in ("exact", "tolerant")
            },
            "calls": len(bodies),
            "prompt_tokens": sum(_prompt_tokens(b, tokens) for b in bodies) if tokens else None,
            "seconds": time.monotonic() - started,
        }
    finally:
        store.close()


def replay_direct(n_boot: int) -> dict:
    """The file scored straight, on the ODT reading (no chunks, no prompt)."""
    from qualflow.readers import read_transcript

    transcripts = {n: read_transcript(serdif.odt(n)) for n in serdif.DOCUMENTS}
    spans, _ = serdif.model_file_spans(transcripts)
    coding = SpanCoding("model (file)", spans, codable_scope(transcripts))
    return {"levels": score(coding, transcripts, n_boot), "transcripts": transcripts}


def codable_scope(transcripts: dict) -> dict:
    from qualflow.segment import is_interviewer

    return {
        t.id: [(x.char_start, x.char_end) for x in t.turns if not is_interviewer(x.speaker)]
        for t in transcripts.values()
    }


def score(coding: SpanCoding, transcripts: dict, n_boot: int) -> sp.LevelAgreement:
    """``coding`` against the human coder at span, sentence and turn level; unanswered
    codable text counts as no code (the other coder's scope is widened to the codable
    text, so a miss is a miss)."""
    from qualflow.segment import is_interviewer, segment

    scope = codable_scope(transcripts)
    human = serdif.human_coding(transcripts, scope)
    other = SpanCoding(coding.coder, coding.spans, scope)
    sentences = [p for t in transcripts.values() for p in segment(t, "sentence") if p.codable]
    turns = [
        u
        for t in transcripts.values()
        for u in sp.turn_units(
            t, indices=[x.index for x in t.turns if not is_interviewer(x.speaker)]
        )
    ]
    return sp.agreement_at_levels(
        human,
        other,
        sentences=sentences,
        turns=turns,
        n_boot=n_boot,
        clusters={t.id: t.name for t in transcripts.values()},
    )


def _prompt_tokens(body: dict, tokens) -> int:
    text = "".join(str(m.get("content") or "") for m in body.get("messages", []))
    tools = json.dumps(body.get("tools") or body.get("response_format") or {})
    return tokens(text) + tokens(tools) + 4 * len(body.get("messages", []))


def _tokenizer():
    try:
        from llama_cpp import Llama

        from qualflow.local_llm import find_model
    except ImportError:
        return None
    vocab = Llama(model_path=str(find_model()), vocab_only=True, verbose=False)
    return lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def _f(e) -> str:
    return "-" if e is None or e.value is None else f"{e.value:.3f}"


def _header(direct: dict) -> str:
    n = sum(1 for _ in direct["levels"].sentence.codes)
    return (
        f"{'coding':<34} {'spans':>6} {'calls':>6} {'tokens/sent':>11}  "
        f"sentence P / R / F1 / kappa        turn F1  span char F1  highlight F1   ({n} codes)"
    )


def _row(label: str, levels: sp.LevelAgreement, result: dict) -> str:
    s, t, sp_ = levels.sentence.overall, levels.turn.overall, levels.span.overall
    calls = result.get("calls")
    per = (
        f"{result['prompt_tokens'] / levels.sentence.n_passages:.0f}"
        if result.get("prompt_tokens")
        else "-"
    )
    spans = len(result["coding"].spans) if "coding" in result else "-"
    return (
        f"{label:<34} {spans!s:>6} {calls if calls is not None else '-'!s:>6} {per:>11}  "
        f"{_f(s['micro_precision'])} / {_f(s['micro_recall'])} / {_f(s['micro_f1'])} / "
        f"{_f(s['pooled_kappa'])}   {_f(t['micro_f1']):>7}  {_f(sp_['micro_char_f1']):>12}  "
        f"{_f(sp_['micro_highlight_f1']):>12}"
    )


if __name__ == "__main__":
    main()
