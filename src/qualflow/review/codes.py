"""The codebook a unit is reviewed against, and searching it.

Search looks at what a reviewer remembers of a code: its title, its definition
(description, inclusion and exclusion criteria) and its examples (the codebook's own,
and text that people coded with it in this workspace: reviewers' finished spans and
gold highlights), and ranks what it finds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select

from qualflow.db import ProposalSetRow
from qualflow.models import Code, Codebook
from qualflow.store import Store

REVIEWABLE = ("ok", "needs_human")


def codebook_version_for(store: Store, passage_id: str) -> str | None:
    """The codebook version of the unit's newest reviewable proposal set."""
    with store.session() as s:
        return s.scalar(
            select(ProposalSetRow.codebook_version)
            .where(
                ProposalSetRow.passage_id == passage_id,
                ProposalSetRow.status.in_(REVIEWABLE),
            )
            .order_by(ProposalSetRow.id.desc())
            .limit(1)
        )


_cache: dict[tuple[int, str], Codebook] = {}


def codebook_for(store: Store, passage_id: str | None) -> Codebook | None:
    """The codebook of the unit's newest reviewable proposal set; else the workspace's
    active codebook; else the newest stored one (None when the store has none).

    A codebook version is a hash of its content, so a version once read is cached.
    """
    version = codebook_version_for(store, passage_id) if passage_id else None
    if version and (id(store), version) in _cache:
        return _cache[(id(store), version)]
    codebook = store.codebook(version) if version else None
    if codebook is None:
        codebook = store.active_codebook() or store.codebook()
    if version and codebook is not None and codebook.version == version:
        _cache[(id(store), version)] = codebook
    return codebook


# --------------------------------------------------------------------------- search

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_SUFFIXES = ("ies", "es", "ing", "ed", "ly", "s", "y", "e")

# weight of a match by field: a title match counts most
WEIGHTS = {"title": 8, "description": 4, "criteria": 2, "examples": 1}


def stem(word: str) -> str:
    """A crude stem, enough to match "leaderboards" with "leaderboard" and "noisy"
    with "noise" (not a linguistic analysis)."""
    w = word.lower()
    for suffix in _SUFFIXES:
        if len(w) > len(suffix) + 3 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def words(text: str) -> list[str]:
    return [stem(w) for w in _WORD.findall(text.lower())]


@dataclass(frozen=True)
class Hit:
    code: Code
    score: int
    matched: tuple[str, ...]  # the fields that matched, best first


def _fields(code: Code, examples: Sequence[str]) -> dict[str, set[str]]:
    return {
        "title": set(words(code.title.replace(".", " "))),
        "description": set(words(code.description)),
        "criteria": set(words(f"{code.inclusion} {code.exclusion}")),
        "examples": set(words(" ".join([*code.examples, *examples]))),
    }


def rank(
    codebook: Codebook,
    query: str,
    *,
    examples: Mapping[str, Sequence[str]] | None = None,
    limit: int = 12,
) -> list[Hit]:
    """Codes matching the query, best first.

    Every query word must match (a word matches a word of a field that starts with it,
    after stemming, so typing "leader" finds "leaderboards"); when no code matches
    every word, codes matching most of them come instead. A code's score sums, per
    query word, the weight of the best field it matched (title > description > criteria
    > examples); ties keep codebook order. An empty query lists the codebook from the
    top.
    """
    wanted = list(dict.fromkeys(words(query)))
    if not wanted:
        return [Hit(c, 0, ()) for c in codebook.codes[:limit]]
    scored: list[tuple[int, int, int, Hit]] = []
    for pos, code in enumerate(codebook.codes):
        fields = _fields(code, (examples or {}).get(code.title, ()))
        score, hits, matched = 0, 0, []
        for w in wanted:
            found = [f for f, toks in fields.items() if any(t.startswith(w) for t in toks)]
            if found:
                hits += 1
                score += max(WEIGHTS[f] for f in found)
                matched += [f for f in found if f not in matched]
        if hits:
            order = tuple(sorted(matched, key=lambda f: -WEIGHTS[f]))
            scored.append((-hits, -score, pos, Hit(code, score, order)))
    if any(-h == len(wanted) for h, _, _, _ in scored):
        scored = [t for t in scored if -t[0] == len(wanted)]
    scored.sort(key=lambda t: t[:3])
    return [t[3] for t in scored[:limit]]


def search(codebook: Codebook, query: str, limit: int = 12) -> list[Code]:
    """``rank`` without the workspace's examples, as codes."""
    return [h.code for h in rank(codebook, query, limit=limit)]


_examples: dict[int, tuple[float, dict[str, list[str]]]] = {}
EXAMPLES_TTL = 300.0
EXAMPLES_PER_CODE = 5
EXAMPLE_MAX_CHARS = 300


def workspace_examples(store: Store, codebook: Codebook | None = None) -> dict[str, list[str]]:
    """Text people coded in this workspace, per code title: the shortest few of the
    reviewers' spans and the gold highlights (the highlighted text itself, never the
    whole unit), read at most every ``EXAMPLES_TTL`` seconds."""
    key = id(store)
    now = time.monotonic()
    cached = _examples.get(key)
    if cached and now - cached[0] < EXAMPLES_TTL:
        return cached[1]
    found = _coded_texts(store)
    _examples[key] = (now, found)
    return found


def _coded_texts(store: Store) -> dict[str, list[str]]:
    from qualflow.db import GoldSpanRow, PassageRow, ReviewStateRow, TranscriptRow

    spans: dict[str, set[tuple[int, str, int, int]]] = {}
    with store.session() as s:
        for tid, rows in s.execute(
            select(PassageRow.transcript_id, ReviewStateRow.spans).join(
                PassageRow, PassageRow.id == ReviewStateRow.passage_id
            )
        ):
            for r in rows or []:
                a, b = int(r["start"]), int(r["end"])
                spans.setdefault(str(r["code"]), set()).add((b - a, tid, a, b))
        gold = select(
            GoldSpanRow.code,
            GoldSpanRow.transcript_id,
            GoldSpanRow.char_start,
            GoldSpanRow.char_end,
        )
        for code, tid, a, b in s.execute(gold):
            spans.setdefault(str(code), set()).add((b - a, tid, a, b))
        chosen = {
            code: sorted(x for x in found if 0 < x[0] <= EXAMPLE_MAX_CHARS)[:EXAMPLES_PER_CODE]
            for code, found in spans.items()
        }
        tids = sorted({x[1] for picks in chosen.values() for x in picks})
        texts: dict[str, str] = {}
        if tids:
            rows = s.execute(
                select(TranscriptRow.id, TranscriptRow.text).where(TranscriptRow.id.in_(tids))
            )
            texts = {tid: text for tid, text in rows}
    return {
        code: [texts[tid][a:b] for _, tid, a, b in picks if tid in texts]
        for code, picks in chosen.items()
        if picks
    }
