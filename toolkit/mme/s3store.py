"""Artifacts in S3, downloaded with s3transfer: parallel ranged GETs for big objects, every file of a folder at once.

A multi-GB artifact fetched with one sequential ``get_object`` stream spends a cold start waiting on a single TCP
connection; s3transfer (what ``aws s3 cp`` and boto3's ``download_file`` run) splits an object above
``multipart_threshold`` into ``multipart_chunksize`` ranges fetched on ``max_concurrency`` threads. The store gives
s3transfer the size and ETag it already read (HEAD for a tarball, the listing for a folder), so no second HEAD is
made and every ranged GET carries ``If-Match: <that ETag>``: an object replaced mid-download fails the fetch (and
the next request fetches the new one) instead of stitching two versions together. ``VersionId`` pins the exact
object on a versioned bucket. The version a fetch reports (``FetchResult.version``, ``S3Store.version``) is the
ETag (and VersionId), which is what the disk cache revalidates against.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from toolkit.mme.safe_tar import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILES,
    TMP_PREFIX,
    ArtifactError,
    ArtifactNotFoundError,
    adopt_config_name,
    artifact_path,
    extract_model_tarball,
    install_dir,
)
from toolkit.mme.store_api import CONFIG, TAR_SUFFIXES, FetchResult, ProgressFn, models_in

MiB = 1024 * 1024
Job = tuple[str, Path, int, "str | None", "str | None"]  # key, local file, size, ETag, VersionId
_MISSING = ("404", "NoSuchKey", "NotFound")


def default_transfer_config(**overrides: Any) -> Any:
    """boto3's ``TransferConfig`` as the store uses it by default: ranged GETs of 8 MiB above 8 MiB, 10 at once,
    the classic (Python) transfer manager so behaviour does not depend on whether awscrt happens to be installed."""
    from boto3.s3.transfer import TransferConfig

    settings: dict[str, Any] = {
        "multipart_threshold": 8 * MiB,
        "multipart_chunksize": 8 * MiB,
        "max_concurrency": 10,
        "num_download_attempts": 5,
        "use_threads": True,
        "preferred_transfer_client": "classic",
    }
    settings.update(overrides)
    return TransferConfig(**settings)


def _concurrency(config: Any) -> int:
    """Threads the transfer config runs (so the client's connection pool has one connection for each)."""
    value = getattr(config, "max_request_concurrency", None)
    return value if isinstance(value, int) else 10


@contextlib.contextmanager
def _s3_errors(what: str, endpoint: str) -> Iterator[None]:
    """Translate botocore and s3transfer failures into ArtifactError with a message a user can act on."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError
    from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError

    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        if code in _MISSING:
            raise ArtifactNotFoundError(f"{what}: not found") from exc
        if code == "NoSuchBucket":
            raise ArtifactError(f"{what}: bucket does not exist") from exc
        if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise ArtifactError(f"{what}: access denied ({code})") from exc
        if code in ("412", "PreconditionFailed"):
            raise ArtifactError(f"{what}: changed while being downloaded; the next attempt fetches it anew") from exc
        raise ArtifactError(f"{what}: S3 error {code}: {err.get('Message', exc)}") from exc
    except NoCredentialsError as exc:
        raise ArtifactError(f"{what}: no AWS credentials configured") from exc
    except EndpointConnectionError as exc:
        raise ArtifactError(f"{what}: S3 unreachable at {endpoint}: {exc}") from exc
    except BotoCoreError as exc:
        raise ArtifactError(f"{what}: S3 unreachable or failing at {endpoint}: {exc}") from exc
    except S3DownloadFailedError as exc:  # s3transfer's If-Match refusal: the object was replaced mid-download
        raise ArtifactError(f"{what}: download failed ({exc}); the next attempt fetches it anew") from exc
    except RetriesExceededError as exc:
        raise ArtifactError(f"{what}: download failed after retries at {endpoint}: {exc.last_exception}") from exc


class _Progress:
    """Bytes done across every transfer of one fetch (s3transfer reports from its worker threads)."""

    def __init__(self, total: int, fn: ProgressFn | None) -> None:
        self.total, self.done, self.fn = total, 0, fn
        self._lock = threading.Lock()
        if fn:
            fn(0, total)

    def add(self, n: int) -> None:
        with self._lock:  # a retried range reports its bytes again, negatively first: keep within [0, total]
            self.done = min(max(self.done + n, 0), self.total)
            if self.fn:
                self.fn(self.done, self.total)


def _subscribers(size: int, etag: str | None, progress: _Progress) -> list[Any]:
    from s3transfer.subscribers import BaseSubscriber

    class Known(BaseSubscriber):
        def on_queued(self, future: Any, **kwargs: Any) -> None:
            future.meta.provide_transfer_size(size)  # what the HEAD/listing said: no second HEAD
            if etag:
                future.meta.provide_object_etag(etag)  # every ranged GET carries If-Match

        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            progress.add(bytes_transferred)

    return [Known()]


class S3Store:
    """Artifacts in S3: ``s3://bucket/prefix/<path>.tar.gz``, ``<path>.tgz`` or ``<path>/...`` (a folder holding
    config.pbtxt), ``<path>`` being the TargetModel path (``toolkit.names.target_path``).

    The default client uses short connect/read timeouts and a single retry, so a wrong endpoint fails in seconds
    instead of hanging the CLI for minutes; ``transfer_config`` (boto3's ``TransferConfig``) sets the download's
    parallelism (default: ``default_transfer_config()``).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        client: Any | None = None,
        *,
        region_name: str | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 30.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
        transfer_config: Any | None = None,
    ) -> None:
        if not bucket:
            raise ArtifactError("S3 store needs a bucket name")
        # The same limits as tarball extraction, checked before anything is downloaded: a bucket writer must not be
        # able to fill the disk with a model "directory" any more than with a tarball bomb.
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.transfer_config = transfer_config or default_transfer_config()
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": 2, "mode": "standard"},
                max_pool_connections=max(10, _concurrency(self.transfer_config)),
            )
            session = boto3.session.Session()
            client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region_name or session.region_name or "us-east-1",
                config=config,
            )
        self.client = client

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _label(self, key: str) -> str:
        """How a refusal names an artifact: its TargetModel path first (what the user wrote), then the store."""
        base = self._key() + "/" if self.prefix else ""
        return f"artifact {key[len(base) :]!r} in {self!r}"

    def _endpoint(self) -> str:
        return self.endpoint_url or "the default AWS endpoint"

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        with _s3_errors(self._where(key), self._endpoint()):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in _MISSING:
                    return None
                raise

    def _objects(self, prefix: str) -> list[dict[str, Any]]:
        with _s3_errors(self._where(prefix), self._endpoint()):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [o for page in pages for o in page.get("Contents", [])]

    def list_models(self) -> list[str]:
        base = self._key() + "/" if self.prefix else ""
        return models_in(o["Key"][len(base) :] for o in self._objects(base))

    def _locate(self, name: str) -> tuple[str, dict[str, Any]] | tuple[str, list[dict[str, Any]]] | None:
        """``(key, head)`` of the tarball (``.tar.gz``, then ``.tgz``), ``(folder/, objects)`` of a folder, or None."""
        path = artifact_path(name)
        for suffix in TAR_SUFFIXES:
            head = self._head(self._key(path + suffix))
            if head is not None:
                return self._key(path + suffix), head
        base = self._key(path) + "/"
        objects = [o for o in self._objects(base) if not o["Key"].endswith("/")]  # "/" keys: folder placeholders
        if any(o["Key"] == base + CONFIG for o in objects):
            return base, objects
        return None

    def exists(self, name: str) -> bool:
        try:
            return self._locate(name) is not None
        except ArtifactNotFoundError:  # a name no TargetModel maps to
            return False

    @staticmethod
    def _tar_version(head: dict[str, Any]) -> str:
        etag = str(head.get("ETag", "")).strip('"') or str(head.get("LastModified", ""))
        return f"{etag}@{head['VersionId']}" if head.get("VersionId") else etag

    @staticmethod
    def _dir_version(base: str, objects: list[dict[str, Any]]) -> str:
        h = hashlib.sha1()
        for o in sorted(objects, key=lambda o: o["Key"]):
            h.update(f"{o['Key'][len(base) :]}:{o.get('ETag', '')}:{o.get('Size', 0)};".encode())
        return h.hexdigest()[:16]

    def version(self, name: str) -> str:
        """The artifact's current version: ETag (and VersionId) of a tarball, a digest of a folder's ETags."""
        found = self._locate(name)
        if found is None:
            raise ArtifactNotFoundError(f"model {name!r} not found in {self!r}")
        key, meta = found
        return self._dir_version(key, meta) if isinstance(meta, list) else self._tar_version(meta)

    def fetch(self, name: str, dest_dir: Path, progress: ProgressFn | None = None) -> FetchResult:
        start = time.monotonic()
        found = self._locate(name)
        if found is None:
            where = self._where(self._key(artifact_path(name)))
            raise ArtifactNotFoundError(
                f"model {name!r} not found in {self!r} (expected {where}.tar.gz, {where}.tgz or {where}/{CONFIG})"
            )
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest_dir, prefix=f"{TMP_PREFIX}{name}-"))
        try:
            key, meta = found
            if isinstance(meta, list):
                done = self._fetch_dir(name, key, meta, dest_dir, tmp, progress)
                version = self._dir_version(key, meta)
            else:
                done = self._fetch_tar(name, key, meta, dest_dir, tmp, progress)
                version = self._tar_version(meta)
            return FetchResult(dest_dir / name, done, time.monotonic() - start, version)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _download(self, jobs: list[Job], progress: _Progress) -> None:
        """Download ``(key, local file, size, etag, version id)`` jobs concurrently through one s3transfer manager.
        The first failure cancels the rest (leaving the manager's block) and becomes an ArtifactError."""
        from boto3.s3.transfer import create_transfer_manager

        with create_transfer_manager(self.client, self.transfer_config) as manager:
            futures = []
            for key, out, size, etag, version_id in jobs:
                extra = {"VersionId": version_id} if version_id else None
                future = manager.download(self.bucket, key, str(out), extra, _subscribers(size, etag, progress))
                futures.append((key, future))
            for key, future in futures:
                with _s3_errors(self._where(key), self._endpoint()):
                    try:
                        future.result()
                    except OSError as exc:  # the local side: disk full, permissions
                        raise ArtifactError(f"{self._where(key)}: cannot be written to local disk: {exc}") from exc

    def _fetch_tar(
        self, name: str, key: str, head: dict[str, Any], dest_dir: Path, tmp: Path, progress: ProgressFn | None
    ) -> int:
        total = int(head.get("ContentLength", 0))
        if total > self.max_bytes:
            raise ArtifactError(f"{self._where(key)}: {total} bytes compressed, over the limit of {self.max_bytes}")
        local_tar = tmp / PurePosixPath(key).name
        meter = _Progress(total, progress)
        self._download([(key, local_tar, total, head.get("ETag"), head.get("VersionId"))], meter)
        label = self._label(key)
        extract_model_tarball(
            local_tar, dest_dir, name=name, max_bytes=self.max_bytes, max_files=self.max_files, label=label
        )
        return meter.done

    def _fetch_dir(
        self,
        name: str,
        base: str,
        objects: list[dict[str, Any]],
        dest_dir: Path,
        tmp: Path,
        progress: ProgressFn | None,
    ) -> int:
        total = sum(int(o.get("Size", 0)) for o in objects)
        if len(objects) > self.max_files or total > self.max_bytes:
            raise ArtifactError(
                f"{self._where(base)}: {len(objects)} objects, {total} bytes: over the limits "
                f"({self.max_files} files, {self.max_bytes} bytes)"
            )
        model_dir = tmp / name
        rels: dict[tuple[str, ...], dict[str, Any]] = {}
        for obj in sorted(objects, key=lambda o: o["Key"]):
            rel = PurePosixPath(obj["Key"][len(base) :])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in obj["Key"]:
                raise ArtifactError(f"{self._where(obj['Key'])}: unsafe key (path traversal)")
            rels[rel.parts] = obj
        jobs: list[Job] = []
        for parts, obj in rels.items():
            clash = next((parts[:i] for i in range(1, len(parts)) if parts[:i] in rels), None)
            if clash is not None:  # keys `m/a` and `m/a/b`: a file where a folder must go
                raise ArtifactError(
                    f"{self._where(obj['Key'])}: cannot be written as a file here: {'/'.join(clash)} is a file too"
                )
            out = model_dir.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((obj["Key"], out, int(obj.get("Size", 0)), obj.get("ETag"), None))
        meter = _Progress(total, progress)
        self._download(jobs, meter)
        adopt_config_name(model_dir, name, self._label(base))
        install_dir(model_dir, dest_dir / name)
        return meter.done
