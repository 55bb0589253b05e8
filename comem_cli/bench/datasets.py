"""Benchmark instances in the SWE-bench 5 schema: the bundled swe-mini, SWE-bench from Hugging Face,
or a local json / jsonl / parquet file; selection by ids, regex and slice; the image per instance.

Every instance is graded by the official harness (swebench 5.x), which builds its test spec from
per-instance fields (`swebench.harness.utils.make_test_spec`): HARNESS_FIELDS. A dataset without them
(the pre-5 schema) is refused with the names of the missing fields."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from comem_cli.errors import UserError

# The Hugging Face names swebench 5.x uses (swebench/cli/_datasets.py, swebench/harness/utils.py).
HF_DATASETS = {"swebench-verified": "SWE-bench/SWE-bench_Verified", "swebench-lite": "SWE-bench/SWE-bench_Lite"}
BENCHMARKS = ("swe-mini", *HF_DATASETS)
REQUIRED = ("instance_id", "problem_statement")
# What make_test_spec reads from an instance (besides instance_id).
HARNESS_FIELDS = ("image", "eval_script", "log_parser", "eval_type", "repo", "version", "FAIL_TO_PASS", "PASS_TO_PASS")
# The official per-instance images (the SWE-bench harness names them this way).
SWEBENCH_IMAGE_TEMPLATE = "swebench/sweb.eval.x86_64.{id_docker}:latest"


def read_dataset_file(path: Path) -> list[dict[str, Any]]:
    """Instances from a .json (list), .jsonl or .parquet file; UserError if unreadable or schema-less."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset file {path} does not exist")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            data = json.loads(path.read_text())
            rows = data if isinstance(data, list) else data.get("instances", []) if isinstance(data, dict) else []
    except ImportError:
        raise UserError("reading parquet needs pyarrow: pip install pyarrow") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read dataset file {path}: {str(e).splitlines()[0][:160]}") from None
    if not rows or not all(isinstance(r, dict) and all(k in r for k in REQUIRED) for r in rows):
        raise UserError(f"{path} is not in the SWE-bench schema (every instance needs {', '.join(REQUIRED)})")
    return rows


def load_instances(name: str, dataset: Path | None = None, split: str = "test") -> list[dict[str, Any]]:
    """The benchmark's instances, each carrying the fields the official harness needs."""
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    if dataset is not None:
        rows, source = read_dataset_file(dataset), str(dataset)
    elif name == "swe-mini":
        from comem_cli.bench.swe_mini import load_swe_mini

        rows, source = load_swe_mini(), name
    else:
        rows, source = load_hf(HF_DATASETS[name], split), HF_DATASETS[name]
    require_harness_fields(rows, source)
    return rows


def load_hf(name: str, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"{name} needs the `datasets` package (pip install datasets) or --dataset FILE") from None
    try:
        return [dict(row) for row in datasets.load_dataset(name, split=split)]
    except Exception as e:
        raise UserError(f"cannot load {name} from Hugging Face ({str(e).splitlines()[0][:120]}); "
                        "pass --dataset FILE (json/jsonl/parquet in the SWE-bench 5 schema)") from None


def require_harness_fields(instances: list[dict[str, Any]], source: str) -> None:
    """UserError naming the SWE-bench 5 fields some instances lack (an old-style dataset)."""
    missing = [f for f in HARNESS_FIELDS if any(f not in i or i[f] is None for i in instances)]
    if missing:
        lacking = sum(1 for i in instances if any(f not in i or i[f] is None for f in HARNESS_FIELDS))
        raise UserError(f"{source}: {lacking} of {len(instances)} instances lack the SWE-bench 5 fields "
                        f"{', '.join(missing)} (the official harness, swebench>=5, needs them; an old-style "
                        "dataset? use SWE-bench/SWE-bench_Verified or export one with --export-dataset)")


def select(instances: list[dict[str, Any]], *, ids: list[str] | None = None, pattern: str | None = None,
           slice_spec: str | None = None) -> list[dict[str, Any]]:
    chosen = instances
    if ids:
        known = {i["instance_id"] for i in instances}
        missing = [i for i in ids if i not in known]
        if missing:
            raise UserError(f"instance id(s) not in the benchmark: {', '.join(missing[:5])}")
        chosen = [i for i in chosen if i["instance_id"] in set(ids)]
    if pattern:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise UserError(f"--filter {pattern!r} is not a valid regular expression: {e}") from None
        chosen = [i for i in chosen if regex.search(i["instance_id"])]
    if slice_spec:
        m = re.fullmatch(r"(-?\d*):(-?\d*)", slice_spec)
        if not m:
            raise UserError(f"--slice {slice_spec!r} must look like A:B (e.g. 0:10)")
        chosen = chosen[slice(int(m[1]) if m[1] else None, int(m[2]) if m[2] else None)]
    if not chosen:
        raise UserError("no instance matches the selection (--instances / --filter / --slice)")
    return chosen


def image_for(instance: dict[str, Any], template: str | None = None) -> str:
    """The environment image of an instance: --image-template, else its own `image`, else SWE-bench's."""
    iid = instance["instance_id"]
    fmt = template or instance.get("image") or SWEBENCH_IMAGE_TEMPLATE
    return fmt.format(id=iid, instance_id=iid, id_docker=iid.replace("__", "_1776_").lower())


def export_jsonl(instances: list[dict[str, Any]], path: Path) -> None:
    from comem_cli.rollouts import atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps(i, default=str) + "\n" for i in instances))
