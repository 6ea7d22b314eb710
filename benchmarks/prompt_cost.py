"""Prompt tokens per coded sentence: chunks of several budgets vs one sentence per call.

    .venv/bin/python benchmarks/prompt_cost.py [--corpus examples|serdif] [--budgets 100,200]
                                               [--codebook benchmark-practices] [--k 0]

Ingests the transcripts (examples/, or the SERDIF development ODTs read in place from
../shared) into a temporary workspace, cuts them into units as a coding run does,
renders the exact messages the LLM coder sends for every unit (no call is made) and
counts, with a real tokenizer (the SmolLM2 tokenizer of the embedded model, llama.cpp
vocabulary only), what one request really carries:

- the system and user messages (codebook, excerpt, instructions), plus the chat
  template's per-message overhead (4 tokens a message, as OpenAI documents it);
- the tool definition sent with function calling, built from the per-call answer model
  (its ``code`` enum lists the code titles shown, so it grows with the codebook).

A coded sentence is a codable sentence inside a unit; the figure is the sum of prompt
tokens over all units divided by the codable sentences they hold. Hosted models
tokenize differently (OpenAI's o200k is typically 10-25% fewer tokens on English
text); the ratio between rows is what matters. Completion tokens depend on the answer,
not the unit size, and are not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERDIF_RAW = ROOT.parent / "shared" / "corpora" / "serdif-usability" / "raw"
MESSAGE_OVERHEAD = 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", choices=("examples", "serdif"), default="examples")
    ap.add_argument("--budgets", default="50,100,150,200,300,400")
    ap.add_argument("--codebook", default="benchmark-practices")
    ap.add_argument("--k", type=int, default=0, help="retrieved candidates (0: whole codebook)")
    args = ap.parse_args()

    from langchain_core.utils.function_calling import convert_to_openai_tool
    from llama_cpp import Llama

    from qualflow import pipeline
    from qualflow.codebook import load_codebook
    from qualflow.coders.llm import LLMCoder
    from qualflow.ingest import ingest_paths
    from qualflow.local_llm import find_model
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    vocab = Llama(model_path=str(find_model()), vocab_only=True, verbose=False)

    def tokens(text: str) -> int:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    sources = _sources(args.corpus)
    codebook = load_codebook(args.codebook)
    with tempfile.TemporaryDirectory() as tmp:
        base = load_settings(Path(tmp) / "ws")
        store = open_store(base)
        ingest_paths(store, sources, base)
        index = None
        if args.k:
            from qualflow.index import CodeIndex

            index = CodeIndex.ensure(codebook, base)
        print(
            f"corpus={args.corpus} ({len(store.transcripts())} transcripts) codebook="
            f"{codebook.name} ({len(codebook.codes)} codes) k={args.k or 'all'} "
            "tokenizer=SmolLM2 method=function_calling"
        )
        print("unit\tcalls\tcoded sentences\tprompt tokens/call\tof which tool schema"
              "\tprompt tokens/coded sentence")  # fmt: skip
        units = [("sentence", {"coding_unit": "passage"})]
        units += [
            (f"chunk:{b}", {"coding_unit": "chunk", "chunk_words": int(b)})
            for b in args.budgets.split(",")
        ]
        for label, update in units:
            settings = base.model_copy(update=update)
            coder = LLMCoder(
                base_url="http://127.0.0.1:9/v1",  # never called: messages are only rendered
                api_key=None,
                model="gpt-4o-mini",
                settings=settings,
                cache=None,
            )
            pipeline.ensure_chunks(store, settings)
            scope = pipeline.passages_in_scope(
                store, segmentation=pipeline.unit_segmentation(settings)
            )
            requests = pipeline.build_requests(
                store,
                scope,
                codebook,
                index=index,
                k=args.k,
                sentences=pipeline.SentenceSource(store, settings),
            )
            total = schema_total = sentences = 0
            for request in requests:
                messages = coder.messages([request], codebook)
                tool = json.dumps(convert_to_openai_tool(coder.schema([request], codebook)))
                schema_tokens = tokens(tool)
                total += sum(tokens(text) + MESSAGE_OVERHEAD for _, text in messages)
                total += schema_tokens
                schema_total += schema_tokens
                sentences += len(request.sentences)
            calls = len(requests)
            print(
                f"{label}\t{calls}\t{sentences}\t{total / calls:.0f}\t"
                f"{schema_total / calls:.0f}\t{total / max(1, sentences):.0f}"
            )
        store.close()


def _sources(corpus: str) -> list[Path]:
    if corpus == "serdif":
        if not SERDIF_RAW.is_dir():
            sys.exit(f"SERDIF corpus not found at {SERDIF_RAW}")
        return sorted(SERDIF_RAW.glob("*.odt"))
    return sorted(
        p
        for p in (ROOT / "examples").iterdir()
        if p.suffix != ".py" and p.name not in {"README.md", "participants.tsv"}
    )


if __name__ == "__main__":
    sys.exit(main())
