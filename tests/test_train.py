"""Training stages of `comem train-memory` on CPU with a tiny model built here: GRPO really learns a toy
task, a failing policy endpoint stops training cleanly with the previous checkpoint intact, `resume`
continues, LoRA is merged, SFT really learns, and the final checkpoint loads in the memory backend.

The toy task: each sample's history `cat`s three files of a small repository and its target action
is `cat <the last file read>`. The frozen policy (`known_file_policy`) is a program that, like an
agent that knows the repository's files, reads the summary in its view and answers
`cat <the repository file named last in the summary>` (`echo no-file` when none is named). The
reward is the real `action_reward`: 1.0 for the right file, ~0.4 for another file, ~0 for no file.

Timing: the tiny model runs single-threaded (torch.set_num_threads(1)): on a busy 2-core machine
multi-threaded kernels of a model this small spin and run 5-10x slower. The learning test prompts
the memory model with a one-line instruction instead of the long prompts/memory_instruction.j2
(~1,100 tokens with the tiny tokenizer, 5x the toy transcript) to keep ~0.4 s per GRPO step; the
other GRPO tests use the real `memory_input`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from comem_cli.devices import cuda_available
from comem_cli.errors import UserError
from comem_cli.replay_server import ScriptedServer
from comem_cli.train.common import last_complete_checkpoint
from comem_cli.train.grpo import evaluate_reward, train_grpo
from comem_cli.train.settings import GRPOSettings, SFTSettings
from comem_cli.train.policy import (
    LitellmPolicy, LocalPolicy, PolicyContextOverflow, PolicyError, ProgramPolicy, make_policy,
)
from comem_cli.train.samples import Sample, memory_input, policy_view
from comem_cli.trajectories import Step

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

REPO_FILES = {  # a word the summary may contain -> the file it names
    "main": "src/app/main.py", "utils": "lib/utils.py", "parser": "tests/test_parser.py",
    "index": "docs/index.md", "setup": "setup.py", "readme": "README.md",
}


# ------------------------------------------------------------------------------------ toy task


def _step(command: str, observation: str) -> Step:
    return Step(response=f"THOUGHT: Next I run this.\n\n```bash\n{command}\n```", action=command, observation=observation)


def toy_samples(n: int, seed: int, prefix: str) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        files = rng.sample(sorted(REPO_FILES.values()), 3)
        history = [_step(f"cat {f}", "ok") for f in files]
        tail = [_step("echo checking", "checking")]
        out.append(Sample(trajectory_id=f"{prefix}{i}", task_id=f"{prefix}{i}", task="Read the files.",
                          system="You are a shell agent.", t=len(history) + 1, lag=1, history=history,
                          raw_tail=tail, target_action=f"cat {files[-1]}"))
    return out


def summary_in_view(messages: list[dict[str, str]]) -> str:
    """The memory model's summary inside a policy view (prompts/summary_block.j2)."""
    for m in messages:
        if m["role"] == "user" and m["content"].startswith("<memory>"):
            return m["content"].split("\n\n", 1)[1].rsplit("\n</memory>", 1)[0]
    return ""


def known_file_policy(messages: list[dict[str, str]]) -> str:
    text = summary_in_view(messages).lower()
    position, path = max((text.rfind(word), path) for word, path in REPO_FILES.items())
    command = f"cat {path}" if position >= 0 else "echo no-file"
    return f"THOUGHT: Carry on.\n\n```bash\n{command}\n```"


def hashed_file_policy(messages: list[dict[str, str]]) -> str:
    """A file picked by a hash of the summary: rewards vary within every group (for tests of the plumbing)."""
    files = sorted(REPO_FILES.values())
    pick = files[int(hashlib.sha1(summary_in_view(messages).encode()).hexdigest(), 16) % len(files)]
    return f"```bash\ncat {pick}\n```"


def short_prompt(sample: Sample) -> list[dict[str, str]]:
    """memory_input with a one-line instruction (the transcript part is unchanged)."""
    return [{"role": "system", "content": "Summarize the steps."}, memory_input(sample)[1]]


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from comem_cli.testing.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ policies


