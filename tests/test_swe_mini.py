"""swe-mini: the images build, every record is sound, and the evaluation grades like the SWE-bench harness.

Real Docker, real images (built from PyPI source distributions on first use), the real swebench grading.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from comem_cli.bench.evaluation import as_list, build_swe_mini_images, evaluate, load_swe_mini
from comem_cli.config import SandboxConfig
from comem_cli.sandbox import Sandbox

pytestmark = pytest.mark.docker

INSTANCES = load_swe_mini()
IDS = [i["instance_id"] for i in INSTANCES]
BY_ID = {i["instance_id"]: i for i in INSTANCES}
SWEBENCH_FIELDS = {"instance_id", "repo", "base_commit", "problem_statement", "patch", "test_patch", "FAIL_TO_PASS",
                   "PASS_TO_PASS", "version", "environment_setup_commit", "created_at", "hints_text"}
REPORT_FIELDS = {"patch_is_None", "patch_exists", "patch_successfully_applied", "resolved"}
TESTS_STATUS_KEYS = {"FAIL_TO_PASS", "PASS_TO_PASS", "FAIL_TO_FAIL", "PASS_TO_FAIL"}

# A "fix" for the more-itertools task that makes FAIL_TO_PASS pass but yields keys instead of items on
# the hashable path, which breaks a PASS_TO_PASS test (test_custom_key).
BREAKS_P2P_ID = "more-itertools__more-itertools-mini-1"
BREAKS_P2P = """\
diff --git a/more_itertools/recipes.py b/more_itertools/recipes.py
--- a/more_itertools/recipes.py
+++ b/more_itertools/recipes.py
@@ -518,10 +518,10 @@ def unique_everseen(iterable, key=None):
         try:
             if k not in seenset:
                 seenset_add(k)
-                yield element
+                yield k
         except TypeError:
             if k not in seenlist:
-                seenlist_add(element)
+                seenlist_add(k)
                 yield element
 
 
