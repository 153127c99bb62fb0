"""``make demo``: build the examples, serve them (embedded Triton + gateway), invoke every pattern, stop.

Everything goes through the gateway the way a user's code would: tritonclient (HTTP and gRPC) for KServe v2, boto3's
``sagemaker-runtime`` client for the SageMaker API. Models load lazily on first request through the MME manager.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _say(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _infer(client: Any, mod: Any, model: str, inputs: dict[str, np.ndarray], **kw: Any) -> Any:
    tensors = []
    for name, arr in inputs.items():
        dtype = "BYTES" if arr.dtype == object else {"float32": "FP32", "int64": "INT64"}[str(arr.dtype)]
        t = mod.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        tensors.append(t)
    return client.infer(model, tensors, **kw)


def kserve_section(http_url: str, grpc_url: str) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from examples.digits import load_split
    from examples.housing import generate

    _, x_test, _, y_test = load_split()
    x, y = x_test[:64], y_test[:64]
    http = httpclient.InferenceServerClient(http_url)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    _say("KServe v2 through the gateway (tritonclient, unchanged): three frameworks, first request loads lazily")
    for model in ("digits_logreg", "digits_mlp", "digits_forest"):
        t0 = time.perf_counter()
        label = _infer(http, httpclient, model, {"X": x}).as_numpy("label").ravel()
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        label_grpc = _infer(grpc, grpcclient, model, {"X": x}).as_numpy("label").ravel()
        warm = time.perf_counter() - t0
        assert (label == label_grpc).all()
        print(
            f"  {model:<15} accuracy {np.mean(label == y):.3f} on 64 held-out digits  "
            f"(http cold {cold * 1000:.0f} ms, grpc warm {warm * 1000:.1f} ms)"
        )

    _say("Ensembles: scatter-gather, aggregate (vote, mean)")
    r = _infer(http, httpclient, "digits_scatter_gather", {"X": x[:4]})
    models = [m.decode() for m in r.as_numpy("model").ravel()]
    print(
        f"  digits_scatter_gather  labels {r.as_numpy('label').ravel().tolist()} (truth {y[:4].tolist()}), "
        f"most confident: {models}"
    )
    for name in ("digits_vote", "digits_mean"):
        label = _infer(http, httpclient, name, {"X": x}).as_numpy("label").ravel()
        print(f"  {name:<22} accuracy {np.mean(label == y):.3f}")

    _say("Housing: serial pipeline, dynamic selection (parameter, input field, rules), A/B")
    raw, _ = generate("Chicago_IL", 3, seed=7)
    dollars = _infer(http, httpclient, "housing_pipeline_Chicago_IL", {"raw": raw}).as_numpy("price_dollars")
    print(f"  housing_pipeline_Chicago_IL  raw -> preprocess -> Chicago -> round: {dollars.ravel().tolist()}")
    onnx = _infer(http, httpclient, "housing_pipeline_onnx_Chicago_IL", {"raw": raw}).as_numpy("price_dollars")
    print(f"  housing_pipeline_onnx_Chicago_IL  same steps compiled to ONNX: {onnx.ravel().tolist()}")
    feats = _infer(http, httpclient, "housing_preprocess", {"raw": raw}).as_numpy("features")
    r = _infer(http, httpclient, "housing_by_city", {"features": feats}, parameters={"city": "Houston_TX"})
    print(
        f"  housing_by_city (parameter city=Houston_TX): {r.as_numpy('price').ravel().round(0).tolist()} "
        f"via {r.as_numpy('model').ravel()[0].decode()}"
    )
    cities = np.array([[b"NewYork_NY"], [b"Chicago_IL"], [b"LosAngeles_CA"]], dtype=object)
    r = _infer(http, httpclient, "housing_city_pipeline", {"raw": raw, "city": cities})
    served = [m.decode() for m in r.as_numpy("model").ravel()]
    print(f"  housing_city_pipeline (city per row): {r.as_numpy('price_dollars').ravel().tolist()} via {served}")
    r = _infer(http, httpclient, "housing_rules", {"features": feats})
    print(f"  housing_rules (no city -> size rule or default): via {[m.decode() for m in r.as_numpy('model').ravel()]}")
    seen = {}
    for user in ("alice", "bob", "carol", "dave", "erin"):
        r = _infer(http, httpclient, "housing_ab", {"features": feats[:1]}, parameters={"user": user})
        seen[user] = r.as_numpy("variant").ravel()[0].decode()
    print(f"  housing_ab (sticky per user): {seen}")
    http.close()
    grpc.close()


def sagemaker_section(http_url: str) -> None:
    import boto3

    from examples.digits import load_split
    from examples.housing import generate

    _say("SageMaker runtime API through the gateway (boto3 sagemaker-runtime, unchanged)")
    sm = boto3.client(
        "sagemaker-runtime",
        endpoint_url=http_url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="demo-secret",
    )
    _, x_test, _, y_test = load_split()
    body = json.dumps(
        {"inputs": [{"name": "X", "shape": [2, 64], "datatype": "FP32", "data": x_test[:2].ravel().tolist()}]}
    )
    r = sm.invoke_endpoint(EndpointName="digits", ContentType="application/json", Body=body)
    out = json.loads(r["Body"].read())
    labels = next(o["data"] for o in out["outputs"] if o["name"] == "label")
    print(
        f"  digits (production variants) -> variant {r['InvokedProductionVariant']}: labels {labels} "
        f"(truth {y_test[:2].tolist()})"
    )
    r = sm.invoke_endpoint(
        EndpointName="digits-mce", TargetContainerHostname="digits_forest", ContentType="application/json", Body=body
    )
    labels = next(o["data"] for o in json.loads(r["Body"].read())["outputs"] if o["name"] == "label")
    print(f"  digits-mce TargetContainerHostname=digits_forest: labels {labels}")
    try:
        sm.invoke_endpoint(EndpointName="digits-mce", ContentType="application/json", Body=body)
    except sm.exceptions.ValidationError as exc:
        print(f"  digits-mce without a target -> ValidationError: {exc.response['Error']['Message'][:90]}")
    raw, _ = generate("Chicago_IL", 1, seed=7)
    pre = {"inputs": [{"name": "raw", "shape": [1, 8], "datatype": "FP32", "data": raw.ravel().tolist()}]}
    r = sm.invoke_endpoint(
        EndpointName="housing",
        TargetModel="housing_preprocess.tar.gz",
        ContentType="application/json",
        Body=json.dumps(pre),
    )
    feats = next(o["data"] for o in json.loads(r["Body"].read())["outputs"] if o["name"] == "features")
    req = {"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", "data": feats}]}
    for city in ("housing_NewYork_NY", "housing_Houston_TX"):
        r = sm.invoke_endpoint(
            EndpointName="housing", TargetModel=f"{city}.tar.gz", ContentType="application/json", Body=json.dumps(req)
        )
        price = next(o["data"] for o in json.loads(r["Body"].read())["outputs"] if o["name"] == "price")
        print(f"  housing (multi-model) TargetModel={city}.tar.gz: price {price[0]:,.0f}")


def metrics_section(admin_url: str) -> None:
    _say("MME metrics from the gateway's admin port (SageMaker's names: docs/metrics.md)")
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(
            (
                "tritonctl_mme_loaded_models",
                "tritonctl_mme_model_loading_seconds_count",
                "tritonctl_mme_model_loading_seconds_sum",
            )
        ) or (line.startswith("tritonctl_mme_model_cache_hits_total") and "digits_logreg" in line):
            print("  " + line)


BUILD = ROOT / "build" / "demo"  # git-ignored: the demo writes nothing that is tracked (CI checks git status)
QUALITY_TOL = 0.02  # a rebuild on another machine (BLAS, library versions) may differ in bytes, not in quality


def compare_quality(committed: dict[str, Any], rebuilt: dict[str, Any], tol: float = QUALITY_TOL) -> list[str]:
    """Where the rebuilt examples' held-out scores differ from the committed ones by more than ``tol``."""
    out = []
    for section in ("digits_accuracy", "housing_r2"):
        want, got = committed.get(section, {}), rebuilt.get(section, {})
        for name in sorted(set(want) | set(got)):
            if name not in want or name not in got:
                out.append(f"{section}.{name}: {want.get(name)} committed, {got.get(name)} rebuilt")
            elif abs(want[name] - got[name]) > tol:
                out.append(f"{section}.{name}: {want[name]} committed, {got[name]} rebuilt (tolerance {tol})")
    return out


