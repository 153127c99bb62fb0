"""The cold path of the MME manager on a real embedded Triton: where a cold load's time goes (the phase split in the
metrics and the log), and how concurrent cold loads are admitted into Triton.

Seed article 003's experiment loads renamed copies of one artifact (``NY_0.tar.gz`` holding a config that says
``name: "orig"``), so every cold load here is such a copy: fetched, extracted, its config rewritten, loaded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http.aio as httpaio

from toolkit.mme.manager import ModelManager
from toolkit.mme.stores import LocalStore
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions

COPIES = 6


def pack(src: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=f"orig/{p.relative_to(src).as_posix()}", recursive=False)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("coldpath")
    store, repo = base / "store", base / "repo"
    store.mkdir()
    repo.mkdir()
    original = pack(write_scale_model(base / "src", "orig", factor=3.0), base / "orig.tar.gz")
    for i in range(COPIES):  # seed 003: copies of one artifact saved under other names
        (store / f"NY_{i}.tar.gz").write_bytes(original.read_bytes())
    # verbose: Triton logs each HTTP request, so a test can count the manager's index reads
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=base, log_file=base / "triton.log", log_verbose=1))
    server.start(timeout=90)
    yield {"store": store, "repo": repo, "server": server, "base": base}
    server.stop()


async def infer(client: httpaio.InferenceServerClient, name: str) -> np.ndarray:
    inp = httpaio.InferInput("X", [2], "FP32")
    inp.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    return (await client.infer(name, [inp])).as_numpy("Y")


def phases(mgr: ModelManager) -> dict[str, tuple[float, int]]:
    p = mgr.metrics.phases
    return {dict(k)["phase"]: (p.sums[k], p.counts[k]) for k in p.sums}


def test_a_cold_load_is_split_into_its_phases_in_metrics_and_log(
    env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Fetch, config rewrite, install, admission and Triton's load call, which the stub watch splits at the python
    stub's start: each phase once per load, the parts adding up to their whole."""

    async def body() -> dict[str, tuple[float, int]]:
        mgr = ModelManager(env["server"].endpoint, repository=env["repo"], store=LocalStore(env["store"]),
                           stub_check_s=0.05, measure_footprint=False)  # fmt: skip
        await mgr.start()
        client = httpaio.InferenceServerClient(env["server"].endpoint.http)
        try:
            async with mgr.serving("NY_0"):
                assert np.allclose(await infer(client, "NY_0"), [3.0, 6.0])
            for _ in range(100):  # the stub watch finds the stub within a few of its 50 ms rounds
                if phases(mgr).get("stub"):
                    break
                await asyncio.sleep(0.05)
            text = mgr.metrics_text()
            assert 'tritonctl_mme_model_load_phase_seconds_count{phase="stub"} 1' in text
            assert 'tritonctl_mme_model_load_phase_seconds_sum{phase="rewrite"}' in text
            await mgr.unload("NY_0")
            return phases(mgr)
        finally:
            await client.close()
            await mgr.close()

    with caplog.at_level(logging.DEBUG, logger="toolkit.mme.manager"):
        got = asyncio.run(body())
    assert {k: n for k, (_, n) in got.items()} == dict.fromkeys(
        ("fetch", "rewrite", "install", "admit", "queue", "triton", "total", "triton_prep", "stub"), 1
    )
    s = {k: v for k, (v, _) in got.items()}
    assert s["rewrite"] > 0 and s["fetch"] > 0 and s["stub"] > 0.01  # the copy's config was rewritten; a stub started
    assert abs(s["triton_prep"] + s["stub"] - s["triton"]) < 0.012  # /proc counts the stub's start in 10 ms steps
    parts = s["fetch"] + s["rewrite"] + s["install"] + s["admit"] + s["queue"] + s["triton"]
    assert parts <= s["total"] < parts + 0.05
    assert any(r.getMessage().startswith("loaded NY_0: fetch ") for r in caplog.records)


