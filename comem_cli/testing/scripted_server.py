"""The scripted OpenAI-compatible server for tests; it lives in the product (`comem_cli.replay_server`,
which `comem demo` uses) and is re-exported here under its test-side name."""

from comem_cli.replay_server import SUBMIT_REPLY, Responder, Script, ScriptedServer, Sections, main, prompt_tokens, step_index

__all__ = ["SUBMIT_REPLY", "Responder", "Script", "ScriptedServer", "Sections", "main", "prompt_tokens", "step_index"]

if __name__ == "__main__":
    main()
