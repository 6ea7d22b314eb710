"""Similarity and learned coders: valid proposals, calibration, training, persistence."""

from __future__ import annotations

import pytest

from qualflow.coders.base import Coder
from qualflow.coders.learned import LearnedCoder, default_path
from qualflow.coders.similarity import SimilarityCoder, micro_f1
from qualflow.index import CodeIndex
from qualflow.models import (
    Candidate,
    Code,
    Codebook,
    CodingRequest,
    ContextTurn,
    Passage,
    PassageContext,
)

TOPICS = {
    "weather": [
        "It rained all day and the sky was grey.",
        "The forecast says sunshine and warm temperatures tomorrow.",
        "A cold wind and heavy snow closed the roads.",
        "The summer heat wave lasted two weeks.",
        "Thunderstorms and lightning kept us inside.",
        "Fog covered the valley every morning.",
        "The temperature dropped below freezing overnight.",
        "We had a mild and sunny spring this year.",
        "Hail damaged the cars in the parking lot.",
        "The humidity made the afternoon unbearable.",
    ],
    "food": [
        "We cooked pasta with tomato sauce and basil.",
        "The bakery sells fresh bread and croissants.",
        "She made a spicy curry with rice for dinner.",
        "I had a salad with cheese and olives for lunch.",
        "The soup needed more salt and pepper.",
        "We grilled vegetables and chicken on the barbecue.",
        "Dessert was chocolate cake with cream.",
        "He eats porridge with berries every breakfast.",
        "The restaurant serves sushi and noodles.",
        "Roasted potatoes go well with fish.",
    ],
    "sport": [
        "The team won the football match in extra time.",
        "She runs a marathon every autumn.",
        "Our tennis coach trains us twice a week.",
        "The basketball game ended with a last-second shot.",
        "He swims laps in the pool before work.",
        "The cycling race climbed three mountains.",
        "They scored two goals in the second half.",
        "The boxer trained hard for the championship fight.",
        "We play volleyball on the beach on weekends.",
        "The golf tournament was decided on the last hole.",
    ],
}


def codebook() -> Codebook:
    return Codebook(
        name="topics",
        codes=[
            Code(title="weather", description="Talk about the weather: rain, sun, snow, heat"),
            Code(title="food", description="Talk about food, cooking, meals and eating"),
            Code(title="sport", description="Talk about sport, games, matches and training"),
        ],
    )


def ctx(text: str, i: int = 0, before: str | None = None, who: str = "P1") -> PassageContext:
    passage = Passage(
        id=f"p{i}", transcript_id=f"t-{who}", index=i, turn_index=i, char_start=0,
        char_end=len(text), text=text,
    )  # fmt: skip
    turns = [ContextTurn(speaker="Interviewer", text=before)] if before else []
    return PassageContext(passage=passage, before=turns, participant_id=who)


def training() -> tuple[list[PassageContext], list[frozenset[str]]]:
    contexts, labels = [], []
    for topic, texts in TOPICS.items():
        for i, text in enumerate(texts):
            contexts.append(ctx(text, len(contexts), "Tell me more.", who=f"P{i % 5}"))
            labels.append(frozenset({topic}))
    contexts.append(ctx("Okay, let us continue with the next question.", len(contexts)))
    labels.append(frozenset())
    return contexts, labels


def assert_valid(sets, requests, book: Codebook) -> None:
    assert len(sets) == len(requests)
    for ps, request in zip(sets, requests, strict=True):
        assert ps.passage_id == request.passage.id
        assert ps.codebook_version == book.version and ps.status == "ok"
        text = request.passage.text
        for p in ps.proposals:
            assert book.get(p.code) is not None
            assert p.evidence == text[p.evidence_start : p.evidence_end]
            assert (p.evidence_start, p.evidence_end) == (0, len(text))
            assert 0.0 <= p.confidence <= 1.0 and p.rationale.strip()


@pytest.fixture
def index(settings) -> CodeIndex:
    return CodeIndex.ensure(codebook(), settings)


# ----------------------------------------------------------------------------- similarity


def test_similarity_coder_proposes_valid_codes_with_scores(index):
    book = codebook()
    coder = SimilarityCoder(index, threshold=0.2, max_codes=2)
    assert isinstance(coder, Coder)
    assert (coder.kind, coder.prompt_version) == ("similarity", "")
    assert coder.model == "all-MiniLM-L6-v2-onnx-int8|threshold=0.2|max_codes=2"
    requests = [
        CodingRequest(context=ctx("We baked bread and ate soup for dinner.", 0), candidates=[]),
        CodingRequest(context=ctx("Heavy rain and snow all week.", 1), candidates=[]),
        CodingRequest(context=ctx("   ", 2), candidates=[]),
    ]
    sets = coder.propose(requests, book)
    assert_valid(sets, requests, book)
    assert sets[0].proposals[0].code == "food"
    assert sets[1].proposals[0].code == "weather"
    assert sets[2].proposals == []  # blank passage: no code
    first = sets[0].proposals[0]
    assert first.rationale == (
        f"cosine similarity {first.confidence:.2f} to the code definition (one sentence)"
    )


