"""`comem bench` end to end in real Docker with the scripted model server, graded by the official
SWE-bench harness (swebench 5.x) on the local swe-mini images: scripted runs that apply the gold
patch, a wrong patch, or nothing; two workers, two arms; resume after SIGKILL; export + evaluate-only;
`comem bench swebench-verified --dataset` on swe-mini exported in the SWE-bench 5 schema (the path a
real SWE-bench Verified run takes); the Ray executor; bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from comem_cli.bench.swe_mini import build_swe_mini_images, load_swe_mini
from comem_cli.replay_server import Script, ScriptedServer, Sections
from tests.conftest import run_cli
from tests.test_memory_http import SUMMARY

pytestmark = pytest.mark.docker
INSTANCES = load_swe_mini()
GOLD, GOLD2, WRONG, NOTHING = INSTANCES[0], INSTANCES[1], INSTANCES[2], INSTANCES[3]


@pytest.fixture(scope="module", autouse=True)
def swe_mini_images(docker_client):
    """The local instance images (built from PyPI sdists on first use; `comem bench` would build them too)."""
    return build_swe_mini_images()


def apply_patch_reply(patch: str) -> str:
    return ("THOUGHT: Apply the fix.\n\n```bash\ncat > /tmp/fix.diff <<'COMEM_PATCH'\n" + patch.rstrip("\n")
            + "\nCOMEM_PATCH\ngit apply /tmp/fix.diff && git status --short\n```")


SUBMIT = "THOUGHT: Done.\n\n```bash\necho COMEM_SUBMIT\n```"
LOOK = "THOUGHT: Look around.\n\n```bash\nls && git log --oneline | head -3\n```"


def needle(instance) -> str:
    return instance["problem_statement"].splitlines()[0]


def script_for(instances) -> dict[str, list[str]]:
    replies = {}
    for inst in instances:
        if inst is NOTHING:
            replies[needle(inst)] = [SUBMIT]
        elif inst is WRONG:  # edits a file, but not the bug: the tests still fail
            replies[needle(inst)] = [LOOK, "THOUGHT: Tweak.\n\n```bash\necho '# touched' >> README* 2>/dev/null; "
                                           "echo '# touched' >> setup.py; git status --short\n```", SUBMIT]
        else:
            replies[needle(inst)] = [LOOK, LOOK, apply_patch_reply(inst["patch"]), SUBMIT]
    return replies


def bench(*args, main_url: str, memory_url: str | None = None, **kwargs):
    extra = ["--memory-backend", "openai", "--memory-model", "openai/mem", "--memory-api-base", memory_url] if memory_url else []
    return run_cli("bench", "swe-mini", "-m", "openai/scripted", "--api-base", main_url, *extra, *args, timeout=900, **kwargs)


def test_two_arms_two_workers_report_exactly_which_are_resolved(tmp_path, docker_client):
    chosen = [GOLD, GOLD2, WRONG, NOTHING]
    ids = ",".join(i["instance_id"] for i in chosen)
    with ScriptedServer(Script(script_for(chosen))) as main, ScriptedServer(Sections(SUMMARY)) as memory:
        r = bench("--instances", ids, "--workers", "2", "--memory", "full,comem", "--k", "1", "--every", "1", "-o", str(tmp_path),
                  main_url=main.url, memory_url=memory.url)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "swe-mini"
    report = json.loads((out / "report.json").read_text())
    expected = sorted([GOLD["instance_id"], GOLD2["instance_id"]])
    for row in report["arms"]:
        assert row["resolved"] == expected, row
        assert row["instances"] == 4 and row["resolved_rate"] == 0.5 and row["evaluated"] == 4
        assert row["step_latency_median_s"] is not None and row["e2e_total_s"] > 0
    comem = next(r for r in report["arms"] if r["arm"] == "comem")
    assert comem["k"] == 1 and comem["summaries"] >= 1 and comem["speedup_vs_full"] is not None
    for arm in ("full", "comem"):
        preds = json.loads((out / arm / "preds.json").read_text())
        assert set(preds) == {i["instance_id"] for i in chosen}
        assert preds[NOTHING["instance_id"]]["model_patch"] == ""
        assert preds[GOLD["instance_id"]]["model_patch"].strip()
        for inst in chosen:
            meta = json.loads((out / arm / "runs" / inst["instance_id"] / "meta.json").read_text())
            assert meta["status"] == "submitted" and meta["arm"] == arm
            ev = json.loads((out / arm / "eval" / f"{inst['instance_id']}.json").read_text())
            assert ev["resolved"] == (inst in (GOLD, GOLD2))
    assert "resolved" in r.stdout and "speedup" in r.stdout
    assert not docker_client.containers.list(all=True, filters={"label": f"comem.bench={out.resolve()}"})


@pytest.mark.stress
def test_resume_after_sigkill(tmp_path, docker_client):
    chosen = INSTANCES[:4]
    script = {needle(i): [LOOK, apply_patch_reply(i["patch"]), SUBMIT] for i in chosen}
    # Three calls an instance, one worker: the fourth instance's first call never answers (set before
    # the run starts), so the kill lands inside it whatever the machine's load.
    with ScriptedServer(Script(script), hang_from=9, hang_s=120.0) as main:
        cmd = [sys.executable, "-m", "comem_cli", "bench", "swe-mini", "-m", "openai/scripted", "--api-base", main.url,
               "--instances", ",".join(i["instance_id"] for i in chosen), "--workers", "1", "--memory", "full",
               "--no-evaluate", "-o", str(tmp_path)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        preds_path = tmp_path / "swe-mini" / "full" / "preds.json"
        assert main.hanging.wait(300), "the benchmark never reached its fourth instance"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        main.hang_from = None  # the killed process is gone: the rerun is answered
        first = json.loads(preds_path.read_text())
        assert len(first) == 3
        started = {iid: json.loads((tmp_path / "swe-mini" / "full" / "runs" / iid / "meta.json").read_text())["started"]
                   for iid in first}
        bench_label = f"comem.bench={(tmp_path / 'swe-mini').resolve()}"
        for c in docker_client.containers.list(all=True, filters={"label": bench_label}):
            c.remove(force=True)  # what `comem sandbox prune` does after a killed process

        r = run_cli(*cmd[3:], timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    preds = json.loads(preds_path.read_text())  # valid JSON, complete
    assert set(preds) == {i["instance_id"] for i in chosen}
    for iid, t in started.items():  # nothing finished was redone
        meta = json.loads((tmp_path / "swe-mini" / "full" / "runs" / iid / "meta.json").read_text())
        assert meta["started"] == t and preds[iid] == first[iid]
    for inst in chosen:
        assert preds[inst["instance_id"]]["model_patch"].strip()


def test_export_then_evaluate_only_gold(tmp_path, docker_client):
    exported = tmp_path / "swe-mini.jsonl"
    r = run_cli("bench", "swe-mini", "--export-dataset", str(exported))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [r["instance_id"] for r in rows] == [i["instance_id"] for i in INSTANCES]
    preds = tmp_path / "gold-preds.json"
    preds.write_text(json.dumps([{"instance_id": i["instance_id"], "model_name_or_path": "gold", "model_patch": i["patch"]}
                                 for i in rows]))
    r = run_cli("bench", "swe-mini", "--dataset", str(exported), "--evaluate-only", str(preds), "-o", str(tmp_path / "out"),
                timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "swe-mini" / "report.json").read_text())
    assert report["arms"][0]["resolved"] == sorted(i["instance_id"] for i in rows)


def test_ray_executor_on_a_local_ray_instance(tmp_path, docker_client):
    pytest.importorskip("ray")
    with ScriptedServer(Script(script_for([GOLD]))) as main:
        r = bench("--instances", GOLD["instance_id"], "--memory", "full", "--executor", "ray", "-o", str(tmp_path),
                  main_url=main.url)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "swe-mini"
    assert json.loads((out / "report.json").read_text())["arms"][0]["resolved"] == [GOLD["instance_id"]]
    run_dir = out / "full" / "runs" / GOLD["instance_id"]
    assert {"trajectory.jsonl", "meta.json", "patch.diff"} <= {p.name for p in run_dir.iterdir()}


def test_bad_input(tmp_path):
    def check(r, needle):
        assert r.returncode == 2 and "Traceback" not in r.stderr and needle in r.stderr, r.stderr
    check(run_cli("bench", "nope"), "unknown benchmark")
    (tmp_path / "bad.json").write_text("{not json")
    check(run_cli("bench", "swebench-verified", "--dataset", str(tmp_path / "bad.json")), "cannot read dataset file")
    (tmp_path / "schemaless.jsonl").write_text('{"a": 1}\n')
    check(run_cli("bench", "swebench-lite", "--dataset", str(tmp_path / "schemaless.jsonl")), "SWE-bench schema")
    check(run_cli("bench", "swe-mini", "--instances", "no-such-id"), "not in the benchmark")
    check(run_cli("bench", "swe-mini", "--filter", "zzz-matches-nothing"), "no instance matches")
    check(run_cli("bench", "swe-mini", "--memory", "full,bogus"), "--memory takes arms")
    check(run_cli("bench", "swe-mini", "--evaluate-only", str(tmp_path / "no-preds.json")), "cannot read predictions file")
    (tmp_path / "stranger.json").write_text(json.dumps({"x": {"instance_id": "not-an-instance", "model_patch": ""}}))
    check(run_cli("bench", "swe-mini", "--evaluate-only", str(tmp_path / "stranger.json")), "not in swe-mini")
    (tmp_path / "notpreds.json").write_text("[1, 2]")
    check(run_cli("bench", "swe-mini", "--evaluate-only", str(tmp_path / "notpreds.json")), "not a SWE-bench predictions file")
    report = tmp_path / "out" / "swe-mini" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text('{"kept": true}')
    check(run_cli("bench", "swe-mini", "-m", "openai/x", "--api-base", "http://127.0.0.1:9/v1", "-o", str(tmp_path / "out"),
                  "--image-template", "comem-no-such-image:{id}"), "cannot be pulled")
    assert report.read_text() == '{"kept": true}'  # outputs already written stay intact


def harness_verdicts(arm_dir, ids):
    """eval/<id>.json of an arm, checked against the official harness's own report.json it was filed from."""
    verdicts = {}
    for iid in ids:
        ev = json.loads((arm_dir / "eval" / f"{iid}.json").read_text())
        assert ev["harness_run_id"].startswith("comem-") and ev["swebench_version"] == "5.0.2"
        official = os.path.join(ev["harness_logs"], "report.json")
        if ev["status"] in ("resolved", "unresolved"):
            assert json.loads(open(official).read())[iid]["resolved"] == ev["resolved"]
            assert ">>>>> Start Test Output" in open(os.path.join(ev["harness_logs"], "test_output.txt")).read()
        else:
            assert not os.path.exists(official)
        verdicts[iid] = ev
    return verdicts


