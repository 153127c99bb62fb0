"""Model tarballs for the store and cache tests of both tiers: a minimal python model, as tar members."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

CONFIG = b'name: "%s"\nbackend: "python"\nmax_batch_size: 0\n'
MODEL_PY = b"class TritonPythonModel:\n    pass\n"


def tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def model_members(name: str, prefix: str = "", payload: int = 0) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    members = [tar_member(f"{prefix}config.pbtxt", CONFIG % name.encode()), tar_member(f"{prefix}1/model.py", MODEL_PY)]
    if payload:
        members.append(tar_member(f"{prefix}1/weights.bin", b"\0" * payload))
    return members
