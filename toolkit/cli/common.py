"""Shared CLI plumbing: one-line errors and exit codes, default URLs, tensor parsing for ``invoke``.

The CLI is thin: each command calls the library and turns a ``TritonctlError`` into ``error: <message>`` on stderr with
exit code 1 (2 for usage errors), never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import typer

from toolkit.errors import TritonctlError
from toolkit.server import TritonEndpoint

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_URL = "http://127.0.0.1:8000"


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a command body, turning library errors into one clear line and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except TritonctlError as exc:
            msg = str(exc)
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


def endpoint_from(url: str | None, grpc_url: str | None = None, metrics_url: str | None = None) -> TritonEndpoint:
    """``--url`` or $TRITONCTL_URL or the default local Triton; gRPC and metrics default to HTTP port +1 / +2."""
    strip = lambda u: u.split("://", 1)[-1].rstrip("/").removesuffix("/metrics") if u else None  # noqa: E731
    return TritonEndpoint.from_url(
        url or os.environ.get("TRITONCTL_URL") or DEFAULT_URL, grpc=strip(grpc_url), metrics=strip(metrics_url)
    )


URL_OPTION = typer.Option(None, "--url", help="Triton HTTP URL (default $TRITONCTL_URL or http://127.0.0.1:8000)")
GRPC_URL_OPTION = typer.Option(None, "--grpc-url", help="Triton gRPC host:port (default: HTTP port + 1)")
METRICS_URL_OPTION = typer.Option(None, "--metrics-url", help="metrics host:port (default: HTTP port + 2)")


def parse_tensor_arg(arg: str) -> tuple[str, np.ndarray | list[Any]]:
    """``NAME=@file.npy`` (numpy file) or ``NAME=<json>`` (nested list, numbers or strings)."""
    name, sep, value = arg.partition("=")
    if not sep or not name:
        raise TritonctlError(f"bad --input {arg!r}: expected NAME=@file.npy or NAME=<json>")
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise TritonctlError(f"--input {name}: file {path} not found")
        try:
            return name, np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise TritonctlError(f"--input {name}: cannot read {path} as .npy: {exc}") from None
    try:
        return name, json.loads(value)
    except json.JSONDecodeError as exc:
        raise TritonctlError(f"--input {name}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