def test_program_policy_and_the_toy_reward_are_consistent():
    sample = toy_samples(1, 5, "p")[0]
    target = sample.target_action.split()[-1]
    word = next(w for w, p in REPO_FILES.items() if p == target)
    policy = ProgramPolicy(known_file_policy)
    from comem_cli.reward import action_reward

    right = policy.propose(policy_view(sample, f"## Files\nRead several files, the last one was {word}."))
    wrong_file = next(p for p in REPO_FILES.values() if p != target and "/" in p and "/" in target)
    wrong = policy.propose(policy_view(sample, f"## Files\nThe agent read {wrong_file}."))
    none = policy.propose(policy_view(sample, "## Files\nNothing was read at all so far."))
    assert action_reward(right, sample.target_action) == 1.0
    assert 0.3 < action_reward(wrong, sample.target_action) < 0.6
    assert action_reward(none, sample.target_action) < 0.1
    with pytest.raises(PolicyError, match="boom"):
        ProgramPolicy(lambda m: 1 / 0 if m else "", name="boom").propose([{"role": "user", "content": "x"}])


def test_litellm_policy_errors_are_one_line_policy_errors():
    view = [{"role": "system", "content": "s"}, {"role": "user", "content": "task"}]
    with ScriptedServer(lambda body: "```bash\nls\n```", fail_first=[500, 401]) as server:
        policy = LitellmPolicy("openai/policy", api_base=server.url, retries=0)
        for _ in range(2):
            with pytest.raises(PolicyError) as err:
                policy.propose(view)
            assert "\n" not in str(err.value) and "policy model openai/policy" in str(err.value)
        assert policy.propose(view) == "```bash\nls\n```"
        assert policy.propose_many([view] * 3) == ["```bash\nls\n```"] * 3
    with ScriptedServer(lambda body: "```bash\nls\n```", max_context=20) as server:
        policy = LitellmPolicy("policy", api_base=server.url, retries=0)  # a bare name means openai/<name>
        with pytest.raises(PolicyContextOverflow):
            policy.propose([{"role": "user", "content": "x" * 400}])
        assert policy.propose_many([[{"role": "user", "content": "x" * 400}], view], skip_overflow=True) == [None, "```bash\nls\n```"]
    closed = LitellmPolicy("openai/policy", api_base=f"http://127.0.0.1:{_free_port()}/v1", retries=0, timeout_s=5)
    with pytest.raises(PolicyError, match="policy model openai/policy failed"):
        closed.propose(view)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_policy_and_make_policy(tiny, tmp_path):
    policy = make_policy(str(tiny), max_new_tokens=6)
    assert isinstance(policy, LocalPolicy)
    view = policy_view(toy_samples(1, 0, "l")[0], "## Files\nRead setup.py.")
    first = policy.propose(view)
    assert isinstance(first, str) and first and policy.propose(view) == first  # greedy: deterministic
    assert isinstance(make_policy("openai/x", "http://127.0.0.1:9/v1"), LitellmPolicy)
    with pytest.raises(PolicyError, match="cannot load policy model"):
        LocalPolicy(tmp_path)  # an empty directory
    small = LocalPolicy(tiny, max_new_tokens=4, max_input_tokens=50)
    with pytest.raises(PolicyContextOverflow):
        small.propose(view)


# ------------------------------------------------------------------------------------ GRPO


