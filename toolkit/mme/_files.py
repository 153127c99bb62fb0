"""The files a cold load puts in place: where a fetched model is assembled (``staging_dir``), how a disk-cache entry
becomes the repository's copy (``link_tree``), and which models an ensemble's config calls (``composing_models``).

Plain functions over paths, apart from the loader's single-flight logic (``_loading``) so that module stays about
loading.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from google.protobuf import text_format

from toolkit.mme.safe_tar import TMP_PREFIX, install_dir
from toolkit.repository.protos import model_config_pb2 as mc


def staging_dir(repository: Path) -> Path:
    """Where fetched models are assembled before an atomic rename into the repository: beside it (same filesystem),
    never inside it, since Triton's repository index fails when it lists a temporary entry that then vanishes."""
    return repository.parent / f".{repository.name}.tritonctl-staging"


def link_tree(src: Path, dst: Path, scratch: Path) -> None:
    """Put a copy of ``src`` at ``dst`` using hard links (cheap; the cache may delete its copy independently)."""
    tmp = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{TMP_PREFIX}{dst.name}-"))
    try:
        for dirpath, _dirs, files in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            (tmp / rel).mkdir(parents=True, exist_ok=True)
            for f in files:
                try:
                    os.link(Path(dirpath) / f, tmp / rel / f)
                except OSError:
                    shutil.copy2(Path(dirpath) / f, tmp / rel / f)
        install_dir(tmp, dst, scratch=scratch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def composing_models(model_dir: Path) -> list[str]:
    """Models an ensemble's steps use (empty for a non-ensemble); read from config.pbtxt."""
    try:
        text = (model_dir / "config.pbtxt").read_text()
    except OSError:
        return []
    if "ensemble" not in text:
        return []
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg, allow_unknown_field=True)
    except text_format.ParseError:
        return []
    if cfg.platform != "ensemble":
        return []
    return list(dict.fromkeys(step.model_name for step in cfg.ensemble_scheduling.step))
