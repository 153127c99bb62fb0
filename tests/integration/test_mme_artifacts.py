"""SageMaker's own MME artifacts, served unchanged: an S3 prefix (moto's server) that works on a SageMaker Triton MME,
invoked by TargetModel through the gateway with boto3 and tritonclient, on a real embedded Triton.

What users arrive with (the issue "MME serves SageMaker's own artifacts unchanged"): copies of one artifact saved
under other names (seed article 003; the config still names the original), AWS's samples packing a folder under
another name (``resnet_pt_v0.tar.gz`` holding ``resnet/``), a flat layout, ``.tgz``, nested TargetModels
(``team-a/cities/Chicago_IL.tar.gz``), a folder model in S3, an ensemble artifact; and the S3 side: s3transfer's
ranged GETs with a progress callback, and a disk cache that notices when an object changes in the bucket.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from botocore.config import Config
from botocore.exceptions import ClientError

from toolkit import ServeConfig, start
from toolkit.mme.diskcache import DiskCache
from toolkit.mme.manager import ModelManager
from toolkit.mme.s3store import default_transfer_config
from toolkit.mme.stores import S3Store
from toolkit.repository.config import parse_config
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions

BUCKET = "mme-artifacts"  # moto's backends are process-wide: names no other test uses
FREE = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "gateway_grpc_port": 0}
X = np.array([1.0, 2.0], dtype=np.float32)
ENSEMBLE = """name: "ens"
platform: "ensemble"
max_batch_size: 0
input [{ name: "X" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [2] }]
ensemble_scheduling { step [
  { model_name: "NY_0" model_version: -1 input_map { key: "X" value: "X" } output_map { key: "Y" value: "mid" } },
  { model_name: "resnet_pt_v0" model_version: -1
    input_map { key: "X" value: "mid" } output_map { key: "Y" value: "Y" } }
] }
"""


def pack(src: Path, out: Path, folder: str | None, extra: dict[str, bytes] | None = None) -> Path:
    """``src``'s files in a tarball, under ``folder/`` (or flat when None), as ``tar -czf out -C .. folder`` would."""
    with tarfile.open(out, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src).as_posix()
            tf.add(p, arcname=f"{folder}/{rel}" if folder else rel, recursive=False)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out


def scale(work: Path, name: str, factor: float) -> Path:
    """A python model ``name`` computing Y = X * factor (config.pbtxt says ``name: "<name>"``)."""
    return write_scale_model(work, name, factor=factor)


def upload(s3: Any, path: Path, key: str) -> bytes:
    s3.upload_file(str(path), BUCKET, key)
    return path.read_bytes()


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The endpoint's prefix as a SageMaker user would have it; returns what was uploaded, by key."""
    s3: Any = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    work = tmp_path_factory.mktemp("artifacts")
    ny = pack(scale(work, "housing_NewYork_NY", 2.0), work / "housing_NewYork_NY.tar.gz", "housing_NewYork_NY")
    sent = {f"endpoint/NY_{i}.tar.gz": upload(s3, ny, f"endpoint/NY_{i}.tar.gz") for i in range(3)}  # seed 003
    resnet = pack(scale(work, "resnet", 3.0), work / "resnet_pt_v0.tar.gz", "resnet")  # AWS's sample layout
    sent["endpoint/resnet_pt_v0.tar.gz"] = upload(s3, resnet, "endpoint/resnet_pt_v0.tar.gz")
    flat = pack(scale(work, "flat_original", 4.0), work / "flat.tar.gz", None)
    sent["endpoint/flat.tar.gz"] = upload(s3, flat, "endpoint/flat.tar.gz")
    chicago = pack(scale(work, "housing_Chicago_IL", 5.0), work / "Chicago_IL.tar.gz", "housing_Chicago_IL")
    sent["endpoint/team-a/cities/Chicago_IL.tar.gz"] = upload(s3, chicago, "endpoint/team-a/cities/Chicago_IL.tar.gz")
    legacy = pack(scale(work, "legacy", 6.0), work / "legacy.tgz", "legacy")
    sent["endpoint/legacy.tgz"] = upload(s3, legacy, "endpoint/legacy.tgz")
    folder = scale(work, "orig", 7.0)  # a folder model in S3, under a path of another name
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        s3.put_object(Bucket=BUCKET, Key=f"endpoint/team-b/folder_model/{p.relative_to(folder).as_posix()}",
                      Body=p.read_bytes())  # fmt: skip
    (work / "ens" / "1").mkdir(parents=True)
    (work / "ens" / "1" / ".keep").write_text("")
    (work / "ens" / "config.pbtxt").write_text(ENSEMBLE)
    ens = pack(work / "ens", work / "ens.tar.gz", "ens", extra={"._ens": b"\0mac litter"})
    sent["endpoint/pipelines/double_then_triple.tar.gz"] = upload(
        s3, ens, "endpoint/pipelines/double_then_triple.tar.gz"
    )
    two = pack(scale(work, "a", 1.0), work / "two.tar.gz", "a", extra={"b/config.pbtxt": b'name: "b"\n'})
    sent["endpoint/two.tar.gz"] = upload(s3, two, "endpoint/two.tar.gz")
    return sent


