"""Issue references, against a fake GitHub REST API (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import io
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from comem_cli.errors import UserError
from comem_cli.issues import api_base_for, parse_remote, resolve_issue


class FakeGitHub:
    """Serves /repos/{owner}/{name}/issues/{n} from a dict; records the Authorization headers.

    POST /repos/{owner}/{name}/pulls (`comem fix --pr`) answers `pull_answer` (status, JSON body)
    and records each request body in `pulls`.
    """

    def __init__(self, issues: dict[str, dict], pull_answer: tuple[int, dict] | None = None):
        self.issues, self.auth = issues, []
        self.pulls: list[dict] = []
        self.pull_answer = pull_answer or (201, {"number": 7, "html_url": "https://github.com/acme/words/pull/7"})
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                fake.auth.append(self.headers.get("Authorization"))
                key = self.path.removeprefix("/repos/")
                body = fake.issues.get(key)
                self._send(200 if body else 404, body if body else {"message": "Not Found"})

            def do_POST(self):
                fake.auth.append(self.headers.get("Authorization"))
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                found = self.path.startswith("/repos/") and self.path.endswith("/pulls")
                if found:
                    fake.pulls.append({"path": self.path, **body})
                status, answer = fake.pull_answer if found else (404, {"message": "Not Found"})
                self._send(status, answer)

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("url,expected", [
    ("https://github.com/acme/words.git", ("github.com", "acme", "words")),
    ("https://github.com/acme/words", ("github.com", "acme", "words")),
    ("git@github.com:acme/words.git", ("github.com", "acme", "words")),
    ("ssh://git@github.com/acme/words.git", ("github.com", "acme", "words")),
    ("https://token@ghe.example.com/team/proj.git", ("ghe.example.com", "team", "proj")),
    ("/local/path/repo", None),
])
def test_parse_remote(url, expected):
    assert parse_remote(url) == expected


def test_api_base_for_enterprise_and_override():
    assert api_base_for("github.com") == "https://api.github.com"
    assert api_base_for("ghe.example.com") == "https://ghe.example.com/api/v3"
    assert api_base_for("github.com", "http://127.0.0.1:1/") == "http://127.0.0.1:1"


def test_number_and_url_through_the_api(monkeypatch):
    issue = {"title": "Crash on empty input", "body": "Steps: run it.", "html_url": "https://github.com/acme/words/issues/12"}
    with FakeGitHub({"acme/words/issues/12": issue}) as gh:
        monkeypatch.setenv("GITHUB_TOKEN", "sekrit")
        got = resolve_issue("12", origin_url="git@github.com:acme/words.git", api_base=gh.url)
        assert (got.title, got.body, got.number) == ("Crash on empty input", "Steps: run it.", 12)
        assert got.text.startswith("Crash on empty input\n\nSteps")
        got = resolve_issue("https://github.com/acme/words/issues/12", api_base=gh.url)
        assert got.number == 12
        assert gh.auth == ["Bearer sekrit", "Bearer sekrit"]
        monkeypatch.delenv("GITHUB_TOKEN")
        with pytest.raises(UserError, match="issue #13 not found in acme/words .*GITHUB_TOKEN"):
            resolve_issue("#13", origin_url="https://github.com/acme/words.git", api_base=gh.url)


def test_file_and_stdin(tmp_path, monkeypatch):
    f = tmp_path / "bug.md"
    f.write_text("# Title here\n\nThe body.\n")
    got = resolve_issue(str(f))
    assert (got.title, got.body, got.number) == ("Title here", "The body.", None)
    monkeypatch.setattr(sys, "stdin", io.StringIO("plain first line\nmore\n"))
    assert resolve_issue("-").title == "plain first line"


def test_unreachable_api():
    with pytest.raises(UserError, match="cannot reach the GitHub API"):
        resolve_issue("5", origin_url="https://github.com/a/b", api_base="http://127.0.0.1:9")
