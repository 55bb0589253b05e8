"""Every output of the latency benchmark, one writer each: the terminal tables (the rows, the
speed-up summary, the paper check, the engine fit, measured vs predicted), the `--json` files, and
report.html + latency.png from such files (e.g. those of scripts/gpu-latency.sh: end-to-end time
and speed-up vs `full` per arm and concurrency, measured and, when calibrated, predicted by the
fitted cost model)::

    python -m comem_cli.latency.report latency.json [more.json ...] --output DIR

The computations stay where they are made (results.py, paper.py, engine_fit.py); this module only
formats, so a table and a file of the same rows cannot disagree.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any


# ---------------------------------------------------------------------------- terminal tables
def print_rows(rows: list[dict[str, Any]], title: str) -> None:
    """The main table: one line per row, every metric."""
    from rich.table import Table

    from comem_cli.ui import console

    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    table = Table(title=title, title_justify="left")
    for col in ("arm", "k", "every", "conc", "prewarm", "end-to-end s", "vs full", "vs sync", "of limit", "step p50 s",
                "step p95 s", "prompt tok p50", "cached", "hidden", "job / agent step s", "waits", "wait s", "masks"):
        table.add_column(col, justify="left" if col in ("arm", "prewarm") else "right")
    for r in rows:
        table.add_row(r["arm"] if r["arm"] != "limit" else f"limit ({r['policy']})", f(r["k"], "{}"), f(r["every"], "{}"),
                      str(r["concurrency"]), "-" if r["prewarm"] is None else ("yes" if r["prewarm"] else "no"),
                      f(r["end_to_end_s"], "{:.1f}"), f(r["speedup_vs_full"], "{:.2f}x"), f(r["speedup_vs_sync"], "{:.2f}x"),
                      f(r["of_limit"], "{:.0%}"), f(r["p50_main_s"], "{:.3f}"), f(r["p95_main_s"], "{:.3f}"),
                      f(r["p50_prompt_tokens"], "{:.0f}"), f(r["cached_fraction"], "{:.0%}"), f(r["hidden_fraction"], "{:.1%}"),
                      f"{f(r.get('memory_job_s'))} / {f(r.get('agent_step_s'))}", str(r["waits"]), f(r["wait_s"], "{:.1f}"),
                      str(r.get("masks", 0)))
    console.print(table, width=None if console.is_terminal else 220)


def summary_rows(rows: list[dict[str, Any]]) -> tuple[list[int], dict[str, dict[int, str]]]:
    """Per arm and concurrency: end-to-end speed-up vs full and the fraction of the arm's limit reached."""
    concurrencies = sorted({r["concurrency"] for r in rows})
    out: dict[str, dict[int, str]] = {}
    for r in rows:
        if r["memory_free"] and r["policy"] != "comem":
            continue
        name = "limit" if r["memory_free"] else r["arm"] + (f" k={r['k']}" if r["arm"] == "comem" else "")
        name += "" if r["prewarm"] is not True else " (pre-warm)"
        cell = "-" if r["speedup_vs_full"] is None else f"{r['speedup_vs_full']:.2f}x"
        if r["of_limit"] is not None and not r["memory_free"]:
            cell += f" ({r['of_limit']:.0%})"
        out.setdefault(name, {})[r["concurrency"]] = cell
    return concurrencies, out


def print_summary(rows: list[dict[str, Any]]) -> None:
    """The short table: speed-up vs full per arm (rows) and concurrency (columns)."""
    from rich.table import Table

    from comem_cli.ui import console

    concurrencies, cells = summary_rows(rows)
    table = Table(title="end-to-end speed-up vs full (fraction of the arm's limit: the same replay with a free memory model)",
                  title_justify="left")
    table.add_column("arm")
    for c in concurrencies:
        table.add_column(f"{c} run{'s' if c > 1 else ''}", justify="right")
    for name, by_c in cells.items():
        table.add_row(name, *[by_c.get(c, "-") for c in concurrencies])
    console.print(table)


