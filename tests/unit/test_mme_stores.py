"""Artifact extraction, the local store, the S3 store without a server, and the LRU disk cache (no server: the S3
store against moto is in tests/integration/test_mme_stores_s3.py)."""

from __future__ import annotations

import os
import re
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from model_tarballs import CONFIG, MODEL_PY, model_members, tar_member, write_tar

from toolkit.errors import TritonctlError
from toolkit.mme.diskcache import VERSIONS_DIR, CacheFullError, DiskCache
from toolkit.mme.safe_tar import (
    ArtifactError,
    ArtifactNotFoundError,
    extract_model_tarball,
    read_model_tarball,
    validate_model_name,
)
from toolkit.mme.stores import FetchResult, LocalStore, S3Store, open_store
from toolkit.server import free_port


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def make_model_dir(root: Path, name: str, payload: int = 0) -> Path:
    d = root / name
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_bytes(CONFIG % name.encode())
    (d / "1" / "model.py").write_bytes(MODEL_PY)
    if payload:
        (d / "1" / "weights.bin").write_bytes(b"\0" * payload)
    return d


# --- safe extraction -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "./", "resnet/"])
def test_extract_flat_and_nested_layouts(tmp_path: Path, prefix: str) -> None:
    tar = write_tar(tmp_path / "resnet.tar.gz", model_members("resnet", prefix))
    dest = tmp_path / "repo"
    path = extract_model_tarball(tar, dest)
    assert path == dest / "resnet"
    assert (path / "config.pbtxt").read_bytes() == CONFIG % b"resnet"
    assert (path / "1" / "model.py").read_bytes() == MODEL_PY
    assert sorted(p.name for p in dest.iterdir()) == ["resnet"]  # no temp leftovers


def _malicious() -> dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], dict[str, int], str]]:
    ok = model_members("evil")
    return {
        "absolute": ([*ok, tar_member("/tmp/evil.txt", b"x")], {}, "absolute path"),
        "traversal": ([*ok, tar_member("1/../../evil.txt", b"x")], {}, r"'\.\.'"),
        "symlink": ([*ok, _special("1/link", tarfile.SYMTYPE, "/etc/passwd")], {}, "symbolic link"),
        "symlink_rel": ([*ok, _special("1/link", tarfile.SYMTYPE, "../../../etc")], {}, "symbolic link"),
        "hardlink": ([*ok, _special("1/hard", tarfile.LNKTYPE, "../../etc/passwd")], {}, "hard link"),
        "device": ([*ok, _special("1/dev", tarfile.CHRTYPE)], {}, "device file"),
        "fifo": ([*ok, _special("1/pipe", tarfile.FIFOTYPE)], {}, "FIFO"),
        "size_bomb": ([*ok, tar_member("1/w.bin", b"\0" * 5000)], {"max_bytes": 4096}, "size bomb"),
        "count_bomb": ([*ok, *(tar_member(f"1/f{i}", b"") for i in range(20))], {"max_files": 10}, "file-count bomb"),
        "no_config": ([tar_member("1/model.py", MODEL_PY)], {}, "no config.pbtxt"),
        # A folder of another name is accepted now (tests/integration/test_mme_artifacts.py); two models are not.
        "two_models": ([*model_members("evil", "a/"), *model_members("evil", "b/")], {}, "one artifact is one model"),
    }