def load_intervals(log: Path, names: list[str]) -> dict[str, tuple[str, str]]:
    """Each model's (start, end) of its Triton load, from Triton's own log (timestamps sort as text within a day)."""
    spans: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        for n in names:
            if f'"loading: {n}:1"' in line or f"\"successfully loaded '{n}'\"" in line:
                spans.setdefault(n, []).append(line.split()[1])
    return {n: (v[0], v[-1]) for n, v in spans.items()}


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrent_cold_loads_are_bounded_and_started_in_arrival_order(
    env: dict[str, Any], tmp_path: Path, limit: int
) -> None:
    """Three cold requests arriving 30 ms apart for models whose load takes ~0.3 s: with one load slot Triton loads
    them one after another, in arrival order, and the later ones report their queueing; with three they overlap."""
    names = [f"slow{limit}_{i}" for i in range(3)]
    store = tmp_path / "store"
    for n in names:
        write_scale_model(store, n, init_sleep_ms=300)

    async def body() -> tuple[list[str], float]:
        mgr = ModelManager(env["server"].endpoint, repository=env["repo"], store=LocalStore(store),
                           max_concurrent_loads=limit, measure_footprint=False, stub_check_s=0)  # fmt: skip
        await mgr.start()
        client = httpaio.InferenceServerClient(env["server"].endpoint.http)
        done: list[str] = []

        async def one(i: int) -> None:
            await asyncio.sleep(0.03 * i)
            async with mgr.serving(names[i]):
                done.append(names[i])
                assert np.allclose(await infer(client, names[i]), [2.0, 4.0])

        try:
            await asyncio.gather(*(one(i) for i in range(3)))
            assert mgr.load_gate.peak == limit and mgr.load_gate.active == 0
            queued = mgr.metrics.phases.sum(phase="queue")
            for n in names:
                await mgr.unload(n)
            return done, queued
        finally:
            await client.close()
            await mgr.close()

    done, queued = asyncio.run(body())
    spans = load_intervals(env["server"].log_path, names)
    starts = sorted(names, key=lambda n: spans[n][0])
    overlapping = any(spans[a][1] > spans[b][0] for a, b in itertools.pairwise(starts))
    if limit == 1:
        assert starts == names and done == names  # first come, first loaded, first served
        assert not overlapping  # Triton never had two of them loading at once
        assert queued > 0.4  # the second waited ~one load, the third ~two
    else:
        assert overlapping and queued < 0.05


def test_the_adapter_imports_asyncio_before_the_first_request(env: dict[str, Any], tmp_path: Path) -> None:
    """The stub imports asyncio on a model's first request; a generated adapter model has it imported in the
    background once ``initialize`` ends, so a cold request does not wait for it. Seen from outside: the stub has
    asyncio's C extension mapped before any request was sent, and the model answers as before."""
    from toolkit.mme.footprint import stub_processes
    from toolkit.repository.generate import render_model_dir
    from toolkit.spec.models import ModelSpec, TensorSpec

    artifact = tmp_path / "double.py"
    artifact.write_text("def predict(inputs):\n    return {'Y': inputs['X'] * 2}\n")
    spec = ModelSpec(name="adapted", framework="numpy", artifact=artifact,
                     inputs=[TensorSpec(name="X", dtype="FP32", dims=[2])],
                     outputs=[TensorSpec(name="Y", dtype="FP32", dims=[2])])  # fmt: skip
    store = tmp_path / "store"
    render_model_dir(spec, store)

    async def body() -> None:
        mgr = ModelManager(env["server"].endpoint, repository=env["repo"], store=LocalStore(store),
                           measure_footprint=False, stub_check_s=0)  # fmt: skip
        await mgr.start()
        client = httpaio.InferenceServerClient(env["server"].endpoint.http)
        try:
            await mgr.ensure_loaded("adapted")
            (stub,) = stub_processes(env["repo"], ["adapted"])["adapted"]
            mapped = False
            for _ in range(100):
                mapped = "_asyncio" in Path(f"/proc/{stub.pid}/maps").read_text()
                if mapped:
                    break
                await asyncio.sleep(0.05)
            assert mapped, "the stub had not imported asyncio 5 s after the load"
            async with mgr.serving("adapted"):
                assert np.allclose(await infer(client, "adapted"), [2.0, 4.0])
            await mgr.unload("adapted")
        finally:
            await client.close()
            await mgr.close()

    asyncio.run(body())


