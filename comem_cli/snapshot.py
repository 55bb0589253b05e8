"""The repository snapshot of a run: the tar of the working tree its sandbox started from.

`comem fix` keeps it in the run directory (gzipped) so that `comem fix --resume` can give a fresh
sandbox exactly the files the first one had, whatever happened to the user's tree since.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

SNAPSHOT = "snapshot.tar.gz"


def save_snapshot(run_dir: Path, archive: bytes) -> Path:
    path = Path(run_dir) / SNAPSHOT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SNAPSHOT}.tmp")
    tmp.write_bytes(gzip.compress(archive, compresslevel=6))
    os.replace(tmp, path)
    return path


def load_snapshot(run_dir: Path) -> bytes | None:
    """The tar archive, or None when the run dir has no (readable) snapshot."""
    path = Path(run_dir) / SNAPSHOT
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
