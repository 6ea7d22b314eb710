"""Codebooks as data: load TSV/CSV/YAML, report their quirks, never fix them silently.

A codebook's hierarchy comes from dot-separated titles (``01.use.frequency.daily``
sits under ``01.use.frequency``); a title's first segment is its top-level category.
Parents may be codes themselves and may be applied directly. Flat codebooks
(SERDIF's ``Navigation complex``) are simply one level deep.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from qualflow.models import Code, Codebook
from qualflow.resources import project_dir


class CodebookError(ValueError):
    """A codebook file that cannot be read; names the file, and the row or field."""


# Accepted column names (lower-case) for each Code field.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "title": ("title", "tag", "code", "name", "path"),
    "description": ("description", "definition", "desc"),
    "inclusion": ("inclusion", "include", "inclusion criteria"),
    "exclusion": ("exclusion", "exclude", "exclusion criteria"),
    "examples": ("examples", "example"),
    "count": ("count", "number of highlights", "n", "frequency"),
}


def load_codebook(source: str | Path, *, name: str | None = None) -> Codebook:
    """Load a codebook by shipped name (``benchmark-practices``) or from a file path."""
    path = _resolve(source)
    suffix = path.suffix.lower()
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CodebookError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    if not raw.strip():
        raise CodebookError(f"{path}: the file is empty")
    if suffix in {".yaml", ".yml"}:
        codebook = _from_yaml(raw, path)
    elif suffix in {".tsv", ".tab"}:
        codebook = _from_table(raw, path, delimiter="\t")
    elif suffix == ".csv":
        codebook = _from_table(raw, path, delimiter=",")
    else:
        raise CodebookError(f"{path}: unsupported codebook format '{suffix}' (TSV, CSV or YAML)")
    if name:
        codebook.name = name
    return codebook


def _resolve(source: str | Path) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    if isinstance(source, str) and "/" not in source and not path.suffix:
        for ext in (".yaml", ".yml", ".tsv", ".csv"):
            shipped = project_dir("codebook") / f"{source}{ext}"
            if shipped.is_file():
                return shipped
    raise CodebookError(f"{source}: no such codebook file (nor a shipped codebook name)")


def _from_yaml(raw: str, path: Path) -> Codebook:
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise CodebookError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("codes"), list):
        raise CodebookError(f"{path}: expected a mapping with a 'codes' list")
    codes = [_code_from_mapping(item, path, f"codes[{i}]") for i, item in enumerate(data["codes"])]
    return Codebook(name=str(data.get("name") or path.stem), source=str(path), codes=codes)


def _from_table(raw: str, path: Path, *, delimiter: str) -> Codebook:
    reader = csv.DictReader(io.StringIO(raw), delimiter=delimiter)
    if not reader.fieldnames:
        raise CodebookError(f"{path}: no header row")
    header = {h.strip().lower(): h for h in reader.fieldnames if h}
    if not any(c in header for c in _COLUMNS["title"]):
        raise CodebookError(
            f"{path}: no title column (expected one of {', '.join(_COLUMNS['title'])}; "
            f"found {', '.join(reader.fieldnames)})"
        )
    codes = []
    for line, row in enumerate(reader, start=2):
        mapping = {
            field: row.get(header[col])
            for field, cols in _COLUMNS.items()
            for col in cols
            if col in header
        }
        codes.append(_code_from_mapping(mapping, path, f"row {line}"))
    return Codebook(name=path.stem, source=str(path), codes=codes)


def _code_from_mapping(item: Any, path: Path, where: str) -> Code:
    if not isinstance(item, dict):
        raise CodebookError(f"{path}: {where}: expected a mapping, got {type(item).__name__}")
    title = str(item.get("title") or "").strip()
    if not title:
        raise CodebookError(f"{path}: {where}: missing title")
    count = item.get("count")
    if count not in (None, ""):
        try:
            count = int(str(count).strip())
        except ValueError as exc:
            raise CodebookError(f"{path}: {where}: count '{count}' is not a number") from exc
    else:
        count = None
    examples = item.get("examples") or []
    if isinstance(examples, str):
        examples = [e.strip() for e in examples.split("|") if e.strip()]
    return Code(
        title=title,
        description=str(item.get("description") or "").strip(),
        inclusion=str(item.get("inclusion") or "").strip(),
        exclusion=str(item.get("exclusion") or "").strip(),
        examples=[str(e) for e in examples],
        count=count,
    )


# ---------------------------------------------------------------------- quirks


class Quirk(BaseModel):
    kind: Literal[
        "case_variant",
        "duplicate",
        "unused",
        "missing_description",
        "parent_applied",
        "implicit_parent",
        "background",
    ]
    titles: list[str]
    message: str
    severity: Literal["warning", "info"] = "warning"


def check_codebook(codebook: Codebook) -> list[Quirk]:
    """Report a codebook's quirks (never changes it)."""
    quirks: list[Quirk] = []
    titles = codebook.titles()
    for title, n in Counter(titles).items():
        if n > 1:
            quirks.append(
                Quirk(kind="duplicate", titles=[title], message=f"'{title}' appears {n} times")
            )
    quirks += _case_variants(titles)
    for code in codebook.codes:
        if code.count == 0:
            quirks.append(
                Quirk(
                    kind="unused",
                    titles=[code.title],
                    message=f"'{code.title}' has a count of 0 (never applied)",
                )
            )
        if not code.description:
            quirks.append(
                Quirk(
                    kind="missing_description",
                    titles=[code.title],
                    message=f"'{code.title}' has no description",
                )
            )
        children = codebook.children(code.title)
        if children and code.count:
            quirks.append(
                Quirk(
                    kind="parent_applied",
                    titles=[code.title],
                    severity="info",
                    message=f"'{code.title}' is a parent of {len(children)} codes and was "
                    f"applied directly {code.count} times",
                )
            )
        if code.title.startswith("zz") or code.title.lower().startswith("zz_"):
            quirks.append(
                Quirk(
                    kind="background",
                    titles=[code.title],
                    severity="info",
                    message=f"'{code.title}' looks like a background/meta category",
                )
            )
    known = set(titles)
    implicit = sorted(
        {".".join(c.path[:i]) for c in codebook.codes for i in range(2, len(c.path))} - known
    )
    if implicit:
        quirks.append(
            Quirk(
                kind="implicit_parent",
                titles=implicit,
                severity="info",
                message=f"{len(implicit)} parent nodes are implied by dotted titles but are not "
                "codes themselves (they cannot be applied)",
            )
        )
    return quirks


