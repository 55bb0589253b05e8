"""`comem report DIR`: a self-contained HTML page (inline SVG, no scripts) and a PNG for a run, a
bench, or a training run.

- Timeline (Gantt) per run: main-model calls, commands, memory jobs (queued -> running) and waits,
  step by step, so the overlap of memory work with agent work is visible.
- Curves: per-step main-model latency and prompt tokens, one line per arm.
- Training: the reward curve (mean with a std band) from train_report.json.
- Memory quality: the rows of `comem bench memory --json FILE` (a FILE named memory-quality.json in
  the folder, or the FILE itself): recall, headings, compression and check per configuration.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comem_cli.errors import UserError
from comem_cli.rollouts import RunRecord, atomic_write_text, read_run

COLORS = {"model": "#4C78A8", "command": "#72B7B2", "memory": "#F58518", "queued": "#FBD38D", "wait": "#E45756",
          "cached": "#54A24B", "uncached": "#9D755D", "full": "#4C78A8", "mask": "#54A24B", "sync": "#E45756", "paper": "#B6992D", "threshold": "#FF9DA6", "comem": "#F58518", "reward": "#B279A2"}


class _Recorded(BaseModel):
    """Keeps the fields it does not name: the report reads a few, the rest stays as recorded."""

    model_config = ConfigDict(extra="allow")


class MemoryJob(_Recorded):
    """One summary job of meta.json's memory_jobs, as the timeline draws it."""

    id: int
    cutoff: int
    status: str
    queued: float | None = None
    started: float | None = None
    finished: float | None = None


class Totals(_Recorded):
    """The run totals the table sums (absent until a run ends)."""

    wall_s: float = 0.0
    summaries: int | None = None
    hidden_fraction: float | None = None
    waits: int | None = None


class MemorySettings(_Recorded):
    arm: str | None = None


class Settings(_Recorded):
    memory: MemorySettings = Field(default_factory=MemorySettings)


class IssueInfo(_Recorded):
    title: str | None = None


class RunMeta(_Recorded):
    """What the report reads of a run's meta.json. Checked once when the run is found, so a hand-edited
    or foreign file ends in one line naming the field instead of an error deep in the drawing code."""

    arm: str | None = None
    status: str = "?"
    instance_id: str | None = None
    issue: IssueInfo = Field(default_factory=IssueInfo)
    config: Settings = Field(default_factory=Settings)
    totals: Totals = Field(default_factory=Totals)
    memory_jobs: list[MemoryJob] = Field(default_factory=list)


EXPECTED = {"model_type": "should be a JSON object", "dict_type": "should be a JSON object",
            "list_type": "should be a JSON list", "string_type": "should be a string",
            "int_type": "should be an integer", "int_parsing": "should be an integer", "int_from_float": "should be an integer",
            "float_type": "should be a number", "float_parsing": "should be a number", "missing": "is missing"}


def checked_meta(run: RunRecord) -> dict[str, Any]:
    """The run's meta with every field the report reads present and of the right type; a UserError
    naming the file and the first wrong field otherwise."""
    try:
        return RunMeta.model_validate(run.meta).model_dump()
    except ValidationError as e:
        first = e.errors()[0]
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".") or "the file"
        got = json.dumps(first.get("input"), default=str)
        got = got if len(got) <= 40 else got[:37] + "..."
        raise UserError(f"{run.path / 'meta.json'}: {where} {EXPECTED.get(first['type'], first['msg'])} (got {got})") from None


QUALITY = "memory-quality.json"  # `comem bench memory --json` rows that a folder's report shows
QUALITY_SCORES = ("forward_recall", "artifact_recall", "sections_complete", "check_passed")


@dataclass
class Sources:
    runs: dict[str, list[RunRecord]]  # arm (or "run") -> runs
    training: dict[str, Any] | None
    title: str
    quality: list[dict[str, Any]] | None = None  # `comem bench memory` rows


