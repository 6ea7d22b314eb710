"""Small builders for LLM coder tests: a codebook, units in context, a coder."""

from __future__ import annotations

from qualflow.models import (
    Candidate,
    Code,
    Codebook,
    CodingRequest,
    ContextTurn,
    Passage,
    PassageContext,
    Piece,
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


def chunk_request(
    turns: list[tuple[str, str, bool]],
    pid: str = "c1",
    *,
    offset: int = 100,
    candidates=None,
) -> CodingRequest:
    """A chunk of consecutive turns ``(speaker, text, codable)``, joined by a blank
    line as transcripts are, starting at ``offset`` in its transcript's text."""
    pieces, texts, at = [], [], offset
    for i, (speaker, text, codable) in enumerate(turns):
        pieces.append(
            Piece(
                turn_index=i,
                speaker=speaker,
                char_start=at,
                char_end=at + len(text),
                codable=codable,
            )
        )
        texts.append(text)
        at += len(text) + 2
    passage = Passage(
        id=pid,
        transcript_id="t1@abc",
        index=0,
        turn_index=0,
        turn_end=len(turns) - 1,
        char_start=offset,
        char_end=at - 2,
        text="\n\n".join(texts),
        segmentation="chunk:200",
        pieces=pieces,
    )
    titles = candidates if candidates is not None else CODEBOOK.titles()
    return CodingRequest(
        context=PassageContext(passage=passage),
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
