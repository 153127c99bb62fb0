"""Deployable artifacts: one tarball per SageMaker model, in the layout SageMaker's Triton container loads.

The repository is ``generate --target triton`` (native backends), with three deployment rules on top:

* sklearn models are compiled to ONNX (``onnx_compile``) and run on onnxruntime when the compiled graph reproduces
  the estimator on sample inputs; otherwise they stay on the python backend, which needs scikit-learn shipped in
  ``deploy.python_env``.
* python-backend models (numpy, python, routers, sklearn that could not be compiled) run in the container's own
  Python, which has numpy and nothing else of note. Their imports are read (ast); a package outside the standard
  library and numpy needs ``deploy.python_env`` (a conda-pack tarball, set as ``EXECUTION_ENV_PATH``), else the
  build stops with one line naming the package.
* on a GPU instance type, native-backend models whose manifest sets no ``instance_group`` get ``KIND_GPU``; a
  ``KIND_GPU`` group on a CPU instance type is refused.

A tarball holds ``<model>/config.pbtxt`` and ``<model>/<version>/...`` for the model and everything it may call
(ensemble steps, router targets). Tarballs are byte-deterministic (sorted members, zero mtimes and owners, gzip
without a timestamp), so their sha256 is a content hash: ``apply`` skips an upload whose hash S3 already holds.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.deploy.errors import DeployError
from toolkit.deploy.onnx_compile import CompileRefused, compile_sklearn
from toolkit.ensembles.reach import direct_targets
from toolkit.repository.config import render_config
from toolkit.repository.generate import ADAPTER_TEMPLATE, MARKER, generated_models
from toolkit.repository.protos import model_config_pb2 as mc
from toolkit.repository.types import GeneratedModel
from toolkit.spec.models import Manifest, ModelSpec

# What the python backend finds in SageMaker's Triton image without an execution environment.
CONTAINER_PACKAGES = frozenset({"numpy", "triton_python_backend_utils"})
FRAMEWORK_PACKAGES = {"sklearn": ("scikit-learn", "joblib")}
PACKAGE_OF = {"sklearn": "scikit-learn", "yaml": "PyYAML", "cv2": "opencv-python", "PIL": "Pillow"}
ENV_FILE = "python_env.tar.gz"


@dataclass(frozen=True)
class Tarball:
    """One deployable model: ``name`` is what Triton loads (and an MME's TargetModel)."""

    name: str
    data: bytes
    models: tuple[str, ...]  # model directories inside

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class BuiltRepository:
    """The deployment repository: generated models by name, and what happened to each (for ``plan``)."""

    models: dict[str, GeneratedModel]
    notes: dict[str, str] = field(default_factory=dict)

    def closure(self, name: str) -> list[str]:
        """``name`` and every model it may call, transitively (sorted after ``name``)."""
        if name not in self.models:
            raise DeployError(f"model {name!r} is not in the manifest (models and ensembles)")
        seen, todo = {name}, [name]
        while todo:
            for target in direct_targets(self.models[todo.pop()].config):
                if target not in self.models:
                    raise DeployError(f"model {name!r} calls {target!r}, which is not in the manifest")
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return [name, *sorted(seen - {name})]

    def tarball(self, name: str) -> Tarball:
        members = self.closure(name)
        return Tarball(name, _tar({m: self.models[m] for m in members}), tuple(members))


def _tar(models: dict[str, GeneratedModel]) -> bytes:
    files: dict[str, bytes] = {}
    for name, gm in models.items():
        files[f"{name}/config.pbtxt"] = render_config(gm.config).encode()
        for rel, src in gm.files.items():
            files[f"{name}/{rel}"] = src if isinstance(src, bytes) else src.read_bytes()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tf.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(files[path]), 0o644, 0
            tf.addfile(info, io.BytesIO(files[path]))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def imported_packages(source: str) -> set[str]:
    """Top-level names a python file imports (absolute imports only; relative ones are its own files)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def missing_packages(spec_framework: str | None, gm: GeneratedModel) -> list[str]:
    """Packages a python-backend model needs that SageMaker's Triton image does not have."""
    need: set[str] = set(FRAMEWORK_PACKAGES.get(spec_framework or "", ()))
    local = {Path(rel).stem for rel in gm.files if rel.endswith(".py")}
    for rel, src in gm.files.items():
        if not rel.endswith(".py") or src == ADAPTER_TEMPLATE:
            continue  # the adapter's own imports are per framework (above); it needs numpy only for numpy models
        text = src.decode() if isinstance(src, bytes) else src.read_text()
        for name in imported_packages(text) - local - CONTAINER_PACKAGES - set(sys.stdlib_module_names):
            need.add(PACKAGE_OF.get(name, name))
    return sorted(need)


def _compiled_manifest(manifest: Manifest, samples: dict[str, Path], notes: dict[str, str], work: Path) -> Manifest:
    """The manifest with each sklearn model replaced by its checked ONNX twin, where that works."""
    models: list[ModelSpec] = []
    for spec in manifest.models:
        if spec.framework != "sklearn":
            models.append(spec)
            continue
        arts = spec.version_artifacts()
        try:
            if len(arts) != 1 or arts[0][1] is None:
                raise CompileRefused("only single-version sklearn models are compiled")
            compiled = compile_sklearn(spec, arts[0][1], samples.get(spec.name))
        except CompileRefused as exc:
            notes[spec.name] = f"sklearn kept on the python backend: not compiled to ONNX: {exc}"
            models.append(spec)
            continue
        path = work / f"{spec.name}.onnx"
        path.write_bytes(compiled.onnx)
        outputs = [t.model_copy(update={"method": None}) for t in spec.outputs]
        models.append(spec.model_copy(update={"framework": "onnx", "artifact": path, "outputs": outputs}))
        notes[spec.name] = f"sklearn compiled to ONNX (onnxruntime), equal to sklearn on {compiled.samples} samples"
    return manifest.model_copy(update={"models": models})


def _place(gm: GeneratedModel, spec: ModelSpec | None, gpu: bool, notes: dict[str, str]) -> None:
    kinds = {g.kind for g in gm.config.instance_group}
    if not gpu and mc.ModelInstanceGroup.KIND_GPU in kinds:
        raise DeployError(f"model {gm.name!r} asks for KIND_GPU instances but the instance type has no GPU")
    explicit = spec is not None and "instance_group" in spec.model_fields_set
    if gpu and not explicit and gm.config.backend not in ("python", "") and gm.config.platform != "ensemble":
        for g in gm.config.instance_group:
            g.kind = mc.ModelInstanceGroup.KIND_GPU
        notes[gm.name] = f"{notes[gm.name]}; KIND_GPU" if gm.name in notes else "KIND_GPU"
        notes[gm.name] += " (GPU instance type)"


def build_repository(
    manifest: Manifest,
    work: Path,
    *,
    gpu: bool = False,
    python_env: Path | None = None,
    samples: dict[str, Path] | None = None,
    needed: set[str] | None = None,
) -> BuiltRepository:
    """Generate the deployment repository (``--target triton`` plus the rules above) in memory.

    ``needed``: the models the endpoint deploys (with what they call); others are not checked for packages."""
    work.mkdir(parents=True, exist_ok=True)
    notes: dict[str, str] = {}
    compiled = _compiled_manifest(manifest, samples or {}, notes, work)
    specs = {m.name: m for m in manifest.models}
    built = BuiltRepository({gm.name: gm for gm in generated_models(compiled, "triton")}, notes)
    check = built.models.keys() if needed is None else {m for n in needed for m in built.closure(n)}
    for name in sorted(check):
        gm = built.models[name]
        gm.files.pop(MARKER, None)
        spec = specs.get(name)
        _place(gm, spec, gpu, notes)
        if gm.config.backend != "python":
            continue
        missing = missing_packages(spec.framework if spec is not None else None, gm)
        if not missing:
            continue
        if python_env is None:
            raise DeployError(
                f"model {name!r} (python backend) needs package {missing[0]!r}, which SageMaker's Triton image lacks: "
                "give deploy.python_env (a conda-pack tarball with it)"
                + (" or make the model compile to ONNX" if spec is not None and spec.framework == "sklearn" else "")
            )
        if not python_env.is_file():
            raise DeployError(f"deploy.python_env {python_env} not found")
        gm.files[ENV_FILE] = python_env
        gm.config.parameters["EXECUTION_ENV_PATH"].string_value = f"$$TRITON_MODEL_DIRECTORY/{ENV_FILE}"
        notes[name] = (
            notes.get(name, "") + "; " if name in notes else ""
        ) + f"ships {ENV_FILE} for {', '.join(missing)}"
    return built
