"""Where the gateway's CPU goes on the HTTP hot path: kernel vs Python, and which Python functions.

    python -m bench.gateway_profile [--model digits_mlp] [--concurrency 8] [--seconds 5] [--top 12]

Why: the throughput goal of the front door (>= 0.9x direct Triton) is decided by the CPU one forwarded request costs
on a machine whose cores the client and Triton also use. This splits that cost. An embedded Triton with the model
warm, the gateway on its own event-loop thread in this process, and perf_analyzer (``make perf-analyzer``) as the
load, at one concurrency, against the gateway's HTTP port. Two windows of the same length:

1. the gateway process's user and system CPU time per request (``os.times``; the main thread only sleeps), with no
   profiler attached: system time is what the kernel does for the gateway's sockets (the two extra loopback
   reads and writes, the wake-ups), which no change to Python code can remove;
2. ``cProfile`` on the event-loop thread: calls and own wall time per request of the top functions. The uvloop
   transport's write is Cython, invisible to the profiler, so its system call (and any preemption during it) is
   charged to the caller (``send_raw`` writes to the client, ``_Conn.start`` to Triton). The profiler inflates
   Python time; read the shape, not the totals. (A CPU-clock timer was tried: its own cost swamps the functions.)

3. ``--callbacks``: wall time inside the gateway's two callbacks (request in -> written to Triton; answer in ->
   written to the client), against the same two callbacks of the byte pipe (``bench.gateway_pipe``, on its own loop
   thread in this process), each under its own perf_analyzer run. At c=1 this shows what CPU time does not: latency.

Before all, a window with perf_analyzer straight at Triton gives the machine's CPU per direct request (cores /
direct throughput): a proxy that costs X µs of CPU per request on the same cores cannot do better than
direct / (direct + X) of direct throughput once the cores are saturated; the report prints that bound.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toolkit.gateway.server import Gateway

MODEL = "digits_mlp"


def main(argv: list[str] | None = None) -> int:
    from bench import usable_cpus
    from toolkit.gateway.core import GatewayOptions
    from toolkit.gateway.server import Gateway, GatewayThread
    from toolkit.loadtest.calibrate import PA
    from toolkit.repository.generate import generate_repository
    from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin
    from toolkit.spec import load_manifest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each window")
    ap.add_argument("--top", type=int, default=12, help="functions listed from the profile")
    ap.add_argument("--callbacks", action="store_true", help="also time the callbacks of the gateway and the pipe")
    a = ap.parse_args(argv)
    if not PA.exists():
        raise SystemExit(f"{PA} missing: make perf-analyzer")
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="tritonctl-bench-profile-") as tmp:
        work = Path(tmp)
        generate_repository(load_manifest(root / "tritonctl.yaml"), work / "repo")
        triton = EmbeddedTriton(ServerOptions(repository=work / "repo", workdir=work, load=[a.model]))
        triton.start(timeout=120)
        gw = Gateway(GatewayOptions(http_port=0, grpc_port=0), triton.endpoint)
        runner = GatewayThread(gw)
        addr = runner.start()
        admin = TritonAdmin(triton.endpoint)

        def served() -> int:
            return int(admin.stats(a.model)["model_stats"][0]["inference_stats"]["success"]["count"])

        direct = _load(triton.endpoint.http, a, windows=1)
        try:
            time.sleep(2.0)
            d0 = served()
            time.sleep(a.seconds)
            direct_rps = (served() - d0) / a.seconds
        finally:
            direct.kill()
            direct.wait()
        load = _load(addr.http, a, windows=2)
        try:
            time.sleep(2.0)  # connections open, model warm
            n0, t0 = gw.core.hot_path, os.times()
            time.sleep(a.seconds)
            n1, t1 = gw.core.hot_path, os.times()
            prof = cProfile.Profile()
            assert gw.loop is not None
            gw.loop.call_soon_threadsafe(prof.enable)  # cProfile profiles the thread that enables it
            p0 = gw.core.hot_path
            time.sleep(a.seconds)
            gw.loop.call_soon_threadsafe(prof.disable)
            p1 = gw.core.hot_path
            time.sleep(0.2)
        finally:
            load.kill()
            load.wait()
        try:
            callbacks = _callbacks(a, addr.http, gw, triton.endpoint.http) if a.callbacks else ""
        finally:
            runner.stop()
            triton.stop()
    n = max(1, n1 - n0)
    user, system = (t1.user - t0.user) / n * 1e6, (t1.system - t0.system) / n * 1e6
    cores = usable_cpus()
    per_direct = cores / max(1e-9, direct_rps) * 1e6
    print(f"model {a.model}, perf_analyzer HTTP c={a.concurrency}, {a.seconds:g} s windows, {cores} cores")
    print(f"direct to Triton: {direct_rps:.0f} req/s = {per_direct:.0f} µs of machine CPU per request")
    print(f"window 1 (no profiler): {n / a.seconds:.0f} req/s through the gateway ({n / a.seconds / direct_rps:.2f}x)")
    print(f"gateway CPU per request: {user + system:.0f} µs = user {user:.0f} + system (kernel) {system:.0f} µs")
    print(
        "bound if the cores are saturated (at c=1 they are not: latency decides): "
        f"{per_direct / (per_direct + user + system):.2f}x of direct with this gateway, "
        f"{per_direct / (per_direct + system):.2f}x for a proxy whose user-space work were free; "
        f"0.90x needs <= {per_direct / 9:.0f} µs per request"
    )
    m = max(1, p1 - p0)
    st = pstats.Stats(prof)
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    total = sum(v[2] for _, v in rows) / m * 1e6
    print(f"window 2 (cProfile): {m} requests, {total:.0f} µs of profiled own time per request; top functions:")
    print("| function | calls/request | own µs/request |")
    print("|---|---:|---:|")
    for (file, line, name), (_, calls, tottime, _, _) in rows[: a.top]:
        where = f"{Path(file).name}:{line}({name})" if file != "~" else name
        print(f"| {where} | {calls / m:.1f} | {tottime / m * 1e6:.1f} |")
    print(callbacks)
    return 0


def _callbacks(a: argparse.Namespace, gateway_url: str, gw: Gateway, triton_url: str) -> str:
    """Window 3: p50 / p90 wall µs inside each forwarding callback, gateway vs byte pipe (see the module doc)."""
    import asyncio
    import threading

    import uvloop

    from bench import gateway_pipe
    from toolkit.gateway import h1, upstream

    times: dict[str, list[float]] = {}

    def timed(cls: type, name: str, key: str) -> None:
        orig = getattr(cls, name)
        sink = times.setdefault(key, [])

        def wrapper(self: object, data: bytes) -> None:
            t0 = time.perf_counter()
            orig(self, data)
            sink.append(time.perf_counter() - t0)

        setattr(cls, name, wrapper)

    timed(h1.H1Connection, "data_received", "gateway: request in -> written to Triton")
    timed(upstream._Conn, "data_received", "gateway: answer in -> written to the client")
    timed(gateway_pipe._Down, "data_received", "pipe: request in -> written to Triton")
    timed(gateway_pipe._Up, "data_received", "pipe: answer in -> written to the client")
    assert gw.loop is not None and gw.core.upstream is not None
    gw.loop.call_soon_threadsafe(gw.core.upstream.reset)  # uvloop binds data_received per connection: new ones
    ready, stop, pipe_addr = threading.Event(), threading.Event(), {}

    def pipe_thread() -> None:
        async def main() -> None:
            srv, pipe_addr["url"] = await gateway_pipe.start_pipe(triton_url)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.1)
            srv.close()

        uvloop.run(main())

    th = threading.Thread(target=pipe_thread, daemon=True)
    th.start()
    ready.wait(10)
    try:
        for url in (gateway_url, pipe_addr["url"]):
            load = _load(url, a, windows=1)
            time.sleep(a.seconds + 1)
            load.kill()
            load.wait()
    finally:
        stop.set()
        th.join(5)
    lines = [f"window 3 (callbacks, c={a.concurrency}): wall time inside each forwarding callback", "",
             "| callback | calls | p50 µs | p90 µs |", "|---|---:|---:|---:|"]  # fmt: skip
    for key, xs in times.items():
        xs.sort()
        if xs:
            lines.append(f"| {key} | {len(xs)} | {xs[len(xs) // 2] * 1e6:.1f} | {xs[int(len(xs) * 0.9)] * 1e6:.1f} |")
    return "\n".join(lines)


def _load(url: str, a: argparse.Namespace, windows: int) -> subprocess.Popen[bytes]:
    """perf_analyzer at ``url`` for long enough to cover ``windows`` of ours (it is killed when they are done)."""
    from toolkit.loadtest.calibrate import PA, perf_analyzer_command

    interval_ms = int((windows * a.seconds + 4) * 1000)
    extra = ["--max-trials", "1", "--stability-percentage", "100"]
    cmd = perf_analyzer_command(PA, a.model, url, "http", a.concurrency, interval_ms, extra)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
