"""`tritonctl serve` as a user runs it: a foreground process that serves through the gateway, loads on demand, and
stops cleanly on Ctrl-C (SIGINT) or SIGTERM, leaving no tritonserver or python-backend stub behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient

from toolkit.loadtest.serverstats import parse_prometheus
from toolkit.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def _start(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "serve", *args], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"serve exited early: {proc.wait()} {seen}")
        if m := re.search(r"triton\s+http (\S+)", line):
            seen["triton"] = m.group(1)
        if m := re.search(r"^triton log: (\S+)", line):  # where to follow Triton's log, printed at start
            seen["log"] = m.group(1)
            seen["work"] = str(Path(m.group(1)).parent)
        if m := re.search(r"gateway\s+http (\S+)", line):
            seen["gateway"] = m.group(1)
        if line.startswith("hint: "):
            seen["hint"] = line.strip()
        if "serving; Ctrl-C to stop" in line:
            return proc, seen
    proc.kill()
    pytest.fail("serve did not become ready")


def _stop(proc: subprocess.Popen[str], sig: int) -> None:
    family = psutil.Process(proc.pid).children(recursive=True)
    assert any("tritonserver" in " ".join(p.cmdline()) for p in family)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 0
    time.sleep(0.3)
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline() for p in alive]


def test_serve_through_the_gateway_then_ctrl_c(tmp_path: Path) -> None:
    gw_port, gw_grpc = free_port(), free_port()
    proc, seen = _start(
        [str(ROOT / "model_repository"), "--manifest", str(ROOT / "tritonctl.yaml"), "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "0", "--gateway-port", str(gw_port), "--gateway-grpc-port",
         str(gw_grpc), "--max-models", "2", "--access-log", str(tmp_path / "access.jsonl"), "--log-level", "info",
         "--triton-trace-config", "rate=1", "--triton-trace-config", "level=TIMESTAMPS",
         "--triton-trace-config", f"triton,file={tmp_path / 'trace.json'}"],
        tmp_path,
    )  # fmt: skip
    try:
        assert seen["gateway"] == f"http://127.0.0.1:{gw_port}"
        # the manifest's multi-model endpoint is served per process: serve says what --multiplex would change
        hint = seen["hint"]
        assert hint.startswith("hint: multi-model endpoint housing: one python stub per model"), hint
        assert "--multiplex" in hint
        assert "Started HTTPService" in Path(seen["log"]).read_text()
        client = httpclient.InferenceServerClient(f"127.0.0.1:{gw_port}")
        x = httpclient.InferInput("X", [1, 64], "FP32")
        x.set_data_from_numpy(np.load(ROOT / "examples" / "digit0.npy")[None, :].astype(np.float32))
        assert int(client.infer("digits_mlp", [x]).as_numpy("label")[0, 0]) == 0  # loaded on first request
        client.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{gw_port}/metrics", timeout=5) as r:
            assert parse_prometheus(r.read().decode())[("tritonctl_mme_loaded_models", "")] == 1
        (entry,) = [json.loads(line) for line in (tmp_path / "access.jsonl").read_text().splitlines()]
        assert entry["model"] == "digits_mlp" and entry["status"] == 200 and entry["cold"] is True
    finally:
        _stop(proc, signal.SIGINT)
    # --triton-trace-config reached tritonserver: its triton-mode trace file holds the request's timestamps
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert any(t.get("model_name") == "digits_mlp" for t in trace), trace[:3]
    assert not Path(seen["work"]).exists()  # its own temporary work directory is removed after a clean stop


def test_serve_load_all_without_gateway_then_sigterm(tmp_path: Path) -> None:
    proc, seen = _start(
        [str(ROOT / "model_repository"), "--load", "all", "--no-gateway", "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0"],
        tmp_path,
    )  # fmt: skip
    try:
        admin = httpclient.InferenceServerClient(seen["triton"])
        ready = {m["name"] for m in admin.get_model_repository_index() if m.get("state") == "READY"}
        assert {"digits_logreg", "housing_pipeline_Chicago_IL", "housing_by_city"} <= ready
        admin.close()
    finally:
        _stop(proc, signal.SIGTERM)


def test_host_publishes_the_gateway_only(tmp_path: Path) -> None:
    """--host moves the gateway; Triton (no auth, repository API) and the admin port stay on 127.0.0.1.
    127.0.0.2 is loopback too, so nothing leaves the machine."""
    gw_port = free_port("127.0.0.2")
    proc, seen = _start(
        [str(ROOT / "model_repository"), "--host", "127.0.0.2", "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0", "--gateway-port", str(gw_port), "--gateway-grpc-port", "0", "--admin-port", "0"],
        tmp_path,
    )  # fmt: skip
    try:
        assert seen["gateway"] == f"http://127.0.0.2:{gw_port}"
        assert "hint" not in seen  # no multi-model endpoint: nothing to hint at
        assert seen["triton"].startswith("127.0.0.1:")
        with urllib.request.urlopen(f"http://127.0.0.2:{gw_port}/ping", timeout=5) as r:
            assert r.status == 200
        triton_port = int(seen["triton"].rsplit(":", 1)[1])
        with pytest.raises(OSError):  # Triton is not listening on the published address
            urllib.request.urlopen(f"http://127.0.0.2:{triton_port}/v2/health/live", timeout=2)
    finally:
        _stop(proc, signal.SIGINT)


@pytest.mark.parametrize("flag", ["--gateway-port", "--gateway-grpc-port", "--http-port", "--metrics-port"])
def test_a_busy_port_fails_first_and_leaves_nothing(flag: str, tmp_path: Path) -> None:
    """Checked before anything starts: one line naming the flag, no "work directory kept"/"stopped", no
    tritonctl-serve-* directory in $TMPDIR, and no process left (nothing was started)."""
    ports = {"--http-port": "0", "--grpc-port": "0", "--metrics-port": "0", "--gateway-port": "0",
             "--gateway-grpc-port": "0"}  # fmt: skip
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports[flag] = str(busy.getsockname()[1])
        r = subprocess.run(
            [sys.executable, "-m", "toolkit", "serve", str(ROOT / "model_repository"),
             *(x for kv in ports.items() for x in kv)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, env={**os.environ, "TMPDIR": str(tmp)},
        )  # fmt: skip
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr == f"error: {flag} {ports[flag]}: 127.0.0.1:{ports[flag]} is already in use\n", r.stderr
    assert "kept" not in r.stdout and "stopped" not in r.stdout and "triton" not in r.stdout, r.stdout
    assert list(tmp.iterdir()) == []
