"""A small synthetic review study (transcripts, codebook, machine proposals) written
through the ordinary store API, for the review app's tests, its load benchmark and for
trying the app out. The interview text is invented; the codebook is the project's
default (``codebook/benchmark-practices.yaml``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from qualflow.models import (
    Code,
    Codebook,
    CodeProposal,
    Passage,
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
    passage_ids: list[str]
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


def build_sample_study(
    store: Store,
    *,
    transcripts: int = 2,
    answers_per_transcript: int = 5,
    seed: int = 0,
    needs_human_every: int = 4,
) -> SampleStudy:
    """Store ``transcripts`` interviews (interviewer question, participant answer, ...)
    with one passage per answer, the codebook, and one LLM run's proposal sets.

    Every ``needs_human_every``-th set is marked ``needs_human``; confidences are
    seeded random; evidence offsets point at the quote in the passage.
    """
    rng = random.Random(seed)
    codebook = sample_codebook()
    version = store.save_codebook(codebook)
    key = ProposalKey("llm", "sample-model", "sample-prompt", version)
    run_id = store.start_run(key, params={"sample": True})
    ids: list[str] = []
    k = 0
    for t in range(transcripts):
        name = f"interview-{t + 1:02d}"
        turns: list[Turn] = []
        chosen = []
        text = ""
        for i in range(answers_per_transcript):
            answer, props = ANSWERS[(t * answers_per_transcript + i) % len(ANSWERS)]
            chosen.append((answer, props))
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
        tr = Transcript(
            id=Transcript.make_id(name, content_hash),
            name=name,
            source_path=f"sample/{name}.txt",
            content_hash=content_hash,
            format="txt",
            text=text,
            turns=turns,
            participant_id=f"P{t + 1}",
        )
        passages = []
        for i, turn in enumerate(turns[1::2]):
            passages.append(
                Passage(
                    id=Passage.make_id(content_hash, "turn", turn.char_start, turn.char_end),
                    transcript_id=tr.id,
                    index=i,
                    turn_index=turn.index,
                    speaker=turn.speaker,
                    char_start=turn.char_start,
                    char_end=turn.char_end,
                    text=turn.text,
                    segmentation="turn",
                )
            )
        store.save_transcript(tr, passages)
        for p, (answer, props) in zip(passages, chosen, strict=True):
            k += 1
            proposals = []
            for code, evidence, rationale in props:
                at = answer.find(evidence)
                proposals.append(
                    CodeProposal(
                        code=code,
                        rationale=rationale,
                        evidence=evidence,
                        evidence_start=at if at >= 0 else None,
                        evidence_end=at + len(evidence) if at >= 0 else None,
                        confidence=round(rng.uniform(0.3, 0.97), 2),
                    )
                )
            needs_human = needs_human_every > 0 and k % needs_human_every == 0
            store.save_proposal_set(
                ProposalSet(
                    passage_id=p.id,
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
            ids.append(p.id)
    store.finish_run(run_id, status="done")
    return SampleStudy(ids, version, run_id)
