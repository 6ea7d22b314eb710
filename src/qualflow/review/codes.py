"""The codebook a passage is reviewed against, and searching it by title and definition."""

from __future__ import annotations

from sqlalchemy import select

from qualflow.db import ProposalSetRow
from qualflow.models import Code, Codebook
from qualflow.store import Store

REVIEWABLE = ("ok", "needs_human")


def codebook_version_for(store: Store, passage_id: str) -> str | None:
    """The codebook version of the passage's newest reviewable proposal set."""
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


def codebook_for(store: Store, passage_id: str) -> Codebook | None:
    """That codebook, else the newest stored one (None when the store has none).

    A codebook version is a hash of its content, so a version once read is cached.
    """
    version = codebook_version_for(store, passage_id)
    if version and (id(store), version) in _cache:
        return _cache[(id(store), version)]
    codebook = (store.codebook(version) if version else None) or store.codebook()
    if version and codebook is not None and codebook.version == version:
        _cache[(id(store), version)] = codebook
    return codebook


def search(codebook: Codebook, query: str, limit: int = 12) -> list[Code]:
    """Codes whose title or definition contains every word of the query.

    Title hits rank before definition-only hits; then codebook order. An empty query
    lists the codebook from the top.
    """
    words = [w for w in query.lower().replace(".", " ").split() if w]
    scored: list[tuple[int, int, Code]] = []
    for pos, code in enumerate(codebook.codes):
        title = code.title.lower().replace(".", " ").replace("_", " ")
        text = " ".join([title, code.description.lower(), code.inclusion.lower()])
        if all(w in text for w in words):
            title_hits = sum(w in title for w in words)
            scored.append((-title_hits, pos, code))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [c for _, _, c in scored[:limit]]