def test_swebench_verified_path_offline_on_swe_mini_in_the_swebench5_schema(tmp_path, docker_client):
    """The flagship command as a user runs it, on a local dataset in the SWE-bench 5 schema: the agent
    works in each instance's `image`, preds.json goes through the official harness, gold resolves and
    the empty prediction does not, and --evaluate-only grades a predictions file the same way."""
    from swebench.harness.utils import get_predictions_from_file, load_swebench_dataset, make_test_spec

    exported = tmp_path / "swe-mini-5x.jsonl"
    r = run_cli("bench", "swe-mini", "--export-dataset", str(exported))
    assert r.returncode == 0, r.stderr
    assert [make_test_spec(i).image for i in load_swebench_dataset(str(exported))] == [i["image"] for i in INSTANCES]
    chosen = [GOLD, NOTHING]
    ids = ",".join(i["instance_id"] for i in chosen)
    with ScriptedServer(Script(script_for(chosen))) as main, ScriptedServer(Sections(SUMMARY)) as memory:
        r = run_cli("bench", "swebench-verified", "--dataset", str(exported), "--instances", ids, "--memory", "full,comem",
                    "--k", "1", "-m", "openai/scripted", "--api-base", main.url, "--memory-backend", "openai",
                    "--memory-model", "openai/mem", "--memory-api-base", memory.url, "-o", str(tmp_path / "out"),
                    timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "out" / "swebench-verified"
    report = json.loads((out / "report.json").read_text())
    assert report["benchmark"] == "swebench-verified" and report["instances"] == [i["instance_id"] for i in chosen]
    for row in report["arms"]:  # today's fields, graded by the harness
        assert row["resolved"] == [GOLD["instance_id"]] and row["evaluated"] == 2 and row["resolved_rate"] == 0.5, row
        assert row["steps"] > 0 and row["e2e_total_s"] > 0
    for arm in ("full", "comem"):
        preds_path = out / arm / "preds.json"
        preds = json.loads(preds_path.read_text())
        assert set(preds) == {i["instance_id"] for i in chosen}
        for iid, pred in preds.items():  # the format the harness and sb-cli take
            assert set(pred) == {"instance_id", "model_name_or_path", "model_patch"} and pred["instance_id"] == iid
            assert pred["model_name_or_path"] == f"comem-openai/scripted-{arm}"
        assert {p["instance_id"] for p in get_predictions_from_file(str(preds_path), str(exported), "test")} == set(preds)
        assert preds[NOTHING["instance_id"]]["model_patch"] == ""
        verdicts = harness_verdicts(out / arm, preds)
        assert verdicts[GOLD["instance_id"]]["resolved"] is True and verdicts[GOLD["instance_id"]]["status"] == "resolved"
        assert sorted(verdicts[GOLD["instance_id"]]["tests_status"]["FAIL_TO_PASS"]["success"]) == \
            sorted(json.loads(GOLD["FAIL_TO_PASS"]))
        assert verdicts[NOTHING["instance_id"]]["resolved"] is False
        assert verdicts[NOTHING["instance_id"]]["status"] == "empty_patch"
        for inst in chosen:  # the agent ran in the instance's image, at /testbed
            meta = json.loads((out / arm / "runs" / inst["instance_id"] / "meta.json").read_text())
            assert meta["status"] == "submitted" and meta["config"]["sandbox"]["image"] == inst["image"]
    assert not docker_client.containers.list(all=True, filters={"name": "comem-full-"})
    assert not docker_client.containers.list(all=True, filters={"label": f"comem.bench={out.resolve()}"})

    preds_file = tmp_path / "gold-and-empty.json"  # a list, as sb-cli / the harness also take it
    preds_file.write_text(json.dumps([{"instance_id": GOLD["instance_id"], "model_name_or_path": "gold", "model_patch": GOLD["patch"]},
                                      {"instance_id": NOTHING["instance_id"], "model_name_or_path": "gold", "model_patch": ""}]))
    r = run_cli("bench", "swebench-verified", "--dataset", str(exported), "--instances", ids, "--evaluate-only", str(preds_file),
                "-o", str(tmp_path / "out"), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"{GOLD['instance_id']}: resolved" in r.stdout and f"{NOTHING['instance_id']}: not resolved" in r.stdout
    verdicts = harness_verdicts(out / "evaluate-only", [GOLD["instance_id"], NOTHING["instance_id"]])
    assert verdicts[GOLD["instance_id"]]["resolved"] is True and verdicts[NOTHING["instance_id"]]["resolved"] is False
    assert json.loads((out / "report.json").read_text())["arms"][0]["resolved"] == [GOLD["instance_id"]]


def test_old_style_dataset_is_refused_naming_the_missing_fields(tmp_path):
    old = tmp_path / "old.json"  # the pre-5 SWE-bench schema: no image / eval_script / log_parser / eval_type
    old.write_text(json.dumps([{k: v for k, v in i.items() if k not in ("image", "eval_script", "log_parser", "eval_type")}
                               for i in INSTANCES[:2]]))
    r = run_cli("bench", "swebench-verified", "--dataset", str(old), "--instances", GOLD["instance_id"])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    for field in ("image", "eval_script", "log_parser", "eval_type"):
        assert field in r.stderr
    assert "FAIL_TO_PASS" not in r.stderr


@pytest.mark.stress
def test_ctrl_c_while_the_harness_grades_leaves_no_container(tmp_path, docker_client):
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({GOLD["instance_id"]: {"instance_id": GOLD["instance_id"], "model_name_or_path": "gold",
                                                       "model_patch": GOLD["patch"]}}))
    proc = subprocess.Popen([sys.executable, "-m", "comem_cli", "bench", "swe-mini", "--evaluate-only", str(preds),
                             "-o", str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    harness_dir = tmp_path / "out" / "swe-mini" / "evaluate-only" / "harness"

    def ours():
        ids = {p.name.split(".", 1)[1].removesuffix(".log") for p in harness_dir.glob("harness.*.log")}
        return [c for c in docker_client.containers.list(all=True) if any(c.name.endswith(i) for i in ids)], ids

    deadline = time.time() + 120
    while time.time() < deadline and not ours()[0]:
        time.sleep(0.3)
    assert ours()[0], "the harness started its evaluation container"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    containers, run_ids = ours()
    assert run_ids and not containers
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not any(r in ps for r in run_ids), "the harness process is gone"


def test_swebench_verified_loads_the_dataset_the_pinned_harness_names(tmp_path):
    """`comem bench swebench-verified` asks Hugging Face for the name swebench 5.x uses (offline here:
    a one-line error that names it and points at --dataset)."""
    from swebench.cli._datasets import resolve_dataset

    from comem_cli.bench.datasets import HF_DATASETS

    assert HF_DATASETS["swebench-verified"] == resolve_dataset("verified") == "SWE-bench/SWE-bench_Verified"
    r = run_cli("bench", "swebench-verified", "--export-dataset", str(tmp_path / "v.jsonl"), timeout=120,
                env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "SWE-bench/SWE-bench_Verified" in r.stderr and "--dataset FILE" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def table_row(stdout: str, arm: str) -> list[str]:
    """The cells of `arm`'s row in the table `comem bench` printed."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith(f"│ {arm} "))
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_no_evaluate_shows_no_resolve_rate(tmp_path, docker_client):
    chosen = [INSTANCES[3], INSTANCES[4]]
    with ScriptedServer(Script([SUBMIT])) as main:
        r = bench("--instances", ",".join(i["instance_id"] for i in chosen), "--memory", "full", "--no-evaluate",
                  "-o", str(tmp_path), main_url=main.url)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (row,) = json.loads((tmp_path / "swe-mini" / "report.json").read_text())["arms"]
    assert row["evaluated"] == 0 and row["resolved_rate"] is None
    assert table_row(r.stdout, "full")[1] == "-", r.stdout  # not "0/2 (0%)": nothing was graded


def test_speedup_where_memory_never_acted_reads_about_one_on_ray(tmp_path, docker_client):
    """Both arms submit at step 0, so the memory model is never asked and the arms do the same work:
    the speed-up must read ~1x. Run arm after arm on fresh Ray workers, `full` paid the cold start
    alone and read several times slower."""
    pytest.importorskip("ray")
    chosen = [INSTANCES[3], INSTANCES[4]]
    with ScriptedServer(Script([SUBMIT]), latency_s=0.3) as main, ScriptedServer(Sections(SUMMARY)) as memory:
        r = bench("--instances", ",".join(i["instance_id"] for i in chosen), "--memory", "full,comem", "--executor", "ray",
                  "--no-evaluate", "-o", str(tmp_path), main_url=main.url, memory_url=memory.url)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert not memory.requests and len(main.requests) == 4
    comem = next(row for row in json.loads((tmp_path / "swe-mini" / "report.json").read_text())["arms"]
                 if row["arm"] == "comem")
    assert comem["summaries"] == 0 and set(comem["e2e_s"]) == {i["instance_id"] for i in chosen}
    low, high = comem["speedup_vs_full_p25_p75"]
    assert 0.5 <= low <= comem["speedup_vs_full"] <= high <= 2.0, comem
    assert table_row(r.stdout, "comem")[-1] == f"{comem['speedup_vs_full']:.2f}x ({low:.2f}-{high:.2f})", r.stdout
