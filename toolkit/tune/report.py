"""The tuning report: report.json (everything), tune.png (throughput vs p99 per config with the chosen point, and the
search path) and report.html (plain tables and the picture, so that it opens from a CI artifact without a server).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.tune.result import TuneResult

VERDICT_COLOURS = {
    "start": "tab:blue",
    "better": "tab:green",
    "closer": "tab:cyan",
    "worse": "tab:gray",
    "tie": "tab:orange",
    "tie-lighter": "tab:olive",
    "infeasible": "tab:red",
    "failed": "black",
    "settle": "tab:brown",
    "refine": "tab:purple",
}


def _plt() -> Any:
    from toolkit.extras import require

    require("tune", "the tune report's picture")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 8, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def write_png(result: TuneResult, path: Path) -> None:
    """Left: each config's concurrency sweep as throughput against p99 (the chosen one in colour, the start one
    dashed), the bound as a vertical line, the chosen point as a star. Right: the search path over time."""
    plt = _plt()
    p99 = result.options.p99_ms
    fig, (ax, path_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    best = result.best
    for ev in result.outcome.evaluations:
        levels = list(ev.levels().values())
        if not levels:
            continue
        chosen = ev is best
        style: dict[str, Any] = {"color": "tab:green" if chosen else "0.6", "alpha": 1.0 if chosen else 0.5}
        if ev.label == result.start_label:
            style.update(color="tab:blue", alpha=0.9, linestyle="--")
        name = "chosen" if chosen else ("original config" if ev.label == result.start_label else None)
        xs, ys = [m.p99_ms for m in levels], [m.throughput for m in levels]
        ax.plot(xs, ys, marker="o", markersize=3, label=name, **style)
        for m in levels if chosen else ():
            ax.annotate(f"c={m.concurrency}", (m.p99_ms, m.throughput), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    b = best.best(p99) if best else None
    if b is not None:
        ax.scatter([b.p99_ms], [b.throughput], marker="*", s=220, color="tab:green", zorder=5, edgecolor="black")
    ax.axvline(p99, color="tab:red", linestyle=":", label=f"p99 bound {p99:g} ms")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (infer/s)")
    ax.set_title(f"{result.options.model}: throughput vs p99 per config ({len(result.outcome.evaluations)} configs)")
    ax.legend(loc="lower right")
    steps = result.outcome.path
    incumbent, running = [], 0.0
    for s in steps:
        if s.verdict in ("start", "better", "tie-lighter", "closer", "settle", "refine") and s.throughput:
            running = s.throughput
        incumbent.append(running)
    path_ax.step([s.t_s for s in steps], incumbent, where="post", color="tab:green", label="best so far")
    for verdict, colour in VERDICT_COLOURS.items():
        pts = [(s.t_s, s.throughput or 0.0) for s in steps if s.verdict == verdict]
        if pts:
            path_ax.scatter(*zip(*pts, strict=True), color=colour, s=18, label=verdict, zorder=3)
    path_ax.set_xlabel("search time (s)")
    path_ax.set_ylabel("config's best throughput under the bound (infer/s)")
    path_ax.set_title(f"search path ({result.options.strategy}, {result.outcome.measurements} measurements)")
    path_ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _row(cells: list[Any]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    return f"<table>{head}{''.join(_row(r) for r in rows)}</table>"


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def write_html(result: TuneResult, data: dict[str, Any], path: Path) -> None:
    p99 = result.options.p99_ms
    configs = sorted(data["evaluations"], key=lambda e: -(e["best"] or {}).get("throughput", -1.0))
    rows = [
        [e["label"], _fmt((e["best"] or {}).get("throughput"), ".0f"), _fmt((e["best"] or {}).get("p99_ms"), ".2f"),
         (e["best"] or {}).get("concurrency", "-"), _fmt(e["cost_per_million"], ".4f"), e["measurements"],
         e["error"] or ""]
        for e in configs
    ]  # fmt: skip
    path_rows = [
        [f"{s['t_s']:.1f}", s["label"], s["verdict"], _fmt(s["throughput"], ".0f"), _fmt(s["p99_ms"], ".2f"),
         s["concurrency"] or "-"]
        for s in data["path"]
    ]  # fmt: skip
    ties = [[t["a"], t["b"], f"{t['difference']:+.1%}"] for t in data["ties"]]
    close = data["close_to_best"]
    body = [
        f"<h1>tritonctl tune: {html.escape(result.options.model)}</h1>",
        f"<pre>{html.escape(result.summary())}</pre>",
        '<img src="tune.png" alt="throughput vs p99 per config, and the search path" style="max-width:100%">',
        f"<h2>Configs (best throughput with p99 &le; {p99:g} ms)</h2>",
        _table(["config", "infer/s", "p99 ms", "concurrency", "cost / 1M", "measurements", "error"], rows),
        "<h2>Cannot be told apart</h2>",
        "<p>Within the noise of the chosen config: "
        + (html.escape(" | ".join(close)) if close else "none")
        + f" (noise {data['noise']:.1%}). Pairs still within the noise after repeated measurement:</p>",
        _table(["config", "vs config", "difference"], ties) if ties else "<p>none</p>",
        "<h2>Search path</h2>",
        _table(["t (s)", "config", "verdict", "infer/s", "p99 ms", "concurrency"], path_rows),
    ]
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
    style += "padding:2px 6px;font-size:12px}"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>"
                    + "\n".join(body) + "</body></html>\n")  # fmt: skip


def write_report(result: TuneResult, out: Path) -> Path:
    """report.json, tune.png and report.html under ``out``; returns report.html's path."""
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_dict()
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    write_png(result, out / "tune.png")
    page = out / "report.html"
    write_html(result, data, page)
    return page