def _case_variants(titles: list[str]) -> list[Quirk]:
    """Titles whose path differs from others only in letter case.

    Reported once, at the shallowest segment where the case diverges; the affected
    titles are those spelled the less common way (``01.Use.information.progress``
    among 36 ``01.use.*`` titles).
    """
    out: list[Quirk] = []
    explained: set[str] = set()
    depth = max((t.count(".") + 1 for t in titles), default=0)
    for level in range(1, depth + 1):
        groups: dict[str, Counter[str]] = {}
        for title in titles:
            parts = title.split(".")
            if len(parts) >= level:
                prefix = ".".join(parts[:level])
                groups.setdefault(prefix.lower(), Counter())[prefix] += 1
        for variants in groups.values():
            if len(variants) < 2:
                continue
            common = variants.most_common(1)[0][0]
            affected = sorted(
                t
                for t in titles
                if t not in explained
                and any(t == v or t.startswith(v + ".") for v in variants if v != common)
            )
            if not affected:
                continue
            explained.update(affected)
            out.append(
                Quirk(
                    kind="case_variant",
                    titles=affected,
                    message="titles differ only in letter case: "
                    + " vs ".join(f"'{v}' ({n}x)" for v, n in variants.most_common())
                    + f"; affects {', '.join(affected)}",
                )
            )
    return out


def summarize(codebook: Codebook) -> dict[str, Any]:
    """Counts for a human-readable report."""
    return {
        "name": codebook.name,
        "version": codebook.version,
        "codes": len(codebook.codes),
        "categories": len(codebook.categories()),
        "max_depth": max((len(c.path) for c in codebook.codes), default=0),
        "with_examples": sum(1 for c in codebook.codes if c.examples),
    }


def to_yaml(codebook: Codebook) -> str:
    """Serialize as the YAML format ``load_codebook`` reads."""
    codes = []
    for c in codebook.codes:
        item: dict[str, Any] = {"title": c.title, "description": c.description}
        if c.inclusion:
            item["inclusion"] = c.inclusion
        if c.exclusion:
            item["exclusion"] = c.exclusion
        if c.examples:
            item["examples"] = list(c.examples)
        if c.count is not None:
            item["count"] = c.count
        codes.append(item)
    return yaml.safe_dump(
        {"name": codebook.name, "codes": codes}, sort_keys=False, allow_unicode=True, width=100
    )
