"""report.html + latency.png from latency rows (`--json` of `comem bench latency`), e.g. those of
scripts/gpu-latency.sh: end-to-end time and speed-up vs `full` per arm and concurrency, measured
and, when calibrated, predicted by the fitted cost model.

    python -m comem_cli.serving.report latency.json [more.json ...] --output DIR
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path

COLORS = {"full": "#888888", "mask": "#1f77b4", "sync": "#d62728", "comem": "#2ca02c"}


def _label(r: dict) -> str:
    k = "" if r.get("k") is None else f" k={r['k']}"
    pw = "" if r.get("prewarm") is None else (" prewarm" if r["prewarm"] else "")
    return f"{r['arm']}{k}{pw}"


def write(rows: list[dict], out: Path, title: str, extra: dict | None = None) -> tuple[Path, Path]:
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
    ap = argparse.ArgumentParser(prog="python -m comem_cli.serving.report")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--title", default="comem bench latency --serving vllm")
    args = ap.parse_args(argv)
    rows: list[dict] = []
    extra: dict = {}
    for f in args.files:
        data = json.loads(f.read_text())
        rows.extend(data["rows"] if isinstance(data, dict) else data)
        side = f.with_suffix(".serving.json")
        if side.is_file():
            extra[f.name] = json.loads(side.read_text()).get("engines")
    page, png = write(rows, args.output, args.title, extra)
    print(f"wrote {page} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
