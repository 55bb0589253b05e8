"""Docker sandbox: one container per run, one `docker exec` per command, removed on every exit path.

The container gets a copy of the user's working tree at /testbed with a fresh one-commit history
(no remotes, no future commits to peek at), no network unless asked, and CPU / memory / pids limits.
Every command runs under coreutils `timeout`, so a hung command returns what it printed and the run
goes on. The patch is taken by comem, not by the model (`diff()`, see patch.py: bounded, byte for
byte, computed from the files when the container's git is unusable). Command output is streamed, keeping its head and tail. Containers carry their owner's pid and host
in labels, so `prune` removes only those of processes that are gone.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from comem_cli.config import SandboxConfig
from comem_cli.errors import EnvironmentFailure, SandboxTimeout, UserError
from comem_cli.patch import GIT, JUNK
from comem_cli.signals import signals_deferred

if TYPE_CHECKING:
    import docker

LABEL = "comem.sandbox"
OWNER_PID, OWNER_HOST, OWNER_START = "comem.pid", "comem.host", "comem.pid_start"


@dataclass
class ExecResult:
    output: str
    returncode: int
    timed_out: bool
    start: float
    end: float
    output_bytes: int = 0  # the whole output's size; only head + tail are kept beyond the limit


def process_start(pid: int) -> str:
    """The start time of process `pid` (Linux /proc), to tell a live owner from a reused pid; '' if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def owner_labels() -> dict[str, str]:
    return {OWNER_PID: str(os.getpid()), OWNER_HOST: socket.gethostname(), OWNER_START: process_start(os.getpid())}


def owner_alive(labels: dict[str, str]) -> bool | None:
    """Whether the process that started a container still runs: None when this host cannot tell."""
    pid, host = labels.get(OWNER_PID), labels.get(OWNER_HOST)
    if not pid or not pid.isdigit() or host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = labels.get(OWNER_START)
    return not (started and process_start(int(pid)) not in ("", started))


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


