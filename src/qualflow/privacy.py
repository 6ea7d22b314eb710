"""Privacy guards: keep confidential transcript text on this machine when asked to.

``ensure_local`` refuses any endpoint that is not on loopback when the study is
``local_only``; callers run it before they open a connection, so a refused
endpoint never receives a byte. ``Pseudonymizer`` replaces names, emails, phone
numbers and URLs by stable placeholders before text goes to a hosted endpoint.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from qualflow.settings import Settings
    from qualflow.store import Store

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


class PrivacyError(RuntimeError):
    """An endpoint was refused because the study keeps its data on this machine."""


def host_of(url: str) -> str:
    """The host part of ``url`` (lower case, without brackets or port)."""
    if "://" not in url:
        url = "http://" + url
    return (urlsplit(url).hostname or "").lower()


def is_loopback(url: str) -> bool:
    """True when ``url`` points at this machine: localhost, 127.0.0.0/8 or ::1.

    Host names other than ``localhost`` are not resolved: a name that merely
    resolves to loopback today is not trusted (DNS can change).
    """
    host = host_of(url)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_local(url: str | None, what: str, settings: Settings | None = None) -> None:
    """Raise ``PrivacyError`` when ``url`` is not on loopback and local-only applies.

    ``what`` names the endpoint in the message (e.g. "LLM endpoint"). With
    ``settings`` the check applies only when ``settings.local_only`` is set; without
    it the check always applies (the caller has already decided). ``url=None``
    means the library default, OpenAI's hosted API, which is never local.
    Call it before opening any connection to the endpoint.
    """
    if settings is not None and not settings.local_only:
        return
    target = url or OPENAI_DEFAULT_URL
    if is_loopback(target):
        return
    raise PrivacyError(
        f"{what} {target!r} is not on this machine (host {host_of(target)!r}) and the study "
        "is local_only: refusing to send transcript data. Use a loopback endpoint "
        "(127.0.0.1/localhost), the embedded local model, or set local_only = false."
    )


# --------------------------------------------------------------------------- pseudonyms

_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d ().-]{6,}\d(?!\w)")
_PLACEHOLDER = re.compile(r"\[(PERSON|EMAIL|PHONE|URL)_(\d+)\]")
_GENERIC_SPEAKERS = {"speaker", "participant", "respondent", "interviewee", "unknown", "other"}
_ID_LIKE = re.compile(r"^[A-Za-z]{0,4}[ _-]?\d+$")


def _is_phone(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if not 8 <= len(digits) <= 15:
        return False
    groups = re.findall(r"\d+", candidate)
    # "2019 2020", "1999-2003": years are not phone numbers
    return not all(len(g) == 4 and g[:2] in {"19", "20"} for g in groups)


class Pseudonymizer:
    """Stable placeholders for person names, emails, phone numbers and URLs.

    The same original always gets the same placeholder (``[PERSON_1]``,
    ``[EMAIL_1]``, ...); with a store the mapping is persisted in the ``pseudonyms``
    table and reused by later runs. ``restore`` maps placeholders in a model's
    answer back to the original text, so evidence quotes are validated against
    the original passage. Names come from ``names`` (``settings.pseudonym_names``)
    and from transcript speakers (``learn``), except interviewer and generic
    labels; each word of a multi-word name is replaced on its own as well.
    Thread-safe.
    """

    def __init__(
        self,
        names: Iterable[str] = (),
        *,
        store: Store | None = None,
        ignore_speakers: Iterable[str] = (),
    ):
        self.store = store
        self._ignore = {s.lower() for s in ignore_speakers} | _GENERIC_SPEAKERS
        self._lock = threading.RLock()
        self._by_original: dict[tuple[str, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        self._names: set[str] = set()
        self._name_re: re.Pattern[str] | None = None
        if store is not None:
            self._load()
        self.add_names(names)

    @classmethod
    def from_settings(cls, settings: Settings, store: Store | None) -> Pseudonymizer:
        return cls(
            settings.pseudonym_names, store=store, ignore_speakers=settings.interviewer_speakers
        )

    # ------------------------------------------------------------------ names

    def add_names(self, names: Iterable[str]) -> None:
        with self._lock:
            before = len(self._names)
            for name in names:
                name = " ".join((name or "").split())
                if len(name) < 2:
                    continue
                self._names.add(name)
                parts = name.split()
                if len(parts) > 1:
                    self._names.update(p for p in parts if len(p) >= 3 and p[0].isupper())
            if len(self._names) != before:
                ordered = sorted(self._names, key=len, reverse=True)
                self._name_re = re.compile(
                    r"(?<!\w)(" + "|".join(re.escape(n) for n in ordered) + r")(?!\w)"
                )

    def learn(self, requests: Iterable[Any]) -> None:
        """Add the speaker names of coding requests (passage and context turns)."""
        speakers: set[str] = set()
        for r in requests:
            ctx = r.context
            speakers.add(ctx.passage.speaker or "")
            speakers.update(t.speaker or "" for t in [*ctx.before, *ctx.after])
            speakers.update(p.speaker or "" for p in ctx.passage.pieces)
        self.add_names(s for s in speakers if self._is_person(s))

    def _is_person(self, speaker: str) -> bool:
        s = speaker.strip()
        return bool(s) and s.lower() not in self._ignore and not _ID_LIKE.match(s)

    # ------------------------------------------------------------------ text

    def pseudonymize(self, text: str) -> str:
        text = _URL.sub(self._url, text)
        text = _EMAIL.sub(lambda m: self._placeholder("EMAIL", m.group(0)), text)
        text = _PHONE.sub(
            lambda m: (
                self._placeholder("PHONE", m.group(0)) if _is_phone(m.group(0)) else m.group(0)
            ),
            text,
        )
        if self._name_re is not None:
            text = self._name_re.sub(lambda m: self._placeholder("PERSON", m.group(0)), text)
        return text

    def _url(self, m: re.Match[str]) -> str:
        url = m.group(0)
        core = url.rstrip(".,;:!?)]}'\"")
        return self._placeholder("URL", core) + url[len(core) :]

    def restore(self, text: str) -> str:
        """Placeholders back to the original text (unknown placeholders stay)."""
        return _PLACEHOLDER.sub(lambda m: self._by_placeholder.get(m.group(0), m.group(0)), text)

    def view(self, view: Any) -> Any:
        """A prompt ``ExcerptView`` with its turns' text and speakers pseudonymized."""
        from dataclasses import replace

        return replace(
            view,
            turns=[
                replace(t, speaker=self._speaker(t.speaker), text=self.pseudonymize(t.text))
                for t in view.turns
            ],
        )

    def code(self, code: Any) -> Any:
        """A Code whose example passages are pseudonymized."""
        if not code.examples:
            return code
        return code.model_copy(update={"examples": [self.pseudonymize(e) for e in code.examples]})

    def mapping(self) -> dict[str, str]:
        with self._lock:
            return dict(self._by_placeholder)

    def _speaker(self, speaker: str | None) -> str | None:
        if speaker is None or not self._is_person(speaker):
            return speaker
        return self.pseudonymize(speaker)

    def _placeholder(self, kind: str, original: str) -> str:
        with self._lock:
            found = self._by_original.get((kind, original))
            if found:
                return found
            n = self._counts.get(kind, 0) + 1
            self._counts[kind] = n
            placeholder = f"[{kind}_{n}]"
            self._by_original[(kind, original)] = placeholder
            self._by_placeholder[placeholder] = original
            if self.store is not None:
                from qualflow.db import PseudonymRow

                with self.store.session() as s:
                    s.merge(PseudonymRow(placeholder=placeholder, original=original, kind=kind))
            return placeholder

    def _load(self) -> None:
        from sqlalchemy import select

        from qualflow.db import PseudonymRow

        with self.store.session() as s:  # type: ignore[union-attr]
            rows = s.scalars(select(PseudonymRow)).all()
            for row in rows:
                m = _PLACEHOLDER.fullmatch(row.placeholder)
                if not m:
                    continue
                self._by_original[(row.kind, row.original)] = row.placeholder
                self._by_placeholder[row.placeholder] = row.original
                self._counts[m.group(1)] = max(self._counts.get(m.group(1), 0), int(m.group(2)))
