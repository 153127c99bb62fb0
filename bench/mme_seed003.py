"""Seed article 003's experiment end to end: ``python -m bench.mme_seed003``.

What a SageMaker user of the article does, against ``tritonctl serve`` (the real gateway, the SageMaker runtime API,
boto3 ``invoke_endpoint`` with ``endpoint_url``): 200 copies of one city model saved under other names
(``housing_NewYork_NY.tar.gz`` -> ``NY_0.tar.gz`` ... ``NY_199.tar.gz``, the config still naming the original) in
a store, a budget that holds 121 of them, then three passes: invoke ``NY_0..NY_99`` (all cold), the same 100 again
(all warm: ModelCacheHit must be 1.0), then all 200 (100 warm, 21 cold into free room, 79 cold with an eviction each).
After each pass the gateway's /metrics gives LoadedModelCount (it must level at the budget), the pass's hit ratio,
evictions, and where the cold loads' time went (``tritonctl_mme_model_load_phase_seconds``: fetch, rewrite, install,
admit, triton = triton_prep + stub).

``--checkout DIR`` (repeatable) runs the same experiment with ``tritonctl serve`` imported from another checkout
(e.g. ``/work/main``), the runs alternating over ``--rounds``, so before/after are compared in one run on the same
machine load. Results go to ``--output`` (a markdown page) and ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from toolkit.server.launcher import free_port

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = [1200.0, 3.0, 2.0, 15.0, 0.25, 2.0, 1.0, 0.0]  # one house: 8 raw features, as the city models take them
PHASES = ("fetch", "rewrite", "install", "admit", "queue", "triton", "triton_prep", "stub", "total")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if s else float("nan")


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in seconds]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50": round(pct(ms, 50), 1), "p90": round(pct(ms, 90), 1), "p99": round(pct(ms, 99), 1),
            "max": round(max(ms), 1), "mean": round(statistics.fmean(ms), 1)}  # fmt: skip


def build_store(work: Path, copies: int) -> Path:
    """``copies`` renamed copies of housing_NewYork_NY.tar.gz, as the article makes them (``cp``, nothing edited)."""
    from examples.mme import build_city_store

    original = build_city_store(work / "original", n=1)["housing_NewYork_NY"]
    store = work / "store"
    store.mkdir()
    for i in range(copies):
        shutil.copyfile(original, store / f"NY_{i}.tar.gz")
    return store


def scrape(url: str) -> dict[str, float]:
    """The gateway's /metrics as {series: value}, summed over the ``model`` label (per-model counters)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("tritonctl_") or "_bucket" in line:
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        key = name + ("{" + labels if labels.startswith("phase=") else "")
        out[key] = out.get(key, 0.0) + float(value)
    return out


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def phase_split(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Mean milliseconds per load of each phase over the pass."""
    split = {}
    for phase in PHASES:
        n = delta(after, before, f'tritonctl_mme_model_load_phase_seconds_count{{phase="{phase}"}}')
        s = delta(after, before, f'tritonctl_mme_model_load_phase_seconds_sum{{phase="{phase}"}}')
        if n:
            split[phase] = round(s / n * 1000, 1)
    return split


class Serve:
    """``tritonctl serve`` in a subprocess (``python -m toolkit serve``), importing toolkit from ``checkout``."""

    def __init__(
        self, checkout: Path, work: Path, store: Path, max_models: int, policy: str, extra: tuple[str, ...] = ()
    ) -> None:
        self.repo = work / "repo"
        shutil.rmtree(self.repo, ignore_errors=True)
        self.repo.mkdir()
        manifest = work / "tritonctl.yaml"
        manifest.write_text(
            "models:\n  - {name: unused, framework: python, inputs: [{name: X, dtype: FP32, dims: [2]}],\n"
            "     outputs: [{name: Y, dtype: FP32, dims: [2]}]}\n"
            f"endpoints:\n  - {{name: seed003, mode: multi-model, store: '{store}'}}\n"
        )
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.cmd = [sys.executable, "-m", "toolkit", "serve", str(self.repo), "--manifest", str(manifest),
                    "--store", str(store), "--max-models", str(max_models), "--policy", policy,
                    "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--gateway-port", str(port),
                    "--gateway-grpc-port", "0", *extra]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(checkout))
        self.log = (work / "serve.log").open("w")
        self.proc = subprocess.Popen(self.cmd, cwd=checkout, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"tritonctl serve exited with {self.proc.returncode}; log {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"tritonctl serve not ready after 120 s; log {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_passes(serve: Serve, copies: int, first: int, max_models: int) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    sm = boto3.client(
        "sagemaker-runtime", endpoint_url=serve.url, region_name="us-east-1", aws_access_key_id="AKIDBENCH",
        aws_secret_access_key="x", config=Config(retries={"max_attempts": 1}, read_timeout=120),
    )  # fmt: skip
    body = json.dumps({"inputs": [{"name": "raw", "shape": [1, 8], "datatype": "FP32", "data": SAMPLE}]})
    passes = [(f"pass 1: NY_0..NY_{first - 1} (cold)", range(first)),
              (f"pass 2: the same {first} again (warm)", range(first)),
              (f"pass 3: all {copies}", range(copies))]  # fmt: skip
    resident: set[int] = set()
    result: dict[str, Any] = {"passes": []}
    for label, picks in passes:
        before = scrape(serve.url)
        cold: list[float] = []
        warm: list[float] = []
        evicting: list[float] = []  # cold requests that found the budget full (their load evicted a model)
        for i in picks:
            was_resident = i in resident
            full = len(resident) >= max_models
            t0 = time.perf_counter()
            r = sm.invoke_endpoint(EndpointName="seed003", TargetModel=f"NY_{i}.tar.gz",
                                   ContentType="application/json", Body=body)  # fmt: skip
            out = json.loads(r["Body"].read())
            (warm if was_resident else cold).append(time.perf_counter() - t0)
            if not was_resident and full:
                evicting.append(cold[-1])
            assert out["outputs"][0]["name"] == "price", out
            resident.add(i)
        # The victims are never asked for again in these passes (pass 3 asks for the resident ones first).
        resident = set(sorted(resident)[-max_models:]) if len(resident) > max_models else resident
        after = scrape(serve.url)
        hits = delta(after, before, "tritonctl_mme_model_cache_hits_total")
        misses = delta(after, before, "tritonctl_mme_model_cache_misses_total")
        waits = delta(after, before, "tritonctl_mme_model_loading_wait_seconds_sum")
        result["passes"].append({
            "pass": label,
            "requests": len(picks),
            "cold": summary(cold),
            "cold_evicting": summary(evicting),
            "_cold_seconds": cold,
            "warm": summary(warm),
            "ModelCacheHit": round(hits / (hits + misses), 4) if hits + misses else None,
            "LoadedModelCount": after.get("tritonctl_mme_loaded_models"),
            "evictions": delta(after, before, "tritonctl_mme_model_evictions_total"),
            "mean_wait_ms": round(waits / misses * 1000, 1) if misses else 0.0,
            "cold_minus_wait_ms": round((sum(cold) - waits) / len(cold) * 1000, 1) if cold else None,
            "phases_ms": phase_split(after, before),
        })  # fmt: skip
    every_cold = [v for p in result["passes"] for v in p.pop("_cold_seconds")]
    result["all_cold"] = summary(every_cold)
    return result


def experiment(
    checkout: Path, copies: int, first: int, max_models: int, policy: str, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tritonctl-seed003-") as tmp:
        work = Path(tmp)
        store = build_store(work, copies)
        load0 = os.getloadavg()[0]
        serve = Serve(checkout, work, store, max_models, policy, extra)
        try:
            t0 = time.perf_counter()
            result = run_passes(serve, copies, first, max_models)
            result["seconds"] = round(time.perf_counter() - t0, 1)
        finally:
            serve.stop()
        result.update(checkout=str(checkout), load_average_1m=[round(load0, 2), round(os.getloadavg()[0], 2)])
        return result


def markdown(runs: list[dict[str, Any]], command: str, args: argparse.Namespace) -> str:
    lines = [
        f"# Seed 003 through boto3: {args.copies} renamed copies, a budget of {args.max_models}",
        "",
        f"Command: `{command}` (machine: {os.cpu_count()} CPUs; the 1-minute load average at the start and end of "
        "each run is in its row).",
        "",
        f"Store: {args.copies} copies of `housing_NewYork_NY.tar.gz` named `NY_<i>.tar.gz`; `tritonctl serve --store "
        f"DIR --max-models {args.max_models} --policy {args.policy}{''.join(' ' + a for a in args.serve_arg)}`; "
        "boto3 `invoke_endpoint(EndpointName='seed003', "
        "TargetModel='NY_<i>.tar.gz')` one request at a time. Cold = the model was not loaded (its wait includes any "
        "eviction); warm = it was. Phases: mean ms per load from `tritonctl_mme_model_load_phase_seconds`.",
        "",
        "| run | checkout | pass | cold n | cold p50 / p90 / p99 / max ms | warm n | warm p50 / p99 ms | ModelCacheHit"
        " | LoadedModelCount | evictions | load phases (mean ms) | cold minus wait ms | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, run in enumerate(runs):
        for p in run["passes"]:
            c, w = p["cold"], p["warm"]
            cold = f"{c['p50']} / {c['p90']} / {c['p99']} / {c['max']}" if c.get("n") else "-"
            warm = f"{w['p50']} / {w['p99']}" if w.get("n") else "-"
            ph = ", ".join(f"{k2} {v}" for k2, v in p["phases_ms"].items()) or "-"
            lines.append(
                f"| {k + 1} | {run['checkout']} | {p['pass']} | {c.get('n', 0)} | {cold} | {w.get('n', 0)} | {warm} | "
                f"{p['ModelCacheHit']} | {p['LoadedModelCount']:.0f} | {p['evictions']:.0f} | {ph} | "
                f"{p['cold_minus_wait_ms']} | {run['load_average_1m'][0]} -> {run['load_average_1m'][1]} |"
            )
    lines += ["", "| run | checkout | every cold request: n, p50 / p90 / p99 / max ms | of them with an eviction: n, "
              "p50 / p99 ms | seconds |", "|---|---|---|---|---|"]  # fmt: skip
    for k, run in enumerate(runs):
        a = run["all_cold"]
        ev = [p["cold_evicting"] for p in run["passes"] if p["cold_evicting"].get("n")]
        evs = f"{ev[0]['n']}, {ev[0]['p50']} / {ev[0]['p99']}" if ev else "-"
        lines.append(f"| {k + 1} | {run['checkout']} | {a['n']}, {a['p50']} / {a['p90']} / {a['p99']} / {a['max']} | "
                     f"{evs} | {run['seconds']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=200, help="renamed copies in the store")
    ap.add_argument("--first", type=int, default=100, help="models of passes 1 and 2")
    ap.add_argument("--max-models", type=int, default=121, help="the budget (seed 003's instance held 121)")
    ap.add_argument("--policy", default="gdsf")
    ap.add_argument("--checkout", type=Path, action="append", help="where toolkit is imported from (repeatable)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per checkout, alternating")
    ap.add_argument("--output", type=Path, default=None, help="the markdown page to write")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="passed on to tritonctl serve (repeatable), e.g. "
        "--serve-arg=--multiplex --serve-arg=--multiplex-max-models=121",
    )
    args = ap.parse_args(argv)
    if not 1 <= args.first <= args.copies:
        ap.error(f"--first must be 1..--copies ({args.copies}), got {args.first}")
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    for c in checkouts:
        if not (c / "toolkit" / "__init__.py").is_file():
            ap.error(f"--checkout {c} has no toolkit/ package")
    runs = []
    for _ in range(args.rounds):
        for c in checkouts:
            run = experiment(c, args.copies, args.first, args.max_models, args.policy, tuple(args.serve_arg))
            print(json.dumps(run, indent=1), flush=True)
            runs.append(run)
    command = "python -m bench.mme_seed003 " + " ".join(argv if argv is not None else sys.argv[1:])
    page = markdown(runs, command.strip(), args)
    print(page)
    if args.output:
        args.output.write_text(page)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