def prepare(out: Path = BUILD) -> Path:
    """Retrain the examples into ``out/artifacts`` and check their quality against the committed artifacts (a
    verification: the committed ones are not rewritten, whatever bytes this machine's BLAS produces), then generate
    and validate the model repository of the committed artifacts into ``out/model_repository``; returns it."""
    from examples.build import DEFAULT_OUT, build_all
    from toolkit import generate_repository, load_manifest, validate_repository
    from toolkit.repository.validate import format_findings, has_errors

    _say("Build the examples (sklearn load_digits + seeded housing generator; no downloads) and check them")
    paths = build_all(out / "artifacts")
    for name, path in sorted(paths.items()):
        print(f"  {name:<24} {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    committed = json.loads((ROOT / DEFAULT_OUT / "metrics.json").read_text())
    differences = compare_quality(committed, json.loads(paths["metrics"].read_text()))
    if differences:
        print("  rebuilt examples differ from the committed ones:\n    " + "\n    ".join(differences))
        raise SystemExit(1)
    print(f"  same held-out accuracy and R^2 as the committed {DEFAULT_OUT} (within {QUALITY_TOL}), which are served")
    manifest = load_manifest(ROOT / "tritonctl.yaml")
    repository = out / "model_repository"
    report = generate_repository(manifest, repository)
    print(f"  {repository.relative_to(ROOT) if repository.is_relative_to(ROOT) else repository}: {report.summary()}")
    findings = validate_repository(repository)
    print("  validate: " + ("ok" if not findings else format_findings(findings)))
    if has_errors(findings):
        raise SystemExit(1)
    return repository


def main(argv: list[str] | None = None) -> None:
    """``python -m examples.demo [--build-only]``: everything, or only the build-and-check step (CI runs that)."""
    import sys

    from examples.mme import run_mme_demo, run_renamed_copy_demo
    from toolkit import ServeConfig, start

    args = sys.argv[1:] if argv is None else argv
    repository = prepare()
    if "--build-only" in args:
        return

    _say("Start the embedded Triton behind the gateway")
    config = ServeConfig(
        repository=repository,
        manifest=ROOT / "tritonctl.yaml",
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        gateway_port=0,
        gateway_grpc_port=0,
        admin_port=0,
    )
    with start(config, echo=lambda s: print("  " + s, flush=True)) as serving:  # returns once it serves
        assert serving.gateway is not None and serving.gateway.grpc and serving.gateway.admin_url
        kserve_section(serving.gateway.http, serving.gateway.grpc)
        sagemaker_section(serving.url)
        metrics_section(serving.gateway.admin_url)
    print("  stopped Triton and the gateway")

    _say("Multi-model endpoint over 50 city models: local store, then S3 (moto server), budget of 4 resident")
    run_mme_demo(n=50, invoke=6, max_models=4, say=lambda s: print("  " + s, flush=True))

    _say("Renamed copies (seed 003): NY_<i>.tar.gz = cp housing_NewYork_NY.tar.gz, invoked by TargetModel with boto3")
    run_renamed_copy_demo(copies=3, say=lambda s: print("  " + s, flush=True))

    from examples.deploy_demo import run_deploy_demo

    _say("tritonctl deploy: plan, deploy to a moto server (S3, SageMaker, autoscaling), round trip, delete")
    run_deploy_demo(say=lambda s: print("  " + s, flush=True))
    _say("Demo done")


if __name__ == "__main__":
    main()
