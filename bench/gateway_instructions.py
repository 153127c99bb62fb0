"""The gateway's CPU per request as a count of instructions: the same number on a quiet and on a busy machine.

    python -m bench.gateway_instructions [--against REV] [--requests 2000] [--concurrency 8] [--model digits_mlp]
                                         [--protocol http|grpc]

Why: ``bench.gateway_profile`` reads the gateway's CPU time per request, and on this shared 2-core VM the same code
measured 58, 81 and 98 µs in three windows of one session (preemption, steal, frequency): a 5 µs regression goal
cannot be checked with it. Valgrind's callgrind counts the instructions the gateway's process executes instead,
which does not depend on who else runs: two runs of the same commit agree within 0.3%.

How: one embedded Triton (this checkout's code) serves the model. The gateway runs in its own Python process under
``valgrind --tool=callgrind --instr-atstart=no`` (Triton is a separate process and is not counted), built exactly
as ``bench.gateway_profile`` builds it (``Gateway(GatewayOptions(...), TritonEndpoint)``, HTTP/1.1 hot path, no
auth). A client in this process (``http.client``, one keep-alive connection per thread) sends KServe binary-tensor
infers as perf_analyzer does: a warm-up of 400 (connections open, model warm, memos filled) uncounted, then
instrumentation on (``callgrind_control -i on``), ``--requests`` requests at ``--concurrency``, instrumentation
off and a dump. Instructions / requests is the gateway's user-space work per request; the kernel's share (the
socket system calls, the same for every version) is not counted. ``--protocol grpc`` sends the same infers as
``ModelInfer`` calls to the gateway's gRPC port instead (tritonclient.grpc, one client per thread: the frame
forwarder, ``h2_front``).

``--against REV`` measures a git revision the same way from a temporary copy (``git archive``: its code, this
Triton) and prints both and the difference; with the user CPU time per request of a quiet ``gateway_profile`` run,
the ratio converts instructions into microseconds (on this VM ~2.7 instructions per ns).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 400
GATEWAY = """
import sys, time
from pathlib import Path
from toolkit.gateway.core import GatewayOptions
from toolkit.gateway.server import Gateway, GatewayThread
from toolkit.server import TritonEndpoint
h, g, m, out = sys.argv[1:5]
addr = GatewayThread(Gateway(GatewayOptions(http_port=0, grpc_port=0), TritonEndpoint(h, g, m))).start()
Path(out).write_text(f"{addr.http} {addr.grpc}")
while True:
    time.sleep(3600)
"""


def _body(model_input: str, elements: int) -> tuple[bytes, bytes]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": model_input,
                    "shape": [1, elements],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4 * elements},
                }
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return head, head + struct.pack(f"<{elements}f", *([0.5] * elements))


def _drive(addr: str, model: str, total: int, concurrency: int, head: bytes, body: bytes) -> None:
    host, port = addr.rsplit(":", 1)
    errors: list[str] = []

    def run(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
        for _ in range(n):
            conn.request("POST", f"/v2/models/{model}/infer", body, headers)
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                errors.append(f"{r.status} {data[:200]!r}")
                return
        conn.close()

    threads = [threading.Thread(target=run, args=(total // concurrency,)) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"the gateway answered {errors[0]}")


def _drive_grpc(addr: str, model: str, total: int, concurrency: int, a: argparse.Namespace) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    errors: list[str] = []

    def run(n: int) -> None:
        c = grpcclient.InferenceServerClient(addr)
        x = grpcclient.InferInput(a.input, [1, a.elements], "FP32")
        x.set_data_from_numpy(np.full((1, a.elements), 0.5, np.float32))
        try:
            for _ in range(n):
                c.infer(model, [x])
        except Exception as exc:  # the first failure ends the run: reported below
            errors.append(repr(exc))
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(total // concurrency,)) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"the gateway answered {errors[0]}")


def measure(code: Path, endpoint: tuple[str, str, str], a: argparse.Namespace) -> float:
    """Instructions per request of the gateway whose code is at ``code``."""
    with tempfile.TemporaryDirectory(prefix="tritonctl-ir-") as tmp:
        out, port_file = Path(tmp) / "callgrind.out", Path(tmp) / "port"
        env = {**os.environ, "PYTHONPATH": str(code)}
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        proc = subprocess.Popen(
            [*cmd, sys.executable, "-c", GATEWAY, *endpoint, str(port_file)],
            cwd=code,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 300
            while not (port_file.exists() and port_file.read_text()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the gateway of {code} did not start under valgrind")
                time.sleep(0.5)
            http_addr, grpc_addr = port_file.read_text().split()
            head, body = _body(a.input, a.elements)

            def drive(n: int) -> None:
                if a.protocol == "grpc":
                    _drive_grpc(grpc_addr, a.model, n, a.concurrency, a)
                else:
                    _drive(http_addr, a.model, n, a.concurrency, head, body)

            drive(WARMUP)
            control = ["callgrind_control"]
            subprocess.run([*control, "-i", "on", str(proc.pid)], check=True, capture_output=True)
            drive(a.requests)
            subprocess.run([*control, "-i", "off", str(proc.pid)], check=True, capture_output=True)
            subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        total = 0  # per dump file: its "totals:" line (its "summary:" line reads 0 when instrumentation was toggled)
        for f in Path(tmp).glob("callgrind.out*"):
            lines = f.read_text(errors="replace").splitlines()
            total += max((int(x.split()[1]) for x in lines if x.startswith(("summary:", "totals:"))), default=0)
        return total / (a.requests // a.concurrency * a.concurrency)


def main(argv: list[str] | None = None) -> int:
    from toolkit.repository.generate import generate_repository
    from toolkit.server import EmbeddedTriton, ServerOptions
    from toolkit.spec import load_manifest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", help="a git revision measured the same way, e.g. 7c7a51b")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--model", default="digits_mlp")
    ap.add_argument("--input", default="X", help="the model's input tensor")
    ap.add_argument("--elements", type=int, default=64, help="FP32 values per request")
    ap.add_argument("--protocol", choices=["http", "grpc"], default="http", help="KServe over HTTP/1.1 or gRPC")
    a = ap.parse_args(argv)
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("valgrind is missing: install it (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="tritonctl-bench-ir-") as tmp:
        work = Path(tmp)
        generate_repository(load_manifest(ROOT / "tritonctl.yaml"), work / "repo")
        triton = EmbeddedTriton(ServerOptions(repository=work / "repo", workdir=work, load=[a.model]))
        ep = triton.start(timeout=120)
        try:
            trees = [("this checkout", ROOT)]
            if a.against:  # a plain copy of the revision's files (git archive): no worktree added to the repository
                old = work / "against"
                old.mkdir()
                tar = subprocess.run(["git", "-C", str(ROOT), "archive", a.against], check=True, capture_output=True)
                subprocess.run(["tar", "-x", "-C", str(old)], input=tar.stdout, check=True)
                trees.append((a.against, old))
            results = [(name, measure(code, (ep.http, ep.grpc, ep.metrics), a)) for name, code in trees]
        finally:
            triton.stop()
    what = "gRPC ModelInfer calls" if a.protocol == "grpc" else "HTTP/1.1 KServe binary infers"
    print(f"model {a.model}, {what}, {a.requests} counted at c={a.concurrency} (callgrind)")
    print("| code | instructions per request |")
    print("|---|---:|")
    for name, ir in results:
        print(f"| {name} | {ir:,.0f} |")
    if len(results) == 2:
        (_, now), (_, then) = results
        print(f"difference: {now - then:+,.0f} instructions per request ({(now - then) / then:+.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
