"""Credentials in server URLs (`--api-base`, `--memory-api-base`) kept out of run directories.

Run dirs travel: benchmark outputs, rollouts for training, files attached to bug reports. A URL
such as `https://user:token@host/v1?api_key=...` is recorded with its userinfo and its query values
replaced by REDACTED, and `comem fix --resume` asks for such a URL again, as it does for API keys
(which are read from the environment and never recorded).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

REDACTED = "REDACTED"


def redact_url(url: str | None) -> str | None:
    """`url` without what may be a credential: userinfo, query values, fragment. Anything that
    does not parse as a URL with a host but holds an `@` or a `?` is replaced whole."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a broken IPv6 host: it may hold anything
        return REDACTED
    if not parts.netloc:
        return REDACTED if ("@" in url or "?" in url) else url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = "&".join(_redact_parameter(p) for p in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, REDACTED if parts.fragment else ""))


def _redact_parameter(parameter: str) -> str:
    """`key=value` -> `key=REDACTED`; a bare value (no `=`) may be a token itself."""
    key, sep, _ = parameter.partition("=")
    return f"{key}={REDACTED}" if sep else (REDACTED if parameter else "")


def is_redacted(url: str | None) -> bool:
    """Whether a recorded URL lost a credential to redact_url (it cannot be used as it is)."""
    return url is not None and REDACTED in url
