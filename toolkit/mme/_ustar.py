"""A small tarball's members read straight from its bytes, for the archives that need none of tarfile's generality.

Why: a multiplexed model's cold request reads its tarball in memory (``safe_tar.read_model_tarball``), and tarfile's
header parser (``TarInfo.frombuf``: eight numeric fields, five strings, two checksums, per member) was ~40 % of that
preparation's CPU (~35-60 µs a header on the benchmark's machine). Most artifacts are plain ustar/GNU archives of
regular files and folders, and for those the answer is a few slices.

Agreement with tarfile is the rule, and it is kept by accepting less: ``plain_members`` answers only for archives
whose every header is a regular file or a folder (types ``0``, ``\\0``, ``5``), whose numeric fields are plain octal
digits (tarfile also reads base-256, signs, underscores and other white space: those archives are left to it), whose
checksum tarfile accepts, whose data is all there, and which end with a zero block (tarfile ends its listing there
too). Anything else is None and the caller reads the archive with tarfile, which also words every error. What it
returns is tarfile's reading: names decoded and joined with the ustar prefix as tarfile does, folders without their
trailing slashes. ``tests/unit/test_ustar.py`` checks that against tarfile on generated and damaged archives.
"""

from __future__ import annotations

import re
import struct
import tarfile

_BLOCK = tarfile.BLOCKSIZE
_ZERO = bytes(_BLOCK)
_OCTAL = re.compile(rb" *[0-7]* *")
# mode, uid, gid, size, mtime, chksum, devmajor, devminor: tarfile's ``frombuf`` parses all eight (a bad one ends its
# listing there), so all eight are checked here.
_NUMERIC = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (148, 156), (329, 337), (337, 345))
_SIZE, _CHKSUM = 3, 5
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_ENCODING, _ERRORS = tarfile.ENCODING, "surrogateescape"  # what ``tarfile.open`` reads names with by default


class _NotPlain(Exception):
    """What this reader leaves to tarfile (never raised out of ``plain_members``)."""


def _octal(field: bytes) -> int:
    """tarfile's ``nti`` for a field of plain octal digits between spaces (up to its first NUL)."""
    field = field.split(b"\0", 1)[0]
    if _OCTAL.fullmatch(field) is None:
        raise _NotPlain
    digits = field.strip(b" ")
    return int(digits, 8) if digits else 0


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode(_ENCODING, _ERRORS)


def _checksum_ok(buf: bytes, chksum: int) -> bool:
    """tarfile's test (``chksum in calc_chksums(buf)``): the header's bytes summed, its checksum field as spaces,
    as unsigned or (some old tars) signed chars."""
    if chksum == 256 + sum(buf[:148]) + sum(buf[156:]):
        return True
    return chksum == 256 + sum(struct.unpack_from("148b8x356b", buf))


def _header(buf: bytes) -> tarfile.TarInfo:
    """One header as tarfile's ``frombuf`` and ``_proc_builtin`` read it, for a file or a folder."""
    numbers = [_octal(buf[a:b]) for a, b in _NUMERIC]
    if not _checksum_ok(buf, numbers[_CHKSUM]):
        raise _NotPlain
    kind = buf[156:157]
    name = _text(buf[0:100])
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE  # the old V7 way of writing a folder
    if kind not in _FILE_TYPES and kind != tarfile.DIRTYPE:
        raise _NotPlain
    prefix = _text(buf[345:500])
    if prefix:
        name = prefix + "/" + name
    if kind == tarfile.DIRTYPE:  # (tarfile strips the name, then the joined name: the same as this once)
        name = name.rstrip("/")
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, numbers[_SIZE]
    return info


def plain_members(raw: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]] | None:
    """The members of the uncompressed tar ``raw`` with each regular file's bytes (None for a folder), in archive
    order, as tarfile lists them; None where this reader does not answer (see the module's docstring)."""
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []
    off, end = 0, len(raw)
    try:
        while off + _BLOCK <= end:  # else no end-of-archive block: None
            buf = raw[off : off + _BLOCK]
            if buf == _ZERO:
                return out or None
            info = _header(buf)
            off += _BLOCK
            data = None
            if info.type in _FILE_TYPES:  # a folder's size is not skipped (tarfile reads the next header there)
                data = raw[off : off + info.size]  # short only if the archive is: then no zero block follows
                off += -(-info.size // _BLOCK) * _BLOCK
            out.append((info, data))
    except _NotPlain:
        pass
    return None
