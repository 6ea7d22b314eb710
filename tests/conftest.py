"""Shared fixtures. Tests never touch the user's home, a real hosted model or the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fake_openai import fake_openai  # noqa: F401  (fixture for every test)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QUALFLOW_SHARED_DIR", REPO.parent / "shared"))
SERDIF = SHARED / "corpora" / "serdif-usability"
EXAMPLES = REPO / "examples"
# Read before the autouse fixture clears QUALFLOW_* variables.
POSTGRES_URL = os.environ.get("QUALFLOW_TEST_POSTGRES_URL")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No keys, no hosted endpoints, no telemetry, a throwaway HOME."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in list(os.environ):
        if var.startswith("QUALFLOW_") or var in {"OPENAI_API_KEY", "OPENAI_BASE_URL"}:
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("QUALFLOW_PROJECT_ROOT", str(REPO))


@pytest.fixture
def settings(tmp_path: Path):
    """Settings of a fresh workspace in a temporary folder."""
    from qualflow.settings import load_settings

    return load_settings(tmp_path / "ws")


@pytest.fixture
def store(settings):
    """A migrated SQLite store in the temporary workspace."""
    from qualflow.store import open_store

    s = open_store(settings)
    yield s
    s.close()


def needs_shared(*parts: str) -> Path:
    """The path under ../shared, or skip the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path
