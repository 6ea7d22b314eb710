"""A small synthetic review study (transcripts, their sentence grid and chunks, codebook,
machine span proposals) written through the ordinary store API, for the review app's
tests, its load benchmark and for trying the app out. The interview text is invented;
the codebook is the project's default (``codebook/benchmark-practices.yaml``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from qualflow.models import (
    Code,
    Codebook,
    CodeProposal,
    ProposalSet,
    Transcript,
    Turn,
    short_hash,
)
from qualflow.store import ProposalKey, Store

QUESTIONS = [
    "How often do you look at benchmark results in your work?",
    "Can you tell me about the last time a benchmark changed a decision?",
    "What do you look for when you read a leaderboard?",
    "How do you decide whether a benchmark fits your use case?",
    "What would make you trust a benchmark score more?",
    "Is there anything else you'd like to add about benchmarks?",
]

# (answer, [(code, evidence, rationale)])
ANSWERS: list[tuple[str, list[tuple[str, str, str]]]] = [
    (
        "Honestly, I check the leaderboards pretty much every morning. It's part of my "
        "routine before stand-up, just to see whether anything new has moved.",
        [
            (
                "01.use.frequency.daily",
                "I check the leaderboards pretty much every morning",
                "The participant describes a daily habit of reading benchmark results.",
            )
        ],
    ),
    (
        "We picked the smaller model for the support bot because it scored almost the same "
        "on the reasoning benchmark, and it was a third of the cost to run.",
        [
            (
                "01.use.decisionmaking.selection",
                "We picked the smaller model for the support bot because it scored almost the same",
                "A model was selected on the strength of its benchmark score.",
            ),
            (
                "01.use.impact.direct",
                "because it scored almost the same on the reasoning benchmark",
                "The benchmark result directly decided which model was deployed.",
            ),
        ],
    ),
    (
        "Mostly I want to know if the model will handle our kind of documents. A general "
        "score tells me very little about legal contracts, so I only use it as a first filter.",
        [
            (
                "01.use.information.usecase",
                "I want to know if the model will handle our kind of documents",
                "The participant reads benchmarks to find the best model for their use case.",
            )
        ],
    ),
    (
        "When the fine-tuned version dropped on the math set we went back and added more "
        "worked examples to the training data. That was the whole next sprint.",
        [
            (
                "01.use.decisionmaking.finetuning",
                "we went back and added more worked examples to the training data",
                "Additional training was planned because of a benchmark result.",
            ),
            (
                "01.use.information.informtraining",
                "added more worked examples to the training data",
                "The benchmark identified additional data that was needed.",
            ),
        ],
    ),
    (
        "I don't think the benchmark really changed anything for us. We had already decided "
        "and the numbers were more of a sanity check for the slide deck.",
        [
            (
                "01.use.impact.none",
                "I don't think the benchmark really changed anything for us",
                "The participant says the result did not influence the decision.",
            )
        ],
    ),
    (
        "Our customer asked for the scores explicitly, so we run the standard suite every "
        "release even though the team doesn't find it very informative.",
        [
            (
                "01.use.information.customer",
                "Our customer asked for the scores explicitly",
                "Benchmarks are run because a customer requests them.",
            )
        ],
    ),
    (
        "Maybe once a month, when a new model comes out and someone on the team gets "
        "excited about it.",
        [
            (
                "01.use.frequency.monthly",
                "Maybe once a month",
                "Monthly use of benchmarks.",
            )
        ],
    ),
    (
        "It nudged us, I'd say. The scores were one input among several, alongside cost, "
        "latency and what the vendor promised on support.",
        [
            (
                "01.use.impact.influence",
                "The scores were one input among several",
                "The benchmark influenced the decision without deciding it.",
            )
        ],
    ),
    (
        "I'd trust it more if I could see the test items and how they were graded. A single "
        "number with no examples doesn't tell me what the model actually got wrong.",
        [],
    ),
    (
        "We mainly use them to validate that a new checkpoint isn't worse than the last one "
        "before we promote it to staging.",
        [
            (
                "01.use.information.validation",
                "validate that a new checkpoint isn't worse than the last one",
                "The benchmark is used to validate a model before promotion.",
            )
        ],
    ),
]


@dataclass(frozen=True)
class SampleStudy:
    passage_ids: list[str]  # the units of review (chunks), in transcript order
    codebook_version: str
    run_id: int


def sample_codebook() -> Codebook:
    """The project's default codebook, read straight from its YAML file."""
    import yaml

    from qualflow.resources import project_dir

    data = yaml.safe_load((project_dir("codebook") / "benchmark-practices.yaml").read_text())
    return Codebook(
        name=data["name"],
        source=str(data.get("source", "")),
        codes=[Code(**c) for c in data["codes"]],
    )


