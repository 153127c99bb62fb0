"""What a model artifact may look like, and how it becomes the model its TargetModel names.

SageMaker hosts an artifact under its TargetModel, whatever the archive holds inside: AWS's own Triton MME samples pack
``resnet/`` into ``resnet_pt_v0.tar.gz``, and users copy ``housing_NewYork_NY.tar.gz`` to ``NY_0.tar.gz`` with the
config still saying ``name: "housing_NewYork_NY"``. Triton, on the other hand, wants the directory and the config's
``name`` to agree, or the load fails with an opaque "failed to poll from model repository". So an artifact is
accepted in either layout (config.pbtxt at the top, or a single top-level folder of any name holding it, version
folders beside it), and ``adopt_name`` makes the *local copy's* config carry the name the TargetModel gives; the
artifact in the store is never modified. Anything else is refused with one line naming the artifact and what to
change.

These are pure functions over member paths and a model directory, shared by tarball extraction (``safe_tar``) and the
folder layouts of the stores, and tested without a Triton (tests/unit/test_mme_layouts.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from google.protobuf import text_format

from toolkit.errors import TritonctlError
from toolkit.repository.config import render_config
from toolkit.repository.protos import model_config_pb2 as mc

CONFIG = "config.pbtxt"
STEPS_DIR = ".tritonctl-steps"  # inside an ensemble's model folder: the models its archive carries (see bundle_steps)
Parts = tuple[str, ...]


class LayoutError(TritonctlError):
    """The artifact is not one Triton model folder; the message says what to change (an ``ArtifactError`` upstream)."""


def is_junk(parts: Parts) -> bool:
    """Archive litter that is no part of a model: macOS's ``__MACOSX/``, ``._*`` AppleDouble files, ``.DS_Store``.
    A tarball made on a Mac carries them beside the model folder, which would otherwise read as a second folder."""
    return any(p == "__MACOSX" or p == ".DS_Store" or p.startswith("._") for p in parts)


def _show(parts: Parts, is_dir: bool) -> str:
    return "/".join(parts) + ("/" if is_dir else "")


def model_root(entries: Mapping[Parts, bool], label: str) -> Parts:
    """Where the model's config.pbtxt lives among ``entries`` (member path -> is a regular file, junk removed):
    ``()`` for the flat layout, ``(top,)`` for a single top-level folder of any name. LayoutError otherwise."""
    config = entries.get((CONFIG,))
    if config:
        return ()
    tops: dict[str, bool] = {}  # top-level name -> is a folder
    for parts in entries:
        tops[parts[0]] = tops.get(parts[0], False) or len(parts) > 1 or not entries[parts]
    if len(tops) == 1:
        (top,) = tops
        if entries.get((top, CONFIG)):
            return (top,)
    raise LayoutError(_why_not(entries, tops, label))


def bundle_folders(entries: Mapping[Parts, bool]) -> list[str] | None:
    """The top-level folders of an archive that may be an *ensemble bundle* (two or more folders, each a model folder
    with config.pbtxt, nothing else at the top): what ``tritonctl deploy`` packs for an ensemble on a multi-model
    endpoint, and what SageMaker's Triton front end loads (it registers the archive as a repository and loads the
    folder whose config says ``platform: "ensemble"`` as the TargetModel). None for any other layout."""
    tops = {parts[0] for parts in entries}
    if len(tops) < 2 or any(len(parts) == 1 and entries[parts] for parts in entries):
        return None
    if not all(entries.get((top, CONFIG)) for top in tops):
        return None
    return sorted(tops)


def is_ensemble(config_text: str) -> bool:
    """Whether a config.pbtxt says ``platform: "ensemble"`` (parsed leniently: a bundle's configs are checked
    strictly when each folder is adopted)."""
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(config_text, cfg, allow_unknown_field=True)
    except text_format.ParseError:
        return False
    return cfg.platform == "ensemble"


def _why_not(entries: Mapping[Parts, bool], tops: Mapping[str, bool], label: str) -> str:
    """The one-line refusal for an archive with no usable model root: what it holds, and what to pack instead."""
    configs = sorted(p for p, is_file in entries.items() if is_file and p[-1] == CONFIG)
    if not configs:
        return (
            f"{label}: no {CONFIG} in the archive; a Triton model needs one next to its version folders (1/, 2/ ...): "
            "add it, at the top or in the single top-level folder"
        )
    folders = sorted({p[0] for p in configs if len(p) == 2})
    if len(folders) > 1:
        shown = ", ".join(f"{f}/" for f in folders[:5]) + (" ..." if len(folders) > 5 else "")
        return (
            f"{label} holds {len(folders)} model folders ({shown}); one artifact is one model (or one ensemble with "
            "the models it calls): pack each in its own archive"
        )
    where = configs[0]
    if len(where) > 2:
        folder = "/".join(where[:-1])
        return (
            f"{label}: {CONFIG} is at {'/'.join(where)}, too deep; pack that folder ({folder}/) so that it is the "
            "archive's single top-level folder, or its contents so that they are the top level"
        )
    others = sorted(_show((t,), d) for t, d in tops.items() if t != where[0])
    shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
    return (
        f"{label}: the model folder {where[0]}/ has company at the top level ({shown}); pack only the model folder, "
        "or its contents"
    )


def adopt_name(model_dir: Path, name: str, label: str) -> str | None:
    """Make ``model_dir/config.pbtxt`` name the model ``name`` (the TargetModel's canonical name) and return the name
    it had when it was rewritten (None when it already agreed or named nothing: Triton takes the folder's name then).

    ``model_dir`` must be a fresh local copy (an extraction, a download, a copy of a store folder): the new text is
    written to a new file and renamed over the old one, so no hard link elsewhere sees the change. The config is parsed
    with Triton's own protobuf (fields this protobuf does not know are tolerated when nothing needs rewriting); when a
    rewrite is needed the whole config is re-rendered from the parsed message, so it must parse strictly."""
    path = model_dir / CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{label}: cannot read {CONFIG} ({exc}); it must be UTF-8 text") from None
    lenient = mc.ModelConfig()
    try:
        text_format.Parse(text, lenient, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise LayoutError(f"{label}: {CONFIG} is not a Triton model configuration ({exc}); fix it") from None
    if lenient.name in ("", name):
        return None
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise LayoutError(
            f"{label}: {CONFIG} names the model {lenient.name!r}, and cannot be renamed to {name!r} because this "
            f'Triton\'s protobuf does not read all of it ({exc}); set name: "{name}" in the artifact'
        ) from None
    old, cfg.name = cfg.name, name
    # render_config writes max_batch_size: 0 explicitly; a config that left it out keeps leaving it out.
    new = render_config(cfg) if "max_batch_size" in text else text_format.MessageToString(cfg, as_utf8=True)
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=f".{CONFIG}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return old
