"""Taking a run's patch from its sandbox, byte for byte and in bounded time.

- `git diff --cached --binary` against the base commit, stdout only (git's warnings never land in
  the patch), every command bounded by the sandbox's set-up timeout;
- files that are not UTF-8 text (latin-1...) are made binary for the diff through
  `.git/info/attributes`, so the patch text is plain UTF-8 and lossless (preds.json included);
- binary or large files are listed, or left out with `large_files="refuse"`;
- the changed files are classified in a number of commands that does not grow with their count
  (one listing, one stream of their contents read once, without holding it): a `node_modules` of
  14,000 files costs seconds, not one set of processes per file;
- a command that runs out of time is named as such ("taking the patch did not finish in N s");
- if git in the container is unusable (`rm -rf .git`, a broken binary, a hang), the diff is computed
  on the host from the snapshot copied in (`Sandbox.snapshot`) and the files now in the container
  (`docker cp`, no exec), with the host's git.

`take_patch(sandbox) -> (patch text, notes)`; the text is the patch's bytes decoded with
surrogateescape, written back with `encode("utf-8", "surrogateescape")`.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from comem_cli.errors import EnvironmentFailure, SandboxTimeout

# How comem runs git in a sandbox (its own identity, no hooks or signing), and what never counts as a change.
GIT = "git -c user.name=comem -c user.email=comem@localhost -c core.fileMode=false -c commit.gpgsign=false"
JUNK = "__pycache__/\n*.pyc\n.pytest_cache/\n*.egg-info/\n.mypy_cache/\n"


def take_patch(sb) -> tuple[str, list[str]]:
    notes: list[str] = []
    try:
        return git_diff(sb, notes), notes
    except SandboxTimeout:
        reason = f"taking the patch did not finish in {sb.config.setup_timeout_s} s"
        if sb.snapshot is None:
            raise EnvironmentFailure(reason) from None
        notes[:] = [f"{reason} in the sandbox; patch computed by comem from the files"]
    except EnvironmentFailure as e:
        if sb.snapshot is None:
            raise
        notes[:] = [f"git in the sandbox is unusable ({str(e)[:160]}); patch computed by comem from the files"]
    return fallback_diff(sb, notes), notes


def git_diff(sb, notes: list[str]) -> str:
    wd, base = sb.config.workdir, sb.base_commit
    sb._run_checked(f"cd {wd} && {GIT} add -A")
    changes = parse_changes(sb._run_checked(f"cd {wd} && {GIT} diff-index --cached -z {base}", raw=True))
    facts: dict[str, BlobFacts] = {}
    if blobs := blob_ids(changes):
        sb.container.put_archive(f"{wd}/.git", tar_bytes({"comem-blobs": blobs}))
        stream = sb._stream_checked(f"cd {wd} && git cat-file --batch --buffer < .git/comem-blobs")
        facts = blob_facts(io.BufferedReader(ChunkReader(stream), 1 << 20))
    attributes, excluded = apply_policy(sb, entries_of(changes, facts), notes)
    files = {"info/attributes": attributes}
    if excluded:
        files["comem-exclude"] = nul_list(excluded)
    if attributes or excluded:
        sb.container.put_archive(f"{wd}/.git", tar_bytes(files))
    if excluded:
        sb._run_checked(f"cd {wd} && GIT_LITERAL_PATHSPECS=1 {GIT} reset -q {base} "
                    "--pathspec-from-file=.git/comem-exclude --pathspec-file-nul")
    out = sb._run_checked(f"cd {wd} && {GIT} diff --cached --binary {base}", raw=True)
    return out.decode("utf-8", errors="surrogateescape")


def apply_policy(sb, entries: list[tuple[str, int, str]], notes: list[str]) -> tuple[bytes, list[str]]:
    """(gitattributes marking non-UTF-8 text as binary, paths to leave out) for the changed files."""
    attributes, excluded = b"", []
    limit = sb.config.max_file_bytes
    for path, size, kind in entries:
        if kind == "latin":
            attributes += attribute_line(path)
        if kind == "binary" or size > limit:
            what = f"{'binary' if kind == 'binary' else 'large'} file, {size / 1e6:.1f} MB"
            if sb.config.large_files == "refuse":
                excluded.append(path)
                notes.append(f"{path} ({what}) left out of the patch")
            else:
                notes.append(f"{path} ({what}) is in the patch")
    return attributes, excluded


def fallback_diff(sb, notes: list[str]) -> str:
    """Diff the snapshot against the files now in the container, with the host's git (no exec)."""
    with tempfile.TemporaryDirectory(prefix="comem-diff-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        _extract(io.BytesIO(sb.snapshot), work)
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
            stream, _ = sb.container.get_archive(sb.config.workdir.rstrip("/") + "/.")
            with open(archive, "wb") as f:
                for chunk in stream:
                    f.write(chunk)
        except Exception as e:
            raise EnvironmentFailure(f"cannot read the files of the sandbox: {e}") from None
        with open(archive, "rb") as f:
            _extract(f, work, skip_git=True)
        host_git(work, "add", "-A")
        changes = parse_changes(host_git(work, "diff-index", "--cached", "-z", "HEAD"))
        wanted = Path(tmp) / "blobs"
        wanted.write_bytes(blob_ids(changes))
        with open(wanted, "rb") as stdin:
            cat = subprocess.Popen(["git", "cat-file", "--batch", "--buffer"], cwd=work, stdin=stdin,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            with cat:
                facts = blob_facts(cat.stdout)
        if cat.returncode != 0:
            raise EnvironmentFailure(f"git cat-file failed ({cat.returncode}) on the files of the sandbox")
        attributes, excluded = apply_policy(sb, entries_of(changes, facts), notes)
        (work / ".git" / "info" / "attributes").write_bytes(attributes)
        if excluded:
            host_git(work, "reset", "-q", "HEAD", "--pathspec-from-file=-", "--pathspec-file-nul",
                     env={"GIT_LITERAL_PATHSPECS": "1"}, input=nul_list(excluded))
        return host_git(work, "diff", "--cached", "--binary", "HEAD").decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Change:
    """A changed path as `git diff-index --cached -z` lists it: its blob ids at the base and now,
    '' where there is no blob (added, deleted, a submodule's commit)."""

    path: str
    old: str
    new: str


@dataclass(frozen=True)
class BlobFacts:
    """What the patch policy needs of one blob, read once from a stream (never held whole)."""

    size: int
    binary: bool  # a NUL in the first 8000 bytes, as git decides
    utf8: bool


NO_BLOB = BlobFacts(0, False, True)
BLOB_MODES = (b"100644", b"100755", b"120000")  # files and symlinks; 160000 (a submodule) names a commit
BINARY_PROBE = 8000  # git's own: a NUL in this many first bytes makes a file binary


def parse_changes(raw: bytes) -> list[Change]:
    """`:old_mode new_mode old_id new_id status\\0path\\0` records (no renames: diff-index never pairs)."""
    fields = raw.split(b"\0")
    changes = []
    for meta, path in zip(fields[0::2], fields[1::2]):
        old_mode, new_mode, old, new = meta.lstrip(b":").split(b" ")[:4]
        changes.append(Change(path.decode("utf-8", "surrogateescape"), _blob(old_mode, old), _blob(new_mode, new)))
    return changes


def _blob(mode: bytes, object_id: bytes) -> str:
    return object_id.decode() if mode in BLOB_MODES and object_id.strip(b"0") else ""


def blob_ids(changes: list[Change]) -> bytes:
    """The distinct blobs to read, one id a line: `git cat-file --batch`'s input."""
    ids = sorted(({c.old for c in changes} | {c.new for c in changes}) - {""})
    return "".join(f"{i}\n" for i in ids).encode()


def blob_facts(stream: BinaryIO) -> dict[str, BlobFacts]:
    """Facts of each object in `git cat-file --batch` output, in one pass of bounded memory."""
    facts: dict[str, BlobFacts] = {}
    while header := stream.readline():
        parts = header.split()
        if len(parts) != 3:  # "<id> missing": no facts, the diff itself will say what is wrong
            continue
        left, head, decoder, utf8 = int(parts[2]), b"", codecs.getincrementaldecoder("utf-8")(), True
        while left:
            chunk = stream.read(min(left, 1 << 20))
            if not chunk:
                raise EnvironmentFailure("the listing of the changed files ended early")
            head += chunk[: BINARY_PROBE - len(head)]
            utf8 = utf8 and _decodes(decoder, chunk)
            left -= len(chunk)
        utf8 = utf8 and _decodes(decoder, b"", final=True)
        facts[parts[0].decode()] = BlobFacts(int(parts[2]), b"\0" in head, utf8)
        stream.read(1)  # the newline after each object
    return facts


def _decodes(decoder: codecs.IncrementalDecoder, data: bytes, final: bool = False) -> bool:
    try:
        decoder.decode(data, final)
        return True
    except UnicodeDecodeError:
        return False


def entries_of(changes: list[Change], facts: dict[str, BlobFacts]) -> list[tuple[str, int, str]]:
    """(path, size now, kind) for each change: what `apply_policy` decides on."""
    return [(c.path, facts.get(c.new, NO_BLOB).size, kind(facts.get(c.new, NO_BLOB), facts.get(c.old, NO_BLOB)))
            for c in changes]


def kind(new: BlobFacts, old: BlobFacts) -> str:
    """binary (new content) | latin (text that is not UTF-8, old or new: it must travel as a binary
    patch to be lossless) | text."""
    if new.binary:
        return "binary"
    return "text" if new.utf8 and old.utf8 else "latin"


class ChunkReader(io.RawIOBase):
    """The chunks of a streamed command's output as a readable file (for `io.BufferedReader`)."""

    def __init__(self, chunks: Iterable[bytes]):
        self.chunks: Iterator[bytes] = iter(chunks)
        self.rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.rest:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.rest = chunk
        n = min(len(buffer), len(self.rest))
        buffer[:n], self.rest = self.rest[:n], self.rest[n:]
        return n


def nul_list(paths: list[str]) -> bytes:
    """Paths for `--pathspec-from-file --pathspec-file-nul`."""
    return b"\0".join(p.encode("utf-8", "surrogateescape") for p in paths)


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


def host_git(cwd: Path, *args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> bytes:
    full_env = {**os.environ, "GIT_AUTHOR_NAME": "comem", "GIT_AUTHOR_EMAIL": "comem@localhost",
                "GIT_COMMITTER_NAME": "comem", "GIT_COMMITTER_EMAIL": "comem@localhost", **(env or {})}
    r = subprocess.run(["git", "-c", "core.fileMode=false", "-c", "commit.gpgsign=false", *args], cwd=cwd,
                       capture_output=True, env=full_env, timeout=300, input=input)
    if r.returncode != 0:
        raise EnvironmentFailure(f"git {args[0]} failed: {r.stderr.decode(errors='replace').strip()[-200:]}")
    return r.stdout