class Sandbox:
    """A running container. Use as a context manager: the container is removed on exit."""

    def __init__(self, config: SandboxConfig, *, name: str | None = None, labels: dict[str, str] | None = None):
        self.config = config
        self.name = name or f"comem-{uuid.uuid4().hex[:10]}"
        self.labels = {LABEL: "1", **owner_labels(), **(labels or {})}
        self.client = docker_client(timeout=config.command_timeout_s + 120)
        self.container = None
        self.starting = False  # a create request was sent: the container may exist before `container` is set
        self.base_commit: str | None = None
        self.snapshot: bytes | None = None  # the tar copied in (fix): what the fallback diff compares with
        self.patch_notes: list[str] = []  # what happened while taking the patch (fallback, large files)

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
        self.starting = True
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
        self.snapshot = archive
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
        """Run one bash command in the container; output is stdout and stderr interleaved, streamed,
        and beyond `max_output_bytes` only its head and tail are kept (with a note of what was elided)."""
        timeout = timeout or self.config.command_timeout_s
        argv = ["timeout", "--kill-after=5", str(timeout), "bash", "-c", command]
        half = self.config.max_output_bytes // 2
        head, tail, total = bytearray(), bytearray(), 0
        start = time.time()
        try:
            api = self.client.api
            exec_id = api.exec_create(self.container.id, argv, workdir=cwd or self.config.workdir)["Id"]
            for chunk in api.exec_start(exec_id, stream=True, demux=False):
                total += len(chunk)
                if len(head) < half:
                    take = chunk[: half - len(head)]
                    head += take
                    chunk = chunk[len(take):]
                if chunk:
                    tail += chunk
                    if len(tail) > half:
                        del tail[: len(tail) - half]
            rc = api.exec_inspect(exec_id).get("ExitCode")
        except Exception as e:
            raise EnvironmentFailure(f"docker exec failed: {e}") from e
        end = time.time()
        rc = -1 if rc is None else rc
        text = head.decode("utf-8", errors="replace")
        elided = total - len(head) - len(tail)
        if elided > 0:
            text += f"\n[... {elided} bytes of output elided ...]\n"
        text += tail.decode("utf-8", errors="replace")
        timed_out = rc in (124, 137) and end - start >= timeout - 0.5
        return ExecResult(output=text, returncode=rc, timed_out=timed_out, start=start, end=end, output_bytes=total)

    def diff(self) -> str:
        """The patch: every change in the workdir against the base commit (new files included).

        Taken by comem_cli/patch.py: bounded commands, bytes end to end (the text is the patch's bytes
        decoded with surrogateescape), a diff from the files when git is unusable; `patch_notes`
        says what happened (fallback, binary or large files listed or left out).
        """
        from comem_cli.patch import take_patch

        patch, self.patch_notes = take_patch(self)
        return patch

    def _run_checked(self, command: str, raw: bool = False):
        """A set-up command, bounded in time; its stdout (stderr only goes into the error message)."""
        timeout = self.config.setup_timeout_s
        argv = ["timeout", "--kill-after=5", str(timeout), "bash", "-c", command]
        box: dict = {}
        start = time.time()

        def run() -> None:
            try:
                box["result"] = self.container.exec_run(argv, demux=True)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = e

        worker = threading.Thread(target=run, daemon=True, name="comem-setup-exec")
        worker.start()
        worker.join(timeout + 15)  # a backstop for a container whose `timeout` does not work
        if worker.is_alive():
            raise SandboxTimeout(f"sandbox command did not finish in {timeout} s")
        if "error" in box:
            raise EnvironmentFailure(f"docker exec failed: {box['error']}")
        rc, (out, err) = box["result"]
        out, err = out or b"", err or b""
        check_exit(rc, time.time() - start, timeout, err or out)
        return out if raw else out.decode("utf-8", errors="replace")

    def _stream_checked(self, command: str) -> Iterator[bytes]:
        """A set-up command's stdout as it comes, for output too large to hold at once (the content of
        every changed file); bounded in time and checked like `_run_checked`, once the stream ends."""
        timeout = self.config.setup_timeout_s
        argv = ["timeout", "--kill-after=5", str(timeout), "bash", "-c", command]
        api, start, err = self.client.api, time.time(), b""
        try:
            exec_id = api.exec_create(self.container.id, argv)["Id"]
            for out, chunk_err in api.exec_start(exec_id, stream=True, demux=True):
                err = (err + (chunk_err or b""))[-1000:]
                if out:
                    yield out
                if time.time() - start > timeout + 15:  # the backstop, as in `_run_checked`
                    raise SandboxTimeout(f"sandbox command did not finish in {timeout} s")
            rc = api.exec_inspect(exec_id).get("ExitCode")
        except EnvironmentFailure:
            raise
        except Exception as e:
            raise EnvironmentFailure(f"docker exec failed: {e}") from None
        check_exit(-1 if rc is None else rc, time.time() - start, timeout, err)

    def close(self) -> None:
        """Remove the container; by name when a signal came before `containers.run` returned."""
        if self.container is None and not self.starting:
            return
        with signals_deferred():
            if self.container is not None:
                with contextlib.suppress(Exception):
                    self.container.remove(force=True)
            else:
                self._remove_by_name()
            self.container = None
            self.starting = False

    def _remove_by_name(self, tries: int = 6) -> None:
        """The create request may still be in the daemon's hands: look for the name a few times."""
        import docker

        for _ in range(tries):
            try:
                self.client.containers.get(self.name).remove(force=True)
                return
            except docker.errors.NotFound:
                time.sleep(0.25)
            except Exception:
                return


def check_exit(rc: int, elapsed: float, timeout: int, detail: bytes) -> None:
    """Raise for a set-up command that failed or ran out of time. The message is one printable line
    (a command's output may be NUL-separated names): a timeout names the limit, not the tool."""
    if rc in (124, 137) and elapsed >= timeout - 0.5:
        raise SandboxTimeout(f"sandbox command did not finish in {timeout} s")
    if rc != 0:
        text = re.sub(r"[\x00-\x1f\x7f-\x9f]+", " ", detail.decode("utf-8", errors="replace")).strip()
        raise EnvironmentFailure(f"sandbox setup command failed ({rc}): {text[-300:]}")


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


def prune(client: "docker.DockerClient | None" = None, *, everything: bool = False,
          labels: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Remove comem containers whose owning process is gone (leftovers of killed runs); with
    `everything`, all of them. Returns (removed names, kept names: owner alive or not known here)."""
    client = client or docker_client()
    removed, kept = [], []
    for c in client.containers.list(all=True, filters={"label": [LABEL, *(labels or [])]}):
        if not everything and owner_alive(c.labels or {}) is not False:
            kept.append(c.name)
            continue
        with contextlib.suppress(Exception):
            c.remove(force=True)
            removed.append(c.name)
    return removed, kept
