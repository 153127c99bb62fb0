"""``toolkit.mme._ustar.plain_members`` against tarfile, its reference: on generated archives (three formats, every
member type, long and non-ASCII names, numbers tarfile writes in base-256) and on damaged ones (bytes overwritten,
cut short, garbage after), whenever the fast reader answers, tarfile lists the same members with the same bytes;
and ``read_model_tarball`` answers the same (or refuses with the same message) with and without it."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from toolkit.mme import safe_tar
from toolkit.mme._ustar import plain_members
from toolkit.mme.safe_tar import ArtifactError, read_model_tarball

Listing = list[tuple[str, bytes, int, str, bytes | None]]

_SEGMENT = st.one_of(
    st.sampled_from(["1", "config.pbtxt", "model.py", "m", "a b", "é", "x" * 60, ".", "..", ""]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="/\0"), max_size=12),
)
_NAME = st.lists(_SEGMENT, min_size=1, max_size=4).map("/".join)
_KIND = st.sampled_from(["file", "file", "file", "dir", "dir", "symlink", "hardlink", "fifo", "chr"])
_MEMBER = st.tuples(
    _NAME,
    _KIND,
    st.binary(max_size=1500),
    st.integers(min_value=-1, max_value=8**12),  # mtime: 8**11 and up (and < 0) are base-256 in GNU format
    st.booleans(),  # a folder's name written with a trailing slash
)


def _archive(members: list[tuple[str, str, bytes, int, bool]], fmt: int) -> bytes | None:
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for name, kind, data, mtime, slash in members:
                info = tarfile.TarInfo(name + ("/" if slash and kind == "dir" else ""))
                info.mtime = mtime
                if kind == "file":
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                    continue
                info.type = {
                    "dir": tarfile.DIRTYPE,
                    "symlink": tarfile.SYMTYPE,
                    "hardlink": tarfile.LNKTYPE,
                    "fifo": tarfile.FIFOTYPE,
                    "chr": tarfile.CHRTYPE,
                }[kind]
                info.linkname = "target" if kind in ("symlink", "hardlink") else ""
                tf.addfile(info)
    except (ValueError, UnicodeEncodeError):  # what this format cannot write (USTAR: long names, big numbers)
        return None
    return buf.getvalue()


def _reference(raw: bytes) -> Listing | str:
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            out: Listing = []
            for m in tf:
                fh = tf.extractfile(m) if m.isreg() else None
                out.append((m.name, m.type, m.size, m.linkname, fh.read() if fh is not None else None))
            return out
    except (tarfile.TarError, EOFError, ValueError, OverflowError) as exc:
        return f"refused: {exc}"


def _fast(raw: bytes) -> Listing | None:
    got = plain_members(raw)
    return None if got is None else [(i.name, i.type, i.size, i.linkname, d) for i, d in got]


@st.composite
def _damaged(draw: st.DrawFn) -> bytes:
    members = draw(st.lists(_MEMBER, min_size=1, max_size=5))
    fmt = draw(st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
    raw = _archive(members, fmt)
    assume(raw is not None)
    assert raw is not None
    data = bytearray(raw)
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["byte", "field", "cut", "tail", "type", "type"]))
        if how == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif how == "field":  # a numeric field of the first headers rewritten: signs, spaces, NULs, base-256 marks
            block = draw(st.integers(0, max(len(data) // 512 - 1, 0))) * 512
            start = block + draw(st.sampled_from([100, 108, 116, 124, 136, 148, 329, 337]))
            text = draw(st.sampled_from([b" 17 ", b"+7", b"1_0", b"\t7", b"0o7", b"\x80\0\0\x01", b"\xff", b"8", b""]))
            data[start : start + len(text)] = text
        elif how == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif how == "tail":
            data += draw(st.binary(max_size=1024))
        elif how == "type" and len(data) >= 512:  # a folder written the V7 way, or a type of its own
            block = draw(st.integers(0, len(data) // 512 - 1)) * 512
            data[block + 156] = draw(st.sampled_from([0, ord("0"), ord("5"), ord("7"), ord("g"), ord("x"), ord("L")]))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(_damaged())
def test_whenever_it_answers_tarfile_reads_the_same(raw: bytes) -> None:
    fast = _fast(raw)
    if fast is not None:
        assert _reference(raw) == fast


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    st.lists(
        st.tuples(st.sampled_from(["1", "1/m.py", "config.pbtxt", "a/b", "x" * 99]), st.sampled_from(["file", "dir"])),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
)
def test_it_answers_for_plain_archives(entries: list[tuple[str, str]], fmt: int) -> None:
    """Not a reader that always declines: files and folders with short ASCII names, as any tar writes them."""
    raw = _archive([(n, k, b"data", 1_700_000_000, False) for n, k in entries], fmt)
    assert raw is not None
    fast = _fast(raw)
    assert fast is not None and fast == _reference(raw)


_MODEL = {
    "config.pbtxt": b'name: "m"\nbackend: "python"\n',
    "1/model.py": b"# adapter\n",
    "1/m.py": b"def predict(inputs):\n    return inputs\n",
}


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(["", "./", "model/"]),
    st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    st.lists(st.tuples(_NAME, _KIND, st.binary(max_size=64), st.just(0), st.booleans()), max_size=2),
    st.integers(0, 3),
)
def test_read_model_tarball_is_the_same_with_and_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, top: str, fmt: int, extra: list, damage: int
) -> None:
    members = [(top + n, "file", d, 0, False) for n, d in _MODEL.items()] + extra
    raw = _archive(members, fmt)
    assume(raw is not None)
    assert raw is not None
    if damage:
        raw = raw[: len(raw) - 512 * damage]  # end-of-archive blocks, then data, cut away
    path = tmp_path / "m.tar.gz"
    path.write_bytes(gzip.compress(raw))

    def read() -> object:
        try:
            return read_model_tarball(path, max_read=1 << 20, label="m.tar.gz")
        except ArtifactError as exc:
            return f"refused: {exc}"

    with_it = read()
    monkeypatch.setattr(safe_tar, "plain_members", lambda raw: None)
    assert read() == with_it
