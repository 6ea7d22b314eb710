"""Privacy guards: keep confidential transcript text on this machine when asked to.

``ensure_local`` refuses any endpoint that is not on loopback when the study is
``local_only``; callers run it before they open a connection, so a refused
endpoint never receives a byte. ``Pseudonymizer`` replaces names, emails, phone
numbers and URLs by stable placeholders before text goes to a hosted endpoint.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from qualflow.settings import Settings

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