@pytest.fixture(scope="module")
def serving(bucket: dict[str, bytes], s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``tritonctl serve`` as a library: an empty repository, the bucket as the store, one multi-model endpoint."""
    work = tmp_path_factory.mktemp("serve")
    (work / "repo").mkdir()
    manifest = work / "tritonctl.yaml"
    manifest.write_text(  # a manifest declares a model; the repository is given, so nothing is generated from it
        "models:\n  - {name: unused, framework: python, inputs: [{name: X, dtype: FP32, dims: [2]}],\n"
        "     outputs: [{name: Y, dtype: FP32, dims: [2]}]}\n"
        f"endpoints:\n  - {{name: mme, mode: multi-model, store: 's3://{BUCKET}/endpoint'}}\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)  # how boto3 finds an S3-compatible endpoint by itself
        config = ServeConfig(repository=work / "repo", manifest=manifest, store=f"s3://{BUCKET}/endpoint", **FREE)
        with start(config) as running:
            yield running


def invoke(serving: Any, target: str) -> tuple[str, np.ndarray]:
    sm = boto3.client(
        "sagemaker-runtime", endpoint_url=serving.url, region_name="us-east-1", aws_access_key_id="AKIDTEST",
        aws_secret_access_key="x", config=Config(retries={"max_attempts": 1}, read_timeout=60),
    )  # fmt: skip
    body = {"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": X.tolist()}]}
    r = sm.invoke_endpoint(
        EndpointName="mme", TargetModel=target, ContentType="application/json", Body=json.dumps(body)
    )
    out = json.loads(r["Body"].read())
    return out["model_name"], np.array(out["outputs"][0]["data"], dtype=np.float32)


@pytest.mark.parametrize(
    ("target", "model", "factor"),
    [
        ("NY_0.tar.gz", "NY_0", 2.0),  # a renamed copy: config.pbtxt still says housing_NewYork_NY
        ("NY_1.tar.gz", "NY_1", 2.0),
        ("/NY_2.tar.gz", "NY_2", 2.0),
        ("resnet_pt_v0.tar.gz", "resnet_pt_v0", 3.0),  # folder resnet/ in resnet_pt_v0.tar.gz
        ("flat.tar.gz", "flat", 4.0),  # config.pbtxt at the top, named flat_original
        ("team-a/cities/Chicago_IL.tar.gz", "team-a..cities..Chicago_IL", 5.0),  # a nested TargetModel
        ("legacy.tgz", "legacy", 6.0),
        ("team-b/folder_model", "team-b..folder_model", 7.0),  # a folder in S3, config named orig
        ("pipelines/double_then_triple.tar.gz", "pipelines..double_then_triple", 6.0),  # an ensemble: x * 2 * 3
    ],
)
def test_boto3_invokes_each_artifact_by_its_target_model(serving: Any, target: str, model: str, factor: float) -> None:
    name, y = invoke(serving, target)
    assert name == model and np.allclose(y, X * factor)
    config = parse_config((serving.repository / model / "config.pbtxt").read_text())
    assert config.name == model  # the copy Triton loaded carries the TargetModel's name


def test_tritonclient_reaches_the_same_models_by_their_triton_names(serving: Any) -> None:
    client = httpclient.InferenceServerClient(serving.http)
    try:
        for model, factor in (
            ("team-a..cities..Chicago_IL", 5.0),
            ("NY_1", 2.0),
            ("pipelines..double_then_triple", 6.0),
        ):
            inp = httpclient.InferInput("X", [2], "FP32")
            inp.set_data_from_numpy(X)
            assert np.allclose(client.infer(model, [inp]).as_numpy("Y"), X * factor)
        assert client.get_model_metadata("team-a..cities..Chicago_IL")["name"] == "team-a..cities..Chicago_IL"
    finally:
        client.close()
    text = serving.models.metrics_text()
    assert 'tritonctl_mme_model_invocations_total{model="team-a..cities..Chicago_IL"}' in text


def test_the_artifacts_in_s3_are_never_modified(serving: Any, bucket: dict[str, bytes], s3_endpoint: str) -> None:
    invoke(serving, "NY_0.tar.gz")
    s3: Any = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for key, data in bucket.items():
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data, key
    orig = s3.get_object(Bucket=BUCKET, Key="endpoint/team-b/folder_model/config.pbtxt")["Body"].read().decode()
    assert parse_config(orig).name == "orig"


def test_refusals_are_one_line_naming_the_artifact(serving: Any) -> None:
    with pytest.raises(ClientError) as err:
        invoke(serving, "two.tar.gz")
    message = err.value.response["Error"]["Message"]
    assert "two.tar.gz" in message and "one artifact is one model" in message and "\n" not in message
    for bad, why in (("team-a/../x.tar.gz", "path segments are not allowed"), ("a//b", "empty path segment")):
        with pytest.raises(ClientError, match=why):
            invoke(serving, bad)


# --- S3 through s3transfer, and the disk cache's versions ------------------------------------------------------------


@pytest.fixture()
def triton(tmp_path: Path) -> Iterator[EmbeddedTriton]:
    (tmp_path / "repo").mkdir()
    server = EmbeddedTriton(ServerOptions(repository=tmp_path / "repo", workdir=tmp_path, log_file=tmp_path / "t.log"))
    server.start(timeout=90)
    yield server
    server.stop()


def big_model(work: Path, factor: float) -> Path:
    """A model with 3 MiB of incompressible weights: big enough for several ranged GETs of 512 KiB."""
    d = scale(work / f"f{factor}", "big", factor)
    (d / "1" / "weights.bin").write_bytes(os.urandom(3 * 2**20))
    return pack(d, work / f"big{factor}.tar.gz", "big")


def test_s3transfer_ranged_gets_progress_and_cache_invalidation(
    bucket: dict[str, bytes], s3_endpoint: str, triton: EmbeddedTriton, tmp_path: Path
) -> None:
    config = default_transfer_config(multipart_threshold=2**20, multipart_chunksize=2**19, max_concurrency=4)
    store = S3Store(BUCKET, "cache-test", endpoint_url=s3_endpoint, transfer_config=config)
    gets: list[dict[str, Any]] = []
    store.client.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **kw: gets.append(params))
    size = len(upload(store.client, big_model(tmp_path, 2.0), "cache-test/team-a/big.tar.gz"))

    seen: list[tuple[int, int]] = []
    got = store.fetch("team-a..big", tmp_path / "direct", progress=lambda d, t: seen.append((d, t)))
    assert got.bytes_downloaded == size and seen[0] == (0, size) and seen[-1] == (size, size)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))  # never backwards
    assert len(gets) == -(-size // 2**19) and all(g.get("Range", "").startswith("bytes=") for g in gets)
    assert all(g.get("IfMatch") for g in gets)  # every range pinned to the ETag the HEAD saw
    assert got.version == store.version("team-a..big")

    cache = DiskCache(tmp_path / "cache", capacity_bytes=2**30)

    async def serve_once(mgr: ModelManager) -> np.ndarray:
        client = httpaio.InferenceServerClient(triton.endpoint.http)
        try:
            async with mgr.serving("team-a..big"):
                inp = httpaio.InferInput("X", [2], "FP32")
                inp.set_data_from_numpy(X)
                y = (await client.infer("team-a..big", [inp])).as_numpy("Y")
            await mgr.unload("team-a..big")  # evicted: the next request goes through the disk cache again
            return y
        finally:
            await client.close()

    async def scenario() -> list[np.ndarray]:
        mgr = ModelManager(triton.endpoint, repository=triton.options.repository, store=store, disk_cache=cache)
        await mgr.start()
        try:
            results = [await serve_once(mgr)]  # fetched
            before = len(gets)
            results.append(await serve_once(mgr))  # unchanged in S3: served from the cache, no GET
            assert len(gets) == before and cache.invalidations == 0
            upload(store.client, big_model(tmp_path, 3.0), "cache-test/team-a/big.tar.gz")  # replaced in S3
            results.append(await serve_once(mgr))
            assert cache.invalidations == 1 and len(gets) > before
            return results
        finally:
            await mgr.close()

    y2, y2_cached, y3 = asyncio.run(scenario())
    assert np.allclose(y2, X * 2) and np.allclose(y2_cached, X * 2) and np.allclose(y3, X * 3)
    assert cache.entries()[0].version == store.version("team-a..big")


def test_cli_lists_nested_models_with_their_path(bucket: dict[str, bytes], s3_endpoint: str, triton: Any) -> None:
    from typer.testing import CliRunner

    from toolkit.cli.mme import mme_app

    common = ["--url", triton.endpoint.http_url, "-r", str(triton.options.repository)]
    store = ["--store", f"s3://{BUCKET}/endpoint", "--endpoint-url", s3_endpoint]
    runner = CliRunner()
    res = runner.invoke(mme_app, ["load", "/team-a/cities/Chicago_IL.tar.gz", *common, *store])
    assert res.exit_code == 0 and "loaded team-a..cities..Chicago_IL" in res.output, res.output
    res = runner.invoke(mme_app, ["list", *common, *store])
    rows = {ln.split()[0]: ln.split()[1:] for ln in res.output.splitlines()[1:-1]}
    assert rows["team-a..cities..Chicago_IL"][0] == "READY" and rows["team-a..cities..Chicago_IL"][-1] == (
        "team-a/cities/Chicago_IL"
    )
    assert rows["NY_0"][0] == "UNLOADED" and rows["NY_0"][2:] == ["stub"]  # served by its own stub; no path column
