"""Prompt cost per passage: k retrieved candidate codes vs the whole study codebook.

    .venv/bin/python benchmarks/prompt_cost.py [--passages 200] [--batch 1]

Ingests the example transcripts (examples/) into a temporary workspace, retrieves
candidates from the study codebook (85 codes, benchmark-practices) with the real
index (local MiniLM embeddings, Chroma), renders the exact messages the LLM coder
would send (no call is made), and counts tokens with a real tokenizer: the
SmolLM2 tokenizer of the embedded model (llama.cpp, vocab only). The tool schema
sent with function calling is counted too. Completion tokens are those of typical
answers (no code / one code), tokenized the same way: they do not depend on k.
Hosted models tokenize differently (OpenAI's o200k is typically 10-25% fewer
tokens on English text); the ratio between the rows is what matters.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ks", default="5,10,20,30,0")
    args = ap.parse_args()

    from langchain_core.utils.function_calling import convert_to_openai_tool
    from llama_cpp import Llama

    from qualflow.codebook import load_codebook
    from qualflow.coders.llm import BatchAnswer, CodingAnswer, LLMCoder
    from qualflow.index import CodeIndex
    from qualflow.ingest import ingest_paths
    from qualflow.local_llm import find_model
    from qualflow.pipeline import build_requests
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    vocab = Llama(model_path=str(find_model()), vocab_only=True, verbose=False)

    def tokens(text: str) -> int:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp) / "ws")
        store = open_store(settings)
        paths = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix != ".py")
        ingest_paths(store, [p for p in paths if p.name not in {"README.md"}], settings)
        passages = store.passages(codable_only=True)[: args.passages]
        codebook = load_codebook("benchmark-practices")
        index = CodeIndex.ensure(codebook, settings)
        coder = LLMCoder(
            base_url="http://127.0.0.1:9/v1",  # never called: messages are only rendered
            api_key=None,
            model="gpt-4o-mini",
            settings=settings,
            cache=None,
        )
        schema = BatchAnswer if args.batch > 1 else CodingAnswer
        tool = tokens(json.dumps(convert_to_openai_tool(schema)))
        no_code = tokens(json.dumps({"codes": []}))
        one_code = tokens(
            json.dumps(
                {
                    "codes": [
                        {
                            "code": "02.perception.trust.lack",
                            "rationale": "The speaker says they do not trust leaderboard "
                            "numbers because the test sets leak into training data.",
                            "evidence": "I don't really trust those numbers anymore",
                            "confidence": 0.8,
                        }
                    ]
                }
            )
        )
        print(
            f"passages={len(passages)} (codable, from examples/) codebook="
            f"{codebook.name} ({len(codebook.codes)} codes) batch={args.batch} "
            "tokenizer=SmolLM2"
        )
        print(f"tool schema tokens per call: {tool}")
        print(f"completion tokens per answer: no code {no_code}, one code {one_code}")
        print("k\tcandidates\tprompt_tokens/passage\tvs whole codebook")
        rows = []
        for k in [int(x) for x in args.ks.split(",")]:
            requests = build_requests(store, passages, codebook, index=index, k=k)
            per_passage = []
            for i in range(0, len(requests), args.batch):
                chunk = requests[i : i + args.batch]
                text = "".join(m[1] for m in coder.messages(chunk, codebook))
                per_passage.append((tokens(text) + tool + 8) / len(chunk))
            n_cand = mean(len(r.candidates) for r in requests)
            rows.append((k, n_cand, mean(per_passage)))
        whole = next((r[2] for r in rows if r[0] == 0), rows[-1][2])
        for k, n_cand, prompt in rows:
            label = "all" if k == 0 else str(k)
            print(f"{label}\t{n_cand:.1f}\t{prompt:.0f}\t{prompt / whole:.2f}")
        store.close()


if __name__ == "__main__":
    sys.exit(main())