@pytest.mark.parametrize("case", sorted(_malicious()))
def test_malicious_tarballs_rejected(tmp_path: Path, case: str) -> None:
    members, limits, message = _malicious()[case]
    tar = write_tar(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "repo"
    dest.mkdir()
    with pytest.raises(ArtifactError, match=message) as err:
        extract_model_tarball(tar, dest, **limits)
    assert "evil.tar.gz" in str(err.value)
    assert list(dest.iterdir()) == []  # nothing half-extracted
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    try:  # read in memory (a multiplexed model): the same checks, or None, and the caller extracts as above
        assert read_model_tarball(tar, max_read=1 << 30, label="evil.tar.gz", **limits) is None
    except ArtifactError as exc:
        assert re.search(message, str(exc)) and "evil.tar.gz" in str(exc)


def test_corrupt_and_truncated_archives(tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    corrupt = tmp_path / "bad.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
    with pytest.raises(ArtifactError, match=r"not a readable tar\.gz"):
        extract_model_tarball(corrupt, dest)
    text = tmp_path / "text.tar.gz"
    text.write_text("definitely not a tarball\n")
    with pytest.raises(ArtifactError, match=r"not a readable tar\.gz"):
        extract_model_tarball(text, dest)
    # Random payload so the compressed stream is long; cut it in the middle of the data.
    full = write_tar(tmp_path / "src.tar.gz", [*model_members("trunc"), tar_member("1/w.bin", os.urandom(200_000))])
    truncated = tmp_path / "trunc.tar.gz"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=r"trunc\.tar\.gz"):
        extract_model_tarball(truncated, dest)
    assert list(dest.iterdir()) == []
    with pytest.raises(ArtifactError, match="not found"):
        extract_model_tarball(tmp_path / "missing.tar.gz", dest)


def test_existing_model_is_replaced_atomically(tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    make_model_dir(dest, "m", payload=10)
    tar = write_tar(tmp_path / "m.tar.gz", model_members("m"))
    extract_model_tarball(tar, dest)
    assert not (dest / "m" / "1" / "weights.bin").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["m"]


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "../x", "x" * 129, "sp ace", "é"])
def test_validate_model_name_rejects(bad: str) -> None:
    with pytest.raises(ArtifactError):
        validate_model_name(bad)


def test_validate_model_name_accepts() -> None:
    for good in ("resnet50", "bert-base_v1.2", "x" * 128, "_a"):
        assert validate_model_name(good) == good
    assert issubclass(ArtifactError, TritonctlError)


# --- local store ---------------------------------------------------------------------------------------------


