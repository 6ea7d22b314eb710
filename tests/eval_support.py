"""Builders for the report tests: named transcripts with passages, gold sets and coding
runs whose params (training provenance, few-shot examples) the test sets directly.

All text here is invented for the tests."""

from __future__ import annotations

import hashlib

from qualflow.models import CodeProposal, Passage, ProposalSet, Transcript, Turn
from qualflow.store import ProposalKey, Store


def add_transcript(store: Store, name: str, sentences: list[str]) -> list[str]:
    """Store a one-turn transcript cut into the given sentences; returns passage ids."""
    text = " ".join(sentences)
    digest = hashlib.sha256(f"{name}\n{text}".encode()).hexdigest()
    tid = Transcript.make_id(name, digest)
    transcript = Transcript(
        id=tid,
        name=name,
        source_path=f"{name}.txt",
        content_hash=digest,
        format="txt",
        text=text,
        turns=[Turn(index=0, speaker="P", text=text, char_start=0, char_end=len(text))],
    )
    passages, pos = [], 0
    for i, sentence in enumerate(sentences):
        start = text.index(sentence, pos)
        pos = start + len(sentence)
        passages.append(
            Passage(
                id=Passage.make_id(digest, "sentence", start, pos),
                transcript_id=tid,
                index=i,
                turn_index=0,
                speaker="P",
                char_start=start,
                char_end=pos,
                text=sentence,
            )
        )
    store.save_transcript(transcript, passages)
    return [p.id for p in passages]


def add_run(
    store: Store,
    answers: dict[str, list[str] | None],
    *,
    coder: str = "learned",
    model: str = "learned:dev",
    prompt_version: str = "",
    codebook_version: str = "v1",
    params: dict | None = None,
) -> int:
    """A finished coding run: passage -> codes (None = handed to a human)."""
    run_id = store.start_run(ProposalKey(coder, model, prompt_version, codebook_version), params)
    for pid, codes in answers.items():
        store.save_proposal_set(
            ProposalSet(
                passage_id=pid,
                coder=coder,
                model=model,
                prompt_version=prompt_version,
                codebook_version=codebook_version,
                status="needs_human" if codes is None else "ok",
                reason="answer failed validation twice" if codes is None else None,
                proposals=[
                    CodeProposal(code=c, rationale="r", evidence="e", confidence=0.8)
                    for c in codes or []
                ],
            ),
            run_id=run_id,
        )
    store.finish_run(run_id, status="completed")
    return run_id


def training(transcripts: list[str], **extra) -> dict:
    """A ``runs.params["training"]`` dict as the training side records it."""
    return {
        "model": "learned:dev",
        "sources": ["gold:dev"],
        "transcripts": transcripts,
        "units": 40,
        "label_hash": "abc123def456",
        **extra,
    }
