"""MME manager on a real embedded Triton: single flight, budgets, in-flight protection, failures, S3 (moto), caches.

One Triton for the module, over an empty repository directory that each test's manager fills from a LocalStore of
tiny python models (they load in ~0.1 s). Every test ends by unloading everything, so the next starts cold.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http.aio as httpaio
from waiting import until

from toolkit.loadtest.serverstats import parse_prometheus
from toolkit.mme.diskcache import DiskCache
from toolkit.mme.errors import (
    ArtifactFetchError,
    LoadTimeoutError,
    ModelLoadError,
    ModelNotFoundError,
    ModelPinnedError,
)
from toolkit.mme.manager import ModelManager
from toolkit.mme.stores import FetchResult, LocalStore, S3Store
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin, TritonEndpoint, free_port

N_MODELS = 10
ENSEMBLE = """name: "ens"
platform: "ensemble"
max_batch_size: 0
input [{ name: "X" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [2] }]
ensemble_scheduling { step [
  { model_name: "m08" model_version: -1 input_map { key: "X" value: "X" } output_map { key: "Y" value: "mid" } },
  { model_name: "m09" model_version: -1 input_map { key: "X" value: "mid" } output_map { key: "Y" value: "Y" } }
] }
"""


def write_model(root: Path, name: str, factor: float) -> Path:
    """Y = X * factor; a negative factor makes initialize raise (a load that fails)."""
    return write_scale_model(root, name, factor=factor, fail_on_init=factor < 0)


def tar_dir(src: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)
    return out


def evil_tar(out: Path, kind: str) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        cfg = b'name: "x"\nbackend: "python"\n'
        info = tarfile.TarInfo("config.pbtxt")
        info.size = len(cfg)
        tf.addfile(info, io.BytesIO(cfg))
        bad = tarfile.TarInfo("../escape.txt" if kind == "traversal" else "1/model.py")
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(bad)
        else:
            bad.size = 3
            tf.addfile(bad, io.BytesIO(b"abc"))
    return out


class CountingStore(LocalStore):
    """A real LocalStore that also counts fetches (to prove single flight)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fetches: dict[str, int] = {}

    def fetch(self, name: str, dest_dir: Path, progress: Any = None) -> FetchResult:
        self.fetches[name] = self.fetches.get(name, 0) + 1
        return super().fetch(name, dest_dir, progress)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("mme")
    store, repo, tars = base / "store", base / "repo", base / "tars"
    for d in (store, repo, tars):
        d.mkdir()
    for i in range(N_MODELS):
        write_model(store, f"m{i:02d}", float(i + 1))
    write_model(tars, "boom", -1.0)
    tar_dir(tars / "boom", store / "boom.tar.gz")
    (store / "corrupt.tar.gz").write_bytes(b"\x1f\x8b\x08\x00this is not a gzip stream")
    evil_tar(store / "evil.tar.gz", "traversal")
    evil_tar(store / "linky.tar.gz", "symlink")
    (store / "ens").mkdir()
    (store / "ens" / "1").mkdir()
    (store / "ens" / "1" / ".keep").write_text("")
    (store / "ens" / "config.pbtxt").write_text(ENSEMBLE)
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=base, log_file=base / "triton.log"))
    server.start(timeout=90)
    admin = TritonAdmin(server.endpoint)
    yield {"store": store, "repo": repo, "tars": tars, "server": server, "admin": admin, "base": base}
    admin.close()
    server.stop()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def triton_ready(admin: TritonAdmin) -> set[str]:
    return {m["name"] for m in admin.index() if m.get("state") == "READY"}


@pytest.fixture(autouse=True)
def cold(env: dict[str, Any]) -> Iterator[None]:
    """Each test starts and ends with nothing loaded in Triton."""
    yield
    admin: TritonAdmin = env["admin"]
    for name in triton_ready(admin):
        admin.unload(name)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not any(m.get("state") in ("READY", "UNLOADING", "LOADING") for m in admin.index()):
            for d in env["repo"].iterdir():
                shutil.rmtree(d)
            return
        time.sleep(0.05)
    raise AssertionError("Triton did not unload everything")


async def infer(client: httpaio.InferenceServerClient, name: str) -> np.ndarray:
    inp = httpaio.InferInput("X", [2], "FP32")
    inp.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    res = await client.infer(name, [inp])
    return res.as_numpy("Y")


def loads_in_log(env: dict[str, Any], name: str) -> int:
    return env["server"].log_path.read_text().count(f"successfully loaded '{name}'")


async def with_manager(env: dict[str, Any], body: Callable[..., Coroutine[Any, Any, Any]], **kw: Any) -> Any:
    kw.setdefault("store", LocalStore(env["store"]))
    mgr = ModelManager(env["server"].endpoint, repository=env["repo"], **kw)
    await mgr.start()
    client = httpaio.InferenceServerClient(env["server"].endpoint.http)
    try:
        return await body(mgr, client)
    finally:
        await client.close()
        await mgr.close()


