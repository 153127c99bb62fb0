"""Report files: report.json, CSV tables, PNG plots (matplotlib, Agg) and a self-contained-enough report.html.

The HTML is deliberately plain (tables + <img>) so that it opens from a CI artifact without a server.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

from toolkit.extras import require

CLIENT_COLS = ("count", "throughput_rps", "avg_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "errors")
SERVER_COLS = (
    "requests",
    "failed",
    "avg_batch",
    "request_us",
    "queue_us",
    "compute_input_us",
    "compute_infer_us",
    "compute_output_us",
)


def _plt() -> Any:
    require("loadtest", "the load-test report's plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_csvs(report: dict[str, Any], out: Path) -> list[Path]:
    files = [out / "client.csv", out / "timeseries.csv", out / "errors.csv", out / "server.csv"]
    c = report["client"]
    rows = [[t, *(s.get(k, 0) for k in CLIENT_COLS)] for t, s in c["per_target"].items()]
    rows.append(["TOTAL", *(c["total"].get(k, 0) for k in CLIENT_COLS)])
    _csv(files[0], ["target", *CLIENT_COLS], rows)
    ts = report["timeseries"]
    cols = ["t", "rps", "errors", "avg_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms"]
    _csv(files[1], cols, [[r[k] for k in cols] for r in ts])
    _csv(files[2], ["target", "type", "count"], [[e["target"], e["type"], e["count"]] for e in c["errors"]])
    _csv(
        files[3],
        ["model", *SERVER_COLS],
        [[m, *(s.get(k, 0) for k in SERVER_COLS)] for m, s in report["server"].items()],
    )
    return files


def plot_throughput(report: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ts = report["timeseries"]
    t = [r["t"] for r in ts]
    per = report.get("timeseries_per_target", {})
    if 1 < len(per) <= 8:
        for label, counts in per.items():
            ax.plot(t, counts, lw=1.2, label=label)
    ax.plot(t, [r["rps"] for r in ts], color="black", lw=2, label="total (ok)")
    if any(r["errors"] for r in ts):
        ax.plot(t, [r["errors"] for r in ts], color="red", lw=1.5, ls="--", label="errors")
    if report.get("warmup_s"):
        ax.axvspan(0, report["warmup_s"], color="grey", alpha=0.15, label="warm-up (not in summary)")
    users = [(r["t"], r.get("users")) for r in ts if r.get("users") is not None]
    if users and len({u for _, u in users}) > 1:  # a shape changed the load: show it
        ax2 = ax.twinx()
        ax2.step([t for t, _ in users], [u for _, u in users], where="post", color="tab:gray", ls=":", lw=1.5)
        ax2.set_ylabel("active users (dotted)", color="tab:gray")
        ax2.set_ylim(bottom=0)
        ax2.grid(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.09 if len(fig.axes) > 1 else 1.01, 1.0), fontsize=8)
    ax.set(xlabel="time since start (s)", ylabel="requests / s", title=f"Throughput — {report['scenario']}")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latency(report: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ts = [r for r in report["timeseries"] if r["rps"]]
    t = [r["t"] for r in ts]
    for key, color in (
        ("p50_ms", "tab:blue"),
        ("p90_ms", "tab:green"),
        ("p95_ms", "tab:orange"),
        ("p99_ms", "tab:red"),
    ):
        ax.plot(t, [r[key] for r in ts], color=color, lw=1.5, marker=".", label=key.removesuffix("_ms"))
    ax.plot(t, [r["avg_ms"] for r in ts], color="grey", lw=1, ls="--", label="avg")
    ax.set(
        xlabel="time since start (s)", ylabel="latency (ms)", title=f"Client latency per second — {report['scenario']}"
    )
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_server(report: dict[str, Any], path: Path) -> None:
    """Stacked bar per model: where a request's server time goes (perf_analyzer's breakdown)."""
    plt = _plt()
    server = report["server"]
    names = list(server)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.4 * max(2, len(names))))
    left = [0.0] * len(names)
    for key, color in (
        ("queue_us", "tab:orange"),
        ("compute_input_us", "tab:cyan"),
        ("compute_infer_us", "tab:blue"),
        ("compute_output_us", "tab:purple"),
    ):
        vals = [server[n][key] for n in names]
        ax.barh(names, vals, left=left, color=color, label=key.removesuffix("_us").replace("_", " "))
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set(xlabel="µs per request (server side)", title="Server time per request")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sweep(sweep: dict[str, Any], path: Path) -> None:
    plt = _plt()
    pts = sweep["sweep"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [p["throughput_rps"] for p in pts]
    for key, color in (("p50_ms", "tab:blue"), ("p90_ms", "tab:green"), ("p99_ms", "tab:red")):
        ax.plot(x, [p[key] for p in pts], marker="o", color=color, label=key.removesuffix("_ms"))
    for p in pts:
        ax.annotate(
            f"c={p['users']}",
            (p["throughput_rps"], p["p50_ms"]),
            textcoords="offset points",
            xytext=(4, -11),
            fontsize=8,
        )
    ax.set(
        xlabel="throughput (requests / s)",
        ylabel="latency (ms)",
        title=f"Throughput vs latency — {sweep['scenario']} ({sweep['protocol']})",
    )
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


LABELS = {
    "count": "requests",
    "throughput_rps": "req/s",
    "avg_ms": "avg (ms)",
    "p50_ms": "p50 (ms)",
    "p90_ms": "p90 (ms)",
    "p95_ms": "p95 (ms)",
    "p99_ms": "p99 (ms)",
    "max_ms": "max (ms)",
    "avg_batch": "avg batch",
    "request_us": "request (µs)",
    "queue_us": "queue (µs)",
    "compute_input_us": "compute input (µs)",
    "compute_infer_us": "compute infer (µs)",
    "compute_output_us": "compute output (µs)",
    "users": "concurrency",
}


def _table(rows: list[list[Any]], header: list[str]) -> str:
    header = [LABELS.get(h, h) for h in header]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:6px 0}
.meta td{text-align:left}.bad{color:#b00}"""


