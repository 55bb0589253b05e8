"""Command-line options that more than one command takes, each declared once here (Typer reuses an
option's declaration in every command whose parameter defaults to it); defaults read from the
config models (comem_cli/config.py). Light: typer and the config only."""

from __future__ import annotations

import typer

from comem_cli.config import AgentConfig, SandboxConfig, default_of, memory_default

MODEL_PANEL, MEMORY_PANEL, RUN_PANEL, OUTPUT_PANEL = "Model", "Memory", "Run", "Output"

# -- the main model --------------------------------------------------------------------------------
MODEL = typer.Option(None, "--model", "-m", envvar="COMEM_MODEL", rich_help_panel=MODEL_PANEL,
                     help="Main model, a litellm name (e.g. anthropic/claude-sonnet-4-5, openai/<name>) (default: $COMEM_MODEL or anthropic/claude-sonnet-4-5).")
API_BASE = typer.Option(None, "--api-base", envvar="COMEM_API_BASE", rich_help_panel=MODEL_PANEL,
                        help="Base URL of an OpenAI-compatible server for --model.")

# -- run limits ------------------------------------------------------------------------------------
MAX_STEPS = typer.Option(default_of(AgentConfig, "max_steps"), "--max-steps", min=1, rich_help_panel=RUN_PANEL)
COST_LIMIT = typer.Option(default_of(AgentConfig, "cost_limit"), "--cost-limit", min=0.0, rich_help_panel=RUN_PANEL,
                          help="Dollars per run; 0 for no limit. Unknown prices count as 0.")
TIMEOUT = typer.Option(default_of(SandboxConfig, "command_timeout_s"), "--timeout", min=1, rich_help_panel=RUN_PANEL,
                       help="Per-command timeout in seconds.")

# -- the memory pipeline ---------------------------------------------------------------------------
K = typer.Option(memory_default("k"), "--k", min=0, rich_help_panel=MEMORY_PANEL,
                 help="comem: steps of summary staleness accepted before waiting rather than masking (0 = synchronous).")
EVERY = typer.Option(None, "--every", min=1, rich_help_panel=MEMORY_PANEL,
                     help="Launch a summary every N steps (default: comem on raw-tail tokens only; sync 1).")
LAUNCH_TOKENS = typer.Option(memory_default("launch_tokens"), "--launch-tokens", min=0, rich_help_panel=MEMORY_PANEL,
                             help="comem: launch a summary once this many raw-tail tokens are not covered by one (0: off).")
RAW_BUDGET = typer.Option(memory_default("raw_budget"), "--raw-budget", min=256, rich_help_panel=MEMORY_PANEL,
                          help="Most tokens of verbatim recent steps in a view.")
MEMORY_BACKEND = typer.Option(memory_default("backend"), "--memory-backend", rich_help_panel=MEMORY_PANEL,
                              help="Who writes the summaries (main: the main model). auto: a memory server if given, vLLM on a GPU, a named local model, else main.")
MEMORY_MODEL = typer.Option(None, "--memory-model", envvar="COMEM_MEMORY_MODEL", rich_help_panel=MEMORY_PANEL,
                            help="Memory model: hub id, local directory, or openai/<name> with --memory-api-base.")
MEMORY_API_BASE = typer.Option(None, "--memory-api-base", envvar="COMEM_MEMORY_API_BASE", rich_help_panel=MEMORY_PANEL,
                               help="Base URL of an OpenAI-compatible server for the memory model.")
MEMORY_TIMEOUT = typer.Option(memory_default("timeout_s"), "--memory-timeout", min=0.1, rich_help_panel=MEMORY_PANEL,
                              help="Give up on a summary after this many seconds (the run goes on).")
MEMORY_CONTEXT = typer.Option(None, "--memory-context", min=512, rich_help_panel=MEMORY_PANEL,
                              help="The memory model's window in tokens, where its backend cannot tell (transformers and vLLM read it from the model, an OpenAI-compatible server from /v1/models); every summary request is fitted into it.")
SUMMARY_SECTIONS = typer.Option(memory_default("sections"), "--summary-sections", min=1, max=5, rich_help_panel=MEMORY_PANEL,
                                help="Parallel requests that write a summary's sections (vllm and openai backends; 1: one request writes it all).")
PREWARM = typer.Option(memory_default("prewarm"), "--prewarm/--no-prewarm", rich_help_panel=MEMORY_PANEL,
                       help="After each summary, send the next swapped prompt with max_tokens=1 (for prefix-caching servers).")

