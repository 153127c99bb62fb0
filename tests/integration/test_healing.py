"""Dead pieces stay dead no more: a wedged Triton is restarted, a dead python stub is reloaded, a load that hangs
fails after its timeout without stalling anything else. Real embedded Tritons (one per test: each test breaks its own),
tiny python models; intervals are shortened so every failure heals in seconds, and every wait polls a condition."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil

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
