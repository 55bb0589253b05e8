"""A real OpenAI-compatible chat-completions server on 127.0.0.1 that plays a script.

Part of the product: `comem demo` serves its recorded replay of the main and memory models with
it. The tests and benchmarks use it too: comem reaches it through litellm exactly as it would reach
a provider (`--model openai/<any> --api-base <url>`).

Command line: `python -m comem_cli.replay_server --script replies.json [--port 8000]`.

Replies come from a *responder*: a function of the request body. `Script` replays a list of replies
(or one list per task) statelessly: the reply for a request is the one for the step the view is at,
read off the view itself (assistant turns shown, plus the steps covered by a summary block), so
concurrent runs of one task, retries and every memory arm get the right reply. Latency can be
injected, proportional to prompt tokens, and failures (HTTP errors, hangs) scripted for the first
calls.

Prompt caching is reported as the providers do: chat completions carry OpenAI's
`usage.prompt_tokens_details.cached_tokens` (the leading messages identical to the previous
request's), and an Anthropic Messages route (`/v1/messages`) caches only prefixes that end at a
`cache_control` marker and reports `cache_read_input_tokens` / `cache_creation_input_tokens`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

SUBMIT_REPLY = "THOUGHT: The script is over, so I submit.\n\n```bash\necho COMEM_SUBMIT\n```"

Responder = Callable[[dict[str, Any]], str]


def prompt_tokens(body: dict[str, Any]) -> int:
    """Same ~4 characters/token estimate for every message, so tests can reason about it."""
    return sum(message_tokens(m) for m in body.get("messages", []))


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # content parts (e.g. with cache_control markers)
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return str(content or "")


def message_tokens(message: dict[str, Any]) -> int:
    return (len(_content_text(message.get("content"))) + 3) // 4 + 4


def cached_prefix_tokens(messages: list[dict[str, Any]], previous: list[dict[str, Any]]) -> int:
    """OpenAI-style automatic caching: the tokens of the leading messages identical to the previous
    request's (whole messages; no 1024-token minimum, so small tests see real numbers)."""
    cached = 0
    for now, before in zip(messages, previous):
        if now.get("role") != before.get("role") or _content_text(now.get("content")) != _content_text(before.get("content")):
            break
        cached += message_tokens(now)
    return cached


def anthropic_blocks(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """An Anthropic Messages request as (block text, has cache_control) in prompt order."""
    blocks: list[tuple[str, bool]] = []
    system = body.get("system")
    for item in (system if isinstance(system, list) else [{"text": system}] if system else []):
        blocks.append((f"system:{item.get('text', '')}", bool(item.get("cache_control"))))
    for m in body.get("messages", []):
        parts = m.get("content")
        for part in (parts if isinstance(parts, list) else [{"text": parts}]):
            text = part.get("text", "") if isinstance(part, dict) else str(part)
            blocks.append((f"{m.get('role')}:{text}", bool(isinstance(part, dict) and part.get("cache_control"))))
    return blocks


def anthropic_as_openai(body: dict[str, Any]) -> dict[str, Any]:
    """The same request in chat-completions shape, for the responders."""
    messages = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _content_text(system)})
    messages += [{"role": m.get("role"), "content": _content_text(m.get("content"))} for m in body.get("messages", [])]
    return {**body, "messages": messages}


_SUMMARY_SPAN = re.compile(r"Summary of steps 0 to (\d+)")


def step_index(body: dict[str, Any]) -> int:
    """Which step a view is asking for: steps covered by its summary block + assistant turns shown."""
    messages = body.get("messages", [])
    covered = 0
    for m in messages:
        if m.get("role") == "user" and (match := _SUMMARY_SPAN.search(str(m.get("content") or ""))):
            covered = int(match[1]) + 1
    return covered + sum(1 for m in messages if m.get("role") == "assistant")


