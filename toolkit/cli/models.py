"""``tritonctl status`` and ``tritonctl models``: Triton's health and repository API, from Triton or the gateway.

Both answer the same API, so ``--url`` may name either. Through a gateway the read-only calls (``status``,
``models list``, ``models ready``) work for any caller allowed to invoke -- with principals, its API key in
``--api-key`` -- and list only the models it may invoke; ``models load``/``unload`` change what is resident, so a
gateway takes them from a principal with an Allow on ``tritonctl:Admin`` or on its admin port only. The refusal says
so, since the gateway's own message (an IAM-style denial) does not say what to do.

``models load`` is Triton's repository load: the model must already be in the repository Triton serves, and nothing
is evicted. ``tritonctl mme load`` is the multi-model endpoint's: it fetches the model from ``--store`` first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from toolkit.cli.common import (
    API_KEY_OPTION,
    JSON_OPTION,
    UNREACHABLE_HINT,
    URL_OPTION,
    api_key_headers,
    echo_json,
    endpoint_from,
    fail,
    friendly,
)
from toolkit.errors import InferenceError

if TYPE_CHECKING:
    from toolkit.server import TritonAdmin

models_app = typer.Typer(
    help="Triton's repository API: list, load, unload, readiness (Triton or the gateway).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

ADMIN_NEEDED = (
    "through the gateway, loading and unloading need a principal with an Allow on tritonctl:Admin (its key in "
    "--api-key) or the admin port (tritonctl serve --admin-port PORT, then --url http://127.0.0.1:PORT)"
)


KEY_NEEDED = "a gateway with principals: pass a key with --api-key or $TRITONCTL_API_KEY"


def _admin(url: str | None, api_key: str | None, timeout: float = 60.0) -> TritonAdmin:
    from toolkit.server import TritonAdmin

    return TritonAdmin(endpoint_from(url), timeout=timeout, headers=api_key_headers(api_key))


def status(url: str | None = URL_OPTION, api_key: str | None = API_KEY_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Server health, version, and loaded models (those the caller may invoke, through a gateway)."""
    admin = _admin(url, api_key, timeout=5)
    if not admin.live():
        fail(f"Triton at {admin.endpoint.http} is not reachable ({UNREACHABLE_HINT})")
    with _gateway_hints():
        meta = admin.server_metadata()
        ready = admin.ready()
        loaded = admin.loaded()
    if as_json:
        doc = {"url": admin.endpoint.http_url, "server": meta.get("name"), "version": meta.get("version")}
        echo_json({**doc, "live": True, "ready": ready, "loaded": loaded})
        return
    typer.echo(f"server   {meta.get('name')} {meta.get('version')} at {admin.endpoint.http_url}")
    typer.echo(f"ready    {ready}")
    typer.echo(f"loaded   {len(loaded)}: {', '.join(loaded) if loaded else '-'}")


@models_app.command("list", short_help="Every model in the repository, with its state.")
@friendly
def models_list(
    url: str | None = URL_OPTION, api_key: str | None = API_KEY_OPTION, as_json: bool = JSON_OPTION
) -> None:
    """Every model in the repository with its state (through a gateway: those the caller may invoke)."""
    with _gateway_hints():
        index = _admin(url, api_key, timeout=10).index()
    if as_json:
        echo_json(index)
        return
    for m in sorted(index, key=lambda m: m["name"]):
        reason = f"  ({m['reason']})" if m.get("reason") else ""
        typer.echo(f"{m['name']:<32} {m.get('version', '') or '-':<4} {m.get('state', 'UNAVAILABLE')}{reason}")


@contextmanager
def _gateway_hints() -> Iterator[None]:
    """A gateway's refusals, with what to do about them: its own messages are SageMaker's and IAM's, which name
    neither the flag that carries a key nor the admin port."""
    try:
        yield
    except InferenceError as exc:
        msg = str(exc)
        if "tritonctl:Admin" in msg:
            fail(f"{msg}: {ADMIN_NEEDED}")
        if "Authentication Token" in msg or "API key" in msg:
            fail(f"{msg} ({KEY_NEEDED})")
        raise


@models_app.command("load", short_help="Load models already in Triton's repository (no store).")
@friendly
def models_load(
    names: list[str] = typer.Argument(..., help="model names in the repository Triton serves"),
    url: str | None = URL_OPTION,
    api_key: str | None = API_KEY_OPTION,
) -> None:
    """Load (or reload) models already in Triton's repository, now. To fetch a model from an artifact store
    first (a multi-model endpoint), use `tritonctl mme load`."""
    admin = _admin(url, api_key)
    for name in names:
        with _gateway_hints():
            admin.load(name)
        typer.echo(f"{name}: READY")


@models_app.command("unload", short_help="Unload models (Triton's repository API).")
@friendly
def models_unload(
    names: list[str] = typer.Argument(..., help="model names"),
    url: str | None = URL_OPTION,
    api_key: str | None = API_KEY_OPTION,
) -> None:
    """Unload models (Triton's repository API; returns once Triton has accepted the unload)."""
    admin = _admin(url, api_key)
    for name in names:
        with _gateway_hints():
            admin.unload(name)
        typer.echo(f"{name}: unloaded")


@models_app.command("ready")
@friendly
def models_ready(
    name: str, url: str | None = URL_OPTION, api_key: str | None = API_KEY_OPTION, as_json: bool = JSON_OPTION
) -> None:
    """Exit 0 when the model is ready, 1 otherwise."""
    with _gateway_hints():
        ready = _admin(url, api_key, timeout=10).model_ready(name)
    if as_json:
        echo_json({"model": name, "ready": ready})
    else:
        typer.echo(f"{name}: {'READY' if ready else 'NOT READY'}")
    if not ready:
        raise typer.Exit(1)