def render_html(report: dict[str, Any], images: list[str]) -> str:
    c = report["client"]
    meta = [
        ["scenario", report["scenario"]],
        ["description", report["description"]],
        ["protocol / encoding", f"{report['protocol']} / {report['encoding']}"],
        ["target", report["target"]],
        ["shape", report["shape"]],
        ["users / processes", f"{report['users']} / {report['processes']}"],
        ["target rate", report["target_rps"] or "closed loop"],
        ["started (UTC)", report["started"]],
        ["duration / warm-up", f"{report['duration_s']:g} s / {report['warmup_s']:g} s"],
    ]
    parts = [
        f"<html><head><meta charset='utf-8'><title>tritonctl loadtest — {html.escape(report['scenario'])}</title>",
        f"<style>{_CSS}</style></head><body><h1>Load test: {html.escape(report['scenario'])}</h1>",
        "<table class='meta'>"
        + "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in meta)
        + "</table>",
    ]
    parts.append("<h2>Client side</h2>")
    rows = [[t, *(s.get(k, 0) for k in CLIENT_COLS)] for t, s in c["per_target"].items()]
    rows.append(["TOTAL", *(c["total"].get(k, 0) for k in CLIENT_COLS)])
    parts.append(_table(rows, ["target", *CLIENT_COLS]))
    parts.append("<h3>Errors by type</h3>")
    if c["errors"]:
        parts.append(_table([[e["target"], e["type"], e["count"]] for e in c["errors"]], ["target", "type", "count"]))
    else:
        parts.append("<p>none</p>")
    parts.append("<h2>Server side (Triton /v2/models/stats, difference over the measured window)</h2>")
    if report["server"]:
        srows = [[m, *(s.get(k, 0) for k in SERVER_COLS)] for m, s in report["server"].items()]
        parts.append(_table(srows, ["model", *SERVER_COLS]))
    else:
        parts.append("<p class='bad'>not available (no Triton URL to read statistics from)</p>")
    if report.get("mme"):
        parts.append("<h2>Multi-model endpoint</h2>")
        parts.append(_table([[k, v] for k, v in report["mme"].items()], ["metric", "value"]))
    parts.append("<h2>Plots</h2>")
    parts += [f"<img src='{html.escape(i)}' alt='{html.escape(i)}'>" for i in images]
    parts.append("<p>Raw data: report.json, client.csv, timeseries.csv, errors.csv, server.csv</p></body></html>")
    return "\n".join(parts)


def write_report(report: dict[str, Any], out: Path) -> Path:
    """Write everything for one run into ``out``; returns the path of report.html."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    write_csvs(report, out)
    images = ["throughput.png", "latency.png"]
    plot_throughput(report, out / images[0])
    plot_latency(report, out / images[1])
    if report["server"]:
        images.append("server.png")
        plot_server(report, out / "server.png")
    (out / "report.html").write_text(render_html(report, images))
    return out / "report.html"


def write_sweep_report(sweep: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for run, p in zip(sweep["runs"], sweep["sweep"], strict=True):
        write_report(run, out / f"c{p['users']}")
    slim = {k: v for k, v in sweep.items() if k != "runs"}
    (out / "report.json").write_text(json.dumps(slim, indent=1, default=str))
    cols = ["users", "throughput_rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms", "errors"]
    _csv(out / "sweep.csv", cols, [[p[k] for k in cols] for p in sweep["sweep"]])
    plot_sweep(sweep, out / "sweep.png")
    links = "".join(
        f"<li><a href='c{p['users']}/report.html'>concurrency {p['users']}</a></li>" for p in sweep["sweep"]
    )
    page = (
        f"<html><head><meta charset='utf-8'><title>sweep — {html.escape(sweep['scenario'])}</title>"
        f"<style>{_CSS}</style></head><body><h1>Concurrency sweep: {html.escape(sweep['scenario'])}</h1>"
        + _table([[p[k] for k in cols] for p in sweep["sweep"]], cols)
        + f"<img src='sweep.png'><h2>Runs</h2><ul>{links}</ul></body></html>"
    )
    (out / "report.html").write_text(page)
    return out / "report.html"
