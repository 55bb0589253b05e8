"""`comem sandbox build` (idempotent) and `comem sandbox prune`, through the real CLI."""

from __future__ import annotations

import pytest

from tests.conftest import comem_containers, run_cli
from tests.test_containers import leftover_of_a_killed_process

pytestmark = pytest.mark.docker


def test_build_is_idempotent_and_prune_removes_leftovers(docker_client):
    before = docker_client.images.get("comem-sandbox:latest").id
    r = run_cli("sandbox", "build")
    assert r.returncode == 0, r.stderr
    assert "images ready" in r.stderr and "built" not in r.stderr  # cached: nothing rebuilt
    assert docker_client.images.get("comem-sandbox:latest").id == before

    name = leftover_of_a_killed_process("test-cli-prune")  # its process was SIGKILLed
    assert comem_containers(docker_client, "test-cli-prune")
    r = run_cli("sandbox", "prune")
    assert r.returncode == 0 and name in r.stdout
    assert comem_containers(docker_client, "test-cli-prune") == []
