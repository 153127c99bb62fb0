"""Safe extraction of model artifacts (``<name>.tar.gz`` or ``.tgz`` holding one Triton model directory).

Artifacts come from buckets that other people write to, so a tarball is untrusted input: every member is checked
*before* anything touches the disk (absolute paths, ``..``, links, device files, size and file-count bombs), then
tarfile's own ``filter="data"`` runs as a second line of defence. Extraction goes to a temporary directory beside the
destination and is renamed into place, so an error never leaves a half-extracted model that Triton could try to load.

What layouts are accepted, and how the extracted copy takes the name its TargetModel gives (the config's ``name``
rewritten in the copy, never in the store), is ``toolkit.mme.layout``'s business.

Link policy: **every** symbolic or hard link is rejected, escaping or not. A Triton model directory never needs one,
and allowing "internal" links opens write-through tricks (a link followed by a file written through it) that are
easy to get wrong; a plain rejection with the member's name is simpler to reason about.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from toolkit.errors import TritonctlError
from toolkit.mme._ustar import plain_members
from toolkit.mme.layout import (
    CONFIG,
    STEPS_DIR,
    LayoutError,
    adopt_name,
    bundle_folders,
    is_ensemble,
    is_junk,
    model_root,
)
from toolkit.mme.native import adapt_native
from toolkit.mme.phases import timed
from toolkit.names import ModelNameError, check_model_name, target_path

DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_FILES = 10_000
# Temporary names start with this so a cache scanning its root can recognise (and clean) leftovers of a crash.
TMP_PREFIX = ".tritonctl-tmp-"
ARTIFACT_SUFFIXES = (".tar.gz", ".tgz", ".tar")  # what a local file may end with; stores serve .tar.gz and .tgz


class ArtifactError(TritonctlError):
    """A model artifact is missing, unreachable, malformed or unsafe; the message names the artifact/member."""


class ArtifactNotFoundError(ArtifactError):
    """The store holds no artifact for the model (as opposed to one it cannot reach, read or trust).

    A separate type so callers can tell "unknown model" (the gateway's 404) from "the fetch failed" without
    matching message text.
    """


def validate_model_name(name: str) -> str:
    """``toolkit.names.check_model_name`` for artifacts: the same rule, raised as ``ArtifactError``."""
    try:
        return check_model_name(name)
    except ModelNameError as exc:
        raise ArtifactError(str(exc)) from None


def artifact_path(name: str) -> str:
    """The store path (less ``.tar.gz``/``.tgz``/``/``) of a canonical model name (``toolkit.names.target_path``).
    A name no TargetModel maps to (``a...b``) is ``ArtifactNotFoundError``: no store can hold such a model."""
    try:
        return target_path(name)
    except ModelNameError as exc:
        raise ArtifactNotFoundError(f"no artifact can stand for this name: {exc}") from None


def _adapt_or_adopt(model_dir: Path, name: str, label: str) -> str | None:
    if adapt_native(model_dir, label, name) is not None:  # adapted and renamed in one rewrite
        return None
    return adopt_name(model_dir, name, label)


def adopt_config_name(model_dir: Path, name: str, label: str) -> str | None:
    """Make the fresh local copy servable here: ``toolkit.mme.native.adapt_native`` (a native ONNX/TorchScript model
    runs on the python adapter, its config renamed in the same rewrite; a backend this Triton lacks is refused), else
    ``toolkit.mme.layout.adopt_name`` (the config takes the TargetModel's name). Raised as ``ArtifactError``; returns
    the name the config had when ``adopt_name`` rewrote it. Its time is the ``rewrite`` phase of a cold load
    (``toolkit.mme.phases``)."""
    try:
        return timed("rewrite", lambda: _adapt_or_adopt(model_dir, name, label))
    except LayoutError as exc:
        raise ArtifactError(str(exc)) from None


def artifact_model_name(path: Path | str) -> str:
    """Derive the model name from an artifact file name (``resnet.tar.gz`` -> ``resnet``)."""
    base = PurePosixPath(str(path)).name
    for suffix in ARTIFACT_SUFFIXES:
        if base.endswith(suffix):
            return validate_model_name(base[: -len(suffix)])
    raise ArtifactError(f"artifact {base!r} is not named <model>.tar.gz")


def _member_parts(member: tarfile.TarInfo, tar_label: str) -> tuple[str, ...]:
    """Normalised path components of a member; rejects absolute paths and ``..``."""
    raw = member.name
    if raw.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw):
        raise ArtifactError(f"{tar_label}: member {raw!r} has an absolute path")
    parts = tuple(p for p in raw.replace("\\", "/").split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArtifactError(f"{tar_label}: member {raw!r} contains '..' (path traversal)")
    return parts


def _check_member(member: tarfile.TarInfo, tar_label: str) -> None:
    if member.issym():
        raise ArtifactError(
            f"{tar_label}: member {member.name!r} is a symbolic link (-> {member.linkname!r}); "
            "links are not allowed in model artifacts"
        )
    if member.islnk():
        raise ArtifactError(
            f"{tar_label}: member {member.name!r} is a hard link (-> {member.linkname!r}); "
            "links are not allowed in model artifacts"
        )
    if member.ischr() or member.isblk():
        raise ArtifactError(f"{tar_label}: member {member.name!r} is a device file")
    if member.isfifo():
        raise ArtifactError(f"{tar_label}: member {member.name!r} is a FIFO")
    if not (member.isreg() or member.isdir()):
        raise ArtifactError(f"{tar_label}: member {member.name!r} has unsupported type {member.type!r}")


def _scan(
    tf: Iterable[tarfile.TarInfo],
    tar_label: str,
    max_bytes: int,
    max_files: int,
    accepted: Callable[[tarfile.TarInfo], None] | None = None,
) -> list[tarfile.TarInfo]:
    """Read the member list lazily (so a file-count bomb is stopped early) and check every member; ``accepted`` is
    called with each member kept, while the archive is positioned at its data (read there, not by seeking back)."""
    members: list[tarfile.TarInfo] = []
    total = 0
    for seen, member in enumerate(tf):
        if seen >= max_files:  # litter counts too: a bomb of skipped members is still a bomb
            raise ArtifactError(f"{tar_label}: more than {max_files} members (file-count bomb?)")
        _check_member(member, tar_label)
        parts = _member_parts(member, tar_label)
        if not parts or is_junk(parts):
            continue  # the "./" entry itself; macOS litter (never extracted)
        total += max(member.size, 0)
        if total > max_bytes:
            raise ArtifactError(
                f"{tar_label}: uncompressed size exceeds {max_bytes} bytes at member {member.name!r} (size bomb?)"
            )
        members.append(member)
        if accepted is not None:
            accepted(member)
    if not members:
        raise ArtifactError(f"{tar_label}: archive is empty")
    return members


def _model_root(members: list[tarfile.TarInfo], tar_label: str) -> tuple[tuple[str, ...], list[str]]:
    """Where config.pbtxt lives: ``()`` for a flat layout, ``(top,)`` for a single top-level folder of any name; or,
    for a possible ensemble bundle, ``((), folders)`` (which folder is the ensemble is read once extracted)."""
    entries = {_member_parts(m, tar_label): m.isreg() for m in members}
    try:
        return model_root(entries, tar_label), []
    except LayoutError as exc:
        folders = bundle_folders(entries)
        if folders is None:
            raise ArtifactError(str(exc)) from None
        return (), folders


def _bundle(tmp: Path, folders: list[str], label: str) -> tuple[str, list[str]]:
    """The ensemble folder of an extracted bundle and the others (its steps, kept under their folder names, as
    SageMaker's front end registers them); ArtifactError unless exactly one folder is an ensemble."""
    ensembles = [f for f in folders if is_ensemble((tmp / f / CONFIG).read_text(encoding="utf-8", errors="replace"))]
    if len(ensembles) != 1:
        shown = ", ".join(f"{f}/" for f in folders[:5]) + (" ..." if len(folders) > 5 else "")
        which = "none of these is one" if not ensembles else f"{len(ensembles)} are: {', '.join(ensembles[:5])}"
        raise ArtifactError(
            f"{label} holds {len(folders)} model folders ({shown}); one artifact is one model (or one ensemble with "
            f"the models it calls; {which}): pack each in its own archive"
        )
    return ensembles[0], [f for f in folders if f != ensembles[0]]


def _bundle_steps(tmp: Path, model_dir: Path, steps: list[str], label: str) -> None:
    """Move a bundle's step folders into the ensemble's folder (``STEPS_DIR``), each adapted like a model of its own
    (the config named after its folder, native backends adapted); the manager installs them beside the ensemble."""
    for step in steps:
        validate_model_name(step)
        adopt_config_name(tmp / step, step, f"{label} (model folder {step}/)")
        (model_dir / STEPS_DIR).mkdir(exist_ok=True)
        os.replace(tmp / step, model_dir / STEPS_DIR / step)


def install_dir(src: Path, target: Path, scratch: Path | None = None) -> None:
    """Atomically put ``src`` (a fresh directory on the same filesystem) at ``target``, replacing an old copy.

    The old copy is renamed aside first and deleted afterwards, so ``target`` is never half-written. ``scratch`` is
    where "aside" lives (default: beside ``target``); a live Triton repository passes a folder outside it, because
    Triton's repository index fails ("failed to stat file") when an entry vanishes while it lists the folder.
    """
    os.chmod(src, 0o755)
    if target.exists():
        aside = Path(tempfile.mkdtemp(dir=scratch or target.parent, prefix=TMP_PREFIX + "old-"))
        os.replace(target, aside / "old")
        try:
            os.replace(src, target)
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(src, target)


# A multiplexed model's tarball is a few KB: inflated whole in one zlib call, then walked by tarfile from memory, it is
# read with ~15% less CPU than through tarfile's gzip stream (0.42 vs 0.50 ms for the benchmark's 3.5 KB model).
IN_MEMORY_BYTES = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


def _inflate_small(tar_path: Path, limit: int) -> io.BytesIO | None:
    """The uncompressed tar of a single-member gzip file that inflates to at most ``limit`` bytes; None for anything
    else (larger, not gzip, damaged, several gzip members, trailing bytes): read by tarfile's own stream as before,
    which also words every error. Nothing is checked here; ``_scan`` checks the members whichever way they come."""
    if limit <= 0:
        return None
    try:
        with open(tar_path, "rb") as fh:
            raw = fh.read(limit + 1)  # more than the limit: left to the stream
    except OSError:
        return None
    if len(raw) > limit or not raw.startswith(_GZIP_MAGIC):
        return None
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or not inflater.eof or inflater.unused_data:
        return None
    return io.BytesIO(out)


def read_model_tarball(
    tar_path: Path,
    *,
    max_read: int,
    label: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    in_memory: int = IN_MEMORY_BYTES,
) -> dict[str, bytes | None] | None:
    """A single-model artifact's members read into memory, nothing written: path relative to the model's folder
    (posix) -> its bytes, or None for a folder. Checked as ``extract_model_tarball`` checks before it extracts (the
    same ``_scan`` and layout rule); the config is *not* renamed (a caller that needs Triton to load the folder
    extracts it). For callers that need a few small files (a multiplexed model, ``toolkit.mme.muxfiles``), since each
    extracted member is a new file. None (read nothing) for an ensemble bundle, or when the regular files add up to
    more than ``max_read`` bytes. A gzip tarball that inflates to at most ``in_memory`` bytes is inflated in one C
    call first (``_inflate_small``) and, when it is a plain archive, listed from its bytes (``toolkit.mme._ustar``);
    the members are checked by the same ``_scan`` whichever way they were read."""
    inflated = _inflate_small(tar_path, in_memory)
    plain = plain_members(inflated.getvalue()) if inflated is not None else None
    try:
        if plain is not None:
            read_already = dict(plain)
            return _in_memory(read_already, label, max_read, max_bytes, max_files, read_already.__getitem__)
        with tarfile.open(tar_path, "r:*") if inflated is None else tarfile.open(fileobj=inflated, mode="r:") as tf:

            def read(m: tarfile.TarInfo) -> bytes | None:  # in the scan's pass: a gzip stream seeks back by inflating
                fh = tf.extractfile(m)
                return fh.read() if fh is not None else None

            return _in_memory(tf, label, max_read, max_bytes, max_files, read)
    except ArtifactError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise ArtifactError(f"{label} is not a readable tar.gz archive: {exc}") from exc


def _in_memory(
    members: Iterable[tarfile.TarInfo],
    label: str,
    max_read: int,
    max_bytes: int,
    max_files: int,
    read: Callable[[tarfile.TarInfo], bytes | None],
) -> dict[str, bytes | None] | None:
    """``read_model_tarball``'s reading of a member list (a tarfile, or ``plain_members``' members, whose bytes are
    read already): each regular file's bytes taken (``read``) while ``max_read`` lasts."""
    data: dict[tarfile.TarInfo, bytes | None] = {}
    budget = [max_read]

    def take(m: tarfile.TarInfo) -> None:
        budget[0] -= m.size if m.isreg() else 0
        if m.isreg() and budget[0] >= 0:
            data[m] = read(m)

    listed = _scan(members, label, max_bytes, max_files, take)
    root, bundle = _model_root(listed, label)
    if bundle or budget[0] < 0:
        return None
    out: dict[str, bytes | None] = {}
    for m in listed:
        parts = _member_parts(m, label)[len(root) :]
        if parts:
            out["/".join(parts)] = data.get(m) if m.isreg() else None
    return out


def extract_model_tarball(
    tar_path: Path,
    dest_dir: Path,
    *,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    label: str | None = None,
) -> Path:
    """Extract a model artifact to ``dest_dir/<name>/`` (holding ``config.pbtxt``) and return that path.

    ``name`` (the canonical name of the TargetModel) defaults to the artifact's file name without ``.tar.gz``.
    Accepts ``config.pbtxt`` + version dirs at the top, or a single top-level folder of any name holding them; the
    extracted config names the model ``name`` (rewritten when it said otherwise). Raises ``ArtifactError`` on
    anything unsafe or malformed, naming the artifact as ``label`` says (default: ``artifact '<file name>'``; a store
    passes where the artifact lives); on error nothing is left in ``dest_dir``.
    """
    tar_path = Path(tar_path)
    dest_dir = Path(dest_dir)
    name = validate_model_name(name) if name is not None else artifact_model_name(tar_path)
    label = label or f"artifact {tar_path.name!r}"
    if not tar_path.is_file():
        raise ArtifactError(f"{label} not found at {tar_path}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest_dir, prefix=f"{TMP_PREFIX}{name}-"))
    try:
        try:
            with tarfile.open(tar_path, "r:*") as tf:
                members = _scan(tf, label, max_bytes, max_files)
                root, bundle = _model_root(members, label)
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python without PEP 706; our own checks above still ran
                    tf.extractall(tmp, members=members)
        except ArtifactError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
            raise ArtifactError(f"{label} is not a readable tar.gz archive: {exc}") from exc
        steps: list[str] = []
        if bundle:
            ensemble, steps = _bundle(tmp, bundle, label)
            root = (ensemble,)
        adopt_config_name(tmp.joinpath(*root), name, label)
        _bundle_steps(tmp, tmp.joinpath(*root), steps, label)
        install_dir(tmp.joinpath(*root), dest_dir / name)
        return dest_dir / name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
