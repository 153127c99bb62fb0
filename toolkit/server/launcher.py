"""Launch and stop an embedded tritonserver process.

Triton runs in explicit model-control mode so that loading is driven by us (the MME manager, the CLI) through the
repository API, with ``--disable-auto-complete-config`` because generated configs are complete (a python model then
loads in ~0.12 s instead of 1.4 s). The server is started in its own process group: its python-backend stubs are its
children, and stopping the group guarantees that no orphan stub outlives the server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from toolkit.errors import ServerError
from toolkit.server.endpoint import TritonEndpoint
from toolkit.server.locate import locate_triton, prepare_backend_dir

# TritonEndpoint lives in toolkit.server.endpoint; the name imported above keeps the old path working for the modules
# still using it (gateway.core, gateway.server, the gateway benchmarks, tests/integration/test_gateway_h2.py).
__all__ = ["EmbeddedTriton", "ServerOptions", "TritonEndpoint", "free_port", "http_ok", "port_is_free"]

DEFAULT_HOST = "127.0.0.1"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port the OS says is free now (a small race remains; the launcher detects a lost race and says so)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = DEFAULT_HOST) -> bool:
    """True when nobody listens on the port (TIME_WAIT leftovers do not count: Triton binds with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class ServerOptions:
    """Everything that shapes the tritonserver command line."""

    repository: Path
    host: str = DEFAULT_HOST
    http_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None
    load: list[str] = field(default_factory=list)  # ["*"] = all
    log_file: Path | None = None
    workdir: Path | None = None
    exit_timeout_s: int = 5
    extra_args: list[str] = field(default_factory=list)
    log_verbose: int = 0
    # Our configs are complete; Triton's auto-complete only costs load time (1.4 s vs 0.12 s for a python model).
    auto_complete_config: bool = False
    # Size of Triton's local response cache; models opt in with `response_cache: true` in the manifest.
    response_cache_bytes: int | None = None
    # Triton's --model-load-thread-count (None: Triton's 4). Only raised, never lowered: the MME's load gate bounds
    # concurrent loads itself, and other loads (a restart's reload, a router's) keep Triton's threads.
    model_load_threads: int | None = None


class EmbeddedTriton:
    """One tritonserver process. Use as a context manager, or call ``start``/``stop``."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.install = locate_triton()
        self.backend_dir = prepare_backend_dir(self.install)
        self.process: subprocess.Popen[bytes] | None = None
        self._ports: tuple[int, int, int] | None = None
        self.log_path = options.log_file or (options.workdir or Path.cwd() / ".tritonctl") / "tritonserver.log"

    # -- addresses ---------------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> TritonEndpoint:
        if self._ports is None:
            raise ServerError("server not started")
        h = self.options.host
        return TritonEndpoint(f"{h}:{self._ports[0]}", f"{h}:{self._ports[1]}", f"{h}:{self._ports[2]}")

    def _choose_ports(self) -> tuple[int, int, int]:
        o = self.options
        chosen: list[int] = []
        for name, port in (("http", o.http_port), ("grpc", o.grpc_port), ("metrics", o.metrics_port)):
            if port:
                if not port_is_free(port, o.host):
                    raise ServerError(f"{name} port {port} on {o.host} is already in use")
                chosen.append(port)
            else:
                p = free_port(o.host)
                while p in chosen:
                    p = free_port(o.host)
                chosen.append(p)
        return chosen[0], chosen[1], chosen[2]

    def command(self) -> list[str]:
        assert self._ports is not None
        o = self.options
        http, grpc, metrics = self._ports
        cmd = [
            str(self.install.binary),
            f"--model-repository={Path(o.repository).resolve()}",
            f"--backend-directory={self.backend_dir}",
            "--model-control-mode=explicit",
            *([] if o.auto_complete_config else ["--disable-auto-complete-config"]),
            f"--http-address={o.host}",
            f"--http-port={http}",
            f"--grpc-address={o.host}",
            f"--grpc-port={grpc}",
            f"--metrics-address={o.host}",
            f"--metrics-port={metrics}",
            "--allow-metrics=true",
            # The MME's --gpu-memory-fraction reads nv_gpu_memory_*; without an NVIDIA driver Triton would only log
            # "Failed to initialize NVML" warnings, so GPU metrics are asked for where the driver's device exists.
            f"--allow-gpu-metrics={'true' if Path('/dev/nvidiactl').exists() else 'false'}",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            f"--log-verbose={o.log_verbose}",
        ]
        if o.response_cache_bytes:
            cmd += [
                f"--cache-directory={self.install.cache_dir}",
                f"--cache-config=local,size={o.response_cache_bytes}",
            ]
        if o.model_load_threads is not None and o.model_load_threads > 4:
            cmd.append(f"--model-load-thread-count={o.model_load_threads}")
        cmd += [f"--load-model={m}" for m in o.load]
        return cmd + list(o.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = str(self.install.lib_dir)
        env["LD_LIBRARY_PATH"] = libs + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        # The stub runs `python` models with whatever numpy it finds first on PATH: ours.
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> TritonEndpoint:
        if self.process is not None and self.process.poll() is None:
            return self.endpoint
        if not Path(self.options.repository).is_dir():
            raise ServerError(f"model repository {self.options.repository} is not a directory")
        self._ports = self._choose_ports()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed after Popen
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
                cwd=str(self.options.workdir or Path.cwd()),
            )
        finally:
            log.close()
        try:
            self.wait_ready(timeout)
        except ServerError:
            self.stop()
            raise
        return self.endpoint

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = self.endpoint.http_url + "/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode}: {self._diagnose()}")
            if http_ok(url, timeout=0.5):
                return
            time.sleep(0.05)
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s: {self._diagnose()} (log: {self.log_path})")

    def _diagnose(self) -> str:
        tail = self.log_tail(40)
        for needle, why in (
            ("Address already in use", "a port is already in use"),
            ("failed to start", "a service failed to start"),
            ("failed to load", "a model failed to load"),
            ("error while loading shared libraries", "shared libraries missing"),
        ):
            if needle in tail:
                line = next((ln for ln in tail.splitlines() if needle in ln), "")
                return f"{why}: {line.strip()[:300]}"
        last = [ln for ln in tail.splitlines() if ln.strip()][-3:]
        return " | ".join(s.strip()[:200] for s in last) or "no output"

    def log_tail(self, lines: int = 40) -> str:
        try:
            data = self.log_path.read_bytes()[-20000:].decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-lines:])

    def is_running(self) -> bool:
        proc = self.process  # read once: a supervisor thread may set it to None between two reads
        return proc is not None and proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left (stubs included)."""
        proc = self.process
        if proc is None:
            return
        pgid = proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self.process = None

    def kill(self) -> None:
        """Hard-kill the server process only (tests use this to simulate a crash)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> EmbeddedTriton:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
