"""A capable model, replayed end to end through the real coding path (issue: span units).

The fake OpenAI-compatible endpoint answers each chunk with the spans a strong model
wrote for those turns (``../shared/corpora/serdif-usability/model-spans``, read in
place). Run through chunking, the rendered prompt, the structured answer, quote
placement, validation and storage, the stored spans must be the file's spans, so the
figures against the human coder come out the same as scored straight from the file.

Tolerance: none at the default budget. Chunks never cut a sentence, and a quote lies in
one turn, so the only way the pipeline can lose a span is a turn longer than the budget
split across two chunks with a quote over the cut. At 200 words no turn of these
transcripts is cut through a quote (the stored spans equal the file's, which checks it),
so every span must come back and every figure must be equal. Interviewer turns are
context, not coded: the model's spans there (26) are never asked for, and are outside
the codable text both codings are scored on.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests import serdif_support as serdif
from tests.conftest import REPO, needs_shared

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "model_replay", REPO / "benchmarks" / "model_replay.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_replayed_model_spans_land_validated_and_score_as_the_file(tmp_path):
    needs_shared("corpora", "serdif-usability", "model-spans", "spans.jsonl")
    bench = _bench()
    result = bench.replay(tmp_path / "ws", {"coding_unit": "chunk", "chunk_words": 200})
    summary = result["summary"]
    assert summary.status == "completed" and summary.needs_human == 0
    assert summary.invalid_proposals == 0 and not summary.failures
    assert summary.coded == summary.passages == result["calls"]  # one call per chunk

    transcripts = result["transcripts"]
    scope = bench.codable_scope(transcripts)
    file_spans, problems = serdif.model_file_spans(transcripts)
    assert not problems and len(file_spans) == 432
    on_codable = {
        (s.transcript_id, s.start, s.end, s.code)
        for s in file_spans
        if any(a <= s.start and s.end <= b for a, b in scope[s.transcript_id])
    }
    assert len(on_codable) == 406  # 26 spans lie in moderator turns (context)
    stored = {(s.transcript_id, s.start, s.end, s.code) for s in result["coding"].spans}
    assert stored == on_codable  # every span validated, stored, at the file's offsets
    assert result["located"]["exact"] == 406

    direct = bench.replay_direct(n_boot=0)["levels"]
    piped = bench.score(result["coding"], transcripts, n_boot=0)
    for level in ("sentence", "turn"):
        for metric in ("micro_precision", "micro_recall", "micro_f1", "pooled_kappa"):
            a = getattr(direct, level).overall[metric].value
            b = getattr(piped, level).overall[metric].value
            assert a == pytest.approx(b, abs=1e-12), (level, metric)
    sentence = piped.sentence.overall
    assert piped.sentence.n_passages == serdif.README_FIGURES["sentences"]
    assert round(sentence["micro_precision"].value, 2) == 0.67
    assert round(sentence["micro_recall"].value, 2) == 0.56  # 0.55 without the "inside" clause
    assert round(sentence["micro_f1"].value, 2) == serdif.README_FIGURES["f1"]
    assert piped.span.overall["micro_char_f1"].value == pytest.approx(
        direct.span.overall["micro_char_f1"].value, abs=1e-12
    )


def test_the_same_answers_cut_to_sentence_units_lose_the_highlights_that_span_sentences(
    tmp_path,
):
    needs_shared("corpora", "serdif-usability", "model-spans", "spans.jsonl")
    bench = _bench()
    result = bench.replay(tmp_path / "ws", {"coding_unit": "passage"})
    assert result["summary"].needs_human == 0
    levels = bench.score(result["coding"], result["transcripts"], n_boot=0)
    chunked = bench.score(
        bench.replay(tmp_path / "ws2", {"coding_unit": "chunk"})["coding"],
        result["transcripts"],
        n_boot=0,
    )
    # a sentence call can only quote inside its sentence: multi-sentence highlights vanish
    assert len(result["coding"].spans) < 406
    assert levels.sentence.overall["micro_recall"].value < 0.5 * (
        chunked.sentence.overall["micro_recall"].value
    )
