"""Shared CLI plumbing: one-line errors and exit codes, default URLs and credentials, ``--json``, tensor parsing.

The CLI is thin: each command calls the library and turns a ``TritonctlError`` into ``error: <message>`` on stderr with
exit code 1 (2 for usage errors), never a traceback. A server that cannot be reached gets a hint, because the usual
cause is on the user's side (nothing running, or another URL): the message says which flag or variable to set.

This module is imported at start-up by every command (``tritonctl --help`` included), so it imports nothing heavy:
numpy and ``toolkit.server`` (aiohttp, tritonclient) are imported by the functions that need them.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer

from toolkit.errors import TritonctlError, TritonUnavailableError

if TYPE_CHECKING:  # numpy and toolkit.server (aiohttp, tritonclient) cost ~0.3 s: paid by the commands that use them
    import numpy as np

    from toolkit.server import TritonEndpoint

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_URL = "http://127.0.0.1:8000"
UNREACHABLE_HINT = "is a server running there? start one with `tritonctl serve`, or set --url or $TRITONCTL_URL"


def fail(message: str, code: int = 1) -> None:
    """Print ``error: <message>`` (one line) on stderr and exit with ``code``."""
    typer.echo("error: " + " ".join(message.split()), err=True)
    raise typer.Exit(code)


def with_hint(exc: TritonctlError) -> str:
    """The error's message, with what to do about it when that is knowable from its type (Triton unreachable)."""
    msg = str(exc)
    if isinstance(exc, TritonUnavailableError) and "unreachable" in msg:
        return f"{msg} ({UNREACHABLE_HINT})"
    return msg


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a command body, turning library errors into one clear line and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except TritonctlError as exc:
            typer.echo(f"error: {with_hint(exc)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


def endpoint_from(url: str | None, grpc_url: str | None = None, metrics_url: str | None = None) -> TritonEndpoint:
    """``--url`` or $TRITONCTL_URL or the default local Triton; gRPC and metrics default to HTTP port +1 / +2."""
    from toolkit.server.endpoint import TritonEndpoint

    strip = lambda u: u.split("://", 1)[-1].rstrip("/").removesuffix("/metrics") if u else None  # noqa: E731
    return TritonEndpoint.from_url(
        url or os.environ.get("TRITONCTL_URL") or DEFAULT_URL, grpc=strip(grpc_url), metrics=strip(metrics_url)
    )


def api_key_headers(api_key: str | None) -> dict[str, str]:
    """The header a gateway with principals reads an API key from (``--api-key`` or $TRITONCTL_API_KEY)."""
    key = api_key or os.environ.get("TRITONCTL_API_KEY")
    return {"X-Api-Key": key} if key else {}


def echo_json(doc: Any) -> None:
    """One JSON document on stdout (``--json``): sorted keys, paths and other objects as strings."""
    typer.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


URL_OPTION = typer.Option(
    None, "--url", help="Triton or gateway HTTP URL (default $TRITONCTL_URL or http://127.0.0.1:8000)"
)
API_KEY_OPTION = typer.Option(
    None, "--api-key", help="API key for a gateway with principals (default $TRITONCTL_API_KEY)", show_default=False
)
JSON_OPTION = typer.Option(False, "--json", help="print one JSON document instead of text")
GRPC_URL_OPTION = typer.Option(None, "--grpc-url", help="Triton gRPC host:port (default: HTTP port + 1)")
METRICS_URL_OPTION = typer.Option(None, "--metrics-url", help="metrics host:port (default: HTTP port + 2)")


def parse_tensor_arg(arg: str) -> tuple[str, np.ndarray | list[Any]]:
    """``NAME=@file.npy`` (numpy file) or ``NAME=<json>`` (nested list, numbers or strings)."""
    import numpy as np

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