def test_local_store_tar_and_dir(tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    store_root.mkdir()
    write_tar(store_root / "tarred.tar.gz", model_members("tarred", "tarred/"))
    src = make_model_dir(store_root, "plain", payload=100)
    (store_root / "README.txt").write_text("not a model")
    store = open_store(str(store_root))
    assert isinstance(store, LocalStore)
    assert store.list_models() == ["plain", "tarred"]
    assert store.exists("plain") and store.exists("tarred") and not store.exists("nope")

    seen: list[tuple[int, int]] = []
    dest = tmp_path / "cache"
    res = store.fetch("tarred", dest, progress=lambda d, t: seen.append((d, t)))
    assert isinstance(res, FetchResult) and (res.path / "config.pbtxt").is_file()
    assert res.bytes_downloaded == (store_root / "tarred.tar.gz").stat().st_size and seen[-1][0] == seen[-1][1]
    res2 = store.fetch("plain", dest)
    assert (res2.path / "1" / "weights.bin").stat().st_size == 100
    assert (src / "config.pbtxt").is_file()  # copied, not moved
    assert (res2.path / "config.pbtxt").stat().st_ino != (src / "config.pbtxt").stat().st_ino
    v1 = res2.version
    time.sleep(0.01)
    (src / "config.pbtxt").write_bytes(CONFIG % b"plain" + b"# changed\n")
    assert store.fetch("plain", dest).version != v1
    with pytest.raises(ArtifactNotFoundError, match="'nope' not found"):
        store.fetch("nope", dest)
    with pytest.raises(ArtifactError, match="not a directory"):
        open_store(str(tmp_path / "absent"))


# --- S3 without a server --------------------------------------------------------------------------------------


def test_s3_unreachable_fails_fast(tmp_path: Path) -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    store = S3Store("models", "mme", endpoint_url=f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(ArtifactError, match="unreachable"):
        store.fetch("resnet", tmp_path)
    assert time.monotonic() - start < 5.0
    with pytest.raises(ArtifactError, match="unreachable"):
        store.list_models()


# --- disk cache ----------------------------------------------------------------------------------------------


class CountingStore(LocalStore):
    """A real LocalStore that also counts fetches (to check that concurrent callers share one fetch)."""

    def __init__(self, root: Path, delay: float = 0.0) -> None:
        super().__init__(root)
        self.fetches: list[str] = []
        self.delay = delay

    def fetch(self, name: str, dest_dir: Path, progress: Callable[[int, int], None] | None = None) -> FetchResult:
        self.fetches.append(name)
        time.sleep(self.delay)
        return super().fetch(name, dest_dir, progress)


@pytest.fixture()
def store(tmp_path: Path) -> CountingStore:
    root = tmp_path / "store"
    for name in ("a", "b", "c", "d"):
        make_model_dir(root, name, payload=1000)
    make_model_dir(root, "huge", payload=10_000)
    return CountingStore(root)


def test_cache_lru_deletion_and_pins(tmp_path: Path, store: CountingStore) -> None:
    cache = DiskCache(tmp_path / "cache", capacity_bytes=2500)  # room for two ~1.1 KB models
    cache.get_or_fetch("a", store)
    cache.get_or_fetch("b", store)
    cache.get_or_fetch("a", store)  # hit: b becomes LRU
    assert store.fetches == ["a", "b"]
    cache.get_or_fetch("c", store)
    assert [e.name for e in cache.entries()] == ["a", "c"] and not (cache.root / "b").exists()
    assert cache.bytes_used <= 2500 and cache.evictions == 1
    cache.pin("a")  # a is LRU but pinned (loaded): c goes instead
    cache.get_or_fetch("d", store)
    assert sorted(e.name for e in cache.entries()) == ["a", "d"] and (cache.root / "a" / "config.pbtxt").is_file()
    cache.get_or_fetch("b", store, pin=True)  # a and b pinned -> d deleted
    assert sorted(e.name for e in cache.entries()) == ["a", "b"]
    with pytest.raises(CacheFullError, match="pinned"):
        cache.get_or_fetch("c", store)
    assert "c" not in cache and not (cache.root / "c").exists()
    with pytest.raises(CacheFullError, match="more than the cache capacity"):
        cache.get_or_fetch("huge", store)
    with pytest.raises(ArtifactError, match="pinned"):
        cache.evict("a")
    cache.unpin("a")
    assert cache.evict("a") and not (cache.root / "a").exists()
    assert sorted(p.name for p in cache.root.iterdir() if p.name != VERSIONS_DIR) == ["b"]


def test_cache_survives_restart(tmp_path: Path, store: CountingStore) -> None:
    cache = DiskCache(tmp_path / "cache", capacity_bytes=2500)
    cache.get_or_fetch("a", store)
    cache.get_or_fetch("b", store)
    cache.get_or_fetch("a", store)
    (cache.root / ".tritonctl-tmp-b-crash").mkdir()  # leftover of an interrupted fetch
    again = DiskCache(tmp_path / "cache", capacity_bytes=2500)
    assert [e.name for e in again.entries()] == ["b", "a"]  # LRU order from directory mtimes
    assert again.bytes_used == cache.bytes_used
    assert not (again.root / ".tritonctl-tmp-b-crash").exists()
    again.get_or_fetch("c", store)
    assert sorted(e.name for e in again.entries()) == ["a", "c"]


def test_cache_concurrent_fetch_shared(tmp_path: Path, store: CountingStore) -> None:
    store.delay = 0.2
    cache = DiskCache(tmp_path / "cache", capacity_bytes=10_000)
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(cache.get_or_fetch("a", store))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.fetches == ["a"] and len(paths) == 4 and len(set(paths)) == 1
    with pytest.raises(ArtifactError, match="not found"):
        cache.get_or_fetch("zzz", store)
    assert "zzz" not in cache


def test_disk_cache_shares_a_failed_fetch(tmp_path: Path) -> None:
    """Concurrent callers share one fetch when it fails too: one store call, every caller gets the error."""
    import threading

    class SlowBrokenStore(LocalStore):
        calls = 0

        def fetch(self, name, dest_dir, progress=None):  # type: ignore[no-untyped-def, override]
            SlowBrokenStore.calls += 1
            time.sleep(0.3)
            raise ArtifactError(f"artifact {name!r} is corrupt")

    (tmp_path / "src").mkdir()
    cache = DiskCache(tmp_path / "cache", capacity_bytes=10_000)
    errors: list[BaseException] = []

    def get() -> None:
        try:
            cache.get_or_fetch("m", SlowBrokenStore(tmp_path / "src"))
        except ArtifactError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=get) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert SlowBrokenStore.calls == 1 and len(errors) == 5
    assert all("corrupt" in str(e) for e in errors)
