"""The gateway's CPU time per request under perf_analyzer, this checkout against a git revision, interleaved.

    make perf-analyzer      # once
    python -m bench.gateway_cpu --against REV [--protocol grpc] [--concurrency 8] [--window-ms 3000] [--rounds 5]
                                [--perf-analyzer PATH]

Why: ``bench.gateway_instructions`` counts instructions with a Python client; this is the same question asked with
perf_analyzer (the client Triton users measure with) and the gateway at full speed. On a shared machine one run's
CPU time per request drifts with the machine's load, so both gateways run side by side against one Triton and are
measured in alternation; the ratio of their medians is the answer, not the absolute microseconds.

Per measurement: the gateway process's user+system CPU (``/proc/PID/stat``) and Triton's count of successful
inferences of the model (its statistics API: every request perf_analyzer made, warm-up and stabilisation included)
are read before and after one perf_analyzer run; CPU / count is the CPU per request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.gateway_instructions import GATEWAY, ROOT

STABILITY = ["--stability-percentage", "25", "--max-trials", "20"]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main(argv: list[str] | None = None) -> int:
    import tritonclient.http as httpclient

    from toolkit.loadtest.calibrate import PA, run_perf_analyzer
    from toolkit.repository.generate import generate_repository
    from toolkit.server import EmbeddedTriton, ServerOptions
    from toolkit.spec import load_manifest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="a git revision measured the same way")
    ap.add_argument("--protocol", choices=["http", "grpc"], default="grpc")
    ap.add_argument("--model", default="digits_mlp")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--window-ms", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--perf-analyzer", type=Path, default=PA, help="the binary (default: make perf-analyzer's)")
    a = ap.parse_args(argv)
    if not a.perf_analyzer.exists():
        raise SystemExit(f"{a.perf_analyzer} missing: make perf-analyzer")
    with tempfile.TemporaryDirectory(prefix="tritonctl-bench-cpu-") as tmp:
        work = Path(tmp)
        generate_repository(load_manifest(ROOT / "tritonctl.yaml"), work / "repo")
        old = work / "against"
        old.mkdir()
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", a.against], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=tar.stdout, check=True)
        triton = EmbeddedTriton(ServerOptions(repository=work / "repo", workdir=work, load=[a.model]))
        ep = triton.start(timeout=120)
        stats = httpclient.InferenceServerClient(ep.http)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            gateways: dict[str, tuple[int, str]] = {}
            for name, code in (("this checkout", ROOT), (a.against, old)):
                out = work / f"addr-{len(procs)}"
                env = {**os.environ, "PYTHONPATH": str(code)}
                p = subprocess.Popen([sys.executable, "-c", GATEWAY, ep.http, ep.grpc, ep.metrics, str(out)], env=env)
                procs.append(p)
                while not (out.exists() and out.read_text()):
                    if p.poll() is not None:
                        raise SystemExit(f"the gateway of {name} did not start")
                    time.sleep(0.2)
                http, grpc = out.read_text().split()
                gateways[name] = (p.pid, grpc if a.protocol == "grpc" else http)

            def count() -> int:
                doc = stats.get_inference_statistics(a.model)
                return int(doc["model_stats"][0]["inference_stats"]["success"]["count"])

            per_request: dict[str, list[float]] = {name: [] for name in gateways}
            rps: dict[str, list[float]] = {name: [] for name in gateways}
            for _ in range(a.rounds):
                for name, (pid, url) in gateways.items():
                    cpu0, n0 = _cpu_s(pid), count()
                    pa = (a.perf_analyzer, a.model, url, a.protocol, a.concurrency, a.window_ms, STABILITY)
                    r = run_perf_analyzer(*pa)
                    cpu1, n1 = _cpu_s(pid), count()
                    per_request[name].append((cpu1 - cpu0) / (n1 - n0) * 1e6)
                    rps[name].append(r["throughput_rps"])
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)
            stats.close()
            triton.stop()
    print(f"model {a.model}, {a.protocol}, perf_analyzer c={a.concurrency}, {a.rounds} interleaved rounds")
    print("| code | gateway CPU µs per request (median) | each round | perf_analyzer req/s (median) |")
    print("|---|---:|---|---:|")
    for name in gateways:
        each = ", ".join(f"{v:.1f}" for v in per_request[name])
        print(f"| {name} | {statistics.median(per_request[name]):.1f} | {each} | {statistics.median(rps[name]):.0f} |")
    (now, then) = (statistics.median(per_request[n]) for n in gateways)
    print(f"ratio: {now / then:.3f} ({now - then:+.1f} µs per request)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