def print_paper_check(rows: list[dict[str, Any]], tolerance: float) -> bool:
    """`--calibrate`: the paper's figures vs the cost model (paper.paper_check); True when every ratio is within `tolerance`."""
    from rich.table import Table

    from comem_cli.ui import console

    table = Table(title="calibration: the paper's GLM-4.7 per-step latency (CoMem pipeline: summary every 4 steps, "
                        "one step of budget, blocking) vs the fitted cost model", title_justify="left")
    for col in ("concurrency", "full ms (model / paper)", "CoMem ms (model / paper)", "full/CoMem model", "paper", "off"):
        table.add_column(col, justify="right")
    ok = True
    for r in rows:
        bad = abs(r["off"]) > tolerance
        ok &= not bad
        table.add_row(str(r["concurrency"]), f"{r['full_ms']} / {r['paper_full_ms']:.0f}", f"{r['comem_ms']} / {r['paper_comem_ms']:.0f}",
                      f"{r['ratio']:.2f}x", f"{r['paper_ratio']:.2f}x", f"[{'red' if bad else 'green'}]{r['off']:+.0%}[/]")
    console.print(table, width=None if console.is_terminal else 180)
    console.print(("[green]calibration OK[/green]" if ok else "[red]calibration FAILED[/red]")
                  + f": every ratio within {tolerance:.0%} of the paper's" + ("" if ok else " is required"))
    return ok


