"""Prompt templates as files in ``prompts/``, versioned by content hash.

A prompt named ``propose`` is the set of files ``prompts/propose.*.md``: ``system``,
``user`` and ``reask`` (Jinja2). Its ``version`` is the sha256 of those files'
names and bytes (first 12 hex digits): every stored proposal records it, so
editing a template makes a new version and a re-run codes again.

Excerpt text is fenced as data inside ``<excerpt>``/``<turn>`` tags; text inside a
turn that would close or open a fence is neutralized.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from qualflow.models import Code, CodingRequest

PARTS = ("system", "user", "reask")
_FENCE = re.compile(r"<(/?)(excerpt|turn|passage|context|previous_answer)", re.IGNORECASE)


class PromptError(ValueError):
    """A prompt template is missing or cannot be rendered."""


@dataclass(frozen=True)
class TurnView:
    """One piece of a turn as a template shows it; ``coded`` False marks context."""

    speaker: str | None
    text: str
    coded: bool = True


@dataclass(frozen=True)
class ExcerptView:
    """What a template sees of one unit: its label and its turns in order."""

    label: str
    turns: list[TurnView] = field(default_factory=list)


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    templates: dict[str, str]

    def _render(self, part: str, **values: Any) -> str:
        try:
            return _compiled(self.templates[part]).render(**values).strip() + "\n"
        except Exception as exc:  # jinja2 raises several error types
            raise PromptError(f"prompt '{self.name}' part '{part}': {exc}") from exc

    def system(self, *, batched: bool, json_mode: bool) -> str:
        return self._render("system", batched=batched, json_mode=json_mode)

    def user(self, codes: list[Code], excerpts: list[ExcerptView]) -> str:
        return self._render("user", codes=codes, excerpts=excerpts, batched=len(excerpts) > 1)

    def reask(self, previous: str, errors: list[str], labels: list[str]) -> str:
        return self._render("reask", previous=fence(previous), errors=errors, labels=labels)


@lru_cache(maxsize=64)
def _compiled(source: str) -> Any:
    """Compile a template once (compiling costs far more than rendering)."""
    from jinja2 import Environment, StrictUndefined

    env = Environment(autoescape=False, keep_trailing_newline=True, undefined=StrictUndefined)
    return env.from_string(source)


def fence(text: str) -> str:
    """Neutralize tags in data that could open or close a prompt fence."""
    return _FENCE.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}", text)


def excerpt_view(label: str, request: CodingRequest) -> ExcerptView:
    """The unit as the prompt shows it: each piece a turn, context pieces marked. A unit
    inside one turn (a sentence passage) also shows its neighbouring turns as context;
    a chunk carries its context (the question it answers) among its pieces."""
    turns = [
        TurnView(speaker=p.speaker, text=fence(request.piece_text(p)), coded=p.codable)
        for p in request.unit.layout()
    ]
    if not request.unit.is_chunk:
        ctx = request.context
        before = [TurnView(t.speaker, fence(t.text), coded=False) for t in ctx.before]
        after = [TurnView(t.speaker, fence(t.text), coded=False) for t in ctx.after]
        turns = [*before, *turns, *after]
    return ExcerptView(label=label, turns=turns)


def prompt_files(name: str, directory: Path | None = None) -> dict[str, Path]:
    from qualflow.resources import project_dir

    folder = directory or project_dir("prompts")
    files = {part: folder / f"{name}.{part}.md" for part in PARTS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise PromptError(f"prompt '{name}': missing template file(s) {', '.join(missing)}")
    return files


def load_prompt(name: str = "propose", directory: Path | None = None) -> Prompt:
    """Load ``prompts/<name>.{system,user,reask}.md``; version = sha256[:12] of them."""
    files = prompt_files(name, directory)
    return _load(
        name, tuple((part, str(path), path.stat().st_mtime_ns) for part, path in files.items())
    )


@lru_cache(maxsize=16)
def _load(name: str, files: tuple[tuple[str, str, int], ...]) -> Prompt:
    digest = hashlib.sha256()
    templates: dict[str, str] = {}
    for part, path, _mtime in files:
        data = Path(path).read_bytes()
        digest.update(f"{name}.{part}.md\0".encode())
        digest.update(data)
        digest.update(b"\0")
        templates[part] = data.decode("utf-8")
    return Prompt(name=name, version=digest.hexdigest()[:12], templates=templates)
