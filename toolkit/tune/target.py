"""What is tuned on which Triton: the model (or an ensemble's step models), loaded config after config through the
repository API's config override, and put back as it was at the end.

Why the override and not files plus a restart: ``POST /v2/repository/models/M/load`` with
``{"parameters": {"config": "<json>"}}`` swaps a model's config in ~0.1-1.3 s on a running server, where Model Analyzer
restarts Triton for each config (4-8 s each here). The override outlives the load that set it -- a later plain load
keeps it while the files are unchanged (measured on 2.51) -- so restoring means loading again with the original
config, which ``restore`` does for every model it touched, also when the search failed half-way.

An ensemble is measured end to end (its p99 is the pipeline's) while its step models' configs change; Triton keeps the
ensemble serving across a step's reload. A step's max batch size never goes below the ensemble's own, which Triton
requires of the composing models.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from toolkit.errors import TritonctlError
from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin, TritonEndpoint
from toolkit.tune.records import Assignment
from toolkit.tune.space import ModelSettings, Point, Space, TuneError


@dataclass
class Target:
    """The model measured (``model``) and the models whose configs change (itself, or an ensemble's steps)."""

    admin: TritonAdmin
    model: str
    settings: list[ModelSettings] = field(default_factory=list)
    ensemble_max_batch: int | None = None
    _loaded: dict[str, Point] = field(default_factory=dict)
    _touched: set[str] = field(default_factory=set)

    @classmethod
    def open(cls, admin: TritonAdmin, model: str) -> Target:
        """Load ``model`` (an ensemble loads its steps) and read the configs Triton serves now: the originals."""
        admin.load(model)
        cfg = admin.config(model)
        target = cls(admin, model)
        if cfg.get("platform") == "ensemble":
            steps = [s["model_name"] for s in cfg.get("ensemble_scheduling", {}).get("step", [])]
            target.ensemble_max_batch = int(cfg.get("max_batch_size", 0))
            names = list(dict.fromkeys(steps))
        else:
            names = [model]
        target.settings = [ModelSettings(n, admin.config(n)) for n in names]
        target._loaded = {s.name: s.start() for s in target.settings}
        return target

    @property
    def models(self) -> list[str]:
        return [s.name for s in self.settings]

    @property
    def is_ensemble(self) -> bool:
        return self.ensemble_max_batch is not None

    def start(self) -> Assignment:
        return tuple(s.start() for s in self.settings)

    def spaces(self, space: Space) -> list[Space]:
        """The space per tuned model: its start point added, batching only if it batches, and for an ensemble's
        steps no max batch size below the ensemble's."""
        out = []
        for s in self.settings:
            sp = space.including(s.start()).for_model(s.batching)
            if self.ensemble_max_batch and s.batching:
                floor = self.ensemble_max_batch
                sp = replace(sp, max_batch=tuple(b for b in sp.max_batch if b >= floor) or (floor,))
            out.append(sp)
        return out

    def load(self, assignment: Assignment) -> None:
        """Load the models whose point differs from what they serve now, each with its config override."""
        for s, p in zip(self.settings, assignment, strict=True):
            if self._loaded.get(s.name) == p:
                continue
            self._touched.add(s.name)
            self._loaded.pop(s.name, None)  # unknown until the load succeeds
            self.admin.load(s.name, json.dumps(s.config_for(p)))
            self._loaded[s.name] = p

    def restore(self) -> list[str]:
        """Load every touched model with its original config; returns the problems (empty when all went back)."""
        problems = []
        for s in self.settings:
            if s.name not in self._touched:
                continue
            try:
                self.admin.load(s.name, json.dumps(s.original))
                self._loaded[s.name] = s.start()
            except TritonctlError as exc:
                problems.append(f"{s.name}: {exc}")
        return problems


@contextlib.contextmanager
def triton_for(
    url: str | None, manifest: Path | None, model: str, grpc_url: str | None = None
) -> Iterator[TritonEndpoint]:
    """An external Triton (``url``, its gRPC port ``grpc_url`` or HTTP + 1) as it is, or an embedded one, started
    once, over a repository generated from the manifest into a temporary directory (removed at the end)."""
    if url:
        yield TritonEndpoint.from_url(url, grpc=grpc_url.split("://", 1)[-1] if grpc_url else None)
        return
    if manifest is None:
        raise TuneError("give --manifest (an embedded Triton is started over it) or --url (a running Triton)")
    from toolkit.repository.generate import generate_repository
    from toolkit.spec import load_manifest

    spec = load_manifest(manifest)
    with tempfile.TemporaryDirectory(prefix="tritonctl-tune-") as tmp:
        repo = Path(tmp) / "model_repository"
        generate_repository(spec, repo)
        if not (repo / model).is_dir():
            raise TuneError(f"{model!r} is not a model or ensemble of {manifest}")
        server = EmbeddedTriton(ServerOptions(repository=repo, workdir=Path(tmp)))
        with server:
            yield server.endpoint
