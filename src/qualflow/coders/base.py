"""The one abstraction everything meets at: a coder proposes code sets for passages.

An LLM run, the embedded local model, the similarity baseline and the learned
baseline are coders here; gold sets and human reviewers are coders for agreement
(their codings are ``models.Coding`` mappings). Agreement compares any two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from qualflow.models import Codebook, CodingRequest, ProposalSet


@runtime_checkable
class Coder(Protocol):
    """Proposes codes for a batch of passages.

    ``kind``, ``model`` and ``prompt_version`` are provenance: together with the
    codebook version they form the key that makes re-runs incremental.
    """

    kind: str
    model: str
    prompt_version: str

    def propose(self, requests: Sequence[CodingRequest], codebook: Codebook) -> list[ProposalSet]:
        """One ProposalSet per request, in order. Never raises for one bad passage:
        a passage whose answer cannot be validated comes back with status
        ``needs_human`` and the reason."""
        ...
