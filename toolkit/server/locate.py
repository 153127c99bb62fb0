"""Find the tritonserver binary that ships inside the nvidia-pytriton wheel and prepare a backend directory.

The wheel carries a full Triton (python backend only) plus one python-backend stub per CPython minor version; the
stub must match the Python that runs the models, so it is copied next to the backend library for the running
interpreter. Doing this in a private directory keeps the installed wheel untouched.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from toolkit.errors import ServerError

# The nvidia-pytriton releases whose private layout this module reads (pytriton/tritonserver/{bin, backends/python,
# python_backend_stubs/X.Y, caches}, nvidia_pytriton.libs), checked in the wheels of 0.5.0 to 0.7.0; CI runs 0.7.0.
# pyproject.toml's requirement is the same range (tests/unit/test_packaging.py); lift both after checking a release.
PYTRITON_MIN = (0, 5)
PYTRITON_BELOW = (0, 8)
PYTRITON_RANGE = f">={'.'.join(map(str, PYTRITON_MIN))},<{'.'.join(map(str, PYTRITON_BELOW))}"


def check_pytriton_version(version: str) -> None:
    """``ServerError`` unless nvidia-pytriton ``version`` is one whose layout :func:`locate_triton` knows."""
    release = tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])
    if not release or not PYTRITON_MIN <= release < PYTRITON_BELOW:
        raise ServerError(
            f"nvidia-pytriton {version} is not supported: tritonctl knows the layout of {PYTRITON_RANGE} "
            f"(pip install 'nvidia-pytriton{PYTRITON_RANGE}')"
        )


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of an embedded Triton live."""

    binary: Path
    lib_dir: Path
    python_backend: Path
    stub: Path
    cache_dir: Path  # response-cache implementations (local)


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ServerError(
            "nvidia-pytriton is not installed: `pip install nvidia-pytriton` provides tritonserver"
        ) from exc
    try:
        version = metadata.version("nvidia-pytriton")
    except metadata.PackageNotFoundError:  # pytriton importable without its distribution metadata (a source tree)
        version = None
    if version is not None:
        check_pytriton_version(version)
    return Path(pytriton.__file__).resolve().parent


def locate_triton(python_version: str | None = None) -> TritonInstall:
    """Locate tritonserver, its shared libraries and the python backend stub for ``python_version`` (default: ours)."""
    root = _pytriton_root()
    ts = root / "tritonserver"
    binary = ts / "bin" / "tritonserver"
    lib_dir = root.parent / "nvidia_pytriton.libs"
    python_backend = ts / "backends" / "python"
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = ts / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not binary.is_file():
        raise ServerError(f"tritonserver binary missing at {binary} (is nvidia-pytriton complete?)")
    if not (python_backend / "libtriton_python.so").is_file():
        raise ServerError(f"python backend missing at {python_backend}")
    if not stub.is_file():
        have = (
            sorted(p.name for p in (ts / "python_backend_stubs").iterdir())
            if (ts / "python_backend_stubs").is_dir()
            else []
        )
        raise ServerError(
            f"no python backend stub for Python {version} in nvidia-pytriton (available: {', '.join(have)})"
        )
    return TritonInstall(
        binary=binary, lib_dir=lib_dir, python_backend=python_backend, stub=stub, cache_dir=ts / "caches"
    )


def prepare_backend_dir(install: TritonInstall, cache_root: Path | None = None) -> Path:
    """A backend directory holding ``python/`` = backend library + utils + the matching stub.

    The directory name hashes the source paths, so a different venv or Python gets its own and a rerun reuses it.
    """
    key = hashlib.sha256(f"{install.python_backend}|{install.stub}".encode()).hexdigest()[:12]
    root = (cache_root or Path.home() / ".cache" / "tritonctl") / f"backends-{key}"
    py = root / "python"
    marker = py / ".complete"
    if marker.is_file():
        return root
    tmp = root.with_name(root.name + f".tmp{id(install)}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "python").mkdir(parents=True)
    for f in install.python_backend.iterdir():
        if f.is_file():
            shutil.copy2(f, tmp / "python" / f.name)
    shutil.copy2(install.stub, tmp / "python" / "triton_python_backend_stub")
    (tmp / "python" / ".complete").write_text("ok\n")
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root