def sample_transcript(t: int, answers: list[str], seed: int = 0) -> Transcript:
    """Interview ``t``: a question before every answer (invented text)."""
    name = f"interview-{t + 1:02d}"
    turns: list[Turn] = []
    text = ""
    for i, answer in enumerate(answers):
        for speaker, body in (
            ("Interviewer", QUESTIONS[i % len(QUESTIONS)]),
            (f"P{t + 1}", answer),
        ):
            start = len(text) + (2 if text else 0)
            text = f"{text}\n\n{body}" if text else body
            turns.append(
                Turn(
                    index=len(turns),
                    speaker=speaker,
                    text=body,
                    char_start=start,
                    char_end=len(text),
                )
            )
    content_hash = short_hash(name, text, seed, length=64)
    return Transcript(
        id=Transcript.make_id(name, content_hash),
        name=name,
        source_path=f"sample/{name}.txt",
        content_hash=content_hash,
        format="txt",
        text=text,
        turns=turns,
        participant_id=f"P{t + 1}",
    )


def build_sample_study(
    store: Store,
    *,
    transcripts: int = 2,
    answers_per_transcript: int = 5,
    seed: int = 0,
    needs_human_every: int = 4,
    chunk_words: int = 36,
) -> SampleStudy:
    """Store ``transcripts`` interviews (interviewer question, participant answer, ...)
    with their sentence grid and chunks (``chunk.chunk``, ``chunk_words`` codable words:
    the default makes one chunk per question and answer), the codebook, and one LLM
    run's proposal sets: one per chunk, each proposal a span on its quote.

    Every ``needs_human_every``-th set is marked ``needs_human``; confidences are
    seeded random.
    """
    from qualflow.chunk import chunk
    from qualflow.segment import segment

    rng = random.Random(seed)
    codebook = sample_codebook()
    version = store.save_codebook(codebook)
    key = ProposalKey("llm", "sample-model", "sample-prompt", version)
    run_id = store.start_run(key, params={"sample": True})
    ids: list[str] = []
    k = 0
    for t in range(transcripts):
        chosen = [
            ANSWERS[(t * answers_per_transcript + i) % len(ANSWERS)]
            for i in range(answers_per_transcript)
        ]
        tr = sample_transcript(t, [answer for answer, _ in chosen], seed)
        sentences = segment(tr, "sentence")
        store.save_transcript(tr, sentences)
        units = chunk(tr, sentences, chunk_words)
        store.add_passages(units)
        answers = {
            turn.index: props for turn, (_, props) in zip(tr.turns[1::2], chosen, strict=True)
        }
        for unit in units:
            k += 1
            proposals = []
            for piece in unit.codable_pieces():
                turn = tr.turns[piece.turn_index]
                for code, evidence, rationale in answers.get(piece.turn_index, []):
                    at = tr.text.find(evidence, turn.char_start, turn.char_end)
                    if at < 0:
                        continue
                    proposals.append(
                        CodeProposal(
                            code=code,
                            rationale=rationale,
                            evidence=evidence,
                            start=at,
                            end=at + len(evidence),
                            evidence_start=at,
                            evidence_end=at + len(evidence),
                            confidence=round(rng.uniform(0.3, 0.97), 2),
                            located="exact",
                        )
                    )
            needs_human = needs_human_every > 0 and k % needs_human_every == 0
            store.save_proposal_set(
                ProposalSet(
                    passage_id=unit.id,
                    coder=key.coder,
                    model=key.model,
                    prompt_version=key.prompt_version,
                    codebook_version=version,
                    status="needs_human" if needs_human else "ok",
                    reason="low agreement between candidates" if needs_human else None,
                    proposals=proposals,
                ),
                run_id=run_id,
            )
            ids.append(unit.id)
    store.finish_run(run_id, status="done")
    return SampleStudy(ids, version, run_id)
