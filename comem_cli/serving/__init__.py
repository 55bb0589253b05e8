"""Real serving engines for `comem bench latency --serving vllm` (issue 12).

* `archs`: bundled model architectures (`tiny`, Qwen3-0.6B/1.7B/4B/8B shapes) built once as
  randomly initialised checkpoints with the real Qwen2.5 tokenizer; real directories and
  Hugging Face ids pass through.
* `engines`: two vLLM OpenAI servers (main and memory model) as subprocesses, with prefix
  caching, health-checked, stopped on every exit path.
* `calibrate`: a small request grid against the live engines, a fit of the cost model's
  `EngineParams` to it, and the replay measured vs predicted.
* `command`: the `--serving vllm` entry point called by `comem bench latency`.
"""