class Script:
    """Replays `replies` (a list, or {task substring: list}): the reply for step n is replies[n]."""

    def __init__(self, replies: list[str] | dict[str, list[str]], on_exhausted: str = SUBMIT_REPLY):
        self.replies = replies
        self.on_exhausted = on_exhausted

    def _replies_for(self, body: dict[str, Any]) -> list[str]:
        if isinstance(self.replies, list):
            return self.replies
        users = [str(m.get("content", "")) for m in body.get("messages", []) if m.get("role") == "user"]
        task = users[0] if users else ""
        for needle, replies in self.replies.items():
            if needle in task:
                return replies
        return []

    def __call__(self, body: dict[str, Any]) -> str:
        replies = self._replies_for(body)
        i = step_index(body)
        return replies[i] if i < len(replies) else self.on_exhausted


_ONLY = re.compile(r"Write only (?:this section|these sections) of it, under (?:its heading|their headings): (.*)\.\s*$")


class Sections:
    """A memory model that answers with `summary` (whose sections start with `## Heading`), or, when
    a request asks for some sections only (comem's parallel section requests), with those."""

    def __init__(self, summary: str):
        self.summary = summary
        parts = re.split(r"(?m)^(?=## )", summary)
        self.parts = {p.split("\n", 1)[0][3:].strip(): p.strip() for p in parts if p.startswith("## ")}

    def __call__(self, body: dict[str, Any]) -> str:
        users = [str(m.get("content") or "") for m in body.get("messages", []) if m.get("role") == "user"]
        match = _ONLY.search(users[-1]) if users else None
        if match is None:
            return self.summary
        wanted = [h.strip()[3:] for h in match[1].split(", ")]
        return "\n\n".join(self.parts[h] for h in wanted if h in self.parts)


