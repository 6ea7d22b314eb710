"""Codebooks as data: load TSV/CSV/YAML, report their quirks, never fix them silently.

A codebook's hierarchy comes from dot-separated titles (``01.use.frequency.daily``
sits under ``01.use.frequency``); a title's first segment is its top-level category.
Parents may be codes themselves and may be applied directly. Flat codebooks
(SERDIF's ``Navigation complex``) are simply one level deep.

What cannot be read as meant is an error naming the file, the code and the field,
never silently changed: duplicate titles (a stored codebook needs unique titles;
``check`` still reports them with ``allow_duplicates``), a ``parent`` key or column
(the hierarchy is in the dotted titles), an unknown key in a YAML code, a title that
is not text, a list or mapping where text belongs, ``examples`` that are not a list
of texts.
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


YAML_KEYS = ("title", "description", "inclusion", "exclusion", "examples", "count")
"""The keys of one code in a YAML codebook (what ``to_yaml`` writes)."""


def load_codebook(
    source: str | Path, *, name: str | None = None, allow_duplicates: bool = False
) -> Codebook:
    """Load a codebook by shipped name (``benchmark-practices``) or from a file path.

    Duplicate titles are refused (with every duplicated title and where it occurs)
    unless ``allow_duplicates`` (for ``check``, which reports them as a quirk).
    """
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
    if not allow_duplicates:
        _refuse_duplicates(codebook, path)
    return codebook


def _refuse_duplicates(codebook: Codebook, path: Path) -> None:
    counts = Counter(codebook.titles())
    dupes = [t for t, n in counts.items() if n > 1]
    if not dupes:
        return
    listed = ", ".join(f"'{t}' ({counts[t]}x)" for t in dupes[:20])
    more = f" and {len(dupes) - 20} more" if len(dupes) > 20 else ""
    raise CodebookError(
        f"{path}: duplicate code titles: {listed}{more}. Titles must be unique: merge or "
        "rename them (`qualflow codebook check` lists every quirk)"
    )


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
    codes = []
    for i, item in enumerate(data["codes"]):
        where = f"codes[{i}]"
        if isinstance(item, dict):
            where = f"codes[{i}] ('{item.get('title')}')" if item.get("title") else where
            _check_yaml_keys(item, path, where)
        codes.append(_code_from_mapping(item, path, where))
    return Codebook(name=str(data.get("name") or path.stem), source=str(path), codes=codes)


def _check_yaml_keys(item: dict, path: Path, where: str) -> None:
    if "parent" in item:
        raise CodebookError(
            f"{path}: {where}: a 'parent' key is not read: the hierarchy comes from dotted "
            "titles (a code 'a.b' sits under 'a'); put the parent's title in front of the "
            "code's title instead"
        )
    unknown = sorted(str(k) for k in item if k not in YAML_KEYS)
    if unknown:
        raise CodebookError(
            f"{path}: {where}: unknown key(s) {', '.join(repr(k) for k in unknown)} "
            f"(a code has: {', '.join(YAML_KEYS)})"
        )


def _from_table(raw: str, path: Path, *, delimiter: str) -> Codebook:
    reader = csv.DictReader(io.StringIO(raw), delimiter=delimiter)
    if not reader.fieldnames:
        raise CodebookError(f"{path}: no header row")
    header = {h.strip().lower(): h for h in reader.fieldnames if h}
    if "parent" in header:
        raise CodebookError(
            f"{path}: a 'parent' column is not read: the hierarchy comes from dotted titles "
            "(a code 'a.b' sits under 'a'); put the parent's title in front of each title"
        )
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
    raw_title = item.get("title")
    if raw_title is not None and not isinstance(raw_title, str):
        raise CodebookError(
            f"{path}: {where}: title {raw_title!r} is a {type(raw_title).__name__}, not text "
            "(YAML reads 1.10 as the number 1.1): put it in quotes"
        )
    title = (raw_title or "").strip()
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
    return Code(
        title=title,
        description=_text(item, "description", path, where),
        inclusion=_text(item, "inclusion", path, where),
        exclusion=_text(item, "exclusion", path, where),
        examples=_examples(item.get("examples"), path, where),
        count=count,
    )


def _text(item: dict, field: str, path: Path, where: str) -> str:
    """A text field: text (numbers are taken as written); a list, mapping or yes/no is
    an error rather than being turned into text."""
    value = item.get(field)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise CodebookError(
            f"{path}: {where}: {field} must be text, got a {type(value).__name__} "
            f"({_clip(value)}); write it as one string (quote it, or use YAML's '|' block)"
        )
    return str(value).strip()


def _examples(value: Any, path: Path, where: str) -> list[str]:
    """A list of texts, or one text with '|' between examples (tables)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [e.strip() for e in value.split("|") if e.strip()]
    if isinstance(value, list) and all(
        isinstance(e, str | int | float) and not isinstance(e, bool) for e in value
    ):
        return [str(e) for e in value]
    raise CodebookError(
        f"{path}: {where}: examples must be a list of example texts (or one text with '|' "
        f"between examples), got {type(value).__name__} {_clip(value)}"
    )


def _clip(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


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
