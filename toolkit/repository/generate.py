"""Write a Triton model repository from a manifest.

Output is deterministic (same manifest, same bytes) and idempotent: a file whose bytes are unchanged is not
rewritten, because Triton's explicit-mode reload compares modification times and would reload the model otherwise.
Each generated model directory carries a ``.tritonctl`` marker so that a model removed from the manifest can be pruned
without ever touching directories a user put there by hand.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.ensembles import build_ensembles
from toolkit.errors import GenerateError
from toolkit.repository.config import DEFAULT_MODEL_FILENAME, backend_for, build_config, render_config
from toolkit.repository.types import GeneratedModel
from toolkit.spec.models import Manifest, ModelSpec

TEMPLATES = Path(__file__).parent / "templates"
ADAPTER_TEMPLATE = TEMPLATES / "adapter_model.py"
MARKER = ".tritonctl"
ADAPTED = {"onnx", "onnxruntime", "sklearn", "numpy", "torchscript", "pytorch_libtorch"}
ADAPTER_FRAMEWORK = {"onnxruntime": "onnx", "pytorch_libtorch": "torchscript"}


@dataclass
class GenerateReport:
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.written)} written, {len(self.unchanged)} unchanged, {len(self.removed)} removed"


def _artifact_files(spec: ModelSpec, version: int, artifact: Path | None, target_name: str | None) -> dict[str, Path]:
    """Files of one version: the artifact (renamed to ``target_name`` for native backends) plus, for numpy
    callables, siblings sharing the artifact's stem (weights the .py loads itself)."""
    if artifact is None:
        return {}
    if not artifact.exists():
        raise GenerateError(f"model {spec.name!r} version {version}: artifact {artifact} not found")
    files: dict[str, Path] = {}
    if artifact.is_dir():
        for p in sorted(artifact.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                files[f"{version}/{target_name or artifact.name}/{p.relative_to(artifact)}"] = p
        return files
    files[f"{version}/{target_name or artifact.name}"] = artifact
    if spec.framework == "numpy":
        for sib in sorted(artifact.parent.glob(artifact.stem + ".*")):
            if sib != artifact and sib.suffix not in (".pyc",):
                files[f"{version}/{sib.name}"] = sib
    return files


def model_files(spec: ModelSpec, target: str = "embedded") -> GeneratedModel:
    """Everything a model directory holds, for a target (``embedded`` = python backend, ``triton`` = native)."""
    backend = backend_for(spec, target)
    params: dict[str, str] = {}
    files: dict[str, bytes | Path] = {}
    adapted = backend == "python" and spec.framework in ADAPTED
    for version, artifact in spec.version_artifacts():
        if spec.framework == "python":
            if artifact is None:
                raise GenerateError(f"model {spec.name!r}: a python model needs artifact: path/to/model.py")
            if artifact.is_dir():  # a whole python model directory: model.py plus whatever it imports
                for p in sorted(artifact.rglob("*")):
                    if p.is_file() and "__pycache__" not in p.parts:
                        files[f"{version}/{p.relative_to(artifact).as_posix()}"] = p
            else:
                files[f"{version}/model.py"] = artifact
        elif adapted:
            files.update(_artifact_files(spec, version, artifact, None))
            files[f"{version}/model.py"] = ADAPTER_TEMPLATE
        else:
            files.update(_artifact_files(spec, version, artifact, DEFAULT_MODEL_FILENAME.get(backend)))
    if adapted:
        names = {a.name for _, a in spec.version_artifacts() if a is not None}
        if len(names) != 1:
            raise GenerateError(f"model {spec.name!r}: every version's artifact must share one file name")
        params["tritonctl.framework"] = ADAPTER_FRAMEWORK.get(spec.framework, spec.framework)
        params["tritonctl.artifact"] = names.pop()
        methods = {t.name: t.method for t in spec.outputs if t.method}
        if methods:
            params["tritonctl.methods"] = json.dumps(methods, sort_keys=True)
    return GeneratedModel(spec.name, build_config(spec, target, params), files)


def _write_if_changed(path: Path, data: bytes, report: GenerateReport) -> None:
    if path.is_file() and path.read_bytes() == data:
        report.unchanged.append(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp-tritonctl")
    tmp.write_bytes(data)
    tmp.replace(path)
    report.written.append(path)


def write_model(gm: GeneratedModel, out: Path, report: GenerateReport | None = None) -> GenerateReport:
    """Write one model directory; files in it that are no longer generated are removed."""
    report = report or GenerateReport()
    mdir = out / gm.name
    wanted: dict[str, bytes] = {"config.pbtxt": render_config(gm.config).encode()}
    for rel, src in gm.files.items():
        wanted[rel] = src if isinstance(src, bytes) else src.read_bytes()
    wanted[MARKER] = b"generated by tritonctl; edits are overwritten by `tritonctl generate`\n"
    for rel in sorted(wanted):
        _write_if_changed(mdir / rel, wanted[rel], report)
    for p in sorted(mdir.rglob("*"), reverse=True):
        rel = p.relative_to(mdir).as_posix()
        if p.is_file() and rel not in wanted:
            p.unlink()
            report.removed.append(p)
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    return report


def render_model_dir(spec: ModelSpec, dest: Path, target: str = "embedded") -> Path:
    """Write a single model directory under ``dest`` (used to build MME store artifacts); returns its path."""
    write_model(model_files(spec, target), dest)
    return dest / spec.name


def generated_models(manifest: Manifest, target: str = "embedded") -> list[GeneratedModel]:
    """Models and ensembles of a manifest, as directories to write (ensembles come from toolkit.ensembles)."""
    models = [model_files(m, target) for m in manifest.models]
    if manifest.ensembles:
        models.extend(build_ensembles(manifest, target))
    return models


def generate_repository(manifest: Manifest, out: Path, target: str = "embedded", prune: bool = True) -> GenerateReport:
    """Write (or refresh) a whole repository; generated model directories no longer in the manifest are pruned."""
    if target not in ("embedded", "triton"):
        raise GenerateError(f"unknown target {target!r}: use embedded or triton")
    out.mkdir(parents=True, exist_ok=True)
    report = GenerateReport()
    models = generated_models(manifest, target)
    for gm in sorted(models, key=lambda g: g.name):
        write_model(gm, out, report)
    if prune:
        names = {gm.name for gm in models}
        for d in sorted(out.iterdir()):
            if d.is_dir() and d.name not in names and (d / MARKER).is_file():
                shutil.rmtree(d)
                report.removed.append(d)
    return report
