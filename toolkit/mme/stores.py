"""Where multi-model-endpoint artifacts live: a local folder or an S3 bucket, behind one small protocol.

The MME manager only needs "which models exist", "is this one there" and "put a ready model directory here";
keeping that behind ``ArtifactStore`` lets the manager, the disk cache and the tests treat both stores alike.
Every failure (missing key, access denied, bucket unreachable) becomes an ``ArtifactError`` with a clear message;
a missing model is the subclass ``ArtifactNotFoundError``, so callers can tell it apart by type.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, runtime_checkable

from toolkit.mme.safe_tar import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILES,
    TMP_PREFIX,
    ArtifactError,
    ArtifactNotFoundError,
    extract_model_tarball,
    install_dir,
    validate_model_name,
)

ProgressFn = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``, called as a fetch advances (e.g. to draw a progress bar)."""

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FetchResult:
    """A model made ready on local disk."""

    path: Path  # dest_dir/<name>, holding config.pbtxt
    bytes_downloaded: int
    seconds: float
    version: str  # etag- or mtime-based; changes when the artifact changes


@runtime_checkable
class ArtifactStore(Protocol):
    """A source of model artifacts (``<name>.tar.gz`` or a ``<name>/`` directory holding config.pbtxt)."""

    def list_models(self) -> list[str]: ...

    def exists(self, name: str) -> bool: ...

    def fetch(self, name: str, dest_dir: Path, progress: ProgressFn | None = None) -> FetchResult: ...


def _dir_has_links(root: Path) -> Path | None:
    for p in root.rglob("*"):
        if p.is_symlink():
            return p
    return None


class LocalStore:
    """Artifacts in a local folder: ``root/<name>.tar.gz`` or ``root/<name>/config.pbtxt``.

    Directories are copied (never moved or linked) so the cache can delete its copy without touching the source.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ArtifactError(f"artifact store {self.root} is not a directory")

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _locate(self, name: str) -> Path | None:
        validate_model_name(name)
        tar = self.root / f"{name}.tar.gz"
        folder = self.root / name
        has_tar, has_dir = tar.is_file(), (folder / "config.pbtxt").is_file()
        if has_tar and has_dir:
            raise ArtifactError(f"{self!r}: both {tar.name} and {name}/ exist; remove one so the model is unambiguous")
        return tar if has_tar else folder if has_dir else None

    def list_models(self) -> list[str]:
        names: set[str] = set()
        for p in self.root.iterdir():
            if p.is_file() and p.name.endswith(".tar.gz"):
                cand = p.name[: -len(".tar.gz")]
            elif p.is_dir() and (p / "config.pbtxt").is_file():
                cand = p.name
            else:
                continue
            with contextlib.suppress(ArtifactError):
                names.add(validate_model_name(cand))
        return sorted(names)

    def exists(self, name: str) -> bool:
        return self._locate(name) is not None

    def version(self, name: str) -> str:
        """A string that changes whenever the artifact changes (mtime + size based)."""
        src = self._locate(name)
        if src is None:
            raise ArtifactNotFoundError(f"model {name!r} not found in {self!r}")
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        h = hashlib.sha1()
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(self.root)}:{st.st_mtime_ns}:{st.st_size};".encode())
        return h.hexdigest()[:16]

    def fetch(self, name: str, dest_dir: Path, progress: ProgressFn | None = None) -> FetchResult:
        start = time.monotonic()
        src = self._locate(name)
        if src is None:
            raise ArtifactNotFoundError(
                f"model {name!r} not found in {self!r} (expected {name}.tar.gz or {name}/config.pbtxt)"
            )
        version = self.version(name)
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        if src.is_file():
            total = src.stat().st_size
            if progress:
                progress(0, total)
            path = extract_model_tarball(src, dest_dir, name=name)
            if progress:
                progress(total, total)
            return FetchResult(path, total, time.monotonic() - start, version)
        link = _dir_has_links(src)
        if link is not None:
            raise ArtifactError(f"{self!r}: {link} is a symbolic link; links are not allowed in model artifacts")
        files = [p for p in src.rglob("*") if p.is_file()]
        total = sum(p.stat().st_size for p in files)
        tmp = Path(tempfile.mkdtemp(dir=dest_dir, prefix=f"{TMP_PREFIX}{name}-"))
        try:
            done = 0
            if progress:
                progress(0, total)
            for f in files:
                out = tmp / f.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)
                done += f.stat().st_size
                if progress:
                    progress(done, total)
            install_dir(tmp, dest_dir / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return FetchResult(dest_dir / name, total, time.monotonic() - start, version)


@contextlib.contextmanager
def _s3_errors(what: str, endpoint: str) -> Iterator[None]:
    """Translate botocore failures into ArtifactError with a message a user can act on."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            raise ArtifactNotFoundError(f"{what}: not found") from exc
        if code == "NoSuchBucket":
            raise ArtifactError(f"{what}: bucket does not exist") from exc
        if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise ArtifactError(f"{what}: access denied ({code})") from exc
        raise ArtifactError(f"{what}: S3 error {code}: {err.get('Message', exc)}") from exc
    except NoCredentialsError as exc:
        raise ArtifactError(f"{what}: no AWS credentials configured") from exc
    except EndpointConnectionError as exc:
        raise ArtifactError(f"{what}: S3 unreachable at {endpoint}: {exc}") from exc
    except BotoCoreError as exc:
        raise ArtifactError(f"{what}: S3 unreachable or failing at {endpoint}: {exc}") from exc


