"""A gate for git hooks and filters: tests stop comem's real git at a chosen point, know when it got
there (an event, not a poll), and let it go on when they choose.

The gate is a Unix socket; `install_waiting_hook` and `install_waiting_filter` put a small script
in a test repository that connects to it and waits for one byte. Closing the gate (the end of the
`with`) releases everything still waiting, so a failing test never leaves git hanging.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

from tests.conftest import git

_WAIT = """\
import socket, sys
data = sys.stdin.buffer.read()
if {when}:
    with socket.socket(socket.AF_UNIX) as gate:
        gate.connect({path!r})
        gate.recv(1)
"""


class Gate:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="comem-gate-")  # a socket path must stay short (108 bytes)
        self.path = os.path.join(self.dir, "gate")
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen()
        self.waiting: list[socket.socket] = []
        self.arrivals = 0
        self.is_open = False
        self.changed = threading.Condition()
        threading.Thread(target=self._accept, daemon=True, name="test-gate").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            with self.changed:
                self.arrivals += 1
                self.waiting.append(conn)
                if self.is_open:
                    self._release()
                self.changed.notify_all()

    def _release(self) -> None:
        for conn in self.waiting:
            try:
                conn.sendall(b"g")
            except OSError:
                pass
            conn.close()
        self.waiting.clear()

    def wait_for(self, n: int, timeout: float) -> bool:
        """Block until `n` git processes have reached the gate; False on timeout."""
        with self.changed:
            return self.changed.wait_for(lambda: self.arrivals >= n, timeout)

    def open(self) -> None:
        """Let every waiting git process go on, and those that come later pass."""
        with self.changed:
            self.is_open = True
            self._release()

    def __enter__(self) -> "Gate":
        return self

    def __exit__(self, *exc) -> None:
        self.open()
        self.server.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def script(self, when: str, *, echo_stdin: bool = False) -> str:
        """A Python script that waits at this gate when `when` holds (a Python expression)."""
        body = _WAIT.format(when=when, path=self.path)
        return f"#!{sys.executable}\n{body}" + ("sys.stdout.buffer.write(data)\n" if echo_stdin else "")


def install_waiting_hook(repo: Path, gate: Gate, hook: str, *, when: str = "True") -> None:
    """`hook` in `repo` waits at `gate` when `when` holds (sys.argv: the hook's arguments)."""
    path = repo / ".git" / "hooks" / hook
    path.parent.mkdir(exist_ok=True)
    path.write_text(gate.script(when))
    path.chmod(0o755)


def install_waiting_filter(repo: Path, gate: Gate, pattern: str) -> None:
    """A clean filter on the files matching `pattern` that waits at `gate`: every `git add` that hashes
    such a file stops there. Set in .git (info/attributes, config), so no file of the tree changes."""
    script = Path(gate.dir) / "filter.py"
    script.write_text(gate.script("True", echo_stdin=True))
    script.chmod(0o755)
    (repo / ".git" / "info").mkdir(exist_ok=True)
    with open(repo / ".git" / "info" / "attributes", "a") as f:
        f.write(f"{pattern} filter=comem-test-gate\n")
    git(repo, "config", "filter.comem-test-gate.clean", str(script))
