"""Benchmark: a serial 3-step ensemble against a client that calls the same three models in turn.

Both sides use the same client library (tritonclient gRPC, one client per worker thread), the same payload (one house,
raw FP32[1, 8]) and the same embedded Triton, in one run: for each concurrency the ensemble and the client-orchestrated
chain are measured back to back, closed loop, for the same duration. The ensemble saves two client<->server round trips
and the tensor (de)serialisation around them; Triton passes intermediate tensors between steps in memory.

    python -m bench.ensembles [--duration 5] [--concurrency 1,8] [--protocol grpc|http]
                              [--pipeline sklearn|onnx] [--output docs/benchmarks/ensembles.md]
                              [--step-cpu]

``--pipeline onnx`` runs the same pipeline with the sklearn steps compiled to ONNX (skl2onnx, run by onnxruntime):
same client, payload and method, only the step models differ. After the run, each step's mean Triton-side times
(``/v2/models/{m}/stats``, both modes together) are reported, so the cost of the steps themselves is visible;
``--step-cpu`` adds the CPU each step spends inside its own ``execute()`` (a probe appended to the steps' model.py in
the benchmark's temporary repository copy).

The output file keeps everything from its ``## Reading`` heading on (the written analysis); the rest is rewritten.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bench import usable_cpus
from toolkit.repository.generate import generate_repository
from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin
from toolkit.spec import load_manifest

ROOT = Path(__file__).resolve().parents[1]
PIPELINES: dict[str, tuple[str, list[str]]] = {
    "sklearn": ("housing_pipeline_Chicago_IL", ["housing_preprocess", "housing_Chicago_IL", "housing_postprocess"]),
    "onnx": (
        "housing_pipeline_onnx_Chicago_IL",
        ["housing_preprocess_onnx", "housing_Chicago_IL_onnx", "housing_postprocess"],
    ),
}
ENSEMBLE, STEPS = PIPELINES["sklearn"]  # the default pipeline; main() rebinds both for --pipeline
PAYLOAD = np.array([[2001, 2100, 3, 2, 0.4, 1, 1, 0]], dtype=np.float32)


@dataclass
class Result:
    mode: str
    concurrency: int
    latencies_ms: list[float]
    wall_s: float
    errors: int

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies_ms, 50))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.latencies_ms, 99))

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.wall_s


PROTOCOLS: dict[str, ModuleType] = {"grpc": grpcclient, "http": httpclient}


def _call(client: Any, model: str, name: str, arr: np.ndarray, out: str) -> np.ndarray:
    """One inference with whichever tritonclient module made ``client`` (both share this API)."""
    mod = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    inp = mod.InferInput(name, list(arr.shape), "FP32" if arr.dtype == np.float32 else "INT64")
    inp.set_data_from_numpy(arr)
    res = client.infer(model, [inp], outputs=[mod.InferRequestedOutput(out)])
    return res.as_numpy(out)


def ensemble_call(client: Any) -> np.ndarray:
    return _call(client, ENSEMBLE, "raw", PAYLOAD, "price_dollars")


def client_chain(client: Any) -> np.ndarray:
    feats = _call(client, STEPS[0], "raw", PAYLOAD, "features")
    price = _call(client, STEPS[1], "features", feats, "price")
    return _call(client, STEPS[2], "price", price, "price_dollars")


def run(url: str, mode: str, fn: Callable[[Any], np.ndarray], c: int, secs: float, protocol: str = "grpc") -> Result:
    """Closed loop: ``c`` threads, each with its own client, call ``fn`` back to back for ``secs`` seconds.

    Each worker makes and warms its client in its own thread (the HTTP client is gevent-based and belongs to the
    thread that created it), then all start together behind a barrier.
    """
    lat: list[list[float]] = [[] for _ in range(c)]
    errors = [0] * c
    ready = threading.Barrier(c + 1)
    window: dict[str, float] = {}

    def worker(k: int) -> None:
        client = PROTOCOLS[protocol].InferenceServerClient(url)
        try:
            for _ in range(5):  # warm the connection and the models
                fn(client)
            ready.wait()
            ready.wait()  # the main thread has set the window
            while time.perf_counter() < window["stop"]:
                t0 = time.perf_counter()
                try:
                    fn(client)
                except Exception:  # counted, never hidden: the table reports errors
                    errors[k] += 1
                    continue
                lat[k].append((time.perf_counter() - t0) * 1000.0)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(c)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    window["stop"] = start + secs
    ready.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return Result(mode, c, [x for part in lat for x in part], wall, sum(errors))


def table(results: list[Result]) -> str:
    rows = [
        "| mode | concurrency | requests | p50 ms | p99 ms | throughput req/s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        n = len(r.latencies_ms)
        rows.append(f"| {r.mode} | {r.concurrency} | {n} | {r.p50:.2f} | {r.p99:.2f} | {r.rps:.0f} | {r.errors} |")
    by = {(r.mode, r.concurrency): r for r in results}
    ratios = []
    for c in sorted({r.concurrency for r in results}):
        e, cl = by.get(("ensemble", c)), by.get(("client-orchestrated", c))
        if e and cl:
            ratios.append(
                f"- c={c}: ensemble p50 = {e.p50 / cl.p50:.2f}x the client-orchestrated p50; "
                f"throughput {e.rps / cl.rps:.2f}x"
            )
    return "\n".join([*rows, "", *ratios]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per (mode, concurrency)")
    ap.add_argument("--concurrency", default="1,8", help="comma-separated concurrency levels")
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), default="grpc", help="tritonclient protocol")
    ap.add_argument("--pipeline", choices=sorted(PIPELINES), default="sklearn", help="which step models to chain")
    ap.add_argument("--output", type=Path, default=None, help="write the markdown report here")
    ap.add_argument(
        "--step-cpu", action="store_true", help="also report the CPU time each step spends inside its execute()"
    )
    args = ap.parse_args(argv)
    global ENSEMBLE, STEPS  # ensemble_call / client_chain read these; one pipeline per process
    ENSEMBLE, STEPS = PIPELINES[args.pipeline]
    levels = [int(x) for x in args.concurrency.split(",") if x]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tritonctl-bench-") as tmp:
        repo = Path(tmp) / "repo"
        generate_repository(load_manifest(ROOT / "tritonctl.yaml"), repo)
        if args.step_cpu:
            for m in STEPS:
                model_py = repo / m / "1" / "model.py"
                model_py.write_text(model_py.read_text() + _PROBE.format(out=str(Path(tmp) / f"stepcpu-{m}.txt")))
        srv = EmbeddedTriton(ServerOptions(repository=repo, workdir=Path(tmp), log_file=Path(tmp) / "triton.log"))
        srv.start(timeout=90)
        try:
            admin = TritonAdmin(srv.endpoint)
            admin.load(ENSEMBLE)  # loads the three steps too
            url = srv.endpoint.grpc if args.protocol == "grpc" else srv.endpoint.http
            check = PROTOCOLS[args.protocol].InferenceServerClient(url)
            assert np.array_equal(ensemble_call(check), client_chain(check))  # both paths give the same answer
            check.close()
            results = []
            cpu: dict[tuple[str, int], dict[str, float]] = {}
            assert srv.process is not None
            for c in levels:  # interleaved 1 s slices (alternating order): background load hits both sides alike
                modes = [("ensemble", ensemble_call), ("client-orchestrated", client_chain)]
                acc = {m: Result(m, c, [], 0.0, 0) for m, _ in modes}
                for k in range(max(1, round(args.duration))):
                    for m, fn in modes if k % 2 == 0 else modes[::-1]:
                        before = cpu_seconds(srv.process.pid)
                        r = run(url, m, fn, c, args.duration / max(1, round(args.duration)), args.protocol)
                        after = cpu_seconds(srv.process.pid)
                        tot = cpu.setdefault((m, c), {})
                        for part, sec in after.items():
                            tot[part] = tot.get(part, 0.0) + sec - before.get(part, 0.0)
                        acc[m].latencies_ms += r.latencies_ms
                        acc[m].wall_s += r.wall_s
                        acc[m].errors += r.errors
                results += list(acc.values())
            steps = step_stats(admin, STEPS) + cpu_table(results, cpu)
            if args.step_cpu:
                steps += step_cpu_table(Path(tmp))
            admin.close()
        finally:
            srv.stop()
    text = table(results) + _verdict(results, load_before, os.getloadavg()[0]) + steps
    print(text)
    if args.output:
        cmd = "python -m bench.ensembles " + " ".join(argv if argv is not None else sys.argv[1:])
        head = (
            f"# Benchmark: serial ensemble vs client-orchestrated calls ({args.pipeline} pipeline)\n\n"
            f"Pipeline: **{args.pipeline}** (`--pipeline {args.pipeline}`): `{ENSEMBLE}`\n"
            f"({' -> '.join(STEPS)})\n"
            "as one Triton ensemble, against a client calling the three models in turn. Same client library\n"
            f"(tritonclient {args.protocol}, one client per thread), same payload (one house, FP32[1, 8]), same\n"
            f"embedded Triton 2.51 (python backend), closed loop, {args.duration:g} s per row in 1 s slices\n"
            "interleaved with the other mode (alternating order), one run.\n\n"
            f"Machine: {platform.machine()}, {usable_cpus()} CPUs, Python {platform.python_version()}.\n\n"
            f"Command: `.venv/bin/{cmd.strip()}`\n\n"
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        old = args.output.read_text() if args.output.is_file() else ""
        reading = old[old.index("## Reading") :] if "## Reading" in old else ""
        args.output.write_text(head + text + ("\n" + reading if reading else ""))
    return 0


def _verdict(results: list[Result], load_before: float, load_after: float) -> str:
    """The issue's goal (ensemble p50 <= 0.6x the client-orchestrated p50), checked on the numbers just measured."""
    by = {(r.mode, r.concurrency): r for r in results}
    lines = ["", f"1-minute load average: {load_before:.1f} before, {load_after:.1f} after the run.", ""]
    for c in sorted({r.concurrency for r in results}):
        e, cl = by[("ensemble", c)], by[("client-orchestrated", c)]
        ratio = e.p50 / cl.p50
        verdict = "meets" if ratio <= 0.6 else "misses"
        lines.append(f"- goal p50 ratio <= 0.60 at c={c}: {ratio:.2f}, {verdict} it")
    return "\n".join(lines) + "\n"