"""


@pytest.fixture(scope="module")
def images(docker_client):
    """Build what is missing (minutes, once), then check that a second build is a no-op."""
    build_swe_mini_images()
    start = time.time()
    names = build_swe_mini_images()
    assert time.time() - start < 30, "build.sh must skip images that exist"
    for name in names:
        docker_client.images.get(name)
    return names


@pytest.fixture(scope="module")
def reports(images):
    """Every instance evaluated with its gold patch and with the empty patch, three at a time."""
    jobs = [(iid, kind) for iid in IDS for kind in ("gold", "empty")]
    jobs.append((BREAKS_P2P_ID, "breaks_p2p"))
    patches = {"gold": lambda i: i["patch"], "empty": lambda i: "", "breaks_p2p": lambda i: BREAKS_P2P}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {job: pool.submit(evaluate, BY_ID[job[0]], patches[job[1]](BY_ID[job[0]]), timeout=300)
                   for job in jobs}
        return {job: f.result() for job, f in futures.items()}


def test_records_follow_the_swebench_schema():
    assert len(INSTANCES) >= 6
    assert len(set(IDS)) == len(IDS)
    assert len({i["repo"] for i in INSTANCES}) >= 6, "each task is a different real project"
    for inst in INSTANCES:
        assert SWEBENCH_FIELDS | {"image", "test_cmd"} <= set(inst), inst["instance_id"]
        for key in ("FAIL_TO_PASS", "PASS_TO_PASS"):
            assert isinstance(inst[key], str), f"{key} is a JSON string, as in SWE-bench"
            tests = json.loads(inst[key])
            assert isinstance(tests, list) and tests and all(isinstance(t, str) and " " not in t for t in tests)
        f2p, p2p = as_list(inst["FAIL_TO_PASS"]), as_list(inst["PASS_TO_PASS"])
        assert not set(f2p) & set(p2p)
        assert re.fullmatch(r"[0-9a-f]{40}", inst["base_commit"])
        assert inst["environment_setup_commit"] == inst["base_commit"]
        assert re.fullmatch(r"comem-swe-mini-[a-z0-9-]+:[\w.-]+", inst["image"])
        assert inst["test_cmd"].startswith("python -m pytest -rA")
        assert inst["patch"].startswith("diff --git") and inst["test_patch"].startswith("diff --git")
        test_files = set(re.findall(r"^diff --git a/\S+ b/(\S+)", inst["test_patch"], re.M))
        gold_files = set(re.findall(r"^diff --git a/\S+ b/(\S+)", inst["patch"], re.M))
        assert test_files and not test_files & gold_files, "the gold patch does not touch the tests"
        assert all(t.split("::")[0] in inst["test_cmd"] for t in f2p + p2p), "the test command runs every listed test"
        assert "diff --git" not in inst["problem_statement"], "the issue describes the symptom, not the fix"


def _run_in_image(inst: dict, files: dict[str, str], command: str) -> tuple[int, str]:
    """A command in a fresh container of the instance image, with `files` under /tmp/chk."""
    with Sandbox(SandboxConfig(image=inst["image"], command_timeout_s=60)) as sb:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(f"chk/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        sb.container.put_archive("/tmp", buf.getvalue())
        result = sb.execute(command)
        return result.returncode, result.output


def test_images_hold_the_buggy_base_commit_and_not_the_tests(images):
    command = (
        "set -e; git rev-parse HEAD; git rev-list --count HEAD; git status --porcelain | wc -l; "
        "python -c 'import sys; print(sys.prefix)'; python -m pytest --version >/dev/null; "
        "git apply --check /tmp/chk/test.diff; git apply --check /tmp/chk/gold.diff; "
        "if git apply --check --reverse /tmp/chk/test.diff 2>/dev/null; then echo TESTS-ALREADY-THERE; fi; "
        "if git apply --check --reverse /tmp/chk/gold.diff 2>/dev/null; then echo FIX-ALREADY-THERE; fi"
    )

    def check(inst):
        return _run_in_image(inst, {"test.diff": inst["test_patch"], "gold.diff": inst["patch"]}, command)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(IDS, pool.map(check, INSTANCES)))
    for iid, (rc, out) in results.items():
        assert rc == 0, f"{iid}: {out}"
        head, count, dirty, prefix = out.split()[:4]
        assert head == BY_ID[iid]["base_commit"], f"{iid}: image HEAD {head} != base_commit"
        assert (count, dirty) == ("1", "0"), f"{iid}: a single clean commit"
        assert prefix == "/opt/venv", f"{iid}: python on PATH is the venv's"
        assert "ALREADY-THERE" not in out, f"{iid}: {out}"


@pytest.mark.parametrize("iid", IDS)
def test_gold_patch_resolves(reports, iid):
    report = reports[(iid, "gold")]
    assert REPORT_FIELDS <= set(report) and set(report["tests_status"]) == TESTS_STATUS_KEYS
    assert report["patch_exists"] and not report["patch_is_None"]
    assert report["patch_successfully_applied"], report["log"][-2000:]
    assert report["resolved"] is True, json.dumps(report["tests_status"], indent=1) + report["log"][-3000:]
    assert report["resolution"] == "RESOLVED_FULL"
    inst = BY_ID[iid]
    assert sorted(report["tests_status"]["FAIL_TO_PASS"]["success"]) == sorted(as_list(inst["FAIL_TO_PASS"]))
    assert sorted(report["tests_status"]["PASS_TO_PASS"]["success"]) == sorted(as_list(inst["PASS_TO_PASS"]))
    assert report["test_exit_code"] == 0, "the test files pass as a whole once fixed"
    assert ">>>>> Start Test Output" in report["log"] and "passed" in report["log"]


@pytest.mark.parametrize("iid", IDS)
def test_empty_patch_does_not_resolve_and_fail_to_pass_fails_on_the_base(reports, iid):
    report = reports[(iid, "empty")]
    inst = BY_ID[iid]
    assert report["resolved"] is False and report["patch_exists"] is False
    status = report["tests_status"]
    assert status["FAIL_TO_PASS"]["success"] == []
    assert sorted(status["FAIL_TO_PASS"]["failure"]) == sorted(as_list(inst["FAIL_TO_PASS"]))
    for test in as_list(inst["FAIL_TO_PASS"]):
        assert report["status_map"].get(test) in ("FAILED", "ERROR"), f"{test} must run and fail on the base"
    assert sorted(status["PASS_TO_PASS"]["success"]) == sorted(as_list(inst["PASS_TO_PASS"]))
    assert status["PASS_TO_PASS"]["failure"] == []
    failing = {t for t, s in report["status_map"].items() if s in ("FAILED", "ERROR")}
    assert failing == set(as_list(inst["FAIL_TO_PASS"])), "only the new tests fail on the base"


def test_a_patch_that_breaks_pass_to_pass_does_not_resolve(reports):
    report = reports[(BREAKS_P2P_ID, "breaks_p2p")]
    assert report["patch_successfully_applied"] is True
    assert report["resolved"] is False
    status = report["tests_status"]
    assert status["FAIL_TO_PASS"]["failure"] == []
    assert "tests/test_recipes.py::UniqueEverseenTests::test_custom_key" in status["PASS_TO_PASS"]["failure"]


def test_a_patch_that_does_not_apply_is_not_resolved(images, docker_client):
    inst = BY_ID["pytoolz__toolz-mini-1"]
    bad = inst["patch"].replace("            d = dtemp = d[k]\n", "            d = dtemp = d[key]\n")
    assert bad != inst["patch"]
    report = evaluate(inst, bad, timeout=120)
    assert report["patch_exists"] is True
    assert report["patch_successfully_applied"] is False
    assert report["resolved"] is False
    assert ">>>>> Patch Apply Failed" in report["log"]
    assert not docker_client.containers.list(all=True, filters={"label": "comem.eval"}), "containers are removed"
