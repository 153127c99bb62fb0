"""Errors of the multi-model endpoint manager, mapped by the gateway to SageMaker's responses.

``ModelNotFoundError`` -> 404, ``LoadTimeoutError`` -> 429 ModelNotReadyException (retry later),
``InsufficientMemoryError`` -> 507 (cannot fit even after eviction), ``ModelLoadError`` -> a load failure carrying
Triton's (or the store's) own message.
"""

from __future__ import annotations

from toolkit.errors import TritonctlError, TritonUnavailableError


class ModelNotFoundError(TritonctlError):
    """The model is neither in the Triton repository directory nor in the artifact store (or its name is invalid)."""

    def __init__(self, name: str, detail: str = "") -> None:
        self.model = name
        super().__init__(f"model {name!r} not found" + (f": {detail}" if detail else ""))


class ModelLoadError(TritonctlError):
    """Fetching or loading failed; ``reason`` is Triton's/the store's message, shown to the caller verbatim."""

    def __init__(self, name: str, reason: str, *, retry_in: float | None = None) -> None:
        self.model = name
        self.reason = reason
        self.retry_in = retry_in
        tail = f" (next attempt allowed in {retry_in:.1f} s)" if retry_in else ""
        super().__init__(f"model {name!r} failed to load: {reason}{tail}")


class ArtifactFetchError(ModelLoadError):
    """The artifact could not be fetched: corrupt or unsafe tarball, store unreachable, access denied."""


class InsufficientMemoryError(ModelLoadError):
    """The model cannot fit even after eviction: its footprint (measured or estimated) is above the whole budget, or
    every resident model is pinned (by a loaded ensemble, or by this very ensemble) with nothing busy, loading or
    unloading that could free a place. Waiting cannot help, so it is answered at once (SageMaker's Triton front end:
    HTTP 507) instead of after the load timeout."""


class LoadHungError(ModelLoadError):
    """Triton did not finish the load within the load timeout (an ``initialize`` that hangs); Triton may keep the model
    LOADING until it restarts, so the next attempt first asks whether it still does."""


class TritonDownError(ModelLoadError, TritonUnavailableError):
    """Triton did not answer the repository API (down or restarting); both a load error and 'unavailable'."""


class LoadTimeoutError(TritonctlError):
    """The model did not become ready within the caller's timeout; the load may still finish (retry later)."""

    def __init__(self, name: str, waited: float, detail: str = "") -> None:
        self.model = name
        self.waited = waited
        super().__init__(
            f"model {name!r} not ready after {waited:.2f} s" + (f": {detail}" if detail else "") + "; retry later"
        )


class NoCapacityError(LoadTimeoutError):
    """Nothing could be evicted in time (every resident model busy or pinned) to make room for the model."""


class ModelPinnedError(TritonctlError):
    """An explicit unload of a model that a loaded ensemble still uses."""


class ManagerConfigError(TritonctlError):
    """Invalid manager settings (negative budget, unknown policy, GPU fraction without a GPU...)."""


def model_error(name: str, exc: TritonctlError) -> ModelLoadError:
    """A failed repository call for ``name`` (``toolkit.server.client``) as the model's error, the one rule for the
    manager and the gateway's manager-less mode: Triton not there -> ``TritonDownError`` (the gateway answers
    unavailable); Triton refused or was too slow -> ``ModelLoadError`` carrying that message."""
    if isinstance(exc, TritonUnavailableError):
        return TritonDownError(name, str(exc))
    return ModelLoadError(name, str(exc))
