"""Optional dependencies: which pip extra provides which modules, and the one-line error when one is missing.

The core install (generate, validate, serve, the gateway, the MME) needs none of these. Code that needs an extra calls
``require(extra)`` before its first import of one of its modules, so a core-only install fails with one actionable
line instead of a traceback from deep inside (or from a worker subprocess). ``tests/unit/test_packaging.py`` checks
this table against pyproject.toml: every module listed here is provided by a distribution declared in that extra.
"""

from __future__ import annotations

from importlib.util import find_spec

from toolkit.errors import TritonctlError

# extra -> the top-level modules it provides that toolkit/ imports
EXTRAS: dict[str, tuple[str, ...]] = {
    "loadtest": ("locust", "gevent", "geventhttpclient", "matplotlib"),
    "deploy": ("sklearn", "joblib", "skl2onnx", "onnx", "onnxruntime"),
    "gpu": ("pynvml",),
    "tune": ("matplotlib",),
}


class MissingExtraError(TritonctlError):
    """An optional dependency is not installed; the message says which extra to install."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (found without importing them)."""
    return [m for m in EXTRAS[extra] if find_spec(m) is None]


def hint(extra: str) -> str:
    return f"pip install 'tritonctl[{extra}]'"


def require(extra: str, what: str | None = None) -> None:
    """Raise ``MissingExtraError`` (one line) unless every module of ``extra`` is importable."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(f"{what or extra} needs {', '.join(absent)} (not installed): {hint(extra)}")