def step_stats(admin: TritonAdmin, models: list[str]) -> str:
    """Mean Triton-side time per execution of each step, from ``/v2/models/{m}/stats`` (warm-up and both modes).

    Why: the ensemble can only save the client<->server hops; the steps' own compute is paid by both modes, so it
    bounds the ratio. Each time is cumulative since load, divided by its own count.
    """
    rows = [
        "",
        "Per-step Triton stats (mean per execution, warm-up and both modes together):",
        "",
        "| model | executions | queue ms | compute_input ms | compute_infer ms | compute_output ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in models:
        inf = admin.stats(m)["model_stats"][0]["inference_stats"]
        n = int(inf["success"].get("count", 0))

        def ms(key: str, inf: dict[str, Any] = inf) -> str:
            return f"{int(inf[key].get('ns', 0)) / max(1, int(inf[key].get('count', 0))) / 1e6:.3f}"

        rows.append(
            f"| {m} | {n} | {ms('queue')} | {ms('compute_input')} | {ms('compute_infer')} | {ms('compute_output')} |"
        )
    return "\n".join(rows) + "\n"


# Appended to each step's generated model.py by --step-cpu (in the benchmark's temporary copy only): the thread CPU
# time spent inside execute(), written every 500 executions. Costs two clock reads per execution.
_PROBE = """

import time as _probe_time

_probe_execute = TritonPythonModel.execute
_probe = [0, 0.0]


def _probed_execute(self, requests):
    t0 = _probe_time.thread_time()
    out = _probe_execute(self, requests)
    _probe[0] += 1
    _probe[1] += _probe_time.thread_time() - t0
    if _probe[0] % 500 == 0:
        with open({out!r}, "w") as f:
            f.write("%d %.9f" % (_probe[0], _probe[1]))
    return out


TritonPythonModel.execute = _probed_execute
"""


def step_cpu_table(tmp: Path) -> str:
    """Why: a python-backend step costs far more than its model (IPC, pb_utils objects, cold caches on a shared
    core); this separates the CPU spent in the step's own Python (execute, including the model) from the rest."""
    rows = [
        "",
        "CPU inside each step's execute() (thread CPU time, mean per execution, warm-up and both modes; --step-cpu):",
        "",
        "| model | executions | execute µs |",
        "|---|---:|---:|",
    ]
    for m in STEPS:
        f = tmp / f"stepcpu-{m}.txt"
        if f.is_file():
            n, secs = f.read_text().split()
            rows.append(f"| {m} | {n} | {float(secs) / int(n) * 1e6:.1f} |")
    return "\n".join(rows) + "\n"


def cpu_seconds(triton_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by Triton, by its python-backend stubs, and by this client process.

    Why: on a machine where client and server share the cores, a saturated run's throughput is set by the CPU each
    request costs everywhere; this shows where an ensemble saves it (client calls, Triton's frontend) and where it
    cannot (the steps' stubs). A process that exits between two readings is simply not counted.
    """
    import psutil

    from toolkit.mme.footprint import STUB_NAME

    out = {"triton": 0.0, "stubs": 0.0, "client": 0.0}
    me = psutil.Process().cpu_times()
    out["client"] = me.user + me.system
    try:
        root = psutil.Process(triton_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            t = p.cpu_times()
            out["stubs" if p.name() == STUB_NAME else "triton"] += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return out


def cpu_table(results: list[Result], cpu: dict[tuple[str, int], dict[str, float]]) -> str:
    rows = [
        "",
        "CPU per request (µs of user + system time, measured around each slice; client = this benchmark's process):",
        "",
        "| mode | concurrency | Triton | stubs | client | total |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        n = max(1, len(r.latencies_ms) + r.errors)
        c = cpu.get((r.mode, r.concurrency), {})
        parts = [c.get(k, 0.0) / n * 1e6 for k in ("triton", "stubs", "client")]
        rows.append(
            f"| {r.mode} | {r.concurrency} | " + " | ".join(f"{v:.0f}" for v in parts) + f" | {sum(parts):.0f} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
