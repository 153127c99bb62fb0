"""Embedded Triton lifecycle: start, readiness, clear startup errors, clean stop with no orphan stubs,
crash -> supervised restart on the same ports with the same models."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import psutil
import pytest
from waiting import wait_until

from toolkit.errors import ServerError
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions, Supervisor, TritonAdmin


def make_repo(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        write_scale_model(root, n, max_batch_size=8)
    return root


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stubs_of(server: EmbeddedTriton) -> list[psutil.Process]:
    assert server.process is not None
    return [p for p in descendants(server.process.pid) if "triton_python_backend_stub" in " ".join(p.cmdline())]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_start_load_stop_leaves_no_orphans(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", ["double", "double2"])
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path, load=["double"]))
    server.start(timeout=60)
    admin = TritonAdmin(server.endpoint)
    assert admin.ready() and admin.loaded() == ["double"]
    admin.load("double2")
    stubs = stubs_of(server)
    assert len(stubs) == 2
    main = server.process
    assert main is not None
    server.stop()
    assert main.poll() is not None  # stop() waited for tritonserver itself (and reaped it)
    # The stubs were SIGKILLed with the process group; they are gone once the kernel has torn them down.
    wait_until(lambda: not [p for p in stubs if _alive(p)], 10, "the python backend stubs exit")
    assert not admin.live()


def test_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", [])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerError, match=f"http port {port} on 127.0.0.1 is already in use"):
            EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path, http_port=port)).start()


def test_missing_repository_and_failing_model_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="is not a directory"):
        EmbeddedTriton(ServerOptions(repository=tmp_path / "nope", workdir=tmp_path)).start()
    repo = make_repo(tmp_path / "repo", ["broken"])
    (repo / "broken" / "1" / "model.py").write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(ServerError, match=r"exited with code|failed to load"):
        EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path, load=["broken"])).start(timeout=60)


def test_crash_is_restarted_with_models_reloaded(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", ["double"])
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path))
    states: list[str] = []
    sup = Supervisor(server, index_interval=0.2, on_state=states.append)
    endpoint = sup.start()
    try:
        admin = TritonAdmin(endpoint)
        admin.load("double")
        deadline = time.monotonic() + 5
        while sup.loaded_models() != {"double"} and time.monotonic() < deadline:
            time.sleep(0.05)
        old_pid = server.process.pid  # type: ignore[union-attr]
        server.kill()
        t0 = time.monotonic()
        deadline = t0 + 20
        while not (sup.is_up and server.process and server.process.pid != old_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sup.restarts == 1 and sup.is_up
        assert server.endpoint == endpoint  # same ports
        assert TritonAdmin(server.endpoint).loaded() == ["double"]
        assert states[-2:] == ["down", "up"]
    finally:
        sup.stop()
    assert not sup.is_up


def test_stop_during_a_restart_leaves_nothing_running(tmp_path: Path) -> None:
    """Triton dies and the supervisor is stopped while it restarts: no tritonserver may outlive stop(). (The lifecycle
    lock also covers a restart slower than stop()'s 15 s join, e.g. an eager reload of many models; that timing is
    not provoked here.)"""
    repo = make_repo(tmp_path / "repo", ["double"])
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path, load=["double"]))
    down = threading.Event()
    sup = Supervisor(server, poll_interval=0.01, on_state=lambda s: s == "down" and down.set())
    sup.start()
    mine = {p.pid for p in psutil.process_iter(["cmdline"]) if str(repo) in " ".join(p.info["cmdline"] or [])}
    server.kill()
    assert down.wait(10)  # the watcher saw the death: it restarts from here on
    sup.stop()
    watcher = sup._thread
    assert watcher is not None
    watcher.join(30)  # the restart loop is over: nothing can start a tritonserver after this
    assert not watcher.is_alive()

    def alive() -> list[tuple[int, list[str]]]:
        return [
            (p.pid, p.info["cmdline"][:2]) for p in psutil.process_iter(["cmdline", "status"])
            if str(repo) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE
        ]  # fmt: skip

    # What stop() killed is gone once the kernel has torn it down; a process started after stop() would stay.
    wait_until(lambda: not alive(), 10, "every process of this repository exits")
    assert mine and not sup.is_up
