"""Gateway overhead benchmark: warm KServe v2 infers through the gateway vs directly to Triton, same client, one run.

    python -m bench.gateway [--seconds 3] [--rounds 3] [--concurrency 1 8] [--loop uvloop|asyncio]
                            [--model digits_mlp] [--no-floor] [--json]

Triton (embedded, one warm model) and the gateway (its own process, so it does not share the client's GIL) run on
this machine; the client is a minimal keep-alive HTTP/1.1 client on asyncio streams (uvloop), one connection per
concurrent worker, closed loop. Direct and gateway phases alternate in each round so drift hits both alike.
Unless ``--no-floor``, a third target runs in the same rounds: a byte pipe in its own process
(``bench.gateway_pipe``), the cheapest proxy Python can be, so the report shows how much of the gateway's
cost is the extra hop itself and how much is the gateway's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

MODEL = "digits_mlp"
# Models with the same request (X FP32[64] -> label): the overhead is fixed, its share depends on the model's own cost.
MODELS = ("digits_mlp", "digits_logreg", "digits_forest")


def _request(host: str, body: bytes, header_len: int, model: str = MODEL) -> bytes:
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {header_len}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _payload() -> tuple[bytes, int]:
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {"name": "X", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + x.tobytes(), len(header)


async def _worker(addr: str, req: bytes, until: float, lat: list[float]) -> None:
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= until:
                return
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"benchmark request failed: {head[:200]!r}")
            n = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    n = int(line[15:])
            await reader.readexactly(n)
            lat.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def _phase(addr: str, req: bytes, concurrency: int, seconds: float) -> list[float]:
    lat: list[float] = []
    until = time.perf_counter() + seconds
    await asyncio.gather(*[_worker(addr, req, until, lat) for _ in range(concurrency)])
    return lat


@dataclass
class Result:
    target: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def _gateway_process(triton_http: str, loop: str, conn: Connection) -> None:
    from toolkit.gateway.core import GatewayOptions
    from toolkit.gateway.server import Gateway, GatewayThread
    from toolkit.server.launcher import TritonEndpoint

    gw = Gateway(GatewayOptions(http_port=0), TritonEndpoint.from_url(triton_http))
    runner = GatewayThread(gw, use_uvloop=loop == "uvloop")
    conn.send(runner.start().http)
    conn.recv()  # wait for "stop"
    runner.stop()


def run(
    seconds: float, rounds: int, concurrencies: list[int], loop: str, model: str = MODEL, floor: bool = True
) -> list[Result]:
    from toolkit.repository.generate import generate_repository
    from toolkit.server import EmbeddedTriton, ServerOptions
    from toolkit.spec import load_manifest

    root = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="tritonctl-bench-"))
    generate_repository(load_manifest(root / "tritonctl.yaml"), work / "repo")
    triton = EmbeddedTriton(ServerOptions(repository=work / "repo", workdir=work, load=[model]))
    triton.start(timeout=120)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_gateway_process, args=(triton.endpoint.http, loop, child), daemon=True)
    proc.start()
    procs = [(proc, parent)]
    try:
        gateway = parent.recv()
        body, hlen = _payload()
        targets = {"direct": triton.endpoint.http, "gateway": gateway}
        if floor:
            from bench.gateway_pipe import pipe_process

            p2, c2 = ctx.Pipe()
            pipe = ctx.Process(target=pipe_process, args=(triton.endpoint.http, c2), daemon=True)
            pipe.start()
            procs.append((pipe, p2))
            targets["pipe"] = p2.recv()
        reqs = {k: _request(v, body, hlen, model) for k, v in targets.items()}
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        lat: dict[tuple[str, int], list[float]] = {}
        for c in concurrencies:
            for k in targets:
                runner(_phase(targets[k], reqs[k], c, 1.0))  # warm-up (connections, caches)
            for _ in range(rounds):
                for k in targets:
                    lat.setdefault((k, c), []).extend(runner(_phase(targets[k], reqs[k], c, seconds)))
        out = []
        for (k, c), v in lat.items():
            q = statistics.quantiles(v, n=100)
            out.append(Result(k, c, len(v), seconds * rounds, q[49] * 1e3, q[98] * 1e3))
        return out
    finally:
        for p, c in procs:
            c.send("stop")
            p.join(10)
        triton.stop()


def report(results: list[Result]) -> str:
    by = {(r.target, r.concurrency): r for r in results}
    lines = [
        "| concurrency | direct req/s | gateway req/s | ratio | direct p50 ms | gateway p50 ms | added p50 ms "
        "| direct p99 ms | gateway p99 ms | byte pipe (floor) ratio, added p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted({r.concurrency for r in results}):
        d, g, p = by[("direct", c)], by[("gateway", c)], by.get(("pipe", c))
        floor = f"{p.rps / d.rps:.2f}x, {p.p50_ms - d.p50_ms:+.3f}" if p is not None else "-"
        lines.append(
            f"| {c} | {d.rps:.0f} | {g.rps:.0f} | {g.rps / d.rps:.2f}x | {d.p50_ms:.3f} | {g.p50_ms:.3f} "
            f"| {g.p50_ms - d.p50_ms:+.3f} | {d.p99_ms:.3f} | {g.p99_ms:.3f} | {floor} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per phase")
    ap.add_argument("--rounds", type=int, default=3, help="alternating direct/gateway rounds per concurrency")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the gateway's event loop")
    ap.add_argument("--model", choices=MODELS, default=MODEL, help="the warm model both paths call")
    ap.add_argument("--no-floor", action="store_true", help="skip the byte-pipe floor target")
    ap.add_argument("--json", action="store_true", help="print raw results as JSON too")
    a = ap.parse_args(argv)
    results = run(a.seconds, a.rounds, a.concurrency, a.loop, a.model, floor=not a.no_floor)
    print(f"model {a.model}, binary tensor extension, batch 1; gateway loop: {a.loop}")
    print(report(results))
    if a.json:
        print(json.dumps([r.__dict__ | {"rps": r.rps} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
