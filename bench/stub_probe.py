"""Where a python-backend stub's start-up goes: ``python -m bench.stub_probe``.

The MME's load-phase metric says a cold load of a small python model is mostly ``stub`` (the stub process starting
until the model is READY). This probe looks inside: it loads ``--models`` copies of a model whose ``model.py`` notes
the boot-clock time at its first line (the interpreter and ``site`` are up, the stub's C++ side has connected), after
``import numpy``, after ``import triton_python_backend_utils`` and at the end of ``initialize``, and, for its first
request, how long ``import asyncio`` takes (the stub imports it on a model's first request). The stub's own start is
read from /proc (10 ms steps), the load call is timed here. Prints the mean of each part, in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

PROBE = """import time
T0 = time.clock_gettime(time.CLOCK_BOOTTIME)
import numpy as np
T1 = time.clock_gettime(time.CLOCK_BOOTTIME)
import triton_python_backend_utils as pb_utils
T2 = time.clock_gettime(time.CLOCK_BOOTTIME)
OUT = {out!r}


class TritonPythonModel:
    def initialize(self, args):
        self.t3 = time.clock_gettime(time.CLOCK_BOOTTIME)

    def execute(self, requests):
        t = time.clock_gettime(time.CLOCK_BOOTTIME)
        import asyncio  # noqa: F401  (what the stub imports around the first request)
        t4 = time.clock_gettime(time.CLOCK_BOOTTIME)
        with open(OUT, "a") as f:
            f.write(f"{{self.name}} {{T0}} {{T1}} {{T2}} {{self.t3}} {{t4 - t}}\\n")
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("Y", np.zeros(2, np.float32))])
                for _ in requests]

    name = {name!r}
"""
CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
input [{{ name: "X" data_type: TYPE_FP32 dims: [2] }}]
output [{{ name: "Y" data_type: TYPE_FP32 dims: [2] }}]
instance_group [{{ kind: KIND_CPU count: 1 }}]
"""


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from toolkit.mme.footprint import started_on_boot_clock, stub_processes
    from toolkit.server import EmbeddedTriton, ServerOptions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=10)
    args = ap.parse_args(argv)
    parts: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tritonctl-stub-probe-") as tmp:
        work = Path(tmp)
        repo, out = work / "repo", work / "probe.txt"
        for i in range(args.models):
            d = repo / f"probe{i}"
            (d / "1").mkdir(parents=True)
            (d / "config.pbtxt").write_text(CONFIG.format(name=f"probe{i}"))
            (d / "1" / "model.py").write_text(PROBE.format(out=str(out), name=f"probe{i}"))
        server = EmbeddedTriton(ServerOptions(repository=repo, workdir=work, log_file=work / "triton.log"))
        server.start(timeout=90)
        load0 = os.getloadavg()[0]
        try:
            grpc = grpcclient.InferenceServerClient(server.endpoint.grpc)
            http = httpclient.InferenceServerClient(server.endpoint.http)
            for i in range(args.models):
                name = f"probe{i}"
                began = time.clock_gettime(time.CLOCK_BOOTTIME)
                grpc.load_model(name)
                ready = time.clock_gettime(time.CLOCK_BOOTTIME)
                (stub,) = stub_processes(repo, [name])[name]
                started = started_on_boot_clock(stub.pid) or began
                x = httpclient.InferInput("X", [2], "FP32")
                x.set_data_from_numpy(np.zeros(2, np.float32))
                t = time.perf_counter()
                http.infer(name, [x])
                first = time.perf_counter() - t
                t0, t1, t2, t3, asyncio_s = map(float, out.read_text().splitlines()[-1].split()[1:])
                for key, value in (
                    ("load call", ready - began),
                    ("triton until the stub process starts", started - began),
                    ("stub start until model.py runs (interpreter, site, stub setup)", t0 - started),
                    ("import numpy", t1 - t0),
                    ("import triton_python_backend_utils", t2 - t1),
                    ("model initialize until READY seen here", ready - t3),
                    ("first request (round trip)", first),
                    ("of it: import asyncio in the stub", asyncio_s),
                ):
                    parts.setdefault(key, []).append(value * 1000)
                grpc.unload_model(name)
        finally:
            server.stop()
    result = {k: round(statistics.fmean(v), 1) for k, v in parts.items()}
    result["load_average_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
