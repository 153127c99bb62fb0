"""Multiplexed hosting at scale (issue #17): ``python -m bench.mux``.

Seed 003's experiment through boto3 against one ``tritonctl`` serving process: ``--models`` renamed copies of a
housing city model (a numpy adapter model, ~2 KB tar.gz) behind a multiplexed multi-model endpoint whose host holds
``--host-models`` of them, Zipf traffic over them; and, in the same run, ``--per-process`` more copies behind an
ordinary multi-model endpoint (one python stub each, ``--max-models`` resident). Requests are sequential, one
client, so the host's LRU state is a pure function of the trace: a client-side LRU of the same size tells which
requests were cold (checked against the host's own miss count at the end).

Reported: cold latency (first request for a model ever: fetch + extraction + host load; and a reload after an
eviction: host load only), warm latency, memory per resident model (the host's RSS growth over its resident models,
and its own tracemalloc measure), and whether the predictions are the same on both paths and equal to sklearn's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from bench.mme import summary
from examples.housing import generate
from examples.mme import build_city_store, expected_prices
from toolkit import ServeConfig, Serving, start
from toolkit.mme.muxspec import mux_root
from toolkit.mme.muxstats import MISSES, read_states

FREE = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "gateway_grpc_port": 0}
CITY = "NewYork_NY"


def _store(work: Path, models: int, per_process: int) -> Path:
    store = work / "store"
    src = build_city_store(work / "src", n=1)[f"housing_{CITY}"]
    store.mkdir()
    for name in [f"mux_{i}" for i in range(models)] + [f"pp_{j}" for j in range(per_process)]:
        os.link(src, store / f"{name}.tar.gz")  # renamed copies: the config inside still says housing_NewYork_NY
    return store


def _manifest(work: Path, store: Path, models: int) -> Path:
    placeholder = Path(__file__).resolve().parents[1] / "examples/artifacts/digits_mlp.py"
    names = ", ".join(f"mux_{i}" for i in range(models))
    text = (
        f"models:\n  - {{name: placeholder, framework: numpy, artifact: {placeholder},"
        " inputs: [{name: X, dtype: FP32, dims: [64]}], outputs: [{name: label, dtype: INT64, dims: [1]}]}\n"
        "endpoints:\n"
        f"  - {{name: cities-mux, mode: multi-model, store: {store}, multiplex: true, models: [{names}]}}\n"
        f"  - {{name: cities, mode: multi-model, store: {store}}}\n"
    )
    path = work / "manifest.yaml"
    path.write_text(text)
    return path


def _client(s: Serving) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=s.url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"max_attempts": 0}, max_pool_connections=4),
    )


def _body(x: np.ndarray) -> bytes:
    t = {"name": "raw", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [t]}).encode()


def _invoke(rt: Any, endpoint: str, target: str, body: bytes) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    r = rt.invoke_endpoint(
        EndpointName=endpoint, TargetModel=f"{target}.tar.gz", Body=body, ContentType="application/json"
    )
    out = json.loads(r["Body"].read())
    return time.perf_counter() - t0, np.asarray(out["outputs"][0]["data"], dtype=np.float32)


def _host_pid_rss(s: Serving) -> tuple[int, int]:
    assert s.repository is not None
    doc = next(iter(read_states(mux_root(s.repository)).values()))
    pid = int(doc["pid"])
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return pid, int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _metric(text: str, name: str, model: str | None = None) -> float:
    key = f'{name}{{model="{model}"}}' if model else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _per_process(s: Serving, rt: Any, n: int, body: bytes) -> dict[str, Any]:
    cold, warm = [], []
    for j in range(n):
        cold.append(_invoke(rt, "cities", f"pp_{j}", body)[0])
    for _ in range(100):
        warm.append(_invoke(rt, "cities", f"pp_{n - 1}", body)[0])
    time.sleep(1.5)  # the manager measures a stub's RSS ~0.5 s after its load
    text = s.models.metrics_text() if s.models is not None else ""
    mem = [_metric(text, "tritonctl_mme_model_memory_bytes", f"pp_{j}") for j in range(n)]
    mem = [m for m in mem if m > 0]
    return {"cold": summary(cold), "warm": summary(warm), "memory_per_model_bytes": int(np.median(mem)) if mem else 0}


def _trace(models: int, requests: int, alpha: float, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, models + 1) ** alpha
    order = rng.permutation(models)  # popularity is not the name order
    return [int(order[k]) for k in rng.choice(models, size=requests, p=weights / weights.sum())]


def _multiplexed(s: Serving, rt: Any, args: argparse.Namespace, body: bytes) -> dict[str, Any]:
    first_ever, reload, warm = [], [], []
    lru: OrderedDict[int, None] = OrderedDict()
    seen: set[int] = set()
    _invoke(rt, "cities-mux", "mux_0", body)  # the host's own start (~1 s), not a model's cold start
    lru[0] = None
    seen.add(0)
    time.sleep(1.2)
    pid, rss0 = _host_pid_rss(s)
    t_start = time.perf_counter()
    for i in _trace(args.models, args.requests, args.zipf, args.seed):
        seconds, _ = _invoke(rt, "cities-mux", f"mux_{i}", body)
        if i in lru:
            lru.move_to_end(i)
            warm.append(seconds)
            continue
        (reload if i in seen else first_ever).append(seconds)
        seen.add(i)
        lru[i] = None
        if len(lru) > args.host_models:
            lru.popitem(last=False)
    elapsed = time.perf_counter() - t_start
    time.sleep(1.5)  # the host writes its state at most once a second
    assert s.repository is not None
    doc = next(iter(read_states(mux_root(s.repository)).values()))
    pid2, rss1 = _host_pid_rss(s)
    resident = doc["resident"]
    host_misses = sum(int(c[MISSES]) for c in doc["counts"].values())
    return {
        "cold_first": summary(first_ever) if first_ever else {},
        "cold_reload": summary(reload) if reload else {},
        "cold_all": summary(first_ever + reload),
        "warm": summary(warm),
        "requests_per_s": round(args.requests / elapsed, 1),
        "distinct_models": len(seen),
        "resident": len(resident),
        "host_evictions": doc["evictions"],
        "misses_client_lru": len(first_ever) + len(reload) + 1,
        "misses_host": host_misses,
        "host_restarted": pid2 != pid,
        "rss_growth_per_resident_bytes": int((rss1 - rss0) / max(len(resident) - 1, 1)),
        "tracemalloc_per_model_bytes": int(np.median(list(resident.values()))),
        "host_rss_bytes": rss1,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tritonctl-bench-mux-") as tmp:
        work = Path(tmp)
        store = _store(work, args.models, args.per_process)
        repo = work / "repo"
        repo.mkdir()
        config = ServeConfig(
            repository=repo,
            manifest=_manifest(work, store, args.models),
            store=str(store),
            max_models=args.max_models,
            multiplex_max_models=args.host_models,
            multiplex_budget="2GiB",
            load_timeout_s=120,
            **FREE,
        )
        x, _ = generate(CITY, 4, seed=args.seed)
        body = _body(x)
        with start(config) as s:
            rt = _client(s)
            _, via_host = _invoke(rt, "cities-mux", "mux_1", body)
            _, via_stub = _invoke(rt, "cities", "pp_0", body)
            same = {
                "host_equals_stub": bool(np.array_equal(via_host, via_stub)),
                "host_equals_sklearn": bool(np.allclose(via_host, expected_prices(CITY, x), rtol=1e-4)),
            }
            per_process = _per_process(s, rt, args.per_process, body)
            mux = _multiplexed(s, rt, args, body)
            warm_pair = _warm_pair(rt, f"pp_{args.per_process - 1}", body)
    return {
        "args": vars(args),
        "same_predictions": same,
        "per_process": per_process,
        "multiplexed": mux,
        "warm_pair": warm_pair,
    }


def _warm_pair(rt: Any, stub_model: str, body: bytes, n: int = 200) -> dict[str, Any]:
    """One resident model of each kind, requested alternately: what multiplexing adds to a warm request, measured
    under the same conditions (the two warm rows above are from different phases of the run)."""
    _invoke(rt, "cities-mux", "mux_0", body)
    host, stub = [], []
    for _ in range(n):
        host.append(_invoke(rt, "cities-mux", "mux_0", body)[0])
        stub.append(_invoke(rt, "cities", stub_model, body)[0])
    return {"multiplexed": summary(host), "per_process": summary(stub)}


def render(r: dict[str, Any]) -> str:
    a, pp, mx = r["args"], r["per_process"], r["multiplexed"]

    def row(label: str, s: dict[str, Any]) -> str:
        cells = [str(s.get(k, "-")) for k in ("n", "p50_ms", "p90_ms", "p99_ms", "max_ms")]
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = [
        "# Multiplexed hosting (issue #17)",
        "",
        f"`python -m bench.mux --models {a['models']} --host-models {a['host_models']} --requests {a['requests']} "
        f"--zipf {a['zipf']} --per-process {a['per_process']} --max-models {a['max_models']}`: one serving process,"
        " boto3 `invoke_endpoint`, sequential requests, renamed copies of the NewYork_NY city model (numpy adapter).",
        "",
        "| path | requests | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
        row("multiplexed, cold (first request ever: fetch + extract + host load)", mx["cold_first"]),
        row("multiplexed, cold (reload after eviction: host load)", mx["cold_reload"]),
        row("multiplexed, cold (all)", mx["cold_all"]),
        row("multiplexed, warm", mx["warm"]),
        row("per-process stub, cold (fetch + Triton load)", pp["cold"]),
        row("per-process stub, warm", pp["warm"]),
        row("warm, alternating: multiplexed", r["warm_pair"]["multiplexed"]),
        row("warm, alternating: per-process stub", r["warm_pair"]["per_process"]),
        "",
        f"* memory per resident model: multiplexed {mx['rss_growth_per_resident_bytes']} B of host RSS growth over "
        f"{mx['resident']} resident models (tracemalloc at load: {mx['tracemalloc_per_model_bytes']} B median); "
        f"per-process {pp['memory_per_model_bytes']} B (stub RSS, median)",
        f"* Zipf {a['zipf']} over {a['models']} models: {mx['distinct_models']} distinct requested, "
        f"{mx['host_evictions']} evictions in the host, misses {mx['misses_host']} (host) vs "
        f"{mx['misses_client_lru']} (client-side LRU of the same size); {mx['requests_per_s']} requests/s",
        f"* same predictions: host == per-process stub: {r['same_predictions']['host_equals_stub']}; "
        f"host == sklearn (rtol 1e-4): {r['same_predictions']['host_equals_sklearn']}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=10_000)
    p.add_argument("--host-models", type=int, default=2_000)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--per-process", type=int, default=30)
    p.add_argument("--max-models", type=int, default=10)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    result = run(args)
    text = render(result)
    print(text, flush=True)
    Path("reports/bench").mkdir(parents=True, exist_ok=True)
    Path("reports/bench/mux.json").write_text(json.dumps(result, indent=2, default=str))
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