def quality_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a `comem bench memory --json` file (UserError when it is not one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not (isinstance(data, list) and data and all(isinstance(r, dict) and "forward_recall" in r for r in data)):
        raise UserError(f"{path}: not the rows of `comem bench memory --json`")
    return data


def find_sources(path: Path) -> Sources:
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return Sources(runs={}, training=None, title=path.stem, quality=quality_rows(path))
    if not path.is_dir():
        raise UserError(f"{path} is not a directory (give a run dir, a bench output dir, a training output dir "
                        "or a `comem bench memory --json` file)")
    quality = quality_rows(path / QUALITY) if (path / QUALITY).is_file() else None
    training = None
    if (path / "train_report.json").is_file():
        training = _json_object(path / "train_report.json")
    runs: dict[str, list[RunRecord]] = {}
    for traj in sorted(path.rglob("trajectory.jsonl")):
        if (traj.parent / "meta.json").is_file():
            _json_object(traj.parent / "meta.json")  # a corrupt meta.json: one line that names it
        try:
            run = read_run(traj.parent)
        except (ValueError, OSError) as e:
            raise UserError(f"cannot read run {traj.parent}: {' '.join(str(e).split())[:200]}") from None
        run.meta = checked_meta(run)
        arm = run.meta["arm"] or run.meta["config"]["memory"]["arm"] or "run"
        runs.setdefault(arm, []).append(run)
    if not runs and training is None and quality is None:
        raise UserError(f"{path} holds no comem run (trajectory.jsonl), no train_report.json and no {QUALITY}")
    return Sources(runs=runs, training=training, title=path.name, quality=quality)


def quality_table(rows: list[dict[str, Any]]) -> str:
    """`comem bench memory` rows: what each configuration's summaries keep."""
    head = ("<table class='totals'><tr><th>memory model</th><th>sections</th><th>cap</th><th>summaries</th><th>failed</th>"
            "<th>forward recall</th><th>artifact recall</th><th>headings</th><th>compression</th><th>check passed</th>"
            "<th>s / summary</th><th>action consistency</th></tr>")
    cell = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
    body = [f"<tr><td>{_esc(r.get('memory_model'))}</td><td>{_esc(r.get('sections'))}</td><td>{_esc(r.get('max_summary_tokens'))}</td>"
            f"<td>{_esc(r.get('summaries'))}</td><td>{_esc(r.get('failed'))}</td><td>{cell(r.get('forward_recall'))}</td>"
            f"<td>{cell(r.get('artifact_recall'))}</td><td>{cell(r.get('sections_complete'))}</td>"
            f"<td>{cell(r.get('compression'))}</td><td>{cell(r.get('check_passed'), '{:.0%}')}</td>"
            f"<td>{cell(r.get('summary_s'), '{:.1f}')}</td><td>{cell(r.get('action_consistency'))}</td></tr>" for r in rows]
    return head + "".join(body) + "</table>"


def quality_label(row: dict[str, Any]) -> str:
    return f"{row.get('memory_model')} · {row.get('sections')} sect. · cap {row.get('max_summary_tokens')}"


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object")
    return data


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def timeline_svg(run: RunRecord, width: int = 1100) -> str:
    """One run's Gantt chart. Every step is a <g class="timeline-step" data-step=...> group."""
    steps = run.steps
    if not steps:
        return "<p>no steps recorded</p>"
    jobs = run.meta["memory_jobs"]
    waits = [e for s in steps for e in s.memory if e.get("kind") == "wait"]
    t0 = min([s.model.start for s in steps] + [j["queued"] for j in jobs if j.get("queued")])
    t1 = max([s.command.end if s.command else s.model.end for s in steps] + [j["finished"] for j in jobs if j.get("finished")])
    span = max(t1 - t0, 1e-6)
    left, lane_h, top = 90, 22, 24
    lanes = {"model": 0, "command": 1, "memory": 2, "wait": 3}
    height = top + lane_h * len(lanes) + 20
    x = lambda t: left + (t - t0) / span * (width - left - 10)  # noqa: E731

    def rect(cls: str, a: float, b: float, lane: str, attrs: str, title: str, color: str) -> str:
        y = top + lanes[lane] * lane_h
        return (f'<rect class="tl {cls}" {attrs} x="{x(a):.1f}" y="{y + 3}" width="{max(x(b) - x(a), 1.0):.1f}" '
                f'height="{lane_h - 6}" fill="{color}"><title>{_esc(title)}</title></rect>')

    parts = [f'<svg class="timeline" data-run="{_esc(run.path.name)}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">']
    for lane, i in lanes.items():
        parts.append(f'<text x="4" y="{top + i * lane_h + 15}">{lane}</text>')
    for tick in range(0, 11):
        t = t0 + span * tick / 10
        parts.append(f'<text x="{x(t):.1f}" y="12" fill="#666">{t - t0:.1f}s</text>')
    for s in steps:
        parts.append(f'<g class="timeline-step" data-step="{s.step}">')
        parts.append(rect("model", s.model.start, s.model.end, "model", f'data-step="{s.step}"',
                          f"step {s.step}: main model {s.model.seconds:.2f}s, {s.prompt_tokens} prompt tokens", COLORS["model"]))
        if s.command:
            parts.append(rect("command", s.command.start, s.command.end, "command", f'data-step="{s.step}"',
                              f"step {s.step}: {s.action or ''}"[:200], COLORS["command"]))
        parts.append("</g>")
    for j in jobs:
        if j.get("started") and j.get("queued"):
            parts.append(rect("memory-queued", j["queued"], j["started"], "memory", f'data-job="{j["id"]}"',
                              f"job {j['id']} queued", COLORS["queued"]))
        if j.get("started") and j.get("finished"):
            parts.append(rect("memory", j["started"], j["finished"], "memory", f'data-job="{j["id"]}" data-cutoff="{j["cutoff"]}"',
                              f"job {j['id']}: summary of steps 0-{j['cutoff'] - 1}, {j['status']}, {j['finished'] - j['started']:.2f}s",
                              COLORS["memory"]))
    for w in waits:
        parts.append(rect("wait", w["start"], w["end"], "wait", f'data-step="{w["step"]}"',
                          f"step {w['step']} waited {w['end'] - w['start']:.2f}s ({w['reason']})", COLORS["wait"]))
    parts.append("</svg>")
    return "".join(parts)


def curves_svg(series: dict[str, list[float]], kind: str, unit: str, width: int = 540, height: int = 240) -> str:
    """Line chart, one polyline per series (<polyline class="curve KIND" data-arm=...>)."""
    values = [v for vs in series.values() for v in vs]
    if not values:
        return ""
    vmax = max(values) or 1.0
    nmax = max(len(vs) for vs in series.values())
    left, bottom = 50, 24
    x = lambda i: left + i / max(nmax - 1, 1) * (width - left - 10)  # noqa: E731
    y = lambda v: height - bottom - v / vmax * (height - bottom - 10)  # noqa: E731
    parts = [f'<svg class="chart {kind}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
             f'font-family="sans-serif" font-size="11"><text x="4" y="14">{_esc(kind)} ({_esc(unit)})</text>'
             f'<text x="4" y="{y(vmax):.0f}" fill="#666">{vmax:.3g}</text><text x="{width - 60}" y="{height - 6}" fill="#666">step</text>']
    for i, (name, vs) in enumerate(series.items()):
        color = COLORS.get(name, ["#4C78A8", "#F58518", "#54A24B", "#E45756"][i % 4])
        points = " ".join(f"{x(j):.1f},{y(v):.1f}" for j, v in enumerate(vs))
        parts.append(f'<polyline class="curve {kind}" data-arm="{_esc(name)}" fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        parts.append(f'<text x="{width - 120}" y="{30 + 14 * i}" fill="{color}">{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def per_step_mean(runs: list[RunRecord], field: str) -> list[float]:
    """Mean over runs of a per-step value, step by step."""
    columns: dict[int, list[float]] = {}
    for run in runs:
        for s in run.steps:
            columns.setdefault(s.step, []).append(s.model.seconds if field == "latency" else float(s.prompt_tokens))
    return [sum(columns[i]) / len(columns[i]) for i in sorted(columns)]


def cache_series(runs: list[RunRecord]) -> dict[str, list[float]]:
    """Mean over runs of cached and uncached prompt tokens, step by step."""
    columns: dict[int, list[tuple[int, int]]] = {}
    for run in runs:
        for s in run.steps:
            columns.setdefault(s.step, []).append((s.cached_tokens, max(s.prompt_tokens - s.cached_tokens, 0)))
    steps = sorted(columns)
    return {"cached": [sum(c for c, _ in columns[i]) / len(columns[i]) for i in steps],
            "uncached": [sum(u for _, u in columns[i]) / len(columns[i]) for i in steps]}


def totals_table(runs: dict[str, list[RunRecord]]) -> str:
    rows = ["<table class='totals'><tr><th>arm</th><th>runs</th><th>steps</th><th>status</th><th>wall s</th>"
            "<th>summaries</th><th>hidden</th><th>waits</th></tr>"]
    for arm, rs in runs.items():
        t = [r.meta["totals"] for r in rs]
        hidden = [x.get("hidden_fraction") for x in t if x.get("hidden_fraction") is not None]
        statuses = sorted({r.meta["status"] for r in rs})
        rows.append(f"<tr><td>{_esc(arm)}</td><td>{len(rs)}</td><td>{sum(len(r.steps) for r in rs)}</td>"
                    f"<td>{_esc(', '.join(statuses))}</td><td>{sum(x['wall_s'] for x in t):.1f}</td>"
                    f"<td>{sum(x.get('summaries', 0) or 0 for x in t)}</td>"
                    f"<td>{(100 * sum(hidden) / len(hidden)) if hidden else 0:.0f}%</td>"
                    f"<td>{sum(x.get('waits', 0) or 0 for x in t)}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def reward_series(training: dict[str, Any]) -> tuple[list[float], list[float]]:
    steps = training.get("steps") or training.get("log") or []
    means = [s.get("reward_mean", s.get("reward")) for s in steps if s.get("reward_mean", s.get("reward")) is not None]
    stds = [s.get("reward_std", 0.0) or 0.0 for s in steps if s.get("reward_mean", s.get("reward")) is not None]
    return means, stds


def render_html(src: Sources, max_timelines: int = 8) -> str:
    body = [f"<h1>comem report: {_esc(src.title)}</h1>"]
    if src.runs:
        body.append("<h2>Runs</h2>" + totals_table(src.runs))
        latency = {arm: per_step_mean(rs, "latency") for arm, rs in src.runs.items()}
        tokens = {arm: per_step_mean(rs, "tokens") for arm, rs in src.runs.items()}
        body.append("<h2>Per-step main-model latency and prompt tokens</h2><div class='charts'>"
                    + curves_svg(latency, "latency", "s") + curves_svg(tokens, "prompt-tokens", "tokens") + "</div>")
        body.append("<h2>Prompt cache: cached vs uncached prompt tokens per step</h2><div class='charts'>"
                    + "".join(curves_svg(cache_series(rs), f"cache {arm}", "tokens") for arm, rs in src.runs.items()) + "</div>")
        body.append("<h2>Timelines</h2><p>main model, commands, memory jobs (light: queued, dark: running) and waits</p>")
        shown = 0
        for arm, rs in src.runs.items():
            for run in rs:
                if shown >= max_timelines:
                    break
                label = run.meta["instance_id"] or run.meta["issue"]["title"] or run.path.name
                body.append(f"<h3>{_esc(arm)} · {_esc(label)}</h3>" + timeline_svg(run))
                shown += 1
    if src.training is not None:
        means, _ = reward_series(src.training)
        body.append("<h2>Training reward</h2>" + curves_svg({"reward": means}, "reward", "mean reward per step"))
    if src.quality:
        body.append("<h2>Memory quality (comem bench memory)</h2><p>recall: the share of the facts the agent used after a "
                    "cut-off (forward) and of the files it wrote before it (artifact) that a summary names; a failed summary "
                    "counts 0. Check passed: summaries the swap-time check would use as they are.</p>" + quality_table(src.quality))
    style = ("body{font-family:sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.charts{display:flex;gap:16px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>comem report {_esc(src.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def render_png(src: Sources, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (3 if src.runs else 0) + (1 if src.training is not None else 0) + (1 if src.quality else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(11, 3.2 * panels), squeeze=False)
    ax_iter = iter(axes[:, 0])
    if src.runs:
        ax = next(ax_iter)
        run = next(iter(src.runs.values()))[0]
        t0 = min(s.model.start for s in run.steps) if run.steps else 0
        for s in run.steps:
            ax.barh("model", s.model.seconds, left=s.model.start - t0, color=COLORS["model"])
            if s.command:
                ax.barh("command", s.command.seconds, left=s.command.start - t0, color=COLORS["command"])
            for w in (e for e in s.memory if e.get("kind") == "wait"):
                ax.barh("wait", w["end"] - w["start"], left=w["start"] - t0, color=COLORS["wait"])
        for j in run.meta["memory_jobs"]:
            if j.get("started") and j.get("finished"):
                ax.barh("memory", j["finished"] - j["started"], left=j["started"] - t0, color=COLORS["memory"])
        ax.set_title(f"timeline: {run.path.name}")
        ax.set_xlabel("seconds")
        ax = next(ax_iter)
        for arm, rs in src.runs.items():
            ax.plot(per_step_mean(rs, "latency"), label=arm, color=COLORS.get(arm))
        ax.set_title("per-step main-model latency")
        ax.set_xlabel("step")
        ax.set_ylabel("s")
        ax.legend()
        ax = next(ax_iter)  # the first run's prompt tokens per step, cached (bottom) and uncached (top)
        series = cache_series([run])
        ax.bar(range(len(series["cached"])), series["cached"], color=COLORS["cached"], label="cached")
        ax.bar(range(len(series["uncached"])), series["uncached"], bottom=series["cached"], color=COLORS["uncached"], label="uncached")
        ax.set_title(f"prompt tokens per step, cached vs uncached: {run.path.name}")
        ax.set_xlabel("step")
        ax.set_ylabel("tokens")
        ax.legend()
    if src.training is not None:
        ax = next(ax_iter)
        means, stds = reward_series(src.training)
        ax.plot(means, color=COLORS["reward"])
        ax.fill_between(range(len(means)), [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=COLORS["reward"], alpha=0.2)
        ax.set_title("training reward")
        ax.set_xlabel("step")
    if src.quality:  # grouped bars: one group per configuration, one bar per score
        ax = next(ax_iter)
        width = 0.8 / len(QUALITY_SCORES)
        for i, name in enumerate(QUALITY_SCORES):
            ax.bar([x + i * width for x in range(len(src.quality))], [r.get(name) or 0.0 for r in src.quality],
                   width=width, label=name.replace("_", " "))
        ax.set_xticks([x + width * (len(QUALITY_SCORES) - 1) / 2 for x in range(len(src.quality))],
                      [quality_label(r) for r in src.quality], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title("memory quality: what the summaries keep")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def write_report(path: Path, output: Path | None = None) -> tuple[Path, Path]:
    src = find_sources(path)
    out = Path(output) if output else Path(path) / "report.html"
    atomic_write_text(out, render_html(src))
    png = out.with_suffix(".png")
    render_png(src, png)
    return out, png
