"""Small builders for LLM coder tests: a codebook, passages in context, a coder."""

from __future__ import annotations

from qualflow.models import (
    Candidate,
    Code,
    Codebook,
    CodingRequest,
    ContextTurn,
    Passage,
    PassageContext,
)

CODEBOOK = Codebook(
    name="test",
    codes=[
        Code(title="01.use.daily", description="Uses benchmarks every day."),
        Code(title="01.use.rarely", description="Rarely looks at benchmarks."),
        Code(title="02.trust.leaderboard", description="Trusts leaderboard rankings."),
        Code(title="03.doubt.contamination", description="Suspects test-set contamination."),
    ],
)


def request(
    text: str, pid: str = "p1", *, speaker: str = "Alice", candidates=None
) -> CodingRequest:
    passage = Passage(
        id=pid,
        transcript_id="t1@abc",
        index=0,
        turn_index=1,
        speaker=speaker,
        char_start=0,
        char_end=len(text),
        text=text,
    )
    titles = candidates if candidates is not None else CODEBOOK.titles()[:3]
    return CodingRequest(
        context=PassageContext(
            passage=passage,
            before=[ContextTurn(speaker="Interviewer", text="How do you use benchmarks?")],
            after=[ContextTurn(speaker="Interviewer", text="Thank you.")],
        ),
        candidates=[Candidate(code=CODEBOOK.get(t), score=0.5) for t in titles],
    )


def make_coder(fake, settings, *, cache=None, method="function_calling", model="gpt-4o-mini", **kw):
    from qualflow.coders.llm import LLMCoder

    return LLMCoder(
        base_url=fake.base_url,
        api_key="sk-test-secret",
        model=model,
        settings=settings,
        cache=cache,
        method=method,
        **kw,
    )
