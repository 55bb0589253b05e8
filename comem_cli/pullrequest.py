"""`comem fix --pr`: push the fix branch and open a pull request through the GitHub REST API.

The pull request goes to the repository `origin` points at (the one issue numbers resolve in);
the branch is pushed to `origin` or `--remote` (a fork: the head is then `fork-owner:branch`).
The API base follows the remote's host (GitHub Enterprise: https://HOST/api/v3) unless
`--github-api` / COMEM_GITHUB_API says otherwise; `GITHUB_TOKEN` authenticates. Everything that
can be checked before the run (token, remote, a GitHub URL) is, so a bad set-up costs nothing.
Push and API failures after the run are one-line errors; the local branch stays.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from comem_cli.config import SUMMARIZING_ARMS
from comem_cli.errors import UserError
from comem_cli.issues import api_base_for, parse_remote

_ISSUE_REPO = re.compile(r"^https?://[^/]+/(?P<owner>[^/]+)/(?P<name>[^/]+)/issues/\d+")


@dataclass
class PrTarget:
    remote: str  # where the branch is pushed
    api_base: str
    owner: str  # the repository the pull request is opened on
    name: str
    head_owner: str | None  # the pushed-to repository's owner when it is another one (a fork)
    token: str


def plan(repo, remote: str, api_base: str | None = None) -> PrTarget:
    """Check what `--pr` needs before the run starts. Raises UserError with a one-line reason."""
    token = os.environ.get("GITHUB_TOKEN", "").strip()
    if not token:
        raise UserError("--pr needs GITHUB_TOKEN in the environment (a token that may push and open pull requests)")
    remotes = {r.name: r for r in repo.git_repo.remotes}
    if remote not in remotes:
        raise UserError(f"--pr: the repository has no remote {remote!r} (add one with `git remote add {remote} URL`)")
    pushed = parse_remote(remotes[remote].url)
    if pushed is None:
        raise UserError(f"--pr: remote {remote!r} ({remotes[remote].url}) is not a GitHub repository URL")
    origin = parse_remote(remotes["origin"].url) if "origin" in remotes else None
    host, owner, name = origin or pushed
    head_owner = pushed[1] if (pushed[1], pushed[2]) != (owner, name) else None
    return PrTarget(remote=remote, api_base=api_base_for(host, api_base or os.environ.get("COMEM_GITHUB_API")),
                    owner=owner, name=name, head_owner=head_owner, token=token)


def push(repo, target: PrTarget, branch: str, *, force: bool = False) -> None:
    """`git push REMOTE branch` with the user's git credentials; never waits for a password prompt."""
    argv = ["git", "push", "--porcelain", *(["--force"] if force else []), target.remote, f"refs/heads/{branch}:refs/heads/{branch}"]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(argv, cwd=repo.path, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        raise UserError(f"pushing {branch!r} to {target.remote!r} took over 300 s; the branch is kept locally") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
        reason = next((line for line in lines if "rejected" in line or line.startswith(("error:", "fatal:", "!"))), lines[-1] if lines else "")
        raise UserError(f"push of {branch!r} to {target.remote!r} failed ({reason[:200]}); the branch is kept locally")


def _request(target: PrTarget, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(f"{target.api_base}{path}", data=data, method=method, headers={
        "Accept": "application/vnd.github+json", "User-Agent": "comem", "Authorization": f"Bearer {target.token}",
        **({"Content-Type": "application/json"} if data else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _api_error(e: urllib.error.HTTPError, branch: str) -> UserError:
    try:
        body = json.loads(e.read() or b"{}")
    except ValueError:
        body = {}
    details = [str(x.get("message", "")) for x in body.get("errors", []) if isinstance(x, dict) and x.get("message")]
    message = "; ".join([str(body.get("message", "")).strip()] + details).strip("; ") or e.reason
    hint = " (check GITHUB_TOKEN)" if e.code in (401, 403) else ""
    return UserError(f"GitHub refused the pull request: HTTP {e.code}: {' '.join(str(message).split())[:200]}{hint}; "
                     f"the branch {branch!r} is pushed and kept locally")


def base_branch(repo, target: PrTarget) -> str:
    """The branch the fix was made on (the user's current branch), else the repository's default."""
    try:
        return repo.git_repo.active_branch.name
    except TypeError:  # detached HEAD
        try:
            return _request(target, "GET", f"/repos/{target.owner}/{target.name}")["default_branch"]
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            raise UserError("--pr: HEAD is detached and the repository's default branch is unknown; check out a branch") from None


def fixes_line(issue, target: PrTarget) -> str:
    if issue.number is None:
        return ""
    m = _ISSUE_REPO.match(issue.url or "")
    if m and (m["owner"], m["name"]) != (target.owner, target.name):
        return f"Fixes {m['owner']}/{m['name']}#{issue.number}"
    return f"Fixes #{issue.number}"


def body(issue, outcome, target: PrTarget) -> str:
    from comem_cli.caching import summary_line

    r = outcome.result
    mem = r.memory or {}
    rows = [("exit status", r.status + (f" ({r.message})" if r.message and r.status != "submitted" else "")),
            ("steps", str(len(r.steps))),
            ("tokens", f"{r.prompt_tokens:,} prompt / {r.completion_tokens:,} completion"),
            ("cost", f"${r.cost:.4f}"),
            ("prompt cache", summary_line(r.cached_tokens, r.prompt_tokens, r.cache_saved)),
            ("wall time", f"{r.wall_s:.1f} s")]
    if mem.get("arm") in SUMMARIZING_ARMS:
        hidden = mem.get("hidden_fraction")
        rows.append(("memory", f"{mem['arm']}: {mem.get('summaries', 0)} summaries, {mem.get('memory_s', 0):.1f} s of "
                               f"memory-model time, {100 * (hidden or 0):.0f}% hidden, {mem.get('waits', 0)} waits "
                               f"({mem.get('wait_s', 0):.1f} s)"))
    elif mem.get("arm"):
        rows.append(("memory", mem["arm"]))
    table = "| comem run | |\n|---|---|\n" + "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in rows)
    parts = [fixes_line(issue, target), "This change was made by `comem fix`.", table]
    return "\n\n".join(p for p in parts if p) + "\n"


def open_pull_request(repo, target: PrTarget, issue, outcome, *, force: bool = False) -> str:
    """Push the fix branch and open the pull request; returns its URL."""
    branch = outcome.branch
    push(repo, target, branch, force=force)
    payload = {"title": issue.title or f"comem fix ({branch})", "head": f"{target.head_owner}:{branch}" if target.head_owner else branch,
               "base": base_branch(repo, target), "body": body(issue, outcome, target),
               "draft": outcome.result.status != "submitted"}  # an unfinished run's patch is a draft
    try:
        created = _request(target, "POST", f"/repos/{target.owner}/{target.name}/pulls", payload)
    except urllib.error.HTTPError as e:
        raise _api_error(e, branch) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(f"cannot reach the GitHub API at {target.api_base}: {getattr(e, 'reason', e)}; "
                        f"the branch {branch!r} is pushed and kept locally") from None
    url = created.get("html_url") if isinstance(created, dict) else None
    if not url:
        raise UserError(f"the GitHub API answered without a pull request URL; the branch {branch!r} is pushed and kept locally")
    record(outcome.run_dir, url)
    return url


def record(run_dir, url: str) -> None:
    """The pull request's URL in meta.json."""
    from pathlib import Path

    from comem_cli.rollouts import META, atomic_write_json

    path = Path(run_dir) / META
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    atomic_write_json(path, {**meta, "pull_request": url})
