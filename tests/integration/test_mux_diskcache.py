"""Multiplexed models fetched through the MME's disk cache (``MuxModels._materialize``'s cache branch): a real
embedded Triton, the manager with a ``DiskCache`` over a directory store, the model host, and tritonclient.

What is checked: the artifact is fetched once into the cache and hard-linked (not copied, not fetched again) into
the host's folder; the cache entry is unpinned once prepared; files prepared anew after an unload come from the
cache without a fetch, and a changed artifact in the store is fetched anew; the host's predictions are the models'.
The gateway is not needed here (``tritonctl serve`` has no disk-cache option): the request names the model in the
host's parameter, as the gateway sets it after admission.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http.aio as httpaio

from examples.housing import generate
from examples.mme import build_city_store, expected_prices
from toolkit.mme.diskcache import DiskCache
from toolkit.mme.manager import ModelManager
from toolkit.mme.mux import MuxModels
from toolkit.mme.stores import FetchResult, LocalStore
from toolkit.server import EmbeddedTriton, ServerOptions

MODEL = "housing_cached"


class CountingStore(LocalStore):
    """A real LocalStore that also counts fetches (what the cache saves)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fetches = 0

    def fetch(self, name: str, dest_dir: Path, progress: Any = None) -> FetchResult:
        self.fetches += 1
        return super().fetch(name, dest_dir, progress)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path | EmbeddedTriton]]:
    base = tmp_path_factory.mktemp("muxcache")
    store, repo = base / "store", base / "repo"
    repo.mkdir()
    arts = build_city_store(store, n=3)
    shutil.copy(arts["housing_NewYork_NY"], store / f"{MODEL}.tar.gz")
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=base, log_file=base / "triton.log"))
    server.start(timeout=90)
    yield {"base": base, "store": store, "repo": repo, "server": server, "chicago": arts["housing_Chicago_IL"]}
    server.stop()


async def _predict(client: httpaio.InferenceServerClient, host: str, x: np.ndarray) -> np.ndarray:
    inp = httpaio.InferInput("raw", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = await client.infer(host, [inp], parameters={"tritonctl_mux_model": MODEL})
    return np.asarray(res.as_numpy("price")).reshape(-1)


def _inodes(folder: Path) -> dict[Path, int]:
    """The model's files (less the host's descriptor, which the gateway writes into its folder) -> their inodes."""
    return {p.relative_to(folder): p.stat().st_ino for p in folder.rglob("*") if p.is_file() and p.name != "mux.json"}


def test_multiplexed_models_come_through_the_disk_cache(env: dict[str, Any]) -> None:
    store = CountingStore(env["store"])
    cache = DiskCache(env["base"] / "cache", capacity_bytes=2**30)
    x, _ = generate("NewYork_NY", 3, seed=21)

    async def body() -> None:
        server: EmbeddedTriton = env["server"]
        mux = MuxModels(ModelManager(server.endpoint, repository=env["repo"], store=store, disk_cache=cache), bool)
        await mux.start()
        client = httpaio.InferenceServerClient(server.endpoint.http)
        try:
            await mux.ensure_loaded(MODEL)
            host = mux.mux_route(MODEL)
            assert host is not None and store.fetches == 1
            assert np.allclose(await _predict(client, host, x), expected_prices("NewYork_NY", x), rtol=1e-4)
            prepared = mux.root / MODEL
            cached = _inodes(cache.path(MODEL))
            assert cached and _inodes(prepared) == cached  # hard links to the cache's files: no copy, no fetch
            assert not cache.is_pinned(MODEL)

            await mux.unload(MODEL)  # its files are dropped; prepared again from the cache, not the store
            assert not prepared.exists()
            await mux.ensure_loaded(MODEL)
            assert store.fetches == 1 and prepared.is_dir()
            assert np.allclose(await _predict(client, host, x), expected_prices("NewYork_NY", x), rtol=1e-4)

            shutil.copy(env["chicago"], env["store"] / f"{MODEL}.tar.gz")  # the store's artifact changes
            await mux.unload(MODEL)
            await mux.ensure_loaded(MODEL)
            assert store.fetches == 2 and cache.invalidations == 1  # the cache fetched the new one
            assert _inodes(prepared) == _inodes(cache.path(MODEL)) != cached
        finally:
            await client.close()
            await mux.close()

    asyncio.run(body())
