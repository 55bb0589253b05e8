"""Docker sandbox: one container per run, one `docker exec` per command, removed on every exit path.

The container gets a copy of the user's working tree at /testbed with a fresh one-commit history
(no remotes, no future commits to peek at), no network unless asked, and CPU / memory / pids limits.
Every command runs under coreutils `timeout`, so a hung command returns what it printed and the run
goes on. The patch is `git diff` against the base commit, taken by comem, not by the model, with a
bounded command, as bytes (files that are not UTF-8 text travel as git binary patches, so the patch
text is lossless); if the container's git is unusable, comem computes the diff itself from the
snapshot it copied in and the files now in the container (`patch_notes` says what happened).
Command output is streamed, keeping its head and tail. Containers carry their owner's pid and host
in labels, so `prune` removes only those of processes that are gone.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from comem_cli.config import SandboxConfig
from comem_cli.errors import EnvironmentFailure, UserError

if TYPE_CHECKING:
    import docker

LABEL = "comem.sandbox"
OWNER_PID, OWNER_HOST, OWNER_START = "comem.pid", "comem.host", "comem.pid_start"
JUNK = "__pycache__/\n*.pyc\n.pytest_cache/\n*.egg-info/\n.mypy_cache/\n"
GIT = "git -c user.name=comem -c user.email=comem@localhost -c core.fileMode=false -c commit.gpgsign=false"


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


@contextlib.contextmanager
def signals_deferred(reraise: bool = True) -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM while cleaning up, so a second Ctrl-C cannot leave a container behind.
    The signals received are yielded; with `reraise` one of them ends the block as KeyboardInterrupt."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    old = {s: signal.signal(s, lambda n, _f: received.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if received and reraise:
            raise KeyboardInterrupt


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

        Bytes end to end: the returned text is the patch's bytes decoded with surrogateescape (write
        it with `encode("utf-8", "surrogateescape")`); files that are not UTF-8 text are binary
        patches, so the text is plain UTF-8. Binary or large files are listed (or left out, with
        `large_files="refuse"`) in `patch_notes`.
        """
        self.patch_notes = []
        try:
            return self._git_diff()
        except EnvironmentFailure as e:
            if self.snapshot is None:
                raise
            self.patch_notes.append(f"git in the sandbox is unusable ({str(e)[:160]}); patch computed by comem from the files")
        return self._fallback_diff()

    def _git_diff(self) -> str:
        wd, base = self.config.workdir, self.base_commit
        self._run_checked(f"cd {wd} && {GIT} add -A")
        entries = parse_listing(self._run_checked(LISTING.replace("WD", wd).replace("BASE", base), raw=True))
        attributes, excluded = self._apply_policy(entries)
        files = {"info/attributes": attributes}
        if excluded:
            files["comem-exclude"] = b"\0".join(p.encode("utf-8", "surrogateescape") for p in excluded)
        if attributes or excluded:
            self.container.put_archive(f"{wd}/.git", tar_bytes(files))
        if excluded:
            self._run_checked(f"cd {wd} && GIT_LITERAL_PATHSPECS=1 {GIT} reset -q {base} "
                              "--pathspec-from-file=.git/comem-exclude --pathspec-file-nul")
        out = self._run_checked(f"cd {wd} && {GIT} diff --cached --binary {base}", raw=True)
        return out.decode("utf-8", errors="surrogateescape")

    def _apply_policy(self, entries: list[tuple[str, int, str]]) -> tuple[bytes, list[str]]:
        """(gitattributes marking non-UTF-8 text as binary, paths to leave out) for the changed files."""
        attributes, excluded = b"", []
        limit = self.config.max_file_bytes
        for path, size, kind in entries:
            if kind == "latin":
                attributes += attribute_line(path)
            if kind == "binary" or size > limit:
                what = f"{'binary' if kind == 'binary' else 'large'} file, {size / 1e6:.1f} MB"
                if self.config.large_files == "refuse":
                    excluded.append(path)
                    self.patch_notes.append(f"{path} ({what}) left out of the patch")
                else:
                    self.patch_notes.append(f"{path} ({what}) is in the patch")
        return attributes, excluded

    def _fallback_diff(self) -> str:
        """Diff the snapshot against the files now in the container, with the host's git (no exec)."""
        with tempfile.TemporaryDirectory(prefix="comem-diff-") as tmp:
            work = Path(tmp) / "work"
            work.mkdir()
            _extract(io.BytesIO(self.snapshot), work)
            host_git(work, "init", "-q")
            (work / ".git" / "info").mkdir(exist_ok=True)
            (work / ".git" / "info" / "exclude").write_text(JUNK)
            host_git(work, "add", "-A")
            host_git(work, "commit", "-q", "--allow-empty", "--no-verify", "-m", "snapshot")
            for child in work.iterdir():
                if child.name != ".git":
                    subprocess.run(["rm", "-rf", str(child)], check=True)
            archive = Path(tmp) / "current.tar"
            try:
                stream, _ = self.container.get_archive(self.config.workdir.rstrip("/") + "/.")
                with open(archive, "wb") as f:
                    for chunk in stream:
                        f.write(chunk)
            except Exception as e:
                raise EnvironmentFailure(f"cannot read the files of the sandbox: {e}") from None
            with open(archive, "rb") as f:
                _extract(f, work, skip_git=True)
            host_git(work, "add", "-A")
            names = [n for n in host_git(work, "diff", "--cached", "--name-only", "-z", "HEAD").split(b"\0") if n]
            entries = []
            for raw in names:
                path = raw.decode("utf-8", "surrogateescape")
                new = work / path
                data = new.read_bytes() if new.is_file() and not new.is_symlink() else b""
                old = subprocess.run(["git", "cat-file", "blob", f"HEAD:{path}"], cwd=work, capture_output=True).stdout
                entries.append((path, len(data), classify(data, old)))
            attributes, excluded = self._apply_policy(entries)
            (work / ".git" / "info" / "attributes").write_bytes(attributes)
            for path in excluded:
                host_git(work, "reset", "-q", "HEAD", "--", path, env={"GIT_LITERAL_PATHSPECS": "1"})
            return host_git(work, "diff", "--cached", "--binary", "HEAD").decode("utf-8", "surrogateescape")

    def _run_checked(self, command: str, raw: bool = False):
        """A set-up command, bounded in time; its stdout (stderr only goes into the error message)."""
        timeout = self.config.setup_timeout_s
        argv = ["timeout", "--kill-after=5", str(timeout), "bash", "-c", command]
        box: dict = {}

        def run() -> None:
            try:
                box["result"] = self.container.exec_run(argv, demux=True)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = e

        worker = threading.Thread(target=run, daemon=True, name="comem-setup-exec")
        worker.start()
        worker.join(timeout + 15)  # a backstop for a container whose `timeout` does not work
        if worker.is_alive():
            raise EnvironmentFailure(f"sandbox command did not finish in {timeout} s")
        if "error" in box:
            raise EnvironmentFailure(f"docker exec failed: {box['error']}")
        rc, (out, err) = box["result"]
        out, err = out or b"", err or b""
        if rc != 0:
            detail = (err or out).decode("utf-8", errors="replace").strip()[-300:]
            raise EnvironmentFailure(f"sandbox setup command failed ({rc}): {detail}")
        return out if raw else out.decode("utf-8", errors="replace")

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


