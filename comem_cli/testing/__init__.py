"""Test and demo helpers that ship with comem: a scripted OpenAI-compatible server, tiny-model builders."""
