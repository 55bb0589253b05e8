"""swe-mini: a small offline benchmark of real PyPI projects with genuine bugs, in the SWE-bench schema.

instances.jsonl holds the task records; <instance_id>/bug.diff is the patch that puts the bug into
the project's released source when its image is built (sandbox/swe-mini/build.sh).
"""
