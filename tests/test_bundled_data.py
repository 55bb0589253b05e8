"""What ships inside the repository for users and tests: the sample of real trajectories (complete,
compressed, with its source and licence), the default input of `comem train-memory` and
`comem bench latency`, and the design document the README links to."""

from __future__ import annotations

import gzip
import json
import re

from tests.conftest import MINI, REPO_ROOT, TRAJECTORIES, run_cli


def test_the_sample_is_complete_compressed_and_names_its_source_and_licence():
    runs = sorted(p.name.removesuffix(".traj.json.gz") for p in MINI.glob("*.traj.json.gz"))
    reports = sorted(p.name.removesuffix(".report.json.gz") for p in MINI.glob("*.report.json.gz"))
    assert len(runs) == 32 and runs == reports
    for name in runs:
        trajectory = json.loads(gzip.decompress((MINI / f"{name}.traj.json.gz").read_bytes()))
        report = json.loads(gzip.decompress((MINI / f"{name}.report.json.gz").read_bytes()))
        assert trajectory["messages"] and isinstance(report["resolved"], bool), name
    size = sum(p.stat().st_size for p in MINI.iterdir())
    assert size < 1_500_000  # compressed: ~0.8 MB for 5.5 MB of JSON
    readme, licence = (MINI / "README.md").read_text(), (MINI / "LICENSE").read_text()
    assert "mini-swe-agent" in readme and "MIT" in readme and "LICENSE" in readme
    assert "MIT License" in licence and "Kilian A. Lieret and Carlos E. Jimenez" in licence


def test_train_memory_dry_run_reads_the_bundled_sample_by_default():
    r = run_cli("train-memory", "--dry-run", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "read 32 trajectories" in r.stdout
    assert "1918 (" in r.stdout  # samples at the default k = 2 (see test_samples)


def test_bench_latency_replays_the_bundled_sample_by_default(tmp_path):
    out = tmp_path / "rows.json"
    r = run_cli("bench", "latency", "--memory", "comem", "--k", "2", "--concurrency", "1", "--max-steps", "3",
                "--no-prewarm", "--json", str(out), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "32 trajectories" in r.stdout
    rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {row["arm"] for row in rows} >= {"full", "comem"}


def test_the_readme_links_resolve_inside_the_repository():
    readme = (REPO_ROOT / "README.md").read_text()
    links = [target for target in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in target and not target.startswith("#")]
    assert "docs/design.md" in links
    assert [link for link in links if not (REPO_ROOT / link.split("#")[0]).exists()] == []
    design = (REPO_ROOT / "docs" / "design.md").read_text()
    for topic in ("The arms", "pipeline", "rollout format", "reward"):
        assert topic in design
    assert TRAJECTORIES.is_dir()
