"""Issue references: a GitHub issue number, an issue URL, a text/markdown file, or `-` for stdin.

Numbers resolve against the repository's `origin` remote (https or ssh form) through the GitHub
REST API (`GITHUB_TOKEN` used when set; API base overridable for GitHub Enterprise).
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from comem_cli.errors import UserError

GITHUB_API = "https://api.github.com"

_REMOTE_PATTERNS = [
    re.compile(r"^(?:https?|git|ssh)://(?:[^@/]+@)?(?P<host>[^/:]+)(?::\d+)?/(?P<owner>[^/]+)/(?P<name>[^/]+?)(?:\.git)?/?$"),
    re.compile(r"^(?:[^@]+@)?(?P<host>[^:/]+):(?P<owner>[^/]+)/(?P<name>[^/]+?)(?:\.git)?/?$"),  # scp-like ssh
]
_ISSUE_URL = re.compile(r"^https?://(?P<host>[^/]+)/(?P<owner>[^/]+)/(?P<name>[^/]+)/issues/(?P<number>\d+)/?(?:[#?].*)?$")


@dataclass
class Issue:
    title: str
    body: str
    number: int | None = None
    url: str | None = None

    @property
    def text(self) -> str:
        """The task as the model sees it."""
        return f"{self.title}\n\n{self.body}".strip() if self.title else self.body.strip()


def parse_remote(url: str) -> tuple[str, str, str] | None:
    """(host, owner, name) of a GitHub-style remote URL, or None."""
    for pattern in _REMOTE_PATTERNS:
        if m := pattern.match(url.strip()):
            return m["host"], m["owner"], m["name"]
    return None


def api_base_for(host: str, override: str | None = None) -> str:
    if override:
        return override.rstrip("/")
    return GITHUB_API if host in ("github.com", "www.github.com") else f"https://{host}/api/v3"


def fetch_github_issue(api_base: str, owner: str, name: str, number: int, token: str | None = None) -> Issue:
    url = f"{api_base}/repos/{owner}/{name}/issues/{number}"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.github+json", "User-Agent": "comem"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            data = json.load(response)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            hint = "" if token else " (a private repository needs GITHUB_TOKEN)"
            raise UserError(f"issue #{number} not found in {owner}/{name}{hint}") from None
        if e.code in (401, 403):
            raise UserError(f"GitHub refused access to {owner}/{name}#{number} (HTTP {e.code}); check GITHUB_TOKEN") from None
        raise UserError(f"GitHub API error for {owner}/{name}#{number}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"cannot reach the GitHub API at {api_base}: {getattr(e, 'reason', e)}") from None
    return Issue(title=data.get("title") or "", body=data.get("body") or "", number=number, url=data.get("html_url") or url)


def resolve_issue(ref: str, *, origin_url: str | None = None, api_base: str | None = None) -> Issue:
    """Turn an issue reference into an Issue. Raises UserError with a one-line reason."""
    token = os.environ.get("GITHUB_TOKEN") or None
    api_base = api_base or os.environ.get("COMEM_GITHUB_API") or None
    if ref == "-":
        body = sys.stdin.read()
        if not body.strip():
            raise UserError("no issue text on standard input")
        return _from_text(body)
    if m := _ISSUE_URL.match(ref):
        return fetch_github_issue(api_base_for(m["host"], api_base), m["owner"], m["name"], int(m["number"]), token)
    if re.fullmatch(r"#?\d+", ref):
        number = int(ref.lstrip("#"))
        remote = parse_remote(origin_url) if origin_url else None
        if remote is None:
            raise UserError(f"issue #{number}: the repository has no GitHub `origin` remote to look it up in; pass an issue URL or a file")
        host, owner, name = remote
        return fetch_github_issue(api_base_for(host, api_base), owner, name, number, token)
    path = Path(ref).expanduser()
    if path.is_file():
        try:
            return _from_text(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read issue file {ref}: {getattr(e, 'strerror', None) or e}") from None
    if path.exists():
        raise UserError(f"issue file {ref} is not a regular file")
    raise UserError(f"issue {ref!r} is not a number, an issue URL, an existing file, or '-'")


def _from_text(text: str) -> Issue:
    """A markdown/text issue: the first line (without leading '#') is the title."""
    lines = text.strip().splitlines()
    if not lines:
        raise UserError("the issue text is empty")
    title = lines[0].lstrip("#").strip()
    return Issue(title=title, body="\n".join(lines[1:]).strip())
