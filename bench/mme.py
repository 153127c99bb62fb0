"""Cold-start benchmark of the MME manager on the embedded Triton: ``python -m bench.mme``.

Measures what a client sees: the time from "request for a model that is not loaded" to the inference response, with
the model fetched from a LocalStore into an empty repository (cold) and, in a second run, with a count budget small
enough that every cold request also evicts a model. Then the warm path: the same inference direct to Triton and
through ``manager.serving`` interleaved in one run, to show the manager adds nothing measurable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http.aio as httpaio

from toolkit.mme.manager import ModelManager
from toolkit.mme.stores import LocalStore
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions


def write_python_model(root: Path, name: str, factor: float = 2.0) -> Path:
    """A tiny python-backend model (Y = X * factor) with a complete config: the 'small python model' of the goal."""
    return write_scale_model(root, name, factor=factor, dims=(4,))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p90_ms": round(pct(ms, 90), 2),
        "p99_ms": round(pct(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


async def _infer(client: httpaio.InferenceServerClient, name: str) -> None:
    inp = httpaio.InferInput("X", [4], "FP32")
    inp.set_data_from_numpy(np.arange(4, dtype=np.float32))
    await client.infer(name, [inp])


async def _cold(
    endpoint: Any, repo: Path, store: LocalStore, names: list[str], max_models: int | None
) -> dict[str, Any]:
    mgr = ModelManager(endpoint, repository=repo, store=store, max_models=max_models)
    await mgr.start()
    client = httpaio.InferenceServerClient(endpoint.http)
    total: list[float] = []
    ready: list[float] = []
    try:
        for name in names:
            t0 = time.perf_counter()
            async with mgr.serving(name):
                t1 = time.perf_counter()
                await _infer(client, name)
            total.append(time.perf_counter() - t0)
            ready.append(t1 - t0)
        m = mgr.metrics
        n = len(names)
        fetch, load = m.downloading.total / n, m.loading.total / n
        breakdown = {
            "fetch": fetch * 1000,
            "triton_load": load * 1000,
            "manager_other": (sum(ready) / n - fetch - load) * 1000,  # evictions, bookkeeping, thread hops
            "first_infer": (sum(total) - sum(ready)) / n * 1000,
        }
        await asyncio.gather(*(mgr.unload(name) for name in names))  # leave Triton cold for the next scenario
    finally:
        await client.close()
        await mgr.close()
    return {**summary(total), "mean_breakdown_ms": {k: round(v, 2) for k, v in breakdown.items()}}


async def _warm(endpoint: Any, repo: Path, store: LocalStore, n: int) -> dict[str, Any]:
    mgr = ModelManager(endpoint, repository=repo, store=store)
    await mgr.start()
    client = httpaio.InferenceServerClient(endpoint.http)
    direct: list[float] = []
    managed: list[float] = []
    overhead: list[float] = []
    try:
        async with mgr.serving("bench_000"):
            await _infer(client, "bench_000")
        for _ in range(50):  # warm up the connection pool
            await _infer(client, "bench_000")
        for _ in range(n):
            t0 = time.perf_counter()
            await _infer(client, "bench_000")
            direct.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            async with mgr.serving("bench_000"):
                t1 = time.perf_counter()
                await _infer(client, "bench_000")
            managed.append(time.perf_counter() - t0)
            overhead.append(t1 - t0)
        await mgr.unload("bench_000")
    finally:
        await client.close()
        await mgr.close()
    return {
        "direct": summary(direct),
        "via_manager": summary(managed),
        "manager_overhead_us_p50": round(pct(overhead, 50) * 1e6, 1),
        "manager_overhead_us_p99": round(pct(overhead, 99) * 1e6, 1),
    }


async def bench(models: int, budget: int, warm_requests: int, work: Path) -> dict[str, Any]:
    store_dir, repo = work / "store", work / "repo"
    store_dir.mkdir()
    repo.mkdir()
    names = [f"bench_{i:03d}" for i in range(models)]
    for i, name in enumerate(names):
        write_python_model(store_dir, name, float(i + 1))
    store = LocalStore(store_dir)
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=work, log_file=work / "triton.log"))
    server.start(timeout=90)
    try:
        ep = server.endpoint
        cold = await _cold(ep, repo, store, names, None)
        for d in repo.iterdir():  # every model comes from the store again
            shutil.rmtree(d)
        evicting = await _cold(ep, repo, store, names, budget)
        warm = await _warm(ep, repo, store, warm_requests)
    finally:
        server.stop()
    return {
        "cpus": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "models": models,
        "cold_no_eviction": cold,
        f"cold_with_eviction_max_models_{budget}": evicting,
        "warm": warm,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=60, help="distinct cold models (one cold request each)")
    ap.add_argument("--budget", type=int, default=4, help="max_models for the evicting run")
    ap.add_argument("--warm-requests", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tritonctl-mme-bench-") as tmp:
        result = asyncio.run(bench(args.models, args.budget, args.warm_requests, Path(tmp)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
