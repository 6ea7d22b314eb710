"""The sentence projection against a published figure on real data.

The SERDIF corpus README scores its model span file against the human coder on the
922 codable sentences of P3, P6 and P10 with half coverage: precision 0.67, recall
0.55, F1 0.61. ``tests.serdif_support`` rebuilds both codings from the files (ODT
reader, quotes placed in their turns, Taguette highlights carried over;
``benchmarks/model_spans.py`` prints the figures) and ``qualflow.spans`` projects them;
this test pins the figures.
"""

from __future__ import annotations

import sqlite3

import pytest

from qualflow import agreement as ag
from qualflow import spans as sp
from qualflow.models import SpanCoding
from qualflow.readers import read_transcript
from qualflow.segment import is_interviewer, segment
from tests import serdif_support as bench
from tests.conftest import needs_shared

pytestmark = pytest.mark.shared


def test_model_spans_reproduce_the_corpus_readme_figure():
    needs_shared("corpora", "serdif-usability", "model-spans", "spans.jsonl")
    transcripts = {n: read_transcript(bench.SERDIF / "raw" / f"{n}.odt") for n in bench.DOCUMENTS}
    machine, problems = bench.model_file_spans(transcripts)
    assert not problems and len(machine) == 432
    human = []
    with sqlite3.connect(f"file:{bench.TAGUETTE}?mode=ro", uri=True) as db:
        for name, t in transcripts.items():
            found, trouble = bench.human_spans(db, name, t)
            assert not trouble
            human += found
    sentences, scope = [], {}
    for t in transcripts.values():
        sentences += [p for p in segment(t, "sentence") if p.codable]
        scope[t.id] = [(x.char_start, x.char_end) for x in t.turns if not is_interviewer(x.speaker)]
    assert len(sentences) == 922
    h, m = SpanCoding("human", human, scope), SpanCoding("model", machine, scope)

    def micro(inside: bool) -> tuple[float, float, float]:
        # inside=False: the README's rule (half coverage alone, no orphan rule)
        o = ag.compare(
            sp.to_sentences(h, sentences, inside=inside, orphans=inside),
            sp.to_sentences(m, sentences, inside=inside, orphans=inside),
            n_boot=0,
        ).overall
        return o["micro_precision"].value, o["micro_recall"].value, o["micro_f1"].value

    # the README's rule (half coverage): 0.67 / 0.55 / 0.61 exactly as published
    assert micro(False) == pytest.approx((404 / 601, 404 / 732, 808 / 1333))
    assert tuple(round(x, 2) for x in micro(False)) == (0.67, 0.55, 0.61)
    # qualflow's rule also counts a span lying inside a sentence: 4 more agreed codes
    assert micro(True) == pytest.approx((408 / 610, 408 / 733, 816 / 1343))
