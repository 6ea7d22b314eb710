"""local_only refusal before any byte is sent, and pseudonymization round trips."""

from __future__ import annotations

import re

import pytest

from qualflow.privacy import PrivacyError, Pseudonymizer, ensure_local, is_loopback
from tests.fake_openai import answer, proposal
from tests.llm_helpers import CODEBOOK, make_coder, request


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.8.9.10/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://example.invalid/v1", False),
        ("https://api.openai.com/v1", False),
        ("http://10.0.0.5:8000/v1", False),
        ("http://127.0.0.1.example.com/v1", False),
    ],
)
def test_is_loopback(url, local):
    assert is_loopback(url) is local


def test_ensure_local_only_applies_when_local_only(settings):
    ensure_local("http://example.invalid/v1", "LLM endpoint", settings)  # not local_only: ok
    strict = settings.model_copy(update={"local_only": True})
    ensure_local("http://127.0.0.1:9/v1", "LLM endpoint", strict)
    with pytest.raises(PrivacyError, match=re.escape("LLM endpoint 'http://example.invalid/v1'")):
        ensure_local("http://example.invalid/v1", "LLM endpoint", strict)
    with pytest.raises(PrivacyError, match=re.escape("api.openai.com")):
        ensure_local(None, "LLM endpoint", strict)  # None = OpenAI's hosted default


def test_local_only_refuses_before_any_request(fake_openai, settings):
    strict = settings.model_copy(update={"local_only": True})
    url = f"http://example.invalid:{fake_openai.port}/v1"
    remote = type("Remote", (), {"base_url": url})()
    with pytest.raises(PrivacyError, match="local_only"):
        make_coder(remote, strict).propose([request("Confidential words.")], CODEBOOK)
    assert fake_openai.requests == []
    # the same fake on loopback is allowed
    fake_openai.script(answer())
    [ps] = make_coder(fake_openai, strict).propose([request("Confidential words.")], CODEBOOK)
    assert ps.status == "ok" and fake_openai.chat_count == 1


def test_coder_from_settings_refuses_hosted_when_local_only(settings, store, monkeypatch):
    from qualflow.local_llm import coder_from_settings

    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-never-be-used")
    strict = settings.model_copy(update={"local_only": True})
    with pytest.raises(PrivacyError), coder_from_settings(strict, store):
        pass


def test_pseudonymizer_round_trip_and_persistence(store):
    text = (
        "Alice Smith told me (alice@uni.example, +44 20 7946 0958) that Bob reads "
        "https://example.org/board. Alice agreed in 2019 2020."
    )
    p = Pseudonymizer(["Bob"], store=store)
    p.add_names(["Alice Smith"])
    masked = p.pseudonymize(text)
    for secret in ("Alice", "Smith", "alice@uni.example", "7946", "example.org", "Bob"):
        assert secret not in masked
    assert "[PERSON_" in masked and "[EMAIL_1]" in masked and "[PHONE_1]" in masked
    assert "[URL_1]." in masked and "2019 2020" in masked  # years are not phones
    assert p.restore(masked) == text
    again = Pseudonymizer(["Bob"], store=store)  # mapping reloaded from the store
    again.add_names(["Alice Smith"])
    assert again.pseudonymize(text) == masked
    assert again.pseudonymize("Carol <carol@x.org>") == "Carol <[EMAIL_2]>"


def test_pseudonymized_call_sends_no_names_and_restores_evidence(fake_openai, settings, store):
    text = "Honestly, Dana Scully always checks the leaderboard at https://lb.example.com first."
    pseudo = Pseudonymizer(["Dana Scully"], store=store)
    masked = pseudo.pseudonymize(text)
    quote = masked.split(", ", 1)[1].rstrip(".")  # "[PERSON_1] always checks ... [URL_1] first"
    fake_openai.script(
        answer(proposal("02.trust.leaderboard", quote, rationale="[PERSON_1] trusts it"))
    )
    coder = make_coder(fake_openai, settings, pseudonymizer=pseudo)
    [ps] = coder.propose([request(text, speaker="Fox Mulder")], CODEBOOK)

    sent = str(fake_openai.chat_requests[0]["messages"])
    for secret in ("Dana", "Scully", "lb.example.com", "Fox", "Mulder"):
        assert secret not in sent
    assert ps.status == "ok"
    [p] = ps.proposals
    assert p.evidence == "Dana Scully always checks the leaderboard at https://lb.example.com first"
    assert text[p.evidence_start : p.evidence_end] == p.evidence
    assert p.rationale == "Dana Scully trusts it"


def test_pseudonymize_setting_applies_to_non_loopback_only(fake_openai, settings):
    on = settings.model_copy(update={"pseudonymize": True})
    assert make_coder(fake_openai, on).pseudonymizer is None  # loopback: nothing leaves
    remote = type("Remote", (), {"base_url": "https://llm.example.org/v1"})()
    assert make_coder(remote, on).pseudonymizer is not None
