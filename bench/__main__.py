"""``make bench``: every benchmark of the project, one after the other, each writing its page under docs/benchmarks/.

Benchmarks are separate from the tests on purpose: speed goals are ratios measured in one run on a noisy 2-core
machine, which a unit test cannot assert without flaking. Run a single one with ``python -m bench NAME``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable


def _calibration(protocol: str, processes: str, *extra: str) -> list[str]:
    """The load-test driver against perf_analyzer, paired rounds, appended to docs/benchmarks/loadtest.md."""
    return [PY, "-m", "toolkit.loadtest.calibrate", "--duration", "8", "--rounds", "3", "--protocol", protocol,
            "--processes", processes, *extra, "--output", "docs/benchmarks/loadtest.md"]  # fmt: skip


_MME_SEED003 = [PY, "-m", "bench.mme_seed003", "--output", "reports/bench/mme_seed003.md",
                "--json", "reports/bench/mme_seed003.json"]  # fmt: skip
# The cold-burst load test with 4, 2 and 1 concurrent Triton loads, alternating (docs/benchmarks/mme_seed003.md).
_MME_BURST = [PY, "-m", "bench.mme_burst", "--duration", "30", "--variant=--max-concurrent-loads 4",
              "--variant=--max-concurrent-loads 2", "--variant=--max-concurrent-loads 1",
              "--json", "reports/bench/mme_burst.json"]  # fmt: skip

BENCHES: dict[str, list[str]] = {
    "foundation": [PY, "-m", "bench.server", "10"],
    "ensembles": [PY, "-m", "bench.ensembles", "--duration", "10", "--output", "docs/benchmarks/ensembles.md"],
    "ensembles-http": [
        PY,
        "-m",
        "bench.ensembles",
        "--duration",
        "10",
        "--protocol",
        "http",
        "--output",
        "docs/benchmarks/ensembles_http.md",
    ],
    "ensembles-onnx": [
        PY,
        "-m",
        "bench.ensembles",
        "--duration",
        "10",
        "--pipeline",
        "onnx",
        "--output",
        "docs/benchmarks/ensembles_onnx.md",
    ],
    "mme-simulate": [
        PY,
        "-m",
        "toolkit",
        "mme",
        "simulate",
        "--models",
        "200",
        "--zipf",
        "1.0",
        "--budget",
        "60",
        "--requests",
        "20000",
    ],
    "mme-cold-start": [PY, "-m", "bench.mme", "--json", "reports/bench/mme.json"],
    "mme-seed003": _MME_SEED003,
    "mme-burst": _MME_BURST,
    "stub-probe": [PY, "-m", "bench.stub_probe", "--models", "20"],
    "mux": [PY, "-m", "bench.mux", "--output", "docs/benchmarks/mux.md"],
    "gateway": [PY, "-m", "bench.gateway", "--seconds", "3", "--rounds", "3"],
    "gateway-perf-analyzer": [PY, "-m", "bench.gateway_pa", "--rounds", "2"],
    "gateway-profile": [PY, "-m", "bench.gateway_profile", "--callbacks"],
    # #11's goal (<= 5 µs more CPU per request than before the hardening) as a count of instructions (valgrind)
    "gateway-instructions": [PY, "-m", "bench.gateway_instructions", "--against", "7c7a51b"],
    "tune": [PY, "-m", "bench.tune"],
    "loadtest-calibration-http": _calibration("http", "1,2"),
    "loadtest-calibration-grpc": _calibration("grpc", "1", "--grpc-clients", "h2,grpcio", "--rounds", "5"),
}


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    Path("reports/bench").mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        print(f"\n### {name}: {' '.join(BENCHES[name][1:])}", flush=True)
        t0 = time.perf_counter()
        log = Path("reports/bench") / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.run(BENCHES[name], stdout=out, stderr=subprocess.STDOUT, check=False)
        print(log.read_text()[-4000:], flush=True)
        print(f"### {name}: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s (log {log})", flush=True)
        if proc.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
