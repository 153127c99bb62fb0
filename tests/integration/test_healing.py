"""Dead pieces stay dead no more: a wedged Triton is restarted, a dead python stub is reloaded, a load that hangs
fails after its timeout without stalling anything else. Real embedded Tritons (one per test: each test breaks its own),
tiny python models; intervals are shortened so every failure heals in seconds, and every wait polls a condition."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path

import aiohttp
import psutil
import pytest
from waiting import wait_until

from toolkit import ModelManager, ServeConfig, Serving, start
from toolkit.loadtest.serverstats import parse_prometheus
from toolkit.mme.errors import ModelLoadError
from toolkit.mme.stores import LocalStore
from toolkit.repository.samples import write_scale_model
from toolkit.server import (
    AsyncTritonClient,
    EmbeddedTriton,
    ServerOptions,
    Supervisor,
    TritonAdmin,
    TritonEndpoint,
    free_port,
)
from toolkit.server.client import names_in_state


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- a wedged Triton ---------------------------------------------------------------------------------------------------
def test_a_wedged_triton_is_killed_and_restarted_with_its_models(tmp_path: Path) -> None:
    """SIGSTOP: the process exists (``poll()`` says running) but answers nothing, like a Triton whose HTTP threads
    are all blocked. The supervisor's liveness probe sees it, kills it and restarts it on the same ports, models
    reloaded."""
    repo = tmp_path / "repo"
    write_scale_model(repo, "double")
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path, exit_timeout_s=1))
    states: list[str] = []
    sup = Supervisor(
        server, index_interval=0.2, probe_interval=0.2, probe_timeout=0.5, probe_failures=2, on_state=states.append
    )
    endpoint = sup.start()
    assert server.process is not None
    old = server.process.pid
    try:
        TritonAdmin(endpoint, timeout=30).load("double")
        wait_until(lambda: sup.loaded_models() == {"double"}, 5, "the supervisor sees the model loaded")
        os.kill(old, signal.SIGSTOP)
        t0 = time.monotonic()
        wait_until(
            lambda: sup.is_up and server.process is not None and server.process.pid != old,
            30,
            "the wedged server is replaced by a live one",
        )
        took = time.monotonic() - t0
        assert took < 15, took  # 2 probes x 0.5 s + kill + restart with one python model
        assert gone(old)
        assert sup.wedges == 1 and sup.restarts == 1
        assert server.endpoint == endpoint  # same ports
        admin = TritonAdmin(endpoint, timeout=5)
        assert admin.live() and admin.loaded() == ["double"]  # eager reload, as after a crash
        assert states[-2:] == ["down", "up"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGCONT)
        sup.stop()
    assert not sup.is_up


def test_a_live_triton_is_left_alone(tmp_path: Path) -> None:
    """The probe restarts nothing that answers, however often it asks."""
    repo = tmp_path / "repo"
    write_scale_model(repo, "double")
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path, exit_timeout_s=1))
    sup = Supervisor(server, probe_interval=0.05, probe_timeout=1.0, probe_failures=1)
    sup.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        deadline = time.monotonic() + 1.5  # ~30 probes
        while time.monotonic() < deadline:
            assert sup.is_up and server.process is not None and server.process.pid == pid
            time.sleep(0.05)
        assert sup.restarts == 0 and sup.wedges == 0
    finally:
        sup.stop()


# -- a load that hangs -------------------------------------------------------------------------------------------------
FREE = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "gateway_grpc_port": 0}
BODY = json.dumps({"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}).encode()


def post(conn: http.client.HTTPConnection, model: str) -> tuple[int, float, bytes]:
    """One KServe infer through ``conn`` (kept alive): status, seconds, body."""
    t0 = time.monotonic()
    conn.request("POST", f"/v2/models/{model}/infer", BODY, {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, time.monotonic() - t0, r.read()


def test_a_hanging_load_fails_after_its_timeout_and_warm_requests_keep_flowing(tmp_path: Path) -> None:
    """A model whose initialize sleeps far beyond the load timeout is asked for while another model serves warm
    requests through the gateway. Measured before: Triton's HTTP load blocks one of its worker threads for the whole
    load, and every keep-alive connection pinned to that thread -- the gateway's pooled ones, opened while Triton was
    idle, all are -- stalls with it (504 at the request timeout). Now the load goes over gRPC: warm requests stay fast,
    and the cold one fails after the load timeout with a clear error, the entry FAILED (not LOADING forever)."""
    repo = tmp_path / "repo"
    write_scale_model(repo, "warm")
    write_scale_model(repo, "sleepy", init_sleep_ms=60_000)
    config = ServeConfig(repository=repo, timeout_s=4.0, load_timeout_s=2.0, workdir=tmp_path / "work", **FREE)
    with start(config, echo=lambda _: None) as serving:
        clients = [http.client.HTTPConnection(serving.http, timeout=30) for _ in range(3)]
        for c in clients:  # warm, and the gateway's upstream connections opened while Triton is idle
            assert post(c, "warm")[0] == 200
        cold: list[tuple[int, float, bytes, float]] = []
        asking = threading.Thread(
            target=lambda: cold.append((*post(http.client.HTTPConnection(serving.http), "sleepy"), time.monotonic()))
        )
        asking.start()
        wait_until(lambda: not serving.models.is_resident("sleepy") and _state(serving, "sleepy") == "LOADING", 5,
                 "the manager loading sleepy")  # fmt: skip
        slow: list[tuple[int, float]] = []
        deadline = time.monotonic() + 2.5  # across the whole load timeout
        n = 0
        while time.monotonic() < deadline:
            for c in clients:
                status, seconds, _ = post(c, "warm")
                n += 1
                if status != 200 or seconds > 1.0:
                    slow.append((status, round(seconds, 2)))
        asking.join(30)
        assert not slow, f"{len(slow)} of {n} warm requests slow or failed during the hanging load: {slow[:5]}"
        (status, seconds, body, _) = cold[0]
        assert status in (424, 429, 500, 503), (status, body)
        assert seconds < 2.0 + 2.0, seconds  # the load timeout plus slack: no extra wait after it
        assert b"longer than 2 s" in body, body
        assert _state(serving, "sleepy") == "FAILED"
        # After the backoff the next request does not wait another load timeout: Triton still has it LOADING.
        wait_until(lambda: time.monotonic() > asking_done(cold) + 0.6, 2, "the first backoff")
        status, seconds, body = post(clients[0], "sleepy")
        assert status == 424 and seconds < 1.0 and b"still loading it" in body, (status, seconds, body)
        assert post(clients[1], "warm")[:1] == (200,)


def asking_done(cold: list[tuple[int, float, bytes, float]]) -> float:
    return cold[0][3]


def _state(serving: Serving, name: str) -> str:
    models = serving.models
    assert isinstance(models, ModelManager)
    return next((s.state for s in models.states() if s.name == name), "?")


def test_a_python_model_without_its_model_file_fails_at_once(tmp_path: Path) -> None:
    """Measured before: Triton waits for ever for the stub of a python model without model.py (in the latest version
    directory), and holds one of its four model-load threads meanwhile. Any invoker can ask for any model of the
    store, so the manager refuses such an artifact before Triton sees it; other models load as usual."""
    store, repo = tmp_path / "store", tmp_path / "repo"
    repo.mkdir()
    write_scale_model(store, "ok")
    write_scale_model(store, "nofile")
    (store / "nofile" / "1" / "model.py").rename(store / "nofile" / "1" / "weights.py")
    write_scale_model(store, "newer")
    (store / "newer" / "2").mkdir()  # the latest version, which Triton loads, has data but no model.py
    (store / "newer" / "2" / "weights.bin").write_bytes(b"0")
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path, exit_timeout_s=1))
    server.start(timeout=90)
    try:

        async def main() -> None:
            mgr = ModelManager(server.endpoint, repository=repo, store=LocalStore(store), load_timeout=5.0)
            await mgr.start()
            try:
                for name, missing in (("nofile", "1/model.py"), ("newer", "2/model.py")):
                    t0 = time.monotonic()
                    with pytest.raises(ModelLoadError, match=f"python model file {missing} not found"):
                        await mgr.ensure_loaded(name)
                    assert time.monotonic() - t0 < 1.0
                    assert next(s for s in mgr.states() if s.name == name).state == "FAILED"
                await mgr.ensure_loaded("ok", timeout=30)
            finally:
                await mgr.close()

        asyncio.run(main())
        index = {m["name"]: m.get("state") for m in TritonAdmin(server.endpoint).index()}
        assert index.get("ok") == "READY" and index.get("nofile") != "LOADING" and index.get("newer") != "LOADING"
    finally:
        server.stop()


# -- a dead python stub ------------------------------------------------------------------------------------------------
def stub_of(server: EmbeddedTriton, repo: Path, name: str) -> psutil.Process:
    assert server.process is not None
    return next(
        p
        for p in psutil.Process(server.process.pid).children()
        if p.status() != psutil.STATUS_ZOMBIE and f"{repo.resolve()}/{name}/" in " ".join(p.cmdline())
    )


def test_a_dead_stub_takes_its_model_out_of_ready_and_reloads_it(tmp_path: Path) -> None:
    """Measured before: after kill -9 of a model's stub Triton keeps calling the model READY and answers every request
    500 "Stub process ... is not healthy" for ever, while the manager counts each one a cache hit. One round of the
    manager's stub check (driven by hand here, so that each step can be looked at) takes the model out of READY at
    once -- the next request waits for it like a cold load, a miss -- unloads and reloads it; the healthy model is
    left alone."""
    repo = tmp_path / "repo"
    write_scale_model(repo, "m", factor=3.0)
    write_scale_model(repo, "other")
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path, exit_timeout_s=1))
    server.start(timeout=90)
    url = server.endpoint.http_url

    async def infer(session: aiohttp.ClientSession, name: str) -> tuple[int, bytes]:
        async with session.post(f"{url}/v2/models/{name}/infer", data=BODY) as r:
            return r.status, await r.read()

    async def main() -> None:
        mgr = ModelManager(server.endpoint, repository=repo, stub_check_s=0, measure_footprint=False)
        await mgr.start()
        async with aiohttp.ClientSession() as session:
            try:
                for name in ("m", "other", "m"):  # m: a miss (its load), then a hit
                    async with mgr.serving(name, timeout=30):
                        assert (await infer(session, name))[0] == 200
                assert await mgr.stubs.check() == []  # the first round records the stubs of both models
                other_stub, dead = stub_of(server, repo, "other"), stub_of(server, repo, "m")
                dead.kill()
                status, body = await infer(session, "m")  # the failure as Triton gives it, straight to Triton
                assert status == 500 and b"is not healthy" in body, (status, body)
                assert TritonAdmin(server.endpoint).model_ready("m")  # ... while it calls the model READY

                assert await mgr.stubs.check() == ["m"]
                assert not mgr.is_resident("m")  # out of READY at once: no request counts a hit any more
                async with mgr.serving("m", timeout=10):  # waits for the reload, as for a cold load
                    status, body = await infer(session, "m")
                assert status == 200 and json.loads(body)["outputs"][0]["data"] == [3.0, 6.0], (status, body)
                state = next(s for s in mgr.states() if s.name == "m")
                assert state.state == "READY" and state.loads == 2 and state.hits == 1, state
                assert mgr.metrics.cache_miss.get(model="m") == 2  # the first load, and the request after the death
                assert stub_of(server, repo, "m").pid != dead.pid
                assert stub_of(server, repo, "other").pid == other_stub.pid  # the healthy model was left alone
                assert next(s for s in mgr.states() if s.name == "other").loads == 1
                assert await mgr.stubs.check() == []  # the new stub is recorded, and alive
                text = mgr.metrics_text()
                samples = parse_prometheus(text)
                assert samples[("tritonctl_mme_model_stub_failures_total", '{model="m"}')] == 1
                assert samples[("tritonctl_mme_loaded_models", "")] == 2

                # Triton itself dies (its stubs with it): that is the supervisor's to restart, not a stub to heal.
                stubs = [stub_of(server, repo, "m"), stub_of(server, repo, "other")]
                server.kill()
                wait_until(lambda: all(gone(p.pid) for p in stubs), 5, "the stubs gone with Triton")
                assert await mgr.stubs.check() == []
                assert mgr.metrics.stub_failures.get(model="other") == 0
            finally:
                await mgr.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_a_stub_replaced_by_a_triton_reload_is_not_a_death(tmp_path: Path) -> None:
    """Measured under load: Triton loads a model a second time right after the first (a router and an ensemble asking
    for the same step), a scan in between records the old stub and the new one, then the old one exits. That is a
    reload, not a death: the new stub serves the same model instance. The manager used to unload the model (and an
    ensemble loaded over it became unavailable); now it re-records the stubs and leaves the model alone."""
    repo = tmp_path / "repo"
    write_scale_model(repo, "m", factor=3.0)
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path, exit_timeout_s=1))
    server.start(timeout=90)

    async def main() -> None:
        mgr = ModelManager(server.endpoint, repository=repo, stub_check_s=0, measure_footprint=False)
        await mgr.start()
        try:
            async with mgr.serving("m", timeout=30):
                pass
            assert await mgr.stubs.check() == []  # records m's stub
            old = stub_of(server, repo, "m")
            admin = TritonAdmin(server.endpoint)
            config = admin.config("m")
            config["parameters"] = {**config.get("parameters", {}), "reload": {"string_value": "1"}}
            admin.load("m", config=json.dumps(config))  # a changed config: Triton starts a new stub for m_0_0
            wait_until(lambda: gone(old.pid), 10, "the old stub replaced")
            new = stub_of(server, repo, "m")
            assert new.pid != old.pid
            await mgr.stubs._record({"m": [old, new]})  # what a scan during the reload records (the race, by hand)
            assert await mgr.stubs.check() == []  # the old stub is gone, its instance lives on: not a death
            assert mgr.is_resident("m") and admin.model_ready("m")
            assert mgr.metrics.stub_failures.get(model="m") == 0
            assert mgr.stubs.watched("m") == [new.pid]
            new.kill()  # a real death afterwards is still found
            wait_until(lambda: gone(new.pid), 5, "the stub killed")
            assert await mgr.stubs.check() == ["m"]
        finally:
            await mgr.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_through_the_gateway_a_dead_stub_heals_in_seconds(tmp_path: Path) -> None:
    """The whole system with its defaults (``tritonctl serve``: stubs checked every second): after kill -9 of a warm
    model's stub, requests through the gateway succeed again within a few seconds (before: 500 for as long as one
    cares to wait), and the gateway's metrics say what happened."""
    repo = tmp_path / "repo"
    write_scale_model(repo, "m")
    with start(ServeConfig(repository=repo, workdir=tmp_path / "work", **FREE), echo=lambda _: None) as serving:
        client = http.client.HTTPConnection(serving.http, timeout=30)
        assert post(client, "m")[0] == 200
        assert serving.triton is not None
        models = serving.models
        assert isinstance(models, ModelManager)
        wait_until(lambda: models.stubs.watched("m"), 5, "the manager watching m's stub (its first round)")
        psutil.Process(models.stubs.watched("m")[0]).kill()
        t0 = time.monotonic()
        statuses = []
        while True:
            statuses.append(post(client, "m")[0])
            if statuses[-1] == 200:
                break
            assert time.monotonic() - t0 < 10, f"no 200 within 10 s after the stub died: {statuses}"
        recovered = time.monotonic() - t0
        assert recovered < 5, (recovered, statuses)
        assert set(statuses[:-1]) <= {500}, statuses  # Triton's own answer while the stub was dead
        assert parse_prometheus(models.metrics_text())[("tritonctl_mme_model_stub_failures_total", '{model="m"}')] == 1


def test_without_a_grpc_port_loads_fall_back_to_http(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An external Triton whose gRPC port cannot be reached still gets its loads and unloads (over HTTP), with one
    warning that says what that costs."""
    repo = tmp_path / "repo"
    write_scale_model(repo, "m")
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path, exit_timeout_s=1))
    server.start(timeout=90)
    real = server.endpoint
    endpoint = TritonEndpoint(real.http, f"127.0.0.1:{free_port()}", real.metrics)  # nobody listens there

    async def main() -> None:
        client = AsyncTritonClient(endpoint, timeout=30)
        client.open()
        try:
            await client.load("m")
            assert "m" in names_in_state(await client.index())
            await client.unload("m")
        finally:
            await client.close()

    try:
        asyncio.run(main())
        warnings = [r.getMessage() for r in caplog.records if "gRPC port" in r.getMessage()]
        assert len(warnings) == 1 and "go over HTTP" in warnings[0], warnings
    finally:
        server.stop()
