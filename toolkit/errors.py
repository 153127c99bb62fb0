"""Typed errors shared by every part of tritonctl.

The CLI turns any ``TritonctlError`` into a one-line message and a non-zero exit code, so library code raises
these (with a message a user can act on) instead of letting tracebacks escape.
"""

from __future__ import annotations


class TritonctlError(Exception):
    """Base class: a failure with a message meant for the user."""


class ManifestError(TritonctlError):
    """The manifest is malformed; ``issues`` holds ``(yaml_path, line, message)`` triples."""

    def __init__(self, source: str, issues: list[tuple[str, int | None, str]]) -> None:
        self.source = source
        self.issues = issues
        lines = [f"{source}:{line if line else '?'}: {path}: {msg}" for path, line, msg in issues]
        super().__init__("invalid manifest\n" + "\n".join(lines))


class GenerateError(TritonctlError):
    """A model repository cannot be written from the manifest."""


class ServerError(TritonctlError):
    """The embedded Triton cannot be located, started, or reached."""


class TritonUnavailableError(ServerError):
    """Triton is not answering (down, restarting, or the URL is wrong)."""


class TritonTimeoutError(TritonctlError):
    """Triton is there but did not answer a control-plane call in time (a long load, a wedged server)."""


class InferenceError(TritonctlError):
    """Triton rejected a request (unknown model, wrong shape or dtype...); carries Triton's own message."""
