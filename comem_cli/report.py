"""`comem report DIR`: a self-contained HTML page (inline SVG, no scripts) and a PNG for a run, a
bench, or a training run. Every chart is drawn once, by matplotlib: the page embeds its SVG, the
PNG stacks the same charts.

- Timeline (Gantt) per run: main-model calls, commands, memory jobs (queued -> running) and waits,
  step by step, so the overlap of memory work with agent work is visible.
- Curves: per-step main-model latency and prompt tokens, one line per arm; cached vs uncached
  prompt tokens per step, per arm.
- Training: the reward curve (mean with a std band) from train_report.json.
- Memory quality: the rows of `comem bench memory --json FILE` (a FILE named memory-quality.json in
  the folder, or the FILE itself): recall, headings, compression and check per configuration, a
  table and grouped bars.
"""

from __future__ import annotations

import html
import io
import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comem_cli.errors import UserError
from comem_cli.rollouts import RunRecord, atomic_write_bytes, atomic_write_text, read_run

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
    """A configuration's name under its bars: the model wrapped to a few lines, then sections and cap."""
    return f"{textwrap.fill(str(row.get('memory_model')), 22)}\n{row.get('sections')} sect. · cap {row.get('max_summary_tokens')}"


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


def _slug(text: Any) -> str:
    """A piece of an SVG element id: letters, digits, '-' and '_' only (ids must be unique in a page)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(text))


Tooltips = dict[str, str]  # element id -> the text a browser shows on hover


@dataclass
class Chart:
    """One chart, drawn by one function on a matplotlib Axes: the HTML page embeds it as an inline
    SVG and the PNG stacks it with the others, so both show the same drawing."""

    key: str  # unique in a page: the figure's data-chart and the prefix of the ids of its elements
    draw: Callable[[Any], Tooltips]  # draws on the Axes; returns the hover texts of the elements it named
    size: tuple[float, float]  # inches (the HTML page shows a chart at 96 px an inch, narrower if the window is)
    attrs: dict[str, str] = field(default_factory=dict)  # extra attributes of the HTML <figure>


def draw_timeline(ax: Any, key: str, run: RunRecord, title: str) -> Tooltips:
    """One run's Gantt chart: lanes for main-model calls, commands, memory jobs (queued light,
    running dark) and waits. Each step's bars are named `KEY-step-N-model` / `-command`, each job's
    `KEY-job-N-queued` / `-memory`, each wait `KEY-wait-N` (N: its position in the run)."""
    from matplotlib.patches import Patch

    steps, jobs = run.steps, run.meta["memory_jobs"]
    waits = [e for s in steps for e in s.memory if e.get("kind") == "wait"]
    lanes = ["model", "command", "memory", "wait"]
    t0 = min([s.model.start for s in steps] + [j["queued"] for j in jobs if j.get("queued")], default=0.0)
    tips: Tooltips = {}

    def bars(lane: str, spans: list[tuple[float, float, str, str]], color: str) -> None:
        """Bars on one lane, each (start, end, element id, hover text)."""
        if not spans:
            return
        drawn = ax.barh([lanes.index(lane)] * len(spans), [max(b - a, 0.0) for a, b, _, _ in spans],
                        left=[a - t0 for a, _, _, _ in spans], height=0.7, color=color, edgecolor="white", linewidth=0.5)
        for patch, (_, _, gid, tip) in zip(drawn.patches, spans):
            patch.set_gid(gid)
            tips[gid] = tip

    bars("model", [(s.model.start, s.model.end, f"{key}-step-{s.step}-model",
                    f"step {s.step}: main model {s.model.seconds:.2f}s, {s.prompt_tokens} prompt tokens") for s in steps],
         COLORS["model"])
    bars("command", [(s.command.start, s.command.end, f"{key}-step-{s.step}-command", f"step {s.step}: {s.action or ''}"[:200])
                     for s in steps if s.command], COLORS["command"])
    bars("memory", [(j["queued"], j["started"], f"{key}-job-{j['id']}-queued", f"job {j['id']} queued")
                    for j in jobs if j.get("queued") and j.get("started")], COLORS["queued"])
    bars("memory", [(j["started"], j["finished"], f"{key}-job-{j['id']}-memory",
                     f"job {j['id']}: summary of steps 0-{j['cutoff'] - 1}, {j['status']}, {j['finished'] - j['started']:.2f}s")
                    for j in jobs if j.get("started") and j.get("finished")], COLORS["memory"])
    bars("wait", [(w["start"], w["end"], f"{key}-wait-{i}", f"step {w['step']} waited {w['end'] - w['start']:.2f}s ({w['reason']})")
                  for i, w in enumerate(waits)], COLORS["wait"])
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_ylim(len(lanes) - 0.5, -0.5)  # the main model on top
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since the run started")
    ax.set_title(title)
    if not steps:
        ax.text(0.5, 0.5, "no steps recorded", transform=ax.transAxes, ha="center", va="center")
    ax.legend(handles=[Patch(color=COLORS[name], label=label) for name, label in
                       (("model", "main model"), ("command", "command"), ("queued", "memory job queued"),
                        ("memory", "memory job running"), ("wait", "wait"))],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside, the same on every timeline
    return tips


def draw_per_step(ax: Any, key: str, series: dict[str, list[float]], title: str, ylabel: str) -> Tooltips:
    """A line per arm (element `KEY-ARM`), a marker per step."""
    from matplotlib.ticker import MaxNLocator

    for i, (arm, values) in enumerate(series.items()):
        (line,) = ax.plot(range(len(values)), values, marker="o", markersize=3, label=arm, color=COLORS.get(arm, f"C{i}"))
        line.set_gid(f"{key}-{_slug(arm)}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.legend(fontsize=8)
    return {}


def draw_cache(ax: Any, key: str, series: dict[str, list[float]], title: str) -> Tooltips:
    """Prompt tokens per step as stacked bars: cached (bottom) and uncached (top); bars `KEY-cached-N`, `KEY-uncached-N`."""
    from matplotlib.ticker import MaxNLocator

    steps = range(len(series["cached"]))
    tips: Tooltips = {}
    for name, bottom in (("cached", None), ("uncached", series["cached"])):
        drawn = ax.bar(steps, series[name], bottom=bottom, color=COLORS[name], label=name)
        for i, patch in enumerate(drawn.patches):
            patch.set_gid(f"{key}-{name}-{i}")
            tips[f"{key}-{name}-{i}"] = f"step {i}: {series[name][i]:,.0f} {name} prompt tokens"
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=title, xlabel="step", ylabel="prompt tokens")
    ax.legend(fontsize=8)
    return tips


def draw_reward(ax: Any, key: str, training: dict[str, Any]) -> Tooltips:
    """The training reward per step: the mean (element `KEY-mean`) in a band of one standard deviation."""
    from matplotlib.ticker import MaxNLocator

    means, stds = reward_series(training)
    (line,) = ax.plot(range(len(means)), means, marker="o", markersize=3, color=COLORS["reward"], label="mean reward")
    line.set_gid(f"{key}-mean")
    ax.fill_between(range(len(means)), [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                    color=COLORS["reward"], alpha=0.2, label="± 1 std")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="training reward", xlabel="step", ylabel="reward")
    ax.legend(fontsize=8)
    return {}


def draw_quality(ax: Any, key: str, rows: list[dict[str, Any]]) -> Tooltips:
    """Grouped bars: one group per configuration, one bar per score (bars `KEY-SCORE-N`)."""
    width = 0.8 / len(QUALITY_SCORES)
    for i, name in enumerate(QUALITY_SCORES):
        drawn = ax.bar([x + i * width for x in range(len(rows))], [r.get(name) or 0.0 for r in rows],
                       width=width, label=name.replace("_", " "))
        for n, patch in enumerate(drawn.patches):
            patch.set_gid(f"{key}-{name}-{n}")
    ax.set_xticks([x + width * (len(QUALITY_SCORES) - 1) / 2 for x in range(len(rows))], [quality_label(r) for r in rows], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set(title="memory quality: what the summaries keep", ylabel="score")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return {}


def run_label(arm: str, run: RunRecord) -> str:
    return f"{arm} · {run.meta['instance_id'] or run.meta['issue']['title'] or run.path.name}"


def timeline_chart(key: str, arm: str, run: RunRecord) -> Chart:
    return Chart(key, lambda ax: draw_timeline(ax, key, run, f"timeline: {run_label(arm, run)}"), (11.0, 2.6),
                 {"data-run": run.path.name})


def per_step_chart(key: str, series: dict[str, list[float]], title: str, ylabel: str) -> Chart:
    return Chart(key, lambda ax: draw_per_step(ax, key, series, title, ylabel), (5.6, 3.2))


def cache_chart(key: str, runs: list[RunRecord], title: str) -> Chart:
    return Chart(key, lambda ax: draw_cache(ax, key, cache_series(runs), title), (5.6, 3.2))


def reward_chart(training: dict[str, Any]) -> Chart:
    return Chart("reward", lambda ax: draw_reward(ax, "reward", training), (8.0, 3.2))


def quality_chart(rows: list[dict[str, Any]]) -> Chart:
    """Wider with more configurations (a group of bars and its label need about 1.7 inches), taller
    with longer labels."""
    lines = max(quality_label(r).count("\n") + 1 for r in rows)
    return Chart("quality", lambda ax: draw_quality(ax, "quality", rows), (max(11.0, 2.5 + 1.7 * len(rows)), 2.8 + 0.17 * lines))


def svg_figure(chart: Chart) -> str:
    """The chart as matplotlib's SVG inside an HTML <figure>: text stays text (searchable, scalable),
    element ids are salted with the chart's key so the charts of one page never share one, and each
    element the drawing named gets its hover text (an SVG <title>)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart.key}):
        fig = Figure(figsize=chart.size, layout="constrained")
        tips = chart.draw(fig.add_subplot())
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # the element alone: no XML declaration or DOCTYPE inside HTML

    def group(m: re.Match[str]) -> str:
        """matplotlib's own group ids (figure_1, axes_1, ...) prefixed with the key, to be unique in the
        page (nothing refers to them); the named elements given their hover text."""
        gid = m[1] if m[1].startswith(f"{chart.key}-") else f"{chart.key}-{m[1]}"
        return f'<g id="{gid}">' + (f"<title>{_esc(tips[gid])}</title>" if gid in tips else "")

    svg = re.sub(r'<g id="([^"]+)">', group, svg)
    attrs = "".join(f' {name}="{_esc(value)}"' for name, value in chart.attrs.items())
    return f'<figure class="chart" data-chart="{_esc(chart.key)}"{attrs}>{svg}</figure>'


