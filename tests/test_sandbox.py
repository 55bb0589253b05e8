"""The Docker sandbox, for real: fresh history, timeouts, no network, limits, removal on errors."""

from __future__ import annotations

import pytest

from comem_cli.config import SandboxConfig
from comem_cli.repo import UserRepo
from comem_cli.sandbox import Sandbox, prune, tar_files
from tests.conftest import comem_containers

pytestmark = pytest.mark.docker


def test_repo_copy_has_a_fresh_one_commit_history(words_repo, docker_client):
    repo = UserRepo(words_repo)
    with Sandbox(SandboxConfig(command_timeout_s=20)) as sb:
        sb.copy_repo(tar_files(repo.path, repo.working_files()))
        log = sb.execute("git log --oneline | wc -l && git remote | wc -l && ls -a")
        count, remotes, *files = log.output.split()
        assert (count, remotes) == ("1", "0")
        assert {"words.py", "NOTES.md", "ISSUE.md"} <= set(files) and "ignored.txt" not in files
        sb.execute("echo new > added.txt && sed -i 's/split(\" \")/split()/' words.py && mkdir -p __pycache__ && touch __pycache__/x.pyc")
        patch = sb.diff()
        assert "+new" in patch and "+    return len(text.split())" in patch and "__pycache__" not in patch
        inspect = docker_client.api.inspect_container(sb.name)
        host = inspect["HostConfig"]
        assert host["NetworkMode"] == "none" and host["PidsLimit"] == 512 and host["Memory"] == 4 * 1024**3
        assert host["NanoCpus"] == 2 * 10**9 and not host["Privileged"]
        assert inspect["Config"]["Labels"]["comem.sandbox"] == "1"


def test_timeout_returns_partial_output_and_run_goes_on(docker_client):
    with Sandbox(SandboxConfig(command_timeout_s=30)) as sb:
        r = sb.execute("echo started; sleep 30; echo never", timeout=2)
        assert r.timed_out and "started" in r.output and "never" not in r.output
        r = sb.execute("echo still alive")
        assert not r.timed_out and r.returncode == 0 and r.output == "still alive\n"
        r = sb.execute("exit 3")
        assert r.returncode == 3 and not r.timed_out


def test_no_network_by_default(docker_client):
    with Sandbox(SandboxConfig()) as sb:
        r = sb.execute("python3 -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=3)\"")
        assert r.returncode != 0 and ("unreachable" in r.output.lower() or "network" in r.output.lower())


def test_container_removed_on_exception_and_prune(docker_client):
    name = None
    with pytest.raises(RuntimeError):
        with Sandbox(SandboxConfig(), labels={"comem.run": "test-exc"}) as sb:
            name = sb.name
            raise RuntimeError("boom")
    assert name and comem_containers(docker_client, "test-exc") == []
    # A leftover of this (live) process is kept by prune; forced, it is removed.
    leftover = Sandbox(SandboxConfig(), labels={"comem.run": "test-leftover"})
    leftover.start()
    assert len(comem_containers(docker_client, "test-leftover")) == 1
    removed, kept = prune(labels=["comem.run=test-leftover"])
    assert removed == [] and leftover.name in kept
    removed, _ = prune(everything=True, labels=["comem.run=test-leftover"])
    assert removed == [leftover.name]
    assert comem_containers(docker_client, "test-leftover") == []