def test_similarity_coder_no_code_above_threshold_and_candidate_restriction(index):
    book = codebook()
    request = CodingRequest(context=ctx("We baked bread and ate soup.", 0), candidates=[])
    assert SimilarityCoder(index, threshold=0.99).propose([request], book)[0].proposals == []
    only_sport = CodingRequest(
        context=request.context, candidates=[Candidate(code=book.get("sport"), score=0.1)]
    )
    sets = SimilarityCoder(index, threshold=0.0).propose([only_sport], book)
    assert [p.code for p in sets[0].proposals] == ["sport"]


def test_similarity_calibration_maximizes_training_f1(index):
    contexts, labels = training()
    coder = SimilarityCoder(index, threshold=0.95, max_codes=1)
    before = micro_f1(coder.predict(contexts), labels)
    threshold = coder.calibrate(contexts, labels)
    assert coder.threshold == threshold and 0.05 <= threshold <= 0.95
    after = micro_f1(coder.predict(contexts), labels)
    assert after > before and after >= 0.8
    with pytest.raises(ValueError):
        coder.calibrate(contexts, labels[:-1])


def test_similarity_coder_refuses_another_codebook_version(index):
    other = codebook()
    other.codes[0].description = "Changed"
    request = CodingRequest(context=ctx("sunny", 0), candidates=[])
    with pytest.raises(ValueError, match="codebook version"):
        SimilarityCoder(index).propose([request], other)


def test_micro_f1():
    a, b = frozenset({"x"}), frozenset({"y"})
    assert micro_f1([a, b], [a, b]) == 1.0
    assert micro_f1([a, frozenset()], [a, b]) == pytest.approx(2 / 3)
    assert micro_f1([frozenset()], [frozenset()]) == 0.0


# ----------------------------------------------------------------------------- learned


@pytest.fixture(scope="module")
def learned() -> LearnedCoder:
    contexts, labels = training()
    return LearnedCoder().fit(contexts, labels)


def test_learned_coder_fits_and_predicts_unseen_passages(learned):
    assert learned.kind == "learned" and learned.model.startswith("logreg-minilm:")
    assert learned.codes == ["food", "sport", "weather"]
    assert len(learned.thresholds) == 3 and all(0 < t < 1 for t in learned.thresholds)
    predicted = learned.predict(
        [
            ctx("The pizza had too much cheese on it."),
            ctx("It snowed heavily and the wind was icy."),
            ctx("The striker scored a penalty in the final."),
        ]
    )
    assert predicted == [frozenset({"food"}), frozenset({"weather"}), frozenset({"sport"})]


def test_learned_model_string_depends_on_training_data(learned):
    contexts, labels = training()
    labels[0] = frozenset({"food"})
    other = LearnedCoder(tune_thresholds=False).fit(contexts, labels)
    assert other.model != learned.model
    assert other.thresholds == [0.5, 0.5, 0.5]


def test_learned_coder_proposals_are_valid_and_unknown_codes_are_kept_as_invalid(learned):
    book = codebook()
    requests = [
        CodingRequest(context=ctx("We ate noodles and dumplings.", 0), candidates=[]),
        CodingRequest(context=ctx("Good morning, shall we start?", 1), candidates=[]),
    ]
    sets = learned.propose(requests, book)
    assert_valid(sets, requests, book)
    assert [p.code for p in sets[0].proposals] == ["food"]
    assert "probability" in sets[0].proposals[0].rationale
    assert sets[0].model == learned.model and sets[0].coder == "learned"
    smaller = Codebook(name="topics", codes=[c for c in book.codes if c.title != "food"])
    partial = learned.propose(requests[:1], smaller)[0]
    assert partial.proposals == [] and [p.code for p in partial.invalid] == ["food"]
    assert (
        partial.invalid[0].valid is False and "not in codebook" in partial.invalid[0].invalid_reason
    )


def test_learned_coder_save_and_load_round_trip(learned, settings):
    path = learned.save(default_path(settings, codebook()))
    assert path.is_file() and path.parent == settings.data_dir / "models"
    loaded = LearnedCoder.load(path)
    probe = [ctx("Rain again, and cold."), ctx("Fresh bread from the bakery.")]
    assert loaded.model == learned.model and loaded.codes == learned.codes
    assert (loaded.probabilities(probe) == learned.probabilities(probe)).all()
    assert loaded.predict(probe) == learned.predict(probe)


def test_learned_coder_errors_are_clear(tmp_path):
    contexts, labels = training()
    with pytest.raises(ValueError, match="code sets"):
        LearnedCoder().fit(contexts, labels[:-1])
    with pytest.raises(ValueError, match="both positive and negative"):
        LearnedCoder().fit(contexts[:3], [frozenset({"weather"})] * 3)
    with pytest.raises(RuntimeError, match="not trained"):
        LearnedCoder().predict(contexts[:1])
    with pytest.raises(FileNotFoundError):
        LearnedCoder.load(tmp_path / "none.joblib")
    bogus = tmp_path / "bogus.joblib"
    import joblib

    joblib.dump({"format": 99}, bogus)
    with pytest.raises(ValueError, match="not a qualflow learned coder"):
        LearnedCoder.load(bogus)
