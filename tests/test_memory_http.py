"""The pipeline in real runs: main model and memory model are real HTTP servers reached through
litellm, commands run in Docker. Assertions are on recorded waits, counts and ratios, never on
absolute seconds."""

from __future__ import annotations

import json
import pytest

from comem_cli.replay_server import Script, ScriptedServer, Sections
from comem_cli.rollouts import read_run
from comem_cli.config import DEFAULT_SUMMARY_CAP
from comem_cli.memory.transcript import SECTIONS
from tests.conftest import comem_containers, run_cli

pytestmark = pytest.mark.docker

N_STEPS = 10
ECHO_SCRIPT = [f"THOUGHT: step {i}.\n\n```bash\necho step-{i}\n```" for i in range(N_STEPS)] + \
              ["THOUGHT: done.\n\n```bash\necho COMEM_SUBMIT\n```"]
SUMMARY = ("## Task\nFix count_words.\n\n## Files and code state\nwords.py read.\n\n## Actions and outcomes\n"
           "Ran echo commands.\n\n## Tests\nNot run.\n\n## Open questions\nNone.")


def run_arm(repo, tmp_path, arm: str, memory_server: ScriptedServer, *extra: str, latency: float = 0.4):
    out = tmp_path / f"runs-{arm}-{len(list(tmp_path.iterdir()))}"
    with ScriptedServer(Script(ECHO_SCRIPT), latency_s=latency) as main:
        r = run_cli("fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", "openai/main", "--api-base", main.url,
                    "-o", str(out), "--no-apply", "--memory", arm, "--k", "2", "--every", "2", "--memory-backend", "openai",
                    "--memory-model", "openai/memory", "--memory-api-base", memory_server.url, *extra)
        requests = list(main.requests)
    assert r.returncode == 0, r.stdout + r.stderr
    (run_dir,) = list(out.iterdir())
    return read_run(run_dir), requests, r


