"""Taking a run's patch from its sandbox, byte for byte and in bounded time.

- `git diff --cached --binary` against the base commit, stdout only (git's warnings never land in
  the patch), every command bounded by the sandbox's set-up timeout;
- files that are not UTF-8 text (latin-1...) are made binary for the diff through
  `.git/info/attributes`, so the patch text is plain UTF-8 and lossless (preds.json included);
- binary or large files are listed, or left out with `large_files="refuse"`;
- if git in the container is unusable (`rm -rf .git`, a broken binary, a hang), the diff is computed
  on the host from the snapshot copied in (`Sandbox.snapshot`) and the files now in the container
  (`docker cp`, no exec), with the host's git.

`take_patch(sandbox) -> (patch text, notes)`; the text is the patch's bytes decoded with
surrogateescape, written back with `encode("utf-8", "surrogateescape")`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path
from comem_cli.errors import EnvironmentFailure

# How comem runs git in a sandbox (its own identity, no hooks or signing), and what never counts as a change.
GIT = "git -c user.name=comem -c user.email=comem@localhost -c core.fileMode=false -c commit.gpgsign=false"
JUNK = "__pycache__/\n*.pyc\n.pytest_cache/\n*.egg-info/\n.mypy_cache/\n"


def take_patch(sb) -> tuple[str, list[str]]:
    notes: list[str] = []
    try:
        return git_diff(sb, notes), notes
    except EnvironmentFailure as e:
        if sb.snapshot is None:
            raise
        notes[:] = [f"git in the sandbox is unusable ({str(e)[:160]}); patch computed by comem from the files"]
    return fallback_diff(sb, notes), notes


def git_diff(sb, notes: list[str]) -> str:
    wd, base = sb.config.workdir, sb.base_commit
    sb._run_checked(f"cd {wd} && {GIT} add -A")
    entries = parse_listing(sb._run_checked(LISTING.replace("WD", wd).replace("BASE", base), raw=True))
    attributes, excluded = apply_policy(sb, entries, notes)
    files = {"info/attributes": attributes}
    if excluded:
        files["comem-exclude"] = b"\0".join(p.encode("utf-8", "surrogateescape") for p in excluded)
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
        names = [n for n in host_git(work, "diff", "--cached", "--name-only", "-z", "HEAD").split(b"\0") if n]
        entries = []
        for raw in names:
            path = raw.decode("utf-8", "surrogateescape")
            new = work / path
            data = new.read_bytes() if new.is_file() and not new.is_symlink() else b""
            old = subprocess.run(["git", "cat-file", "blob", f"HEAD:{path}"], cwd=work, capture_output=True).stdout
            entries.append((path, len(data), classify(data, old)))
        attributes, excluded = apply_policy(sb, entries, notes)
        (work / ".git" / "info" / "attributes").write_bytes(attributes)
        for path in excluded:
            host_git(work, "reset", "-q", "HEAD", "--", path, env={"GIT_LITERAL_PATHSPECS": "1"})
        return host_git(work, "diff", "--cached", "--binary", "HEAD").decode("utf-8", "surrogateescape")


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
