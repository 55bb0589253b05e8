"""The repository snapshot of a run: the tar of the working tree its sandbox started from.

`comem fix` keeps it in the run directory (gzipped) so that `comem fix --resume` can give a fresh
sandbox exactly the files the first one had, whatever happened to the user's tree since.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from pathlib import Path

from comem_cli.rollouts import atomic_write_bytes

SNAPSHOT = "snapshot.tar.gz"


def save_snapshot(run_dir: Path, archive: bytes) -> Path:
    path = Path(run_dir) / SNAPSHOT
    atomic_write_bytes(path, gzip.compress(archive, compresslevel=6))
    return path


def load_snapshot(run_dir: Path) -> bytes:
    """The tar archive, checked whole before a resume writes anything: a damaged snapshot found
    only once the sandbox unpacks it would end the run `error` and make it unresumable for good.
    Raises SnapshotError with a one-line reason."""
    path = Path(run_dir) / SNAPSHOT
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SnapshotError(f"cannot read {SNAPSHOT} ({e.strerror or e})") from None
    try:
        archive = gzip.decompress(data)  # checks the CRC and length of the whole stream
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise SnapshotError(f"{SNAPSHOT} is damaged (not valid gzip data: {e})") from None
    check_tar(archive)
    return archive


def check_tar(archive: bytes) -> None:
    """Every header and every file's data readable, up to the end-of-archive block: the sandbox
    and the patch's host-side extraction unpack all of it (tarfile alone stops quietly at a header
    it cannot read after the first one)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    tar.extractfile(member).read()  # type: ignore[union-attr]
            end = archive[tar.offset:tar.offset + tarfile.BLOCKSIZE]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise SnapshotError(f"{SNAPSHOT} is damaged (not a readable tar archive: {e})") from None
    if end != tarfile.NUL * tarfile.BLOCKSIZE:
        raise SnapshotError(f"{SNAPSHOT} is damaged (the tar archive is cut short or ends in unreadable data)")


class SnapshotError(ValueError):
    """A snapshot that cannot be given to a sandbox; `str(err)` is a one-line reason."""
