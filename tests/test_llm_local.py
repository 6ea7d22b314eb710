"""The embedded llama.cpp server end to end, through the same LLMCoder path (slow)."""

from __future__ import annotations

import os

import pytest

from qualflow.local_llm import coder_from_settings
from tests.llm_helpers import CODEBOOK, request


@pytest.mark.slow
@pytest.mark.llm
def test_embedded_model_codes_three_passages(settings, store):
    settings = settings.model_copy(
        update={
            "llm_max_tokens": 96,
            "llm_timeout": 240.0,
            "llm_max_retries": 0,
            "llm_batch_size": 1,
        }
    )
    reqs = [
        request("I check MMLU every day before I pick a model.", "a", candidates=["01.use.daily"]),
        request(
            "Honestly the leaderboard is what I trust most.",
            "b",
            candidates=["02.trust.leaderboard", "01.use.rarely"],
        ),
        request("We rarely look at benchmarks at all.", "c", candidates=["01.use.rarely"]),
    ]
    with coder_from_settings(settings, store) as coder:
        server = coder.local_server
        pid = server.process.pid
        assert coder.model == "local:SmolLM2-135M-Instruct.Q4_1"
        assert server.base_url.startswith("http://127.0.0.1:")
        out = coder.propose(reqs, CODEBOOK)

    assert [ps.passage_id for ps in out] == ["a", "b", "c"]
    for req, ps in zip(reqs, out, strict=True):
        # llama.cpp turns the tool schema's enum into a grammar: no invented code titles
        shown = {c.code.title for c in req.candidates}
        assert {p.code for p in [*ps.proposals, *ps.invalid]} <= shown
        assert ps.model == "local:SmolLM2-135M-Instruct.Q4_1" and ps.prompt_version
        assert ps.usage.prompt_tokens > 0  # real calls were made
        if ps.status == "ok":
            assert all(p.valid and p.evidence_start is not None for p in ps.proposals)
        else:
            assert ps.status == "needs_human" and ps.reason
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the server is gone


@pytest.mark.slow
@pytest.mark.llm
def test_server_stops_on_an_exception():
    from qualflow.local_llm import LocalLLMServer

    with pytest.raises(RuntimeError, match="boom"), LocalLLMServer(n_ctx=512) as server:
        pid = server.process.pid
        raise RuntimeError("boom")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_missing_model_file_is_a_clear_error(tmp_path):
    from qualflow.local_llm import LocalLLMError, LocalLLMServer

    with pytest.raises(LocalLLMError, match="does not exist"):
        LocalLLMServer(tmp_path / "nope.gguf")
