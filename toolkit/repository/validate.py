"""``tritonctl validate``: find offline what Triton 2.51 would reject when it loads a model repository.

Triton reports config problems one at a time, at load, often as "failed to poll from model repository" with the
reason only in the server log. This reads the whole repository without a server and reports every problem, each
naming the file and the config field (``digits_mlp/config.pbtxt: input[0].dims: ...``).

Severity is kept truthful: a rule is an ``error`` only where a real Triton 2.51 refuses the load (the corpus in
tests/validate_corpus.py loads each broken case into an embedded Triton to prove it) or, for native backends the
embedded Triton lacks, where the backend's own load checks refuse it. Things Triton accepts but that are likely
mistakes (duplicate tensor names, dynamic batching on a non-batching model...) are ``warning``s.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import text_format

from toolkit.errors import TritonctlError
from toolkit.repository.config import parse_config
from toolkit.repository.protos import model_config_pb2 as mc
from toolkit.repository.types import Finding
from toolkit.repository.validate_rules import check_config, check_python_source

__all__ = ["Finding", "RepositoryNotFoundError", "format_findings", "has_errors", "validate_repository"]

# Backends of the NGC tritonserver container (24.x) plus the python-based ones; anything else has no library.
KNOWN_BACKENDS = {
    "python",
    "onnxruntime",
    "pytorch",
    "tensorflow",
    "tensorrt",
    "openvino",
    "fil",
    "dali",
    "identity",
    "repeat",
    "square",
    "vllm",
    "tensorrtllm",
}
PLATFORM_BACKEND = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
    "tensorrt_plan": "tensorrt",
    "ensemble": "",
}
# The file (or directory) each native backend loads from a version directory unless default_model_filename says.
ARTIFACT_NAME = {
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "tensorrt": "model.plan",
    "openvino": "model.xml",
}
PLATFORM_ARTIFACT = {"tensorflow_savedmodel": "model.savedmodel", "tensorflow_graphdef": "model.graphdef"}
_PORTABLE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


class RepositoryNotFoundError(TritonctlError):
    """The path given to ``validate`` is not a model repository directory."""


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def format_findings(findings: list[Finding]) -> str:
    """One line per finding (``file: field: severity: message``, errors first) and a summary line."""
    order = sorted(findings, key=lambda f: (f.severity != "error", f.file, f.field))
    lines = [f"{f.file}: {f.field}: {f.severity}: {f.message}" for f in order]
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    lines.append(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return "\n".join(lines)


def _version_dirs(mdir: Path, rel: str, out: list[Finding]) -> dict[int, Path]:
    """Numeric version directories; others are ignored by Triton (warned: usually a typo such as ``v1``)."""
    versions: dict[int, Path] = {}
    for p in sorted(mdir.iterdir()):
        if not p.is_dir() or p.name.startswith(".") or p.name == "__pycache__":
            continue
        if p.name.isdigit():
            versions[int(p.name)] = p
        else:
            out.append(
                Finding(rel, "versions", f"directory {p.name!r} is not a version number; Triton ignores it", "warning")
            )
    return versions


def _selected_versions(cfg: mc.ModelConfig, versions: dict[int, Path], file: str, out: list[Finding]) -> list[int]:
    """The versions Triton would load under the version policy (default: the latest one)."""
    policy = cfg.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return sorted(versions)
    if kind == "specific":
        wanted = list(policy.specific.versions)
        missing = [v for v in wanted if v not in versions]
        present = [v for v in wanted if v in versions]
        if missing:
            sev = "error" if not present else "warning"
            out.append(
                Finding(
                    file,
                    "version_policy.specific",
                    f"version(s) {', '.join(map(str, missing))} have no version directory"
                    + ("" if present else "; no version would load"),
                    sev,
                )
            )
        return sorted(present)
    n = policy.latest.num_versions if kind == "latest" else 1
    if kind == "latest" and n < 1:
        out.append(Finding(file, "version_policy.latest.num_versions", "must be >= 1; no version would load"))
        return []
    return sorted(versions)[-n:]


def _effective_backend(cfg: mc.ModelConfig) -> str:
    return cfg.backend or PLATFORM_BACKEND.get(cfg.platform, "")


def _check_backend(cfg: mc.ModelConfig, file: str, out: list[Finding]) -> None:
    if not cfg.backend and not cfg.platform:
        out.append(
            Finding(
                file,
                "backend",
                "neither backend nor platform is set; Triton 2.51 falls back to the python runtime, say "
                'backend: "python" explicitly',
                "warning",
            )
        )
    elif cfg.backend and cfg.backend not in KNOWN_BACKENDS:
        out.append(
            Finding(
                file,
                "backend",
                f"unknown backend {cfg.backend!r}: Triton finds no backend library for it (known: "
                f"{', '.join(sorted(KNOWN_BACKENDS))})",
            )
        )
    elif not cfg.backend and cfg.platform not in PLATFORM_BACKEND:
        out.append(
            Finding(
                file, "platform", f"unknown platform {cfg.platform!r} (known: {', '.join(sorted(PLATFORM_BACKEND))})"
            )
        )


def _check_artifacts(
    cfg: mc.ModelConfig, rel: str, versions: dict[int, Path], selected: list[int], out: list[Finding]
) -> None:
    """Each version Triton would load must hold what its backend opens."""
    file = f"{rel}/config.pbtxt"
    backend = _effective_backend(cfg)
    adapter_artifact = (
        cfg.parameters["tritonctl.artifact"].string_value if "tritonctl.artifact" in cfg.parameters else ""
    )
    for v in selected:
        vdir = versions[v]
        if backend == "python" or (not cfg.backend and not cfg.platform):
            name = cfg.default_model_filename or "model.py"
            path = vdir / name
            if not path.is_file():
                out.append(
                    Finding(
                        f"{rel}/{v}/{name}",
                        "file",
                        "missing: the python backend runs this file (Triton 2.51 does not fail this load, it hangs)",
                    )
                )
            else:
                out.extend(check_python_source(path, f"{rel}/{v}/{name}"))
            if adapter_artifact and not (vdir / adapter_artifact).exists():
                out.append(
                    Finding(
                        file,
                        'parameters["tritonctl.artifact"]',
                        f"artifact {adapter_artifact!r} is missing from version {v} ({rel}/{v}/{adapter_artifact})",
                    )
                )
        elif cfg.platform != "ensemble":
            name = cfg.default_model_filename or ARTIFACT_NAME.get(backend) or PLATFORM_ARTIFACT.get(cfg.platform, "")
            if name and not (vdir / name).exists():
                field = "default_model_filename" if cfg.default_model_filename else "file"
                target = file if cfg.default_model_filename else f"{rel}/{v}/{name}"
                out.append(Finding(target, field, f"missing from version {v}: the {backend} backend loads {name}"))


def _check_model(mdir: Path, root: Path, gpus: bool) -> tuple[list[Finding], mc.ModelConfig | None]:
    rel = mdir.relative_to(root).as_posix()
    file = f"{rel}/config.pbtxt"
    out: list[Finding] = []
    if not _PORTABLE_NAME.match(mdir.name):
        out.append(
            Finding(
                rel,
                "name",
                "model name has characters outside [A-Za-z0-9_.-]; HTTP clients send it URL-encoded and Triton "
                "2.51 then finds no such model, so it cannot be loaded or invoked over HTTP",
                "warning",
            )
        )
    cfg_path = mdir / "config.pbtxt"
    if not cfg_path.is_file():
        out.append(Finding(file, "file", "missing: Triton needs config.pbtxt (auto-complete is disabled)"))
        return out, None
    try:
        cfg = parse_config(cfg_path.read_text(encoding="utf-8"))
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        where = f"{line}:{col}" if line is not None else "?"
        msg = str(exc).split(" : ", 1)[-1]
        out.append(Finding(file, "syntax", f"line {where}: {msg}"))
        return out, None
    except UnicodeDecodeError as exc:
        out.append(Finding(file, "syntax", f"not UTF-8 text: {exc}"))
        return out, None
    if cfg.name != mdir.name:
        out.append(Finding(file, "name", f"{cfg.name!r} must equal the directory name {mdir.name!r}"))
    _check_backend(cfg, file, out)
    out.extend(check_config(cfg, file, gpus=gpus))
    versions = _version_dirs(mdir, rel, out)
    selected = _selected_versions(cfg, versions, file, out)
    if not versions:
        out.append(Finding(rel, "versions", "no numeric version directory (e.g. 1/): no version can load"))
    elif selected:
        _check_artifacts(cfg, rel, versions, selected, out)
    return out, cfg


def validate_repository(path: Path, *, gpus: bool = False) -> list[Finding]:
    """Every problem in a model repository. ``gpus=True`` accepts KIND_GPU instances (for the NGC GPU container);
    the default matches the embedded, CPU-only Triton. Raises ``RepositoryNotFoundError`` for a non-directory."""
    root = Path(path)
    if not root.is_dir():
        raise RepositoryNotFoundError(f"{root} is not a directory: give the model repository (the folder of models)")
    findings: list[Finding] = []
    configs: dict[str, mc.ModelConfig] = {}
    files: dict[str, str] = {}
    model_dirs = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not model_dirs:
        findings.append(Finding(root.name or str(root), "models", "the repository holds no model directory", "warning"))
    for mdir in model_dirs:
        found, cfg = _check_model(mdir, root, gpus)
        findings.extend(found)
        if cfg is not None:
            configs[mdir.name] = cfg
            files[mdir.name] = f"{mdir.name}/config.pbtxt"
    if any(c.platform == "ensemble" for c in configs.values()):
        findings.extend(_ensemble_findings(configs, files))
    return findings


def _ensemble_findings(configs: dict[str, mc.ModelConfig], files: dict[str, str]) -> list[Finding]:
    """Ensemble DAG rules live in toolkit.ensembles.dag; imported lazily so validate works without them."""
    try:
        from toolkit.ensembles.dag import check_ensemble_configs
    except ImportError:
        return []
    return list(check_ensemble_configs(configs, files))