def png_bytes(charts: list[Chart]) -> bytes:
    """The charts stacked in one PNG, each as wide as the widest and as tall as it is on the page."""
    from matplotlib.figure import Figure

    heights = [c.size[1] for c in charts]
    fig = Figure(figsize=(max(c.size[0] for c in charts), sum(heights)), layout="constrained")
    for chart, ax in zip(charts, fig.subplots(len(charts), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]):
        chart.draw(ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


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
                    + svg_figure(per_step_chart("latency", latency, "main-model latency per step", "seconds"))
                    + svg_figure(per_step_chart("prompt-tokens", tokens, "prompt tokens per step", "tokens")) + "</div>")
        body.append("<h2>Prompt cache: cached vs uncached prompt tokens per step</h2><div class='charts'>"
                    + "".join(svg_figure(cache_chart(f"cache-{i}", rs, f"prompt cache: {arm}")) for i, (arm, rs) in enumerate(src.runs.items()))
                    + "</div>")
        body.append("<h2>Timelines</h2><p>main model, commands, memory jobs (light: queued, dark: running) and waits; "
                    "hover over a bar for its step</p>")
        shown = [(arm, run) for arm, rs in src.runs.items() for run in rs][:max_timelines]
        body += [svg_figure(timeline_chart(f"timeline-{i}", arm, run)) for i, (arm, run) in enumerate(shown)]
    if src.training is not None:
        body.append("<h2>Training reward</h2>" + svg_figure(reward_chart(src.training)))
    if src.quality:
        body.append("<h2>Memory quality (comem bench memory)</h2><p>recall: the share of the facts the agent used after a "
                    "cut-off (forward) and of the files it wrote before it (artifact) that a summary names; a failed summary "
                    "counts 0. Check passed: summaries the swap-time check would use as they are.</p>" + quality_table(src.quality)
                    + svg_figure(quality_chart(src.quality)))
    style = ("body{font-family:sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.charts{display:flex;flex-wrap:wrap;gap:16px}"
             "figure.chart{margin:8px 0}figure.chart svg{max-width:100%;height:auto}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>comem report {_esc(src.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def png_charts(src: Sources) -> list[Chart]:
    """The PNG's panels: the first run's timeline, latency per arm and the first run's prompt cache;
    the training reward; the memory quality."""
    charts = []
    if src.runs:
        arm, rs = next(iter(src.runs.items()))
        charts += [timeline_chart("timeline", arm, rs[0]),
                   per_step_chart("latency", {a: per_step_mean(r, "latency") for a, r in src.runs.items()},
                                  "main-model latency per step", "seconds"),
                   cache_chart("cache", rs[:1], f"prompt cache: {run_label(arm, rs[0])}")]
    if src.training is not None:
        charts.append(reward_chart(src.training))
    if src.quality:
        charts.append(quality_chart(src.quality))
    return charts


def write_report(path: Path, output: Path | None = None) -> tuple[Path, Path]:
    src = find_sources(path)
    out = Path(output) if output else Path(path) / "report.html"
    atomic_write_text(out, render_html(src))
    png = out.with_suffix(".png")
    atomic_write_bytes(png, png_bytes(png_charts(src)))
    return out, png