class ScriptedServer:
    """Context manager: `with ScriptedServer(Script([...])) as server: server.url` -> http://127.0.0.1:PORT/v1"""

    def __init__(self, responder: Responder, *, port: int = 0, latency_s: float = 0.0,
                 latency_per_token_s: float = 0.0, fail_first: list[int] | None = None,
                 hang_first: int = 0, hang_s: float = 30.0, max_context: int | None = None,
                 fail_always: int | None = None, error_message: str | None = None, hang_from: int | None = None,
                 garbage_first: int = 0):
        self.responder = responder
        self.latency_s, self.latency_per_token_s = latency_s, latency_per_token_s
        self.fail_first = list(fail_first or [])  # HTTP status codes returned by the first calls
        # The first N calls, and every call from index `hang_from` on (0: all), sleep hang_s before
        # answering. Set before the run starts, so a test never races the run to flip a flag.
        self.hang_first, self.hang_from, self.hang_s = hang_first, hang_from, hang_s
        self.hanging = threading.Event()  # set when a call starts to hang: the run is now inside that call
        self.max_context = max_context
        # Fault modes for every call: an HTTP status (400/401/404/500...) with `error_message` as the
        # provider's message, or a 200 whose body is not JSON (garbage_first calls).
        self.fail_always, self.error_message = fail_always, error_message
        self.garbage_first = garbage_first
        self.requests: list[dict[str, Any]] = []  # every request body received, in order
        self.dead = False  # after kill(): kept-alive connections are dropped without an answer
        self.previous_messages: list[dict[str, Any]] = []  # the last chat request (automatic prefix cache)
        self.anthropic_cache: set[str] = set()  # prefixes written at cache_control breakpoints
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)  # notified on every request received (wait_for_requests)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._httpd.handle_error = self._handle_error
        self._thread: threading.Thread | None = None

    def _handle_error(self, request, client_address) -> None:
        """A client that hung up before its answer (a killed run) is no error of the server's."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        ThreadingHTTPServer.handle_error(self._httpd, request, client_address)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """Block until `n` chat requests have arrived (an event, not a poll); False on timeout."""
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.requests) >= n, timeout)

    def start(self) -> "ScriptedServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def kill(self) -> None:
        """Die like a crashed server: stop listening and drop open connections unanswered."""
        self.dead = True
        threading.Thread(target=self.stop, daemon=True).start()

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):  # vLLM says the window it serves with
                    window = {"max_model_len": server.max_context} if server.max_context else {}
                    self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model", **window}]})
                else:
                    self._send(200 if self.path in ("/health", "/v1/health") else 404, {})

            def do_POST(self):
                if server.dead:
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    return self._send(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
                if self.path.rstrip("/").endswith("/messages"):
                    return self._anthropic(body)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with server.lock:
                    index = len(server.requests)
                    server.requests.append(body)
                    server.arrived.notify_all()
                    status = server.fail_first.pop(0) if server.fail_first else None
                    cached = cached_prefix_tokens(body.get("messages", []), server.previous_messages)
                    server.previous_messages = body.get("messages", [])
                if index < server.hang_first or (server.hang_from is not None and index >= server.hang_from):
                    server.hanging.set()
                    time.sleep(server.hang_s)
                status = status or server.fail_always
                if status:
                    message = server.error_message or f"scripted failure {status}"
                    return self._send(status, {"error": {"message": message, "type": "server_error"}})
                if index < server.garbage_first:
                    data = b"<html>\x1b]0;owned\x07 this is not JSON</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                tokens = prompt_tokens(body)
                if server.max_context and tokens > server.max_context:
                    return self._send(400, {"error": {
                        "message": f"This model's maximum context length is {server.max_context} tokens. "
                                   f"However, your messages resulted in {tokens} tokens.",
                        "type": "invalid_request_error", "code": "context_length_exceeded"}})
                time.sleep(server.latency_s + server.latency_per_token_s * tokens)
                text = server.responder(body)
                max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
                if max_tokens == 1:
                    text = text[:1]  # a cache pre-warm request
                completion = (len(text) + 3) // 4
                self._send(200, {
                    "id": f"chatcmpl-{index}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "scripted"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": tokens, "completion_tokens": completion, "total_tokens": tokens + completion,
                              "prompt_tokens_details": {"cached_tokens": cached}},
                })

            def _anthropic(self, body: dict[str, Any]) -> None:
                """Anthropic's Messages API: caches only prefixes ending at a cache_control marker."""
                import hashlib

                blocks = anthropic_blocks(body)
                sizes = [(len(text) + 3) // 4 + 4 for text, _ in blocks]
                keys, h = [], hashlib.sha256()
                for text, _ in blocks:
                    h.update(text.encode() + b"\0")
                    keys.append(h.hexdigest())
                with server.lock:
                    index = len(server.requests)
                    server.requests.append(body)
                    server.arrived.notify_all()
                    read = max((i + 1 for i, k in enumerate(keys) if k in server.anthropic_cache), default=0)
                    marks = [i + 1 for i, (_, marked) in enumerate(blocks) if marked]
                    written = max(marks, default=0)
                    server.anthropic_cache.update(keys[m - 1] for m in marks)
                read_tokens = sum(sizes[:read])
                write_tokens = sum(sizes[read:written]) if written > read else 0
                time.sleep(server.latency_s)
                text = server.responder(anthropic_as_openai(body))
                if body.get("max_tokens") == 1:
                    text = text[:1]
                self._send(200, {
                    "id": f"msg_{index}", "type": "message", "role": "assistant", "model": body.get("model", "scripted"),
                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": sum(sizes) - read_tokens - write_tokens, "output_tokens": (len(text) + 3) // 4,
                              "cache_read_input_tokens": read_tokens, "cache_creation_input_tokens": write_tokens},
                })

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a scripted OpenAI-compatible model on 127.0.0.1.")
    parser.add_argument("--script", required=True, help="JSON file: a list of replies, or {task substring: [replies]}")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    parser.add_argument("--latency-per-token", type=float, default=0.0, help="seconds per prompt token")
    args = parser.parse_args()
    with open(args.script) as f:
        replies = json.load(f)
    server = ScriptedServer(Script(replies), port=args.port, latency_s=args.latency, latency_per_token_s=args.latency_per_token)
    print(f"scripted model serving on {server.url}", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
