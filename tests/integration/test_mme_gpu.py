"""The MME's GPU budget (--gpu-memory-fraction) as far as a machine without a GPU can test it.

* Against the real embedded Triton (CPU-only here): the clear "no GPU" error, from the manager and from
  ``tritonctl serve``, with nothing half-started.
* Eviction under a GPU budget, driven through a real manager and a real Triton, with GPU readings from
  ``TritonIndexGpu``: our own ``GpuReader`` (the reader interface is ours, not Triton's) that models a device whose
  used memory is a baseline plus a fixed number of bytes per model that the real Triton reports READY. The manager
  measures footprints as deltas of those readings, exactly as it would with Triton's gauges or NVML.

The parser of Triton's ``nv_gpu_memory_*`` gauges and the GPU meter alone are tests/unit/test_mme_gpu_offline.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

from toolkit.cli.main import app
from toolkit.loadtest.serverstats import parse_prometheus
from toolkit.mme.errors import ManagerConfigError, ModelLoadError, NoCapacityError
from toolkit.mme.gpu import (
    GpuReading,
    GpuUnavailableError,
    TritonGpuMetrics,
)
from toolkit.mme.manager import ModelManager
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin, TritonEndpoint

MiB = 2**20
TOTAL = 1000 * MiB  # the modelled device
BASE = 50 * MiB  # used before any model (Triton's own context)


class TritonIndexGpu:
    """A modelled GPU: used = BASE + ``per_model[name]`` for every model the real Triton reports READY or
    UNLOADING (an unloading model still holds its memory). Records every reading, so tests can assert the peak.
    Reads the index with plain urllib: the manager calls ``read`` in a worker thread, where tritonclient.http's
    gevent client cannot run."""

    source = "test-device"
    settle_s = 0.2

    def __init__(self, endpoint: TritonEndpoint, per_model: dict[str, int]) -> None:
        self.index_url = f"{endpoint.http_url}/v2/repository/index"
        self.per_model = per_model
        self.readings: list[int] = []

    def read(self) -> dict[str, GpuReading]:
        req = urllib.request.Request(self.index_url, data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            index = json.loads(r.read())
        held = {m["name"] for m in index if m.get("state") in ("READY", "UNLOADING")}
        used = BASE + sum(self.per_model.get(n, 0) for n in held)
        self.readings.append(used)
        return {"GPU-test-0": GpuReading(used, TOTAL)}


def gpu_model(root: Path, name: str, declared: int | None = None) -> None:
    path = write_scale_model(root, name, factor=2.0)
    if declared is not None:
        with (path / "config.pbtxt").open("a") as f:
            f.write(f'\nparameters {{ key: "tritonctl.gpu_memory_bytes" value {{ string_value: "{declared}" }} }}\n')


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("mme_gpu")
    repo = base / "repo"
    repo.mkdir()
    for name in ("g1", "g2", "g3"):
        gpu_model(repo, name, declared=200 * MiB)
    gpu_model(repo, "u1")  # declares nothing: default estimate until measured
    gpu_model(repo, "huge", declared=600 * MiB)
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=base, log_file=base / "triton.log"))
    server.start(timeout=90)
    admin = TritonAdmin(server.endpoint)
    yield {"repo": repo, "server": server, "admin": admin}
    admin.close()
    server.stop()
    shutil.rmtree(base / "repo", ignore_errors=True)


def ready(admin: TritonAdmin) -> set[str]:
    return {m["name"] for m in admin.index() if m.get("state") == "READY"}


@pytest.fixture(autouse=True)
def cold(env: dict[str, Any]) -> Iterator[None]:
    yield
    admin: TritonAdmin = env["admin"]
    for name in ready(admin):
        admin.unload(name)
    deadline = time.monotonic() + 20
    while any(m.get("state") in ("READY", "UNLOADING", "LOADING") for m in admin.index()):
        assert time.monotonic() < deadline, "Triton did not unload everything"
        time.sleep(0.05)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def with_manager(env: dict[str, Any], body: Callable[[ModelManager], Coroutine[Any, Any, Any]], **kw: Any) -> Any:
    mgr = ModelManager(env["server"].endpoint, repository=env["repo"], **kw)
    await mgr.start()
    try:
        return await body(mgr)
    finally:
        await mgr.close()


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------------- (a) no GPU on this Triton ---
def test_cpu_only_triton_is_a_clear_error_and_nothing_starts(env: dict[str, Any]) -> None:
    admin: TritonAdmin = env["admin"]
    before = admin.index()
    with pytest.raises(GpuUnavailableError, match=r"Triton reports no GPU: nv_gpu_memory_\* metrics absent") as exc:
        TritonGpuMetrics(env["server"].endpoint.metrics_url).read()
    assert "use --memory-budget" in str(exc.value)

    mgr = ModelManager(env["server"].endpoint, repository=env["repo"], gpu_memory_fraction=0.5)

    async def start() -> None:
        try:
            with pytest.raises(GpuUnavailableError, match=r"Triton reports no GPU.*use --memory-budget"):
                await mgr.start()
            # Nothing half-started: no Triton client, no background task, no budget, nothing loaded.
            assert mgr._triton._client is None and not mgr._tasks and mgr.gpu is None
            assert mgr._loop is None
        finally:
            await mgr.close()

    run(start())
    assert admin.index() == before

    for bad in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(ManagerConfigError, match="gpu-memory-fraction must be in"):
            ModelManager(env["server"].endpoint, repository=env["repo"], gpu_memory_fraction=bad)


@pytest.mark.timeout(60)  # a regression (the flag ignored) would serve forever: fail instead of hanging
def test_serve_gpu_memory_fraction_on_cpu_only_triton_exits_1(tmp_path: Path) -> None:
    """`tritonctl serve` starts its own (CPU-only) Triton, fails on the GPU budget with one line, and stops it."""
    repo = tmp_path / "repo"
    gpu_model(repo, "g1", declared=200 * MiB)
    ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--gateway-port", "0"]
    common = [str(repo), *ports, "--gateway-grpc-port", "0"]
    runner = CliRunner()
    r = runner.invoke(app, ["serve", *common, "--gpu-memory-fraction", "0.5"])
    assert r.exit_code == 1, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Triton reports no GPU" in errors[0] and "--memory-budget" in errors[0], r.stderr
    assert "Traceback" not in r.output
    left = [p for p in psutil.Process().children(recursive=True) if str(repo) in " ".join(p.cmdline())]
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    r = runner.invoke(app, ["serve", *common, "--gpu-memory-fraction", "1.5"])
    assert r.exit_code == 1 and "error: --gpu-memory-fraction must be in (0, 1], got 1.5" in r.stderr
    assert "triton" not in r.stdout  # refused before anything started
    r = runner.invoke(app, ["serve", *common, "--no-gateway", "--gpu-memory-fraction", "0.5", "--max-models", "2"])
    assert r.exit_code == 1 and "--max-models, --gpu-memory-fraction configure the MME manager" in r.stderr, r.output
    assert "triton" not in r.stdout  # never silently ignored


# ----------------------------------------------------------------------------- (b) eviction under a GPU budget ---
def test_declared_gpu_bytes_evict_before_loading(env: dict[str, Any]) -> None:
    dev = TritonIndexGpu(env["server"].endpoint, {"g1": 200 * MiB, "g2": 200 * MiB, "g3": 200 * MiB})

    async def body(mgr: ModelManager) -> None:
        assert mgr.gpu_budget_bytes == 500 * MiB
        gpu = mgr.gpu
        assert gpu is not None
        for name in ("g1", "g2", "g3"):  # 3 x 200 MiB under 500 MiB: g1 (LRU) goes before g3 loads
            async with mgr.serving(name):
                pass
            await until(lambda: not gpu._lock.locked())  # let each window close (an eviction inside voids it)
        assert {s.name for s in mgr.states() if s.state == "READY"} == {"g2", "g3"}
        # g1 and g2 loaded in clean windows: their deltas; g3's window followed g1's eviction: not attributable.
        assert gpu.measured == {"g1": 200 * MiB, "g2": 200 * MiB} and gpu.discarded == 1
        text = mgr.metrics_text()
        samples = parse_prometheus(text)
        assert samples[("tritonctl_mme_gpu_memory_budget_bytes", "")] == 500 * MiB
        assert samples[("tritonctl_mme_model_gpu_memory_bytes", '{model="g3"}')] == 200 * MiB
        assert samples[("tritonctl_mme_gpu_memory_resident_bytes", "")] == 400 * MiB

    run(with_manager(env, body, gpu_memory_fraction=0.5, gpu_reader=dev, policy="lru"))  # the LRU order
    assert ready(env["admin"]) == {"g2", "g3"}
    assert max(dev.readings) <= BASE + 500 * MiB  # never above the budget, not even while loading g3


def test_measured_footprint_trims_and_is_used_next_time(env: dict[str, Any]) -> None:
    dev = TritonIndexGpu(env["server"].endpoint, {"g1": 200 * MiB, "u1": 300 * MiB})
    budget = int(0.45 * TOTAL)  # 450 MiB

    async def body(mgr: ModelManager) -> None:
        gpu = mgr.gpu
        assert gpu is not None and mgr.gpu_budget_bytes == budget
        async with mgr.serving("g1"):
            pass
        await until(lambda: not gpu._lock.locked())
        async with mgr.serving("u1"):  # undeclared: estimated at the mean measured (200 MiB), fits next to g1 ...
            pass
        await until(lambda: "u1" in gpu.measured)
        assert gpu.measured["u1"] == 300 * MiB
        # ... measured at 300 MiB (500 MiB resident): the idle LRU model is evicted to get back within budget.
        await until(lambda: not mgr.is_resident("g1"))
        assert {s.name for s in mgr.states() if s.state == "READY"} == {"u1"}
        await mgr.unload("u1")
        async with mgr.serving("g1"):
            pass
        await until(lambda: not gpu._lock.locked())
        start = len(dev.readings)
        async with mgr.serving("u1"):  # its measured 300 MiB (not the 200 MiB mean) does not fit next to g1
            pass
        assert {s.name for s in mgr.states() if s.state == "READY"} == {"u1"}
        assert max(dev.readings[start:]) <= BASE + budget  # g1 went before u1 loaded

    run(with_manager(env, body, gpu_memory_fraction=0.45, gpu_reader=dev, policy="lru"))  # the LRU order
    assert ready(env["admin"]) == {"u1"}


def test_too_big_for_the_gpu_budget_and_in_flight_models_are_never_evicted(env: dict[str, Any]) -> None:
    dev = TritonIndexGpu(env["server"].endpoint, {"g1": 200 * MiB, "g2": 200 * MiB, "huge": 600 * MiB})

    async def body(mgr: ModelManager) -> None:
        with pytest.raises(ModelLoadError, match="more than the whole GPU budget"):
            await mgr.ensure_loaded("huge")
        async with mgr.serving("g1"):  # in flight: g2 (200 MiB more than the 300 MiB budget allows) must wait
            with pytest.raises(NoCapacityError, match="nothing evictable"):
                await mgr.ensure_loaded("g2", timeout=5.0)
            assert mgr.is_resident("g1")

    run(with_manager(env, body, gpu_memory_fraction=0.3, gpu_reader=dev, load_timeout=1.0))
    assert ready(env["admin"]) == {"g1"}