def test_comem_hides_memory_time_and_sync_pays_for_it(words_repo, tmp_path, docker_client):
    # Agent step ~0.5 s (0.4 s model + command); a summary ~1.5x an agent step (two round trips of
    # 0.375 s: the prefill, then the sections in parallel).
    with ScriptedServer(Sections(SUMMARY), latency_s=0.375) as memory:
        comem, comem_requests, out = run_arm(words_repo, tmp_path, "comem", memory)
        sync, _, _ = run_arm(words_repo, tmp_path, "sync", memory)
        memory_requests = list(memory.requests)
    c, s = comem.meta["totals"], sync.meta["totals"]
    assert comem.meta["status"] == sync.meta["status"] == "submitted"

    # comem, k=2: summaries made, none waited for, memory time hidden behind agent work.
    assert c["summaries"] >= 3 and c["waits"] == 0 and c["hidden_fraction"] >= 0.8
    # sync: one wait per summary used, almost nothing hidden.
    consumed = [e for step in sync.steps for e in step.memory if e["kind"] == "job"]
    assert s["waits"] == len(consumed) >= 4 and s["hidden_fraction"] < 0.3  # sync: every = k = 2, lag 0
    # End to end, sync pays about the memory time it waited for (generous margins: noisy machine).
    extra = s["wall_s"] - c["wall_s"]
    assert 0.5 * s["wait_s"] < extra < 1.5 * s["wait_s"] + 1.0

    # The views: by its deadline (step 4) the summary of steps 0-1 is in, followed by the raw tail.
    step4 = comem.steps[4]
    assert step4.view.summary_cutoff == 2 and (step4.view.raw_start, step4.view.raw_end) == (2, 4)
    assert "<memory>" in comem_requests[4]["messages"][2]["content"] and SUMMARY in comem_requests[4]["messages"][2]["content"]
    assert [m["role"] for m in comem_requests[4]["messages"][3:]] == ["assistant", "user"] * 2
    # Every job is recorded in the step that consumed it, with all four times in order.
    jobs = [e for step in comem.steps for e in step.memory if e["kind"] == "job"]
    assert jobs and all(j["queued"] <= j["started"] <= j["finished"] <= j["consumed"] for j in jobs)
    assert "summaries" in out.stdout and "hidden" in out.stdout
    # Each summary: a 1-token request that prefills the shared input, then its five sections as four
    # parallel requests (the summary cap // 4 tokens each) whose inputs differ only in the last line
    # (matched by that input, not by arrival order: two summaries may overlap on a busy machine).
    prefills = [r for r in memory_requests if r.get("max_tokens") == 1]
    sections = [r for r in memory_requests if r.get("max_tokens") != 1]
    assert prefills and len(sections) == 4 * len(prefills)
    shared = lambda r: r["messages"][-1]["content"].rsplit("\n", 1)[0]  # noqa: E731
    for prefill in prefills:
        group = [r for r in sections if shared(r) == shared(prefill) and r["messages"][0] == prefill["messages"][0]]
        twins = sum(shared(p) == shared(prefill) for p in prefills)  # both arms summarize the same steps
        assert len(group) == 4 * twins and all(r.get("max_tokens") == DEFAULT_SUMMARY_CAP // 4 for r in group)
        asks = [r["messages"][-1]["content"] for r in group]
        assert sorted(h for a in asks for h in SECTIONS if f"## {h}" in a.rsplit("\n", 1)[1]) == sorted(SECTIONS * twins)
    # What the memory model read: instruction first, then task, then the steps (cache-friendly).
    first = memory_requests[0]["messages"]
    assert first[0]["role"] == "system" and "## Files and code state" in first[0]["content"] and "No advice" in first[0]["content"]
    assert first[1]["content"].index("<task>") < first[1]["content"].index("<step index=\"0\">")


@pytest.mark.parametrize("failure", ["http_500", "hang", "dies"])
def test_memory_failures_never_end_the_run(failure, words_repo, tmp_path, docker_client):
    options = {"http_500": dict(fail_first=[500] * 100), "hang": dict(hang_first=100, hang_s=20), "dies": {}}[failure]
    memory = ScriptedServer(Sections(SUMMARY), **options).start()
    if failure == "dies":  # answers the first request, then the server is gone
        def responder(body, _kill=memory.kill):
            _kill()
            return SUMMARY
        memory.responder = responder
    try:
        # ("dies": one request per summary, so that the first summary is whole before the server is gone)
        # a short give-up time only where the server hangs: a refused or failed request must read as a
        # failure, never as a timeout, however busy the machine is
        give_up = "0.5" if failure == "hang" else "60"
        run, _, _ = run_arm(words_repo, tmp_path, "comem", memory, "--memory-timeout", give_up, "--raw-budget", "400",
                            *(["--summary-sections", "1"] if failure == "dies" else []), latency=0.05)
    finally:
        if failure != "dies":
            memory.stop()
    totals = run.meta["totals"]
    assert run.meta["status"] == "submitted" and totals["steps"] == N_STEPS + 1
    assert totals["memory_failures"] >= 1
    events = [e for step in run.steps for e in step.memory]
    failures = [e for e in events if e["kind"] == "memory_failure"]
    assert failures and {f["status"] for f in failures} == ({"timeout"} if failure == "hang" else {"failed"})
    if failure == "dies":
        assert totals["summaries"] == 1
    assert comem_containers(docker_client, run.path.name) == []
    assert json.loads((run.path / "meta.json").read_text())["memory_jobs"]


def test_prewarm_flag_sends_one_token_requests_with_the_swapped_prefix(words_repo, tmp_path, docker_client):
    with ScriptedServer(Sections(SUMMARY), latency_s=0.2) as memory:
        run, requests, _ = run_arm(words_repo, tmp_path, "comem", memory, "--prewarm", latency=0.3)
    warmups = [r for r in requests if r.get("max_tokens") == 1]
    real = [r for r in requests if r.get("max_tokens") != 1]
    assert warmups and len(real) == N_STEPS + 1
    events = [e for s in run.steps for e in s.memory + (run.meta["totals"]["late_events"] if s is run.steps[-1] else [])
              if e["kind"] == "prewarm"]
    # (a pre-warm still in flight when the run ends is sent but not recorded)
    assert len(warmups) - 1 <= len(events) <= len(warmups) and all(e["ok"] for e in events)
    # Each pre-warmed prompt is the prefix of the next real call that carries that summary (all but
    # a last one, whose summary came after the final step).
    matched = 0
    for warm in warmups:
        later = [r for r in real if r["messages"][:3] == warm["messages"][:3] and len(r["messages"]) >= len(warm["messages"])]
        if later:
            assert later[0]["messages"][: len(warm["messages"])] == warm["messages"]
            matched += 1
    assert matched >= len(warmups) - 1 >= 1


def test_recorded_summaries_are_sft_data_with_the_exact_inputs(words_repo, tmp_path, docker_client):
    """A comem run keeps each summary (its sections joined) with its cut-off; train-memory pairs it
    with the input that asks for the whole summary, which each section request extends by one line
    (asking for its sections only), and runs the SFT warm-up on them."""
    from comem_cli.testing.tiny_models import build_tiny_causal_lm
    from comem_cli.train.sft import recorded_summaries
    from comem_cli.trajectories import load_trajectory

    with ScriptedServer(Sections(SUMMARY), latency_s=0.1) as memory:
        run, _, _ = run_arm(words_repo, tmp_path, "comem", memory, latency=0.2)
        sent = [r["messages"] for r in memory.requests]
    pairs = recorded_summaries([load_trajectory(run.path)])
    assert len(pairs) == run.meta["totals"]["summaries"] >= 3
    for messages, text in pairs:
        assert text == SUMMARY
        assert any(m[0] == messages[0] and m[1]["content"].startswith(messages[1]["content"]) for m in sent)
    consumed = [e for s in run.steps for e in s.memory if e["kind"] == "job"]
    assert consumed and all(e["summary"] == SUMMARY for e in consumed)  # views can be rebuilt from the log

    tiny = build_tiny_causal_lm(tmp_path / "tiny", seed=0)
    out = tmp_path / "sft-model"
    r = run_cli("train-memory", "--rollouts", str(run.path), "--stage", "sft", "--base-model", str(tiny),
                "--steps", "2", "--eval-fraction", "0", "--k", "1", "--output", str(out), "--threads", "1", timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "summaries recorded in comem runs" in r.stdout
    assert (out / "sft" / "final" / "config.json").is_file()
