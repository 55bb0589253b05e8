"""`comem fix --resume` and what a run dir keeps: server URLs without their credentials (asked for
again on resume), and a damaged snapshot refused before anything is written. Real CLI, Docker,
git, HTTP models."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from comem_cli.replay_server import Script, ScriptedServer, Sections
from comem_cli.rollouts import META, TRAJECTORY
from comem_cli.snapshot import SNAPSHOT
from tests.conftest import FIX_SCRIPT, comem_containers, run_cli

pytestmark = pytest.mark.docker

SUMMARY = "## Task\nFix count_words.\n## Files and code state\nwords.py uses split(' ').\n## Actions and outcomes\nRead the code.\n## Tests\nFailing."
# Credentials given in server URLs, long enough never to turn up by chance in a gzipped snapshot.
FIRST = ("alice-0d41d8cd98f0", "s3cret-8f00b204e980", "k3y-0998ecf8427e")
AGAIN = ("bob-e4da3b7fbbce", "n3w-2345ab2cc394", "carol-a87ff679a2f3", "m3m-e4da3b7fbbce2")
MEMORY = ("--memory", "comem", "--k", "1", "--every", "1", "--memory-backend", "openai", "--memory-model", "openai/memory")


def one_line_error(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def with_credentials(url: str, userinfo: str) -> str:
    """http://127.0.0.1:PORT/v1 -> http://USERINFO@127.0.0.1:PORT/v1"""
    return url.replace("http://", f"http://{userinfo}@", 1)


def refused_run(repo: Path, out: Path, api_base: str, *extra: str) -> Path:
    """A run the main server refuses (401 on every call): it ends `api_error` at step 0, a status
    `--resume` continues from; returns its run dir."""
    r = run_cli("fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", "openai/scripted", "--api-base", api_base,
                "-o", str(out), "--no-apply", *extra)
    (run_dir,) = list(out.iterdir())
    assert json.loads((run_dir / META).read_text())["status"] == "api_error", r.stdout + r.stderr
    return run_dir


def files_of(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_credentials_in_server_urls_stay_out_of_the_run_dir(words_repo, tmp_path, docker_client):
    with ScriptedServer(Script(FIX_SCRIPT), fail_always=401) as refusing, ScriptedServer(Sections(SUMMARY)) as memory:
        main_url = with_credentials(refusing.url, f"{FIRST[0]}:{FIRST[1]}")
        memory_url = memory.url + f"?api_key={FIRST[2]}&team=red"
        run_dir = refused_run(words_repo, tmp_path / "runs", main_url, *MEMORY, "--memory-api-base", memory_url)
        assert refusing.requests  # the run did reach the server with the URL as given
    config = json.loads((run_dir / META).read_text())["config"]
    assert config["model"]["api_base"] == f"http://REDACTED@127.0.0.1:{refusing.port}/v1"
    assert config["memory"]["api_base"] == f"{memory.url}?api_key=REDACTED&team=REDACTED"
    for name, data in files_of(run_dir).items():
        assert not any(secret.encode() in data for secret in FIRST), name

    # A redacted URL cannot reach its server: --resume asks for it again (as for API keys), and
    # leaves the run dir as it was.
    before = files_of(run_dir)
    r = run_cli("fix", "--resume", str(run_dir), "--no-apply")
    assert r.returncode == 2 and "pass --api-base and --memory-api-base again" in one_line_error(r), r.stderr
    r = run_cli("fix", "--resume", str(run_dir), "--no-apply", "--api-base", refusing.url)
    assert r.returncode == 2 and "pass --memory-api-base again" in one_line_error(r), r.stderr
    assert files_of(run_dir) == before

    with ScriptedServer(Script(FIX_SCRIPT)) as main, ScriptedServer(Sections(SUMMARY)) as memory:
        r = run_cli("fix", "--resume", str(run_dir), "--no-apply", "--api-base", with_credentials(main.url, f"{AGAIN[0]}:{AGAIN[1]}"),
                    "--memory-api-base", with_credentials(memory.url, f"{AGAIN[2]}:{AGAIN[3]}"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(main.requests) == len(FIX_SCRIPT) and memory.requests
    meta = json.loads((run_dir / META).read_text())
    assert meta["status"] == "submitted"
    assert meta["config"]["model"]["api_base"] == f"http://REDACTED@127.0.0.1:{main.port}/v1"
    assert meta["config"]["memory"]["api_base"] == f"http://REDACTED@127.0.0.1:{memory.port}/v1"
    for name, data in files_of(run_dir).items():
        assert not any(secret.encode() in data for secret in FIRST + AGAIN), name
    assert comem_containers(docker_client, run_dir.name) == []


def damaged_snapshots(archive: bytes) -> dict[str, bytes]:
    """snapshot.tar.gz contents a disk, a copy or a hand may leave, and the error each gives."""
    corrupt = bytearray(gzip.compress(archive))
    corrupt[10] = 0b111  # the first deflate block: final, of the reserved type 3 -> zlib "invalid block type"
    return {
        "not valid gzip data": bytes(corrupt),
        "not a readable tar archive": gzip.compress(b"a valid gzip stream, but no tar archive inside\n" * 50),
        "tar archive": gzip.compress(archive[:1024]),  # cut short: in a file's data or after one
    }


def test_damaged_snapshot_is_refused_before_anything_is_written(words_repo, tmp_path, docker_client):
    with ScriptedServer(Script(FIX_SCRIPT), fail_always=401) as refusing:
        recorded = refused_run(words_repo, tmp_path / "runs", refusing.url, "--memory", "full")
    archive = gzip.decompress((recorded / SNAPSHOT).read_bytes())
    assert len(archive) > 1024
    with ScriptedServer(Script(FIX_SCRIPT)) as main:
        for i, (expected, snapshot) in enumerate(damaged_snapshots(archive).items()):
            run_dir = tmp_path / f"damaged-{i}"
            shutil.copytree(recorded, run_dir)
            (run_dir / SNAPSHOT).write_bytes(snapshot)
            with (run_dir / TRAJECTORY).open("a") as f:  # a truncated last line, which a resume would drop
                f.write('{"step": 0, "view": {"summary_cutoff": nu')
            before = files_of(run_dir)
            r = run_cli("fix", "--resume", str(run_dir), "--no-apply", "--api-base", main.url)
            assert r.returncode == 2, (expected, r.stdout, r.stderr)
            line = one_line_error(r)
            assert f"cannot resume {run_dir}: {SNAPSHOT} is damaged" in line and expected in line, line
            # Nothing was written: the run can still be resumed once the snapshot is put back.
            assert files_of(run_dir) == before, expected
            assert comem_containers(docker_client, run_dir.name) == []
        assert main.requests == []
        # The same run dir with its snapshot intact resumes (the check refuses only what is damaged).
        r = run_cli("fix", "--resume", str(recorded), "--no-apply", "--api-base", main.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((recorded / META).read_text())["status"] == "submitted"