def print_engine_fit(report: dict[str, Any]) -> None:
    """`--calibrate-engine`: each grid point measured vs the fitted model, and the verdict (report["tolerance"])."""
    from rich.table import Table

    from comem_cli.ui import console

    tolerance = report["tolerance"]
    table = Table(title="engine calibration: grid latency, measured vs fitted cost model", title_justify="left")
    for col in ("engine", "prompt", "cached", "output", "batch", "measured s", "model s", "error"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for role, e in report["engines"].items():
        for p in e["points"]:
            bad = abs(p["error"]) > tolerance
            table.add_row(role, str(p["prompt"]), str(p["cached"]), str(p["output"]), str(p["batch"]),
                          f"{p['measured_s']:.3f}", f"{p['predicted_s']:.3f}", f"[{'red' if bad else 'green'}]{p['error']:+.0%}[/]")
    console.print(table, width=None if console.is_terminal else 160)
    for role, e in report["engines"].items():
        console.print(f"{role}: mean |error| {e['mean_abs_error']:.1%}, max {e['max_abs_error']:.1%}, "
                      f"{e['unfitted_mean_abs_error']:.0%} before the fit "
                      f"(fit tolerance: mean within {tolerance:.0%})", soft_wrap=True)
    console.print("[green]fit OK[/green]" if report["ok"] else "[red]fit FAILED[/red]")


def print_comparison(rows: list[dict[str, Any]], title: str, tolerance: float) -> bool:
    """Measured vs predicted rows (results.compare); True when every speed-up error is within `tolerance`."""
    from rich.table import Table

    from comem_cli.ui import console

    def f(x, fmt):
        return "-" if x is None else fmt.format(x)

    table = Table(title=title, title_justify="left")
    for col in ("arm", "k", "conc", "prewarm", "measured s", "predicted s", "error", "measured vs full", "predicted vs full", "error"):
        table.add_column(col, justify="left" if col in ("arm", "prewarm") else "right")
    ok = True
    for r in rows:
        err = r.get("speedup_error")
        bad = err is not None and abs(err) > tolerance
        ok &= not bad
        table.add_row(r["arm"], f(r["k"], "{}"), str(r["concurrency"]),
                      "-" if r["prewarm"] is None else ("yes" if r["prewarm"] else "no"),
                      f(r["end_to_end_s"], "{:.2f}"), f(r.get("predicted_end_to_end_s"), "{:.2f}"),
                      f(r.get("end_to_end_error"), "{:+.0%}"), f(r["speedup_vs_full"], "{:.2f}x"),
                      f(r.get("predicted_speedup_vs_full"), "{:.2f}x"),
                      "-" if err is None else f"[{'red' if bad else 'green'}]{err:+.0%}[/]")
    console.print(table, width=None if console.is_terminal else 160)
    console.print(("[green]" if ok else "[yellow]") + f"predicted speed-ups vs full within {tolerance:.0%} of "
                  f"the measured ones: {'yes' if ok else 'no'}[/]")
    return ok


# ---------------------------------------------------------------------------- the --json files
def serving_path(path: Path) -> Path:
    """The side file of `--json FILE` with `--serving vllm`: the engines, the prefix cache, the fit."""
    return Path(path).with_suffix(".serving.json")


def write_json(path: Path, rows: list[dict[str, Any]], serving: dict[str, Any] | None = None) -> None:
    """`--json FILE`: the rows; with `serving` (`--serving vllm`) also its side file (`serving_path`)."""
    from comem_cli.rollouts import atomic_write_json
    from comem_cli.ui import console

    path = Path(path)
    atomic_write_json(path, rows)
    if serving is None:
        console.print(f"[dim]rows written to {path}[/dim]")
        return
    atomic_write_json(serving_path(path), serving)
    console.print(f"[dim]rows written to {path}, engines and prefix cache to {serving_path(path)}[/dim]", soft_wrap=True)


# ---------------------------------------------------------------------------- report.html + latency.png
COLORS = {"full": "#888888", "mask": "#1f77b4", "sync": "#d62728", "comem": "#2ca02c"}


def _label(r: dict) -> str:
    k = "" if r.get("k") is None else f" k={r['k']}"
    pw = "" if r.get("prewarm") is None else (" prewarm" if r["prewarm"] else "")
    return f"{r['arm']}{k}{pw}"


def write_html(rows: list[dict], out: Path, title: str, extra: dict | None = None) -> tuple[Path, Path]:
    """report.html + latency.png in `out`: end-to-end time and speed-up vs full per arm and concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(_label(r), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rs]
        color = COLORS.get(rs[0]["arm"])
        axes[0].plot(xs, [r["end_to_end_s"] for r in rs], marker="o", label=label, color=color)
        axes[1].plot(xs, [r.get("speedup_vs_full") for r in rs], marker="o", label=label, color=color)
        if any(r.get("predicted_speedup_vs_full") for r in rs):
            axes[1].plot(xs, [r.get("predicted_speedup_vs_full") for r in rs], ls="--", color=color, label=f"{label} (model)")
    for ax, name in zip(axes, ("end-to-end s (measured)", "speed-up vs full")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent runs")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    png = out / "latency.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    cols = ["arm", "k", "concurrency", "prewarm", "end_to_end_s", "predicted_end_to_end_s", "speedup_vs_full",
            "predicted_speedup_vs_full", "speedup_vs_sync", "p50_main_s", "p95_main_s", "hidden_fraction", "waits"]
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>"
                   for r in sorted(rows, key=lambda r: (r["concurrency"], r["arm"], str(r.get("k")))))
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}</style>"
            f"<h1>{html.escape(title)}</h1><img src='latency.png' style='max-width:100%'>"
            f"<table><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{body}</table>"
            + (f"<h2>serving</h2><pre>{html.escape(json.dumps(extra, indent=1))}</pre>" if extra else ""))
    page_path = out / "report.html"
    page_path.write_text(page)
    return page_path, png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m comem_cli.latency.report")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--title", default="comem bench latency --serving vllm")
    args = ap.parse_args(argv)
    rows: list[dict] = []
    extra: dict = {}
    for f in args.files:
        data = json.loads(f.read_text())
        rows.extend(data["rows"] if isinstance(data, dict) else data)
        side = serving_path(f)
        if side.is_file():
            extra[f.name] = json.loads(side.read_text()).get("engines")
    page, png = write_html(rows, args.output, args.title, extra)
    print(f"wrote {page} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