def test_grpo_learns_the_toy_task_on_held_out_samples(tiny, tmp_path):
    train, held_out = toy_samples(24, 1, "train-"), toy_samples(16, 2, "eval-")
    assert not {s.task_id for s in train} & {s.task_id for s in held_out}
    policy = ProgramPolicy(known_file_policy, name="toy")
    logged: list[dict] = []
    out = tmp_path / "grpo"
    settings = GRPOSettings(group_size=8, lr=1e-2, kl=0.01, max_summary_tokens=16, steps=40, save_every=20, seed=0)
    report = train_grpo(train, held_out, settings, base_model=tiny, policy=policy, output_dir=out, on_log=logged.append,
                        prompt_fn=short_prompt)
    before, after = report["eval_reward_before"], report["eval_reward_after"]
    print(f"toy task: held-out reward {before:.3f} -> {after:.3f} after {report['steps_done']} steps "
          f"({report['train_seconds']} s)")
    assert after >= 0.3 and after >= before + 0.2, (before, after)

    # the training reward rose too: last 10 steps against the first 10
    rewards = [s["reward_mean"] for s in report["steps"]]
    assert len(rewards) == 40 and sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.15
    assert [r["step"] for r in logged] == list(range(1, 41)) and logged[-1]["max_steps"] == 40
    assert all(s["kl"] is not None and s["loss"] is not None and s["reward_std"] is not None for s in report["steps"])

    # outputs: report on disk, a real PNG, checkpoints, and a final checkpoint that IS the trained model
    assert json.loads((out / "train_report.json").read_text())["eval_reward_after"] == after
    assert (out / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert last_complete_checkpoint(out / "checkpoints").name == "checkpoint-40"
    assert not list(out.glob(".final*"))
    assert evaluate_reward(out / "final", held_out, policy, 16, prompt_fn=short_prompt) == pytest.approx(after)
    assert evaluate_reward(tiny, held_out, policy, 16, prompt_fn=short_prompt) == pytest.approx(before)


def test_final_checkpoint_loads_in_the_memory_backend(tiny, tmp_path):
    out = tmp_path / "grpo"
    policy = ProgramPolicy(known_file_policy)
    train_grpo(toy_samples(4, 3, "b"), [], GRPOSettings(group_size=4, lr=1e-3, kl=0.0, max_summary_tokens=8, steps=1, seed=0),
               base_model=tiny, policy=policy, output_dir=out)
    messages = memory_input(toy_samples(1, 4, "c")[0])
    try:
        from comem_cli.memory.hf import TransformersBackend
    except ImportError:  # pragma: no cover - the backend module is optional
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoTokenizer.from_pretrained(out / "final")
        AutoModelForCausalLM.from_pretrained(out / "final")
        return
    with TransformersBackend(str(out / "final")) as backend:
        text = backend.summarize(messages, max_tokens=12, request_id="r1")
    assert isinstance(text, str) and text.strip()


def test_failing_policy_endpoint_keeps_the_previous_checkpoint_and_resume_continues(tiny, tmp_path):
    out = tmp_path / "grpo"
    train, held_out = toy_samples(6, 7, "r"), toy_samples(2, 8, "s")
    program = ProgramPolicy(hashed_file_policy)  # rewards vary within groups: every step changes the weights
    common = dict(base_model=tiny, output_dir=out)
    settings = GRPOSettings(group_size=4, lr=1e-2, kl=0.05, max_summary_tokens=16, seed=0,
                            garbage_reward=None)  # every summary goes to the policy: a predictable number of calls

    # 1. a successful run leaves final/ and its report
    first = train_grpo(train, held_out, settings.model_copy(update={"steps": 2, "save_every": 10}), policy=program, **common)
    assert first["steps_done"] == 2 and first["config"]["kl"] == 0.05
    final_digest, report_text = tree_digest(out / "final"), (out / "train_report.json").read_text()

    # 2. a run whose policy endpoint answers 2 eval + ~8 training calls, then dies like a crashed server
    calls, live = {"n": 0}, {}

    def responder(body):
        calls["n"] += 1
        if calls["n"] == 10:
            live["server"].kill()
        return hashed_file_policy(body["messages"])

    with ScriptedServer(responder) as server:
        live["server"] = server
        failing = LitellmPolicy("openai/policy", api_base=server.url, retries=0, timeout_s=10)
        with pytest.raises(PolicyError) as err:
            train_grpo(train, held_out, settings.model_copy(update={"steps": 20, "save_every": 1}), policy=failing, **common)
    message = str(err.value)
    assert "\n" not in message and message.startswith("policy model openai/policy failed"), message
    assert tree_digest(out / "final") == final_digest  # the previous final checkpoint, untouched
    assert (out / "train_report.json").read_text() == report_text
    assert not list(out.glob(".final*"))
    last = last_complete_checkpoint(out / "checkpoints")
    assert last is not None and 1 <= int(last.name.split("-")[1]) < 20  # complete checkpoints of the failed run

    # 3. resume continues from that checkpoint (with a working policy) up to the requested steps
    done_before = int(last.name.split("-")[1])
    seen: list[int] = []
    resumed = train_grpo(train, held_out, settings.model_copy(update={"steps": done_before + 2, "save_every": 1, "resume": True}),
                         policy=program, on_log=lambda r: seen.append(r["step"]), **common)
    assert resumed["resumed_from"] == str(last)
    assert seen == [done_before + 1, done_before + 2]
    assert [s["step"] for s in resumed["steps"]] == list(range(1, done_before + 3))  # history kept across the resume
    assert resumed["eval_reward_before"] is not None
    assert tree_digest(out / "final") != final_digest


def test_lora_is_merged_into_a_plain_checkpoint(tiny, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    settings = GRPOSettings(group_size=4, lr=5e-2, kl=0.0, max_summary_tokens=16, steps=2, lora=True, lora_r=4, seed=0,
                            garbage_reward=None)
    train_grpo(toy_samples(4, 9, "q"), [], settings, base_model=tiny, policy=ProgramPolicy(hashed_file_policy), output_dir=out,
               prompt_fn=short_prompt)
    assert not (out / "final" / "adapter_config.json").exists()
    base, merged = load_file(tiny / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert set(base) == set(merged)  # same parameter names: plain from_pretrained loads it
    assert any(not torch.equal(base[k], merged[k]) for k in base)  # and the adapter was merged in


def test_bad_inputs_are_user_errors(tiny, tmp_path):
    policy = ProgramPolicy(known_file_policy)
    with pytest.raises(UserError, match="no training samples"):
        train_grpo([], [], base_model=tiny, policy=policy, output_dir=tmp_path / "a")
    with pytest.raises(ValidationError, match="group_size"):
        GRPOSettings(group_size=1)  # GRPO compares summaries within a group
    with pytest.raises(UserError, match="group-size"):  # settings that were never validated
        train_grpo(toy_samples(1, 0, "x"), [], GRPOSettings.model_construct(group_size=1), base_model=tiny, policy=policy,
                   output_dir=tmp_path / "a")
    with pytest.raises(UserError, match="micro batch size 3 must divide"):
        train_grpo(toy_samples(1, 0, "x"), [], GRPOSettings(group_size=4, micro_batch_size=3), base_model=tiny,
                   policy=policy, output_dir=tmp_path / "a")
    with pytest.raises(UserError, match="no complete checkpoint"):
        train_grpo(toy_samples(1, 0, "x"), [], GRPOSettings(resume=True), base_model=tiny, policy=policy,
                   output_dir=tmp_path / "b")
    with pytest.raises(UserError, match="cannot load base model"):
        train_grpo(toy_samples(1, 0, "x"), [], base_model=tmp_path / "missing", policy=policy, output_dir=tmp_path / "c")


# ------------------------------------------------------------------------------------ SFT


def toy_pairs(samples: list[Sample]) -> list[tuple[list[dict[str, str]], str]]:
    """Teacher-style summaries: the last file read, named in a fixed sentence."""
    return [(short_prompt(s), f"Files: the last file read was {s.target_action.split()[-1]}.") for s in samples]


def test_sft_learns_teacher_summaries(tiny, tmp_path):
    from comem_cli.train.sft import train_sft

    train, held_out = toy_pairs(toy_samples(24, 11, "f")), toy_pairs(toy_samples(8, 12, "g"))
    losses: list[float] = []
    report = train_sft(train, SFTSettings(lr=1e-2, steps=30, batch_size=4, seed=0), base_model=tiny,
                       output_dir=tmp_path / "sft", eval_pairs=held_out, on_log=lambda r: losses.append(r["loss"]))
    print(f"SFT: held-out summary loss {report['eval_loss_before']:.2f} -> {report['eval_loss_after']:.2f}")
    assert report["eval_loss_after"] < 0.5 * report["eval_loss_before"]
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "sft" / "final")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "final")
    ids = tokenizer.apply_chat_template(held_out[0][0], add_generation_prompt=True, tokenize=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    text = tokenizer.decode(model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:], skip_special_tokens=True)
    assert text.startswith("Files: the last file read was "), text  # the teacher's format, learned


def test_teacher_summaries_through_an_endpoint():
    from comem_cli.train.sft import TeacherError, teacher_summaries

    samples = toy_samples(3, 13, "h")
    samples[1] = samples[1].model_copy(update={"task": "Read the files quickly."})

    def teacher(body):  # a garbage reply for the second sample: dropped
        user = body["messages"][-1]["content"]
        last = re.findall(r"cat (\S+)", user)[-1]
        return "ok" if "quickly" in user else f"## Files\nThe last file read was {last}."

    with ScriptedServer(teacher) as server:
        pairs = teacher_summaries(samples, "openai/teacher", server.url, workers=2)
    kept = [samples[0], samples[2]]
    assert len(pairs) == 2 and all(p[0] == memory_input(s) for p, s in zip(pairs, kept))
    assert [p[1] for p in pairs] == [f"## Files\nThe last file read was {s.target_action.split()[-1]}." for s in kept]
    with ScriptedServer(teacher, fail_first=[500] * 10) as server:
        with pytest.raises(TeacherError, match="teacher model openai/teacher failed"):
            teacher_summaries(samples, "openai/teacher", server.url, retries=0)


# ------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_grpo_generates_with_vllm_on_a_gpu(tiny, tmp_path):
    if not cuda_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("vllm")
    settings = GRPOSettings(group_size=4, lr=1e-3, kl=0.01, max_summary_tokens=16, steps=3, seed=0, use_vllm=True,
                            vllm_gpu_memory_utilization=0.2)
    report = train_grpo(toy_samples(8, 14, "v"), toy_samples(4, 15, "w"), settings, base_model=tiny,
                        policy=ProgramPolicy(known_file_policy), output_dir=tmp_path / "vllm")
    assert report["config"]["use_vllm"] and report["steps_done"] == 3
    assert (tmp_path / "vllm" / "final" / "config.json").is_file()
