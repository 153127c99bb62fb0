"""``tritonctl mme``: the multi-model endpoint from the command line.

``simulate`` replays a Zipf (or recorded) trace through the eviction policies and Belady's optimum, offline.
``list``/``load``/``unload`` drive a running Triton's repository API through the same ``ModelManager`` the gateway uses
(fetching from ``--store`` into ``--repository`` first, with a progress bar). A serving process keeps its own manager:
these commands are for operators and scripts, and the serving manager re-syncs from Triton's index on restart.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from toolkit.cli.common import JSON_OPTION, URL_OPTION, echo_json, endpoint_from, friendly
from toolkit.mme.errors import ModelNotFoundError
from toolkit.names import canonical_target, is_nested, target_path

if TYPE_CHECKING:  # the manager (aiohttp), the stores (boto3) and the simulator are imported by the command using them:
    # `tritonctl --help` and `tritonctl generate` must not pay for them (tests/unit/test_cli_manners.py)
    from toolkit.mme.manager import ModelManager
    from toolkit.mme.stores import ArtifactStore

mme_app = typer.Typer(
    help="Multi-model endpoint: simulate eviction policies, list/load/unload models.", rich_markup_mode=None
)

REPO_OPTION = typer.Option(
    Path("model_repository"), "--repository", "-r", help="Triton's model repository directory (--model-repository)"
)
STORE_OPTION = typer.Option(None, "--store", help="artifact store: s3://bucket/prefix or a directory")
ENDPOINT_URL_OPTION = typer.Option(None, "--endpoint-url", help="S3-compatible endpoint for s3:// stores")


def _store(uri: str | None, endpoint_url: str | None) -> ArtifactStore | None:
    if uri is None:
        return None
    from toolkit.mme.stores import open_store

    return open_store(uri, endpoint_url=endpoint_url) if endpoint_url else open_store(uri)


def _with_manager(url: str | None, repository: Path, store: ArtifactStore | None, body: Any) -> Any:
    """Run ``body(manager)`` on a started manager over Triton at ``url``, and close it whatever happens."""
    import asyncio

    return asyncio.run(_managed(url, repository, store, body))


async def _managed(url: str | None, repository: Path, store: ArtifactStore | None, body: Any) -> Any:
    from toolkit.mme.manager import ModelManager

    mgr = ModelManager(endpoint_from(url), repository=repository, store=store)
    await mgr.start()
    try:
        return await body(mgr)
    finally:
        await mgr.close()


@mme_app.command("simulate", short_help="Hit ratios of LRU, GDSF and Belady's optimum on a trace.")
@friendly
def simulate_cmd(
    models: int = typer.Option(200, "--models", help="distinct models in the synthetic trace"),
    zipf: float = typer.Option(1.0, "--zipf", help="Zipf exponent of model popularity"),
    budget: int = typer.Option(60, "--budget", help="models that fit in memory at once"),
    requests: int = typer.Option(20_000, "--requests", help="requests in the synthetic trace"),
    trace: Path | None = typer.Option(None, "--trace", help="recorded trace: one model per line, or CSV with 'model'"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="print the raw result as JSON"),
) -> None:
    """Hit ratio of LRU, the cost-aware policy (GDSF) and Belady's offline optimum on one trace."""
    from toolkit.mme.simulate import format_table, run_simulation

    result = run_simulation(models=models, alpha=zipf, budget=budget, requests=requests, seed=seed, trace=trace)
    typer.echo(json.dumps(result, indent=2) if as_json else format_table(result))


