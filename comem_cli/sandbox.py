"""Docker sandbox: one container per run, one `docker exec` per command, removed on every exit path.

The container gets a copy of the user's working tree at /testbed with a fresh one-commit history
(no remotes, no future commits to peek at), no network unless asked, and CPU / memory / pids limits.
Every command runs under coreutils `timeout`, so a hung command returns what it printed and the run
goes on. The patch is `git diff` against the base commit, taken by comem, not by the model.
"""

from __future__ import annotations

import contextlib
import io
import signal
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from comem_cli.config import SandboxConfig
from comem_cli.errors import UserError

if TYPE_CHECKING:
    import docker

LABEL = "comem.sandbox"
JUNK = "__pycache__/\n*.pyc\n.pytest_cache/\n*.egg-info/\n.mypy_cache/\n"
GIT = "git -c user.name=comem -c user.email=comem@localhost -c core.fileMode=false -c commit.gpgsign=false"


@dataclass
class ExecResult:
    output: str
    returncode: int
    timed_out: bool
    start: float
    end: float


def docker_client(timeout: int = 600) -> "docker.DockerClient":
    """A client for the local daemon, or a UserError that says how to start one."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as e:  # the SDK raises several types for "no daemon"
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(
            f"cannot reach the Docker daemon ({reason}); start it with `make docker` "
            "(or `sudo dockerd > /tmp/dockerd.log 2>&1 &`)"
        ) from None


def require_image(client: "docker.DockerClient", image: str) -> None:
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        hint = "build it with `comem sandbox build`" if image.startswith("comem-") else f"pull or build `{image}` first"
        raise UserError(f"Docker image {image!r} not found; {hint}") from None


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleaning up, so a second Ctrl-C cannot leave a container behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    old = {s: signal.signal(s, lambda n, _f: received.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if received:
            raise KeyboardInterrupt


class Sandbox:
    """A running container. Use as a context manager: the container is removed on exit."""

    def __init__(self, config: SandboxConfig, *, name: str | None = None, labels: dict[str, str] | None = None):
        self.config = config
        self.name = name or f"comem-{uuid.uuid4().hex[:10]}"
        self.labels = {LABEL: "1", **(labels or {})}
        self.client = docker_client(timeout=config.command_timeout_s + 120)
        self.container = None
        self.base_commit: str | None = None

    def __enter__(self) -> "Sandbox":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        require_image(self.client, self.config.image)
        c = self.config
        self.container = self.client.containers.run(
            c.image,
            command=["sleep", "infinity"],
            entrypoint=[],
            name=self.name,
            labels=self.labels,
            detach=True,
            working_dir="/",
            network_mode="bridge" if c.network else "none",
            nano_cpus=int(c.cpus * 1e9),
            mem_limit=c.memory,
            pids_limit=c.pids,
            privileged=False,
            security_opt=["no-new-privileges"],
            cap_drop=["NET_RAW", "MKNOD", "AUDIT_WRITE", "SYS_CHROOT"],
            environment={"PAGER": "cat", "GIT_PAGER": "cat", "LANG": "C.UTF-8", **c.env},
        )

    def copy_repo(self, archive: bytes) -> str:
        """Unpack a tar of the user's files into the workdir and commit it as the only commit."""
        wd = self.config.workdir
        self._run_checked(f"rm -rf {wd} && mkdir -p {wd}")
        self.container.put_archive(wd, archive)
        self._run_checked(
            f"cd {wd} && git init -q && printf '{JUNK}' >> .git/info/exclude && "
            f"{GIT} add -A && {GIT} commit -q --allow-empty -m 'comem: base snapshot' && git rev-parse HEAD"
        )
        self.base_commit = self._run_checked(f"cd {wd} && git rev-parse HEAD").strip()
        return self.base_commit

    def adopt_repo(self) -> str:
        """Use the git repository the image already has in the workdir (SWE-bench style images)."""
        wd = self.config.workdir
        self.base_commit = self._run_checked(
            f"cd {wd} && printf '{JUNK}' >> .git/info/exclude && git rev-parse HEAD").strip()
        return self.base_commit

    def execute(self, command: str, timeout: int | None = None, cwd: str | None = None) -> ExecResult:
        """Run one bash command in the container; output is stdout and stderr interleaved."""
        timeout = timeout or self.config.command_timeout_s
        argv = ["timeout", "--kill-after=5", str(timeout), "bash", "-c", command]
        start = time.time()
        try:
            rc, out = self.container.exec_run(argv, workdir=cwd or self.config.workdir, demux=False)
        except Exception as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            from comem_cli.errors import EnvironmentFailure

            raise EnvironmentFailure(f"docker exec failed: {e}") from e
        end = time.time()
        text = (out or b"").decode("utf-8", errors="replace")
        timed_out = rc in (124, 137) and end - start >= timeout - 0.5
        return ExecResult(output=text, returncode=rc, timed_out=timed_out, start=start, end=end)

    def diff(self) -> str:
        """The patch: every change in the workdir against the base commit (new files included)."""
        wd = self.config.workdir
        return self._run_checked(f"cd {wd} && {GIT} add -A && {GIT} diff --cached --binary {self.base_commit}")

    def _run_checked(self, command: str) -> str:
        rc, out = self.container.exec_run(["bash", "-c", command], demux=False)
        text = (out or b"").decode("utf-8", errors="replace")
        if rc != 0:
            from comem_cli.errors import EnvironmentFailure

            raise EnvironmentFailure(f"sandbox setup command failed ({rc}): {text.strip()[-300:]}")
        return text

    def close(self) -> None:
        if self.container is None:
            return
        with _signals_deferred():
            with contextlib.suppress(Exception):
                self.container.remove(force=True)
            self.container = None


def tar_files(root: Path, files: list[str]) -> bytes:
    """A tar archive of `files` (paths relative to `root`) as they are on disk now."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in files:
            path = root / rel
            if not (path.is_file() or path.is_symlink()):
                continue  # deleted in the working tree, or a submodule directory
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def prune(client: "docker.DockerClient | None" = None) -> list[str]:
    """Remove every container carrying comem's label (leftovers of killed runs). Returns their names."""
    client = client or docker_client()
    removed = []
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        with contextlib.suppress(Exception):
            c.remove(force=True)
            removed.append(c.name)
    return removed
