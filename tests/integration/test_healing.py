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
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from toolkit import ModelManager, ServeConfig, Serving, start
from toolkit.mme.errors import ModelLoadError
from toolkit.mme.stores import LocalStore
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions, Supervisor, TritonAdmin


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``condition`` until it is true; the seconds it took (AssertionError naming ``what`` after ``timeout``)."""
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


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
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path))
    states: list[str] = []
    sup = Supervisor(
        server, index_interval=0.2, probe_interval=0.2, probe_timeout=0.5, probe_failures=2, on_state=states.append
    )
    endpoint = sup.start()
    assert server.process is not None
    old = server.process.pid
    try:
        TritonAdmin(endpoint, timeout=30).load("double")
        wait_for(lambda: sup.loaded_models() == {"double"}, 5, "the supervisor sees the model loaded")
        os.kill(old, signal.SIGSTOP)
        took = wait_for(
            lambda: sup.is_up and server.process is not None and server.process.pid != old,
            30,
            "the wedged server is replaced by a live one",
        )
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
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path))
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
        wait_for(lambda: not serving.models.is_resident("sleepy") and _state(serving, "sleepy") == "LOADING", 5,
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
        wait_for(lambda: time.monotonic() > asking_done(cold) + 0.6, 2, "the first backoff")
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
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path))
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