def test_single_flight_50_concurrent_requests_one_load(env: dict[str, Any]) -> None:
    store = CountingStore(env["store"])
    before = loads_in_log(env, "m00")

    async def body(mgr: ModelManager, client: httpaio.InferenceServerClient) -> list[np.ndarray]:
        async def one() -> np.ndarray:
            async with mgr.serving("m00"):
                return await infer(client, "m00")

        return await asyncio.gather(*(one() for _ in range(50)))

    results = run(with_manager(env, body, store=store))
    assert all(np.allclose(r, [1.0, 2.0]) for r in results)
    assert store.fetches == {"m00": 1}
    assert loads_in_log(env, "m00") - before == 1


def test_count_budget_lru_order_and_triton_never_above_budget(env: dict[str, Any]) -> None:
    admin: TritonAdmin = env["admin"]
    peak, stop = [0], threading.Event()

    def watch() -> None:
        poll = TritonAdmin(env["server"].endpoint)
        while not stop.is_set():
            peak[0] = max(peak[0], len(triton_ready(poll)))
            time.sleep(0.005)
        poll.close()

    async def body(mgr: ModelManager, client: httpaio.InferenceServerClient) -> None:
        for name in ("m00", "m01", "m02", "m00", "m03"):  # m01 is the least recently used when m03 arrives
            async with mgr.serving(name):
                assert np.allclose(await infer(client, name), [int(name[1:]) + 1, 2 * (int(name[1:]) + 1)])
        assert {s.name for s in mgr.states() if s.state == "READY"} == {"m00", "m02", "m03"}
        assert "m01" not in triton_ready(admin)  # evicting it awaited Triton's unload, before m03 was loaded

        async def one(name: str) -> None:
            async with mgr.serving(name):
                await infer(client, name)

        for i in range(0, N_MODELS, 2):  # pairs of concurrent cold requests across all 10 models
            await asyncio.gather(one(f"m{i:02d}"), one(f"m{i + 1:02d}"))
        assert len([s for s in mgr.states() if s.state == "READY"]) <= 3
        assert parse_prometheus(mgr.metrics_text())[("tritonctl_mme_model_evictions_total", "")] >= 1

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        run(with_manager(env, body, max_models=3, policy="lru"))  # the order asserted is LRU's (not the default)
    finally:
        stop.set()
        thread.join()
    assert 1 <= peak[0] <= 3


def test_model_with_requests_in_flight_is_not_evicted(env: dict[str, Any]) -> None:
    async def body(mgr: ModelManager, client: httpaio.InferenceServerClient) -> None:
        async with mgr.serving("m00"):
            with pytest.raises(LoadTimeoutError):
                await mgr.ensure_loaded("m01", timeout=0.5)
            assert mgr.is_resident("m00")
            assert "m00" in triton_ready(env["admin"])
            assert np.allclose(await infer(client, "m00"), [1.0, 2.0])
        await mgr.ensure_loaded("m01", timeout=10)  # room is made once m00 is idle
        assert mgr.is_resident("m01") and not mgr.is_resident("m00")

    run(with_manager(env, body, max_models=1, load_timeout=10))