@mme_app.command("plan", short_help="Resident models, memory budget and instances for a target hit ratio.")
@friendly
def plan_cmd(
    hit_ratio: float = typer.Option(..., "--hit-ratio", help="target hit ratio (share of requests to a loaded model)"),
    models: int = typer.Option(200, "--models", help="distinct models in the synthetic trace"),
    zipf: float = typer.Option(1.0, "--zipf", help="Zipf exponent of model popularity"),
    requests: int = typer.Option(20_000, "--requests", help="requests in the synthetic trace"),
    trace: Path | None = typer.Option(None, "--trace", help="recorded trace instead: one model per line, or CSV"),
    policy: str = typer.Option("lru", "--policy", help="eviction policy: lru or gdsf"),
    footprint: str | None = typer.Option(None, "--footprint", help="memory per model, e.g. 120MiB"),
    load_time: float | None = typer.Option(None, "--load-time", help="seconds per cold load"),
    measure: str | None = typer.Option(None, "--measure", help="measure footprint and load time of this model"),
    manifest: Path = typer.Option(Path("tritonctl.yaml"), "--manifest", help="with --measure"),
    instance_memory: str | None = typer.Option(None, "--instance-memory", help="memory of one instance, e.g. 16GiB"),
    headroom: float = typer.Option(0.8, "--headroom", help="share of an instance's memory models may use"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Recommend the resident model count / memory budget and the instance count for a target hit ratio, from a
    replay of the trace through the eviction policy and a measured (or given) footprint and load time."""
    from toolkit.mme.footprint import parse_size
    from toolkit.mme.simulate import load_trace
    from toolkit.tune.mme_plan import measure_model, plan_mme

    measured_bytes, measured_s = measure_model(manifest, measure) if measure else (None, None)
    size = parse_size(footprint) if footprint else measured_bytes
    seconds = load_time if load_time is not None else measured_s
    if size is None or seconds is None:
        raise typer.BadParameter("give --footprint and --load-time, or --measure MODEL to measure them")
    if measure:
        typer.echo(
            f"measured {measure}: {size / 2**20:.0f} MiB, load {seconds * 1000:.0f} ms (median of 3)", err=as_json
        )
    plan = plan_mme(
        target_hit_ratio=hit_ratio, footprint_bytes=size, load_s=seconds, models=models, alpha=zipf,
        requests=requests, trace=load_trace(trace) if trace else None, policy=policy, headroom=headroom,
        instance_memory_bytes=parse_size(instance_memory) if instance_memory else None, seed=seed,
    )  # fmt: skip
    if as_json:
        echo_json({**asdict(plan), "measured": measure})
    else:
        typer.echo(plan.summary())


@mme_app.command("list", short_help="Models in the repository and the store, with their state.")
@friendly
def list_cmd(
    url: str | None = URL_OPTION,
    repository: Path = REPO_OPTION,
    store: str | None = STORE_OPTION,
    endpoint_url: str | None = ENDPOINT_URL_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Models in the repository and the store, with their state in Triton (and, for a nested TargetModel, the path
    it was found at: ``team-a..x`` is ``team-a/x.tar.gz``)."""

    async def body(mgr: ModelManager) -> None:
        from toolkit.mme.metrics import MMEMetrics
        from toolkit.mme.muxspec import mux_root
        from toolkit.mme.muxstats import HostStats

        stats = HostStats(mux_root(mgr.repository), MMEMetrics())  # models inside model hosts (docs/mme.md)
        await stats.wait_fresh(time.time_ns())  # counts of every request answered before this command
        stats.refresh()
        hosted = stats.hosted()
        rows: list[Any] = [s for s in mgr.states() if s.name not in hosted]
        rows += stats.model_states(hosted)
        if as_json:
            docs = [{**asdict(s), "target_model": target_path(s.name) if is_nested(s.name) else s.name} for s in rows]
            echo_json(docs)
            return
        typer.echo(f"{'model':<32} {'state':<10} {'size':>10}  {'served by':<28} target model")
        for s in rows:
            size = (
                (f"{s.size_bytes / 2**20:.1f}M" if s.size_bytes >= 2**20 else f"{s.size_bytes / 1024:.1f}K")
                if s.size_bytes
                else "-"
            )
            path = target_path(s.name) if is_nested(s.name) else ""
            where = getattr(s, "host", "") or "stub"
            typer.echo(f"{s.name:<32} {s.state:<10} {size:>10}  {where:<28} {path}".rstrip())
        typer.echo(f"{len(rows)} models, {sum(s.state == 'READY' for s in rows)} loaded ({len(hosted)} multiplexed)")

    _with_manager(url, repository, _store(store, endpoint_url), body)


@mme_app.command("load", short_help="Fetch a model from --store if needed, then load it.")
@friendly
def load_cmd(
    name: str = typer.Argument(..., help="model name, or a TargetModel (team-a/x.tar.gz)"),
    url: str | None = URL_OPTION,
    repository: Path = REPO_OPTION,
    store: str | None = STORE_OPTION,
    endpoint_url: str | None = ENDPOINT_URL_OPTION,
    timeout: float = typer.Option(60.0, "--timeout", help="seconds to wait for the load"),
) -> None:
    """Fetch a model from --store into --repository (unless it is there), then load it into Triton.
    `tritonctl models load` only loads what Triton's repository already has."""
    name = canonical_target(name)  # the name Triton runs, whichever spelling was given
    st = _store(store, endpoint_url)
    if st is not None and not (repository / name / "config.pbtxt").is_file():
        if not st.exists(name):
            raise ModelNotFoundError(name, f"not in {st!r}")
        with typer.progressbar(length=1, label=f"fetching {name}") as bar:
            state = {"total": 0}

            def progress(done: int, total: int) -> None:
                if total and total != state["total"]:
                    bar.length, state["total"] = total, total
                bar.update(done - bar.pos)

            st.fetch(name, repository, progress=progress)
    t0 = time.monotonic()
    _with_manager(url, repository, st, lambda mgr: mgr.ensure_loaded(name, timeout))
    typer.echo(f"loaded {name} in {time.monotonic() - t0:.2f} s")


@mme_app.command("unload")
@friendly
def unload_cmd(
    name: str = typer.Argument(..., help="model name"),
    url: str | None = URL_OPTION,
    repository: Path = REPO_OPTION,
) -> None:
    """Unload a model from Triton (waits until Triton has released it)."""

    async def body(mgr: ModelManager) -> None:
        if not mgr.is_resident(name):
            raise ModelNotFoundError(name, "it is not loaded")
        await mgr.unload(name)

    _with_manager(url, repository, None, body)
    typer.echo(f"unloaded {name}")


if __name__ == "__main__":
    mme_app()
