"""Test helpers that ship with comem: tiny-model builders and the vLLM check driver (the scripted
OpenAI-compatible server is comem_cli.replay_server, which the demo uses too)."""
