"""Benchmarks: datasets (swe-mini, SWE-bench), a parallel resumable runner, evaluation, reports."""