def test_bad_artifacts_and_failing_load_give_clear_errors_others_keep_serving(env: dict[str, Any]) -> None:
    async def body(mgr: ModelManager, client: httpaio.InferenceServerClient) -> None:
        async with mgr.serving("m00"):
            pass
        with pytest.raises(ArtifactFetchError, match=r"not a readable tar\.gz"):
            await mgr.ensure_loaded("corrupt")
        with pytest.raises(ArtifactFetchError, match=r"path traversal"):
            await mgr.ensure_loaded("evil")
        with pytest.raises(ArtifactFetchError, match="next attempt allowed"):  # in the backoff; keeps its type
            await mgr.ensure_loaded("evil")
        with pytest.raises(ArtifactFetchError, match="symbolic link"):
            await mgr.ensure_loaded("linky")
        with pytest.raises(ModelNotFoundError):
            await mgr.ensure_loaded("no_such_model")
        with pytest.raises(ModelNotFoundError, match="must not start"):
            await mgr.ensure_loaded("../etc")
        errors = await asyncio.gather(*(mgr.ensure_loaded("boom") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(e, ModelLoadError) and "initialize exploded" in str(e) for e in errors)
        assert loads_in_log(env, "boom") == 0
        with pytest.raises(ModelLoadError, match="next attempt allowed") as backoff:  # in the backoff: no attempt
            await mgr.ensure_loaded("boom")
        assert backoff.value.retry_in is not None and 0 < backoff.value.retry_in <= 0.5
        assert not (env["repo"] / "boom").exists() and not (env["repo"] / "evil").exists()
        assert "boom" not in triton_ready(env["admin"])

        async def attempt() -> ModelLoadError:
            try:
                await mgr.ensure_loaded("boom")
            except ModelLoadError as exc:
                return exc
            raise AssertionError("boom loaded")

        # Asked again until the backoff is over: the first request after it retries the load (failing again).
        deadline = time.monotonic() + 5
        while "next attempt allowed" in str(retried := await attempt()):
            assert time.monotonic() < deadline, "the backoff never ended"
            await asyncio.sleep(0.02)
        assert "initialize exploded" in str(retried)
        assert {s.name: s.state for s in mgr.states()}["boom"] == "FAILED"
        assert parse_prometheus(mgr.metrics_text())[("tritonctl_mme_model_load_failures_total", '{model="boom"}')] == 2
        async with mgr.serving("m00"):
            assert np.allclose(await infer(client, "m00"), [1.0, 2.0])

    run(with_manager(env, body, backoff=(0.5, 1.0)))


def test_s3_store_and_unreachable_s3(env: dict[str, Any], s3_endpoint: str) -> None:
    s3 = S3Store("models", "mme", endpoint_url=s3_endpoint)
    s3.client.create_bucket(Bucket="models")
    for name in ("m04", "m05"):
        tar = tar_dir(env["store"] / name, env["tars"] / f"{name}.tar.gz")
        s3.client.upload_file(str(tar), "models", f"mme/{name}.tar.gz")
    dead = S3Store("models", "mme", endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout=0.5)

    async def body(mgr: ModelManager, client: httpaio.InferenceServerClient) -> None:
        assert mgr.knows("m04") and mgr.knows("m05") and not mgr.knows("m06")
        async with mgr.serving("m05"):
            assert np.allclose(await infer(client, "m05"), [6.0, 12.0])
        assert parse_prometheus(mgr.metrics_text())[("tritonctl_mme_model_downloading_seconds_count", "")] == 1

    run(with_manager(env, body, store=s3))

    async def body_dead(mgr: ModelManager, client: httpaio.InferenceServerClient) -> None:
        with pytest.raises(ArtifactFetchError, match="unreachable"):
            await mgr.ensure_loaded("m07")
        async with mgr.serving("m05"):  # already in the repository directory: still serves
            assert np.allclose(await infer(client, "m05"), [6.0, 12.0])

    run(with_manager(env, body_dead, store=dead))


def test_disk_cache_evicts_lru_artifacts_and_repository_copies(env: dict[str, Any], tmp_path: Path) -> None:
    size = sum(p.stat().st_size for p in (env["store"] / "m01").rglob("*") if p.is_file())
    cache = DiskCache(tmp_path / "cache", capacity_bytes=int(size * 2.5))

    async def body(mgr: ModelManager, client: httpaio.InferenceServerClient) -> None:
        for name in ("m01", "m02", "m03", "m01"):
            async with mgr.serving(name):
                await infer(client, name)

    run(with_manager(env, body, disk_cache=cache, max_models=1))
    assert cache.bytes_used <= cache.capacity_bytes
    assert cache.evictions >= 1
    assert "m02" not in cache  # the least recently used artifact went first
    assert not (env["repo"] / "m02").exists()


def test_ensemble_pins_composing_models(env: dict[str, Any]) -> None:
    async def body(mgr: ModelManager, client: httpaio.InferenceServerClient) -> None:
        async with mgr.serving("ens"):
            assert np.allclose(await infer(client, "ens"), [90.0, 180.0])  # x * 9 * 10
        pinned = {s.name: s.pinned for s in mgr.states()}
        assert pinned["m08"] and pinned["m09"] and not pinned["ens"]
        assert {s.name: s.size_bytes for s in mgr.states()}["ens"] == 0  # its members carry the memory
        with pytest.raises(ModelPinnedError):
            await mgr.unload("m08")
        await mgr.unload("ens")
        assert not {s.name: s.pinned for s in mgr.states()}["m08"]
        await mgr.unload("m08")
        assert not mgr.is_resident("m08") and "m08" not in triton_ready(env["admin"])

    run(with_manager(env, body))


def test_endpoint_down_gives_typed_error(env: dict[str, Any], tmp_path: Path) -> None:
    port = free_port()
    ep = TritonEndpoint(f"127.0.0.1:{port}", f"127.0.0.1:{port}", f"127.0.0.1:{port}")

    async def body() -> None:
        mgr = ModelManager(ep, repository=env["repo"], store=LocalStore(env["store"]), load_timeout=2)
        with pytest.raises(ModelLoadError, match="unreachable"):
            await mgr.start()
        await mgr.close()

    run(body())


def test_byte_budget_uses_declared_and_measured_footprints(env: dict[str, Any]) -> None:
    async def body(mgr: ModelManager, client: httpaio.InferenceServerClient) -> None:
        for name in ("m00", "m01", "m02", "m03"):
            async with mgr.serving(name):
                await infer(client, name)
            loaded = [s for s in mgr.states() if s.state == "READY"]
            assert sum(s.size_bytes for s in loaded) <= 250 and len(loaded) <= 2
        assert {s.name for s in mgr.states() if s.state == "READY"} == {"m02", "m03"}
        assert parse_prometheus(mgr.metrics_text())[("tritonctl_mme_memory_budget_bytes", "")] == 250

    sizes = {f"m{i:02d}": 100 for i in range(4)}
    # the survivors asserted are LRU's (the default, GDSF, weighs measured load times)
    run(with_manager(env, body, memory_budget_bytes=250, declared_sizes=sizes, measure_footprint=False, policy="lru"))

    async def measured(mgr: ModelManager, client: httpaio.InferenceServerClient) -> None:
        mgr.measure_delay = 0.0
        async with mgr.serving("m04"):
            await infer(client, "m04")
        await until(lambda: mgr._measured.get("m04"), 10, "m04's footprint measured")
        size = {s.name: s.size_bytes for s in mgr.states()}["m04"]
        assert 5 * 2**20 < size < 2 * 2**30, size  # the stub's RSS, not the 64 MiB default
        assert size != mgr.default_model_bytes

    run(with_manager(env, measured))


def test_resync_after_out_of_band_unload(env: dict[str, Any]) -> None:
    async def body(mgr: ModelManager, client: httpaio.InferenceServerClient) -> None:
        await mgr.ensure_loaded("m06")
        env["admin"].unload("m06")  # as if Triton restarted without it
        mgr.on_triton_restart()
        await until(lambda: not mgr.is_resident("m06"), 10, "the manager forgets m06 after the resync")

        def m06_gone() -> bool:  # Triton has finished unloading it: the next request loads it afresh
            states = {m["name"]: m.get("state") for m in env["admin"].index()}
            return states.get("m06") not in ("READY", "UNLOADING")

        await until(m06_gone, 20, "Triton finished unloading m06", interval=0.05)
        async with mgr.serving("m06"):
            assert np.allclose(await infer(client, "m06"), [7.0, 14.0])

    run(with_manager(env, body))


def test_city_example_store_serves_sklearn_equal_predictions(env: dict[str, Any], tmp_path: Path) -> None:
    from examples.housing import generate
    from examples.mme import build_city_store, expected_prices

    artifacts = build_city_store(tmp_path / "cities", n=50)
    assert len(artifacts) == 50 and all(p.name.endswith(".tar.gz") for p in artifacts.values())

    async def body(mgr: ModelManager, client: httpaio.InferenceServerClient) -> None:
        assert sum(mgr.knows(n) for n in artifacts) == 50
        for city in ("Seattle_WA", "Houston_TX"):
            x, _ = generate(city, 5, seed=7)
            inp = httpaio.InferInput("raw", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            async with mgr.serving(f"housing_{city}"):
                got = (await client.infer(f"housing_{city}", [inp])).as_numpy("price").reshape(-1)
            assert np.allclose(got, expected_prices(city, x), rtol=1e-4)

    run(with_manager(env, body, store=LocalStore(tmp_path / "cities")))


def test_cli_simulate_list_load_unload(env: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from toolkit.cli.mme import mme_app

    runner = CliRunner()
    sim = ["simulate", "--models", "50", "--zipf", "1.0", "--budget", "10", "--requests", "2000"]
    res = runner.invoke(mme_app, sim)
    assert res.exit_code == 0, res.output
    assert "lru" in res.output and "gdsf" in res.output and "belady" in res.output
    url = env["server"].endpoint.http_url
    common = ["--url", url, "-r", str(env["repo"])]
    res = runner.invoke(mme_app, ["load", "m07", *common, "--store", str(env["store"])])
    assert res.exit_code == 0 and "loaded m07" in res.output, res.output
    res = runner.invoke(mme_app, ["list", *common, "--store", str(env["store"])])
    assert res.exit_code == 0 and any(ln.split()[:2] == ["m07", "READY"] for ln in res.output.splitlines())
    assert "m03" in res.output  # store models are listed too, UNLOADED
    res = runner.invoke(mme_app, ["unload", "m07", *common])
    assert res.exit_code == 0 and "m07" not in triton_ready(env["admin"])
    res = runner.invoke(mme_app, ["load", "nope", *common, "--store", str(env["store"])])
    assert res.exit_code == 1 and "not found" in res.output
