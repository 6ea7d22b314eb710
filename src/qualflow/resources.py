"""Where the project's data folders (codebook/, prompts/, eval/, examples/) live."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def project_dir(name: str) -> Path:
    """A top-level project folder, e.g. ``project_dir("prompts")``.

    Looks in ``$QUALFLOW_PROJECT_ROOT`` first, then in the source checkout the
    package was installed from (qualflow is installed editable by ``make``).
    """
    root = os.environ.get("QUALFLOW_PROJECT_ROOT")
    candidates = [Path(root) / name] if root else []
    candidates.append(_REPO_ROOT / name)
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"project folder '{name}' not found (looked in {', '.join(map(str, candidates))}); "
        "set QUALFLOW_PROJECT_ROOT to the qualflow checkout"
    )


def shared_dir() -> Path | None:
    """The read-only ../shared folder beside the checkout, when present."""
    path = Path(os.environ.get("QUALFLOW_SHARED_DIR", _REPO_ROOT.parent / "shared"))
    return path if path.is_dir() else None
