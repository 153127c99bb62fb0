"""The S3 store against a real S3 (moto's server mode, over HTTP): listing, fetching tarballs and directories, errors,
and the extraction limits before anything is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from model_tarballs import CONFIG, MODEL_PY, model_members, tar_member, write_tar

from toolkit.mme.safe_tar import ArtifactError, ArtifactNotFoundError
from toolkit.mme.stores import S3Store, open_store


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    import boto3

    s3: Any = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = "stores-test"  # moto backends are process-wide: a name no other test uses
    s3.create_bucket(Bucket=bucket)
    tmp = tmp_path_factory.mktemp("s3src")
    s3.upload_file(
        str(write_tar(tmp / "resnet.tar.gz", model_members("resnet", payload=3000))), bucket, "mme/resnet.tar.gz"
    )
    s3.upload_file(
        str(write_tar(tmp / "evil.tar.gz", [*model_members("evil"), tar_member("../x", b"x")])),
        bucket,
        "mme/evil.tar.gz",
    )
    s3.put_object(Bucket=bucket, Key="mme/dirmodel/config.pbtxt", Body=CONFIG % b"dirmodel")
    s3.put_object(Bucket=bucket, Key="mme/dirmodel/1/model.py", Body=MODEL_PY)
    s3.put_object(Bucket=bucket, Key="mme/notamodel/readme.txt", Body=b"x")
    return bucket


def test_s3_store_list_and_fetch(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_bucket}/mme", endpoint_url=s3_endpoint)
    assert isinstance(store, S3Store)
    assert store.list_models() == ["dirmodel", "evil", "resnet"]
    assert store.exists("resnet") and store.exists("dirmodel") and not store.exists("notamodel")
    seen: list[tuple[int, int]] = []
    res = store.fetch("resnet", tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert (res.path / "1" / "weights.bin").stat().st_size == 3000 and res.version
    assert seen[-1] == (res.bytes_downloaded, res.bytes_downloaded) and res.bytes_downloaded > 0
    res = store.fetch("dirmodel", tmp_path)
    assert (res.path / "config.pbtxt").read_bytes() == CONFIG % b"dirmodel"
    assert (res.path / "1" / "model.py").read_bytes() == MODEL_PY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dirmodel", "resnet"]


def test_s3_store_errors(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    store = S3Store(s3_bucket, "mme", endpoint_url=s3_endpoint)
    with pytest.raises(ArtifactNotFoundError, match="'missing' not found"):
        store.fetch("missing", tmp_path)
    with pytest.raises(ArtifactError, match=r"'\.\.'"):
        store.fetch("evil", tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ArtifactError, match="bucket does not exist") as info:
        S3Store("no-such-bucket", "", endpoint_url=s3_endpoint).fetch("resnet", tmp_path)
    assert not isinstance(info.value, ArtifactNotFoundError)  # a store problem, not a missing model


def test_s3_limits_and_colliding_keys(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    """The extraction limits hold before anything is downloaded, for directories and tarballs alike; keys that cannot
    both be files (`m/config.pbtxt` and `m/config.pbtxt/x`) are a clear ArtifactError, not an OSError."""
    with pytest.raises(ArtifactError, match="over the limits"):
        S3Store(s3_bucket, "mme", endpoint_url=s3_endpoint, max_files=1).fetch("dirmodel", tmp_path)
    with pytest.raises(ArtifactError, match="over the limit of 100"):
        S3Store(s3_bucket, "mme", endpoint_url=s3_endpoint, max_bytes=100).fetch("resnet", tmp_path)
    store = S3Store(s3_bucket, "clash", endpoint_url=s3_endpoint)
    store.client.put_object(Bucket=s3_bucket, Key="clash/m/config.pbtxt", Body=CONFIG % b"m")
    store.client.put_object(Bucket=s3_bucket, Key="clash/m/config.pbtxt/x", Body=b"x")
    with pytest.raises(ArtifactError, match="cannot be written as a file here"):
        store.fetch("m", tmp_path)
    assert list(tmp_path.iterdir()) == []
