"""What the repository writer and checker share with the ensemble builders: a model directory to write
(``GeneratedModel``) and a problem found in one (``Finding``).

Both travel in both directions between ``toolkit.repository`` and ``toolkit.ensembles``: ``generate`` writes the
directories that ``ensembles.build`` produces, and ``validate`` reports the findings that ``ensembles.dag`` makes.
Defined here, below both, neither package has to import the other to name them (they used to live in
``repository.generate`` and ``ensembles.dag``, which made ``ensembles -> repository.generate -> ensembles`` a cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2 as mc

Severity = str  # "error" | "warning"


@dataclass
class GeneratedModel:
    """A model directory to write: its config plus files (relative path -> bytes, or a source file to copy)."""

    name: str
    config: mc.ModelConfig
    files: dict[str, bytes | Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """One problem: the config file it is in, the field (a path inside the config), a message and a severity."""

    file: str
    field: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.file}: {self.severity}: {self.field}: {self.message}"