class S3Store:
    """Artifacts in S3: ``s3://bucket/prefix/<name>.tar.gz`` or ``s3://bucket/prefix/<name>/...``.

    The default client uses short connect/read timeouts and a single retry, so a wrong endpoint fails in seconds
    instead of hanging the CLI for minutes.
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
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": 2, "mode": "standard"},
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

    def _endpoint(self) -> str:
        return self.endpoint_url or "the default AWS endpoint"

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        with _s3_errors(self._where(key), self._endpoint()):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def _list(self, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        with _s3_errors(self._where(prefix), self._endpoint()):
            yield from self.client.get_paginator("list_objects_v2").paginate(**kwargs)

    def list_models(self) -> list[str]:
        base = self._key() + "/" if self.prefix else ""
        names: set[str] = set()
        for page in self._list(base, delimiter="/"):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(base) :]
                if rel.endswith(".tar.gz"):
                    with contextlib.suppress(ArtifactError):
                        names.add(validate_model_name(rel[: -len(".tar.gz")]))
            for cp in page.get("CommonPrefixes", []):
                rel = cp["Prefix"][len(base) :].rstrip("/")
                with contextlib.suppress(ArtifactError):
                    if self._head(self._key(validate_model_name(rel), "config.pbtxt")) is not None:
                        names.add(rel)
        return sorted(names)

    def exists(self, name: str) -> bool:
        validate_model_name(name)
        if self._head(self._key(f"{name}.tar.gz")) is not None:
            return True
        return self._head(self._key(name, "config.pbtxt")) is not None

    def _download(self, key: str, out: Path, done: int, total: int, progress: ProgressFn | None) -> int:
        with _s3_errors(self._where(key), self._endpoint()):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with out.open("wb") as fh:
                for chunk in iter(lambda: body.read(_CHUNK), b""):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        return done

    def fetch(self, name: str, dest_dir: Path, progress: ProgressFn | None = None) -> FetchResult:
        validate_model_name(name)
        start = time.monotonic()
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        tar_key = self._key(f"{name}.tar.gz")
        head = self._head(tar_key)
        tmp = Path(tempfile.mkdtemp(dir=dest_dir, prefix=f"{TMP_PREFIX}{name}-"))
        try:
            if head is not None:
                total = int(head.get("ContentLength", 0))
                if total > self.max_bytes:
                    raise ArtifactError(
                        f"{self._where(tar_key)}: {total} bytes compressed, over the limit of {self.max_bytes}"
                    )
                if progress:
                    progress(0, total)
                local_tar = tmp / f"{name}.tar.gz"
                done = self._download(tar_key, local_tar, 0, total, progress)
                path = extract_model_tarball(
                    local_tar, dest_dir, name=name, max_bytes=self.max_bytes, max_files=self.max_files
                )
                version = str(head.get("ETag", "")).strip('"') or str(head.get("LastModified", ""))
                return FetchResult(path, done, time.monotonic() - start, version)
            return self._fetch_dir(name, dest_dir, tmp, start, progress)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _fetch_dir(
        self, name: str, dest_dir: Path, tmp: Path, start: float, progress: ProgressFn | None
    ) -> FetchResult:
        base = self._key(name) + "/"
        objects = [o for page in self._list(base) for o in page.get("Contents", [])]
        if not any(o["Key"] == base + "config.pbtxt" for o in objects):
            raise ArtifactNotFoundError(
                f"model {name!r} not found in {self!r} (expected {self._where(self._key(name + '.tar.gz'))} "
                f"or {self._where(base + 'config.pbtxt')})"
            )
        total = sum(int(o.get("Size", 0)) for o in objects)
        if len(objects) > self.max_files or total > self.max_bytes:
            raise ArtifactError(
                f"{self._where(base)}: {len(objects)} objects, {total} bytes: over the limits "
                f"({self.max_files} files, {self.max_bytes} bytes)"
            )
        h = hashlib.sha1()
        model_dir = tmp / name
        done = 0
        if progress:
            progress(0, total)
        for obj in sorted(objects, key=lambda o: o["Key"]):
            rel = PurePosixPath(obj["Key"][len(base) :])
            if obj["Key"].endswith("/"):
                continue  # "folder" placeholder objects
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise ArtifactError(f"{self._where(obj['Key'])}: unsafe key (path traversal)")
            out = model_dir.joinpath(*rel.parts)
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                done = self._download(obj["Key"], out, done, total, progress)
            except OSError as exc:  # e.g. keys `m/a` and `m/a/b`: a file where a folder must go
                raise ArtifactError(f"{self._where(obj['Key'])}: cannot be written as a file here: {exc}") from None
            h.update(f"{rel}:{obj.get('ETag', '')};".encode())
        install_dir(model_dir, dest_dir / name)
        return FetchResult(dest_dir / name, done, time.monotonic() - start, h.hexdigest()[:16])


def open_store(uri: str, **kw: Any) -> ArtifactStore:
    """``s3://bucket/prefix`` -> ``S3Store``; ``file:///path`` or a plain path -> ``LocalStore``."""
    kw = {k: v for k, v in kw.items() if v is not None}  # lets a CLI pass endpoint_url=None unconditionally
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ArtifactError(f"store URI {uri!r} has no bucket (expected s3://bucket/prefix)")
        return S3Store(bucket, prefix, **kw)
    if "://" in uri and not uri.startswith("file://"):
        raise ArtifactError(f"store URI {uri!r}: only s3:// and local paths are supported")
    if kw:
        raise ArtifactError(f"options {sorted(kw)} only apply to s3:// stores")
    return LocalStore(Path(uri.removeprefix("file://")))