# Each changed file as "size kind path\0": kind binary (a NUL in its first 8000 bytes, as git sees it),
# latin (text that is not UTF-8, old or new content: it must travel as a binary patch) or text.
LISTING = r"""cd WD || exit 3
utf8() { if command -v iconv >/dev/null; then iconv -f UTF-8 -t UTF-8 >/dev/null 2>&1; else cat >/dev/null; fi; }
git diff --cached --name-only -z BASE | while IFS= read -r -d '' f; do
  size=0; kind=text
  if [ -f "$f" ] && [ ! -L "$f" ]; then
    size=$(stat -c %s -- "$f")
    if [ "$(head -c 8000 -- "$f" | tr -d '\000' | wc -c)" != "$(head -c 8000 -- "$f" | wc -c)" ]; then kind=binary
    elif ! utf8 < "$f"; then kind=latin; fi
  fi
  if [ "$kind" = text ] && git cat-file -e "BASE:$f" 2>/dev/null && ! git cat-file blob "BASE:$f" | utf8; then kind=latin; fi
  printf '%s %s %s\0' "$size" "$kind" "$f"
done
test "${PIPESTATUS[0]}" = 0
"""


def parse_listing(out: bytes) -> list[tuple[str, int, str]]:
    entries = []
    for record in out.split(b"\0"):
        parts = record.split(b" ", 2)
        if len(parts) == 3 and parts[0].isdigit():
            entries.append((parts[2].decode("utf-8", "surrogateescape"), int(parts[0]), parts[1].decode()))
    return entries


def classify(new: bytes, old: bytes) -> str:
    """binary | latin | text, as the in-container listing decides it."""
    if b"\0" in new[:8000]:
        return "binary"
    for data in (new, old):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return "latin"
    return "text"


def attribute_line(path: str) -> bytes:
    """A .gitattributes line that makes exactly `path` binary for diff (a patch of it is lossless)."""
    pattern = "/" + re.sub(r"([*?\[\\])", r"\\\1", path)
    if re.search(r'[\s"]', pattern):
        pattern = '"' + pattern.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return pattern.encode("utf-8", "surrogateescape") + b" -diff\n"


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted({os.path.dirname(n) for n in files} - {""}):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _extract(fileobj, dest: Path, skip_git: bool = False) -> None:
    """Unpack a tar (docker's archive of the workdir is rooted at '.') without leaving `dest`."""
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            name = member.name
            while name.startswith("./"):
                name = name[2:]
            if not name or name == ".":
                continue
            if skip_git and (name == ".git" or name.startswith(".git/")):
                continue
            member.name = name
            with contextlib.suppress(tarfile.TarError, OSError):  # e.g. a link leading out: not a file of the tree
                tar.extract(member, dest, filter="tar")


def host_git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> bytes:
    full_env = {**os.environ, "GIT_AUTHOR_NAME": "comem", "GIT_AUTHOR_EMAIL": "comem@localhost",
                "GIT_COMMITTER_NAME": "comem", "GIT_COMMITTER_EMAIL": "comem@localhost", **(env or {})}
    r = subprocess.run(["git", "-c", "core.fileMode=false", "-c", "commit.gpgsign=false", *args], cwd=cwd,
                       capture_output=True, env=full_env, timeout=300)
    if r.returncode != 0:
        raise EnvironmentFailure(f"git {args[0]} failed: {r.stderr.decode(errors='replace').strip()[-200:]}")
    return r.stdout


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
