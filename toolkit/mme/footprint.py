"""How much memory a loaded model holds, measured the only way that works on this Triton build.

Triton's ``nv_cpu_memory_used_bytes`` reads 0 for python-backend models, so the footprint of a model is the resident
set size of its ``triton_python_backend_stub`` processes (one per instance), found by the model directory in their
command line (``<repo>/<name>/<version>/model.py``). When no stub is found (an ensemble, a native backend, a remote
Triton) the declared size is used: the ``tritonctl.memory_bytes`` parameter of config.pbtxt, or a default. The GPU
footprint (``toolkit.mme.gpu``) falls back the same way on ``tritonctl.gpu_memory_bytes``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

import psutil

STUB_NAME = "triton_python_backend_stub"
DEFAULT_MODEL_BYTES = 64 * 1024**2
# A GPU model's first load, before anything is measured or declared: a CUDA context alone is a few hundred MiB.
DEFAULT_GPU_MODEL_BYTES = 512 * 1024**2


def pid_alive(pid: int) -> bool:
    """A process with this pid runs and is not a zombie (read from /proc: Linux, where Triton's stubs run). For a
    pid written in a file by a process that may be gone (a model host's state, a killed run's /dev/shm folder)."""
    return pid > 0 and os.path.exists(f"/proc/{pid}") and not _zombie(pid)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    return True


def _size_param(key: str) -> re.Pattern[str]:
    """A config.pbtxt ``parameters`` entry ``key`` whose string value is a whole number of bytes."""
    return re.compile(rf'key:\s*"{re.escape(key)}"\s*value:?\s*\{{\s*string_value:\s*"(\d+)"\s*\}}', re.MULTILINE)


_MEMORY_PARAM = _size_param("tritonctl.memory_bytes")
_GPU_MEMORY_PARAM = _size_param("tritonctl.gpu_memory_bytes")


def stub_processes(repository: Path, names: Iterable[str] | None = None) -> dict[str, list[psutil.Process]]:
    """The live python-backend stubs serving models of ``repository``, per model name (zombies -- dead stubs Triton has
    not reaped -- are not live).

    Only stubs whose model file lies directly under ``repository`` count, so two Tritons on one host (tests, a
    blue/green restart) never see each other's models.
    """
    root = str(Path(repository).resolve()) + os.sep
    wanted = set(names) if names is not None else None
    found: dict[str, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] != STUB_NAME and not (proc.info["cmdline"] or [""])[0].endswith(STUB_NAME):
                continue
            cmd = proc.info["cmdline"] or []
            model_path = next((c for c in cmd[1:] if c.startswith(root)), None)
            if model_path is None:
                continue
            name = model_path[len(root) :].split(os.sep, 1)[0]
            if wanted is not None and name not in wanted:
                continue
            found.setdefault(name, []).append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def started_on_boot_clock(pid: int) -> float | None:
    """When process ``pid`` started, in seconds on ``CLOCK_BOOTTIME`` (what /proc/<pid>/stat counts, in clock ticks:
    10 ms steps), or None when it is gone. psutil's ``create_time`` adds the boot time, which /proc gives in whole
    seconds, so it cannot be compared with a load's own timing; the boot clock can."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def stub_rss(repository: Path, names: Iterable[str] | None = None) -> dict[str, int]:
    """RSS in bytes of the python-backend stubs serving models of ``repository``, summed per model name."""
    sizes: dict[str, int] = {}
    for name, procs in stub_processes(repository, names).items():
        for proc in procs:
            try:
                sizes[name] = sizes.get(name, 0) + int(proc.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
    return sizes


def declared_bytes(model_dir: Path, *, gpu: bool = False) -> int | None:
    """The ``tritonctl.memory_bytes`` (``gpu``: ``tritonctl.gpu_memory_bytes``) parameter of
    ``model_dir/config.pbtxt``, if the model declares one."""
    try:
        text = (Path(model_dir) / "config.pbtxt").read_text()
    except OSError:
        return None
    m = (_GPU_MEMORY_PARAM if gpu else _MEMORY_PARAM).search(text)
    return int(m.group(1)) if m else None


def declared_gpu_bytes(model_dir: Path) -> int | None:
    """The ``tritonctl.gpu_memory_bytes`` parameter of ``model_dir/config.pbtxt`` (GPU bytes the model holds)."""
    return declared_bytes(model_dir, gpu=True)


def parse_size(text: str) -> int:
    """``8GiB``, ``512MB``, ``1.5G``, ``1000`` -> bytes (binary and decimal units; bad input -> ValueError)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read a size from {text!r} (examples: 8GiB, 512MB, 1000000)")
    value, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    power = " KMGT".index(unit) if unit else 0
    return int(value * (1024 if binary or not unit else 1000) ** power) if unit else int(value)