def test_the_demo_serves_renamed_copies_through_boto3() -> None:
    """``make demo``'s seed-003 section: copies of housing_NewYork_NY.tar.gz saved as NY_<i>.tar.gz, invoked by
    TargetModel through the gateway, each served under its own name with the original's predictions."""
    from examples.mme import run_renamed_copy_demo

    said: list[str] = []
    got = run_renamed_copy_demo(copies=2, say=said.append)
    assert {k: (v["model"], v["ok"]) for k, v in got.items()} == {"NY_0": ("NY_0", True), "NY_1": ("NY_1", True)}
    assert any("TargetModel=NY_1.tar.gz -> served as 'NY_1'" in line for line in said)


def index_reads(log: Path, since: int) -> int:
    return log.read_text()[since:].count("HTTP request: 2 /v2/repository/index")


def test_unloads_are_polled_with_backoff_unless_someone_waits(env: dict[str, Any]) -> None:
    """An eviction nobody waits for (the count budget does not) is watched with a doubling pause: a python model
    lingers ~1 s in UNLOADING, which at a fixed 25 ms was ~40 index reads. A request for that very model waits for
    the unload to end: then the index is read at the shortest pause again, and the model is loaded anew."""
    log: Path = env["server"].log_path

    async def body() -> tuple[float, float]:
        mgr = ModelManager(env["server"].endpoint, repository=env["repo"], store=LocalStore(env["store"]),
                           max_models=1, index_sync_s=0, stub_check_s=0, measure_footprint=False)  # fmt: skip
        await mgr.start()
        client = httpaio.InferenceServerClient(env["server"].endpoint.http)

        def state(name: str) -> str:
            return next(x.state for x in mgr.states() if x.name == name)

        async def use(name: str) -> None:
            async with mgr.serving(name):
                await infer(client, name)

        async def reads_while_unloading(victim: str, then: str | None) -> tuple[float, asyncio.Task[None] | None]:
            """Index reads a second from ``victim``'s eviction until Triton has it gone; ``then`` is requested as
            soon as the eviction starts (so it waits for it when it is the victim itself)."""
            while state(victim) != "UNLOADING":
                await asyncio.sleep(0.002)
            since, t0 = len(log.read_text()), time.monotonic()
            task = asyncio.create_task(use(then)) if then else None
            while state(victim) == "UNLOADING":
                await asyncio.sleep(0.005)
            return index_reads(log, since) / max(time.monotonic() - t0, 0.2), task

        try:
            await use("NY_1")
            evicting = asyncio.create_task(use("NY_2"))  # evicts NY_1; nobody waits for that unload
            idle, _ = await reads_while_unloading("NY_1", None)
            await evicting
            evicting = asyncio.create_task(use("NY_1"))  # evicts NY_2 ...
            waited, again = await reads_while_unloading("NY_2", "NY_2")  # ... wanted at once: a waiter
            await asyncio.gather(evicting, *([again] if again else []))
            await mgr.unload("NY_2")
            return idle, waited
        finally:
            await client.close()
            await mgr.close()

    idle, waited = asyncio.run(body())
    assert idle <= 10, f"{idle:.0f} index reads a second while an unload nobody waits for ran"
    assert waited >= 1.5 * idle, f"{waited:.0f} index reads a second while a request waited ({idle:.0f} when none)"


def test_a_slow_load_gives_its_slot_up(env: dict[str, Any], tmp_path: Path) -> None:
    """One slot, and a model whose ``initialize`` takes 6 s (as a hung one would, until the load timeout): after the
    gate's ``hold_s`` its load goes on outside the gate, and a cold request that came after it is served first."""
    store = tmp_path / "store"
    write_scale_model(store, "stuck", init_sleep_ms=6000)
    write_scale_model(store, "quick")

    async def body() -> list[str]:
        mgr = ModelManager(env["server"].endpoint, repository=env["repo"], store=LocalStore(store),
                           max_concurrent_loads=1, measure_footprint=False, stub_check_s=0)  # fmt: skip
        mgr.load_gate.hold_s = 0.5
        await mgr.start()
        client = httpaio.InferenceServerClient(env["server"].endpoint.http)
        done: list[str] = []

        async def use(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            async with mgr.serving(name):
                await infer(client, name)
            done.append(name)

        try:
            await asyncio.gather(use("stuck", 0.0), use("quick", 0.1))
            assert mgr.load_gate.active == 0 and mgr.load_gate.peak == 1
            for name in ("stuck", "quick"):
                await mgr.unload(name)
            return done
        finally:
            await client.close()
            await mgr.close()

    assert asyncio.run(body()) == ["quick", "stuck"]
