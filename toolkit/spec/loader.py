"""Load a manifest from YAML and report every problem with its YAML path and line number.

pydantic reports locations as tuples (``("models", 2, "inputs", 0, "dims")``); users think in YAML, so each location
is rendered as ``models[2].inputs[0].dims`` and looked up in the composed YAML node tree for its line.

The manifest is input like any other: it is read through :mod:`toolkit.spec.safeyaml` (bounded size, depth and alias
expansion, UTF-8), and what it names is checked before anything is generated from it. Two rules keep files that are
not tritonctl's out of its error messages: an ensemble file must lie inside the manifest's directory tree (symlinks
resolved; ``allow_outside=True``, ``--allow-outside``, lifts that for a manifest you trust), and a file that is not
recognisably a manifest or an ensemble file (none of the keys one has) is refused in one line that quotes none of it.
Artifacts are not confined: they are copied into the repository as opaque bytes and never quoted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolkit.errors import ManifestError
from toolkit.spec.models import EnsembleSpec, Manifest
from toolkit.spec.safeyaml import YamlInputError, load_yaml

MANIFEST_KEYS = frozenset(Manifest.model_fields)
ENSEMBLE_FILE_KEYS = frozenset({"ensembles", *EnsembleSpec.model_fields})


class _EnsembleFile(BaseModel):
    """The ``ensembles: [...]`` form of an ensemble file (besides ``x-`` anchors, nothing else may be there)."""

    model_config = ConfigDict(extra="forbid")
    ensembles: list[EnsembleSpec] = Field(default_factory=list)


def format_loc(loc: Sequence[str | int]) -> str:
    """``("models", 2, "dims")`` -> ``models[2].dims``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _line_of(node: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """Walk the composed YAML tree along ``loc``; return the 1-based line of the deepest node found. In a mapping the
    last pair with the key wins, as in the data (merged ``<<`` pairs come first, the mapping's own after them)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in reversed(node.value) if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def _parse(path: Path, source: str) -> tuple[Any, yaml.Node | None]:
    try:
        return load_yaml(path)
    except YamlInputError as exc:
        raise ManifestError(source, [(exc.where, exc.line, exc.message)]) from None


def _validate(cls: type[Any], data: Any, node: yaml.Node | None, source: str) -> Any:
    try:
        return cls.model_validate(data if data is not None else {})
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            issues.append((format_loc(loc), _line_of(node, loc), msg))
        raise ManifestError(source, issues) from None


def _without_anchors(data: Any) -> Any:
    """Top-level ``x-...`` keys hold YAML anchors (as in docker-compose), not settings."""
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    return data


def _recognised(data: Any, keys: frozenset[str]) -> bool:
    """Empty, or a mapping with at least one key of ours: anything else is some other file, never to be quoted."""
    return data is None or data == {} or (isinstance(data, dict) and any(k in keys for k in data))


def load_manifest(path: str | Path, *, allow_outside: bool = False) -> Manifest:
    """Read, validate and resolve a manifest: artifact paths become relative to the manifest's folder,
    ``ensemble_files`` are read and appended to ``ensembles``, and endpoints must name models or ensembles it has.

    ``allow_outside`` lets ``ensemble_files`` name files outside the manifest's directory tree."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ManifestError(source, [("<file>", None, "manifest file not found")])
    data, node = _parse(path, source)
    data = _without_anchors(data)
    if not _recognised(data, MANIFEST_KEYS):
        keys = ", ".join(sorted(MANIFEST_KEYS))
        raise ManifestError(source, [("<root>", _line_of(node, ()), f"not a tritonctl manifest (no key of {keys})")])
    manifest: Manifest = _validate(Manifest, data, node, source)
    if not manifest.models:
        line = _line_of(node, ("models",)) or 1
        raise ManifestError(source, [("models", line, "no models: a manifest declares at least one model")])
    base = path.resolve().parent
    for m in manifest.models:
        if m.artifact is not None and not m.artifact.is_absolute():
            m.artifact = base / m.artifact
        for v in m.versions or []:
            if v.artifact is not None and not v.artifact.is_absolute():
                v.artifact = base / v.artifact
    for i, rel in enumerate(manifest.ensemble_files):
        target = _ensemble_file_path(rel, base, allow_outside, source, _line_of(node, ("ensemble_files", i)), i)
        manifest.ensembles.extend(load_ensemble_file(target))
    names = [m.name for m in manifest.models] + [e.name for e in manifest.ensembles]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ManifestError(source, [("ensembles", None, f"duplicate model/ensemble names: {', '.join(dupes)}")])
    _check_endpoints(manifest, node, source)
    return manifest


def _ensemble_file_path(rel: Path, base: Path, allow_outside: bool, source: str, line: int | None, i: int) -> Path:
    """Where ``ensemble_files[i]`` points, refused when it resolves outside ``base`` (unless allowed) or is no file."""
    where = f"ensemble_files[{i}]"
    target = base / rel  # an absolute ``rel`` replaces base
    if not allow_outside:
        resolved = target.resolve()
        if not resolved.is_relative_to(base):
            via = f" (it resolves to {resolved})" if resolved != target else ""
            message = f"{rel} is outside the manifest's directory {base}{via}; --allow-outside reads it anyway"
            raise ManifestError(source, [(where, line, message)])
    if not target.is_file():
        raise ManifestError(source, [(where, line, f"{rel}: ensemble file not found")])
    return target


def load_ensemble_file(path: Path) -> list[EnsembleSpec]:
    """An ensemble file holds one ensemble mapping, or ``ensembles: [...]``; top-level ``x-`` keys hold anchors."""
    source = str(path)
    if not path.is_file():
        raise ManifestError(source, [("<file>", None, "ensemble file not found")])
    data, node = _parse(path, source)
    data = _without_anchors(data)
    if data is None or data == {} or not _recognised(data, ENSEMBLE_FILE_KEYS):
        message = "not an ensemble file (expected ensembles: [...], or one ensemble with name: and pattern:)"
        raise ManifestError(source, [("<root>", _line_of(node, ()), message)])
    if "ensembles" in data:
        ensemble_file: _EnsembleFile = _validate(_EnsembleFile, data, node, source)
        return ensemble_file.ensembles
    return [_validate(EnsembleSpec, data, node, source)]


def _check_endpoints(manifest: Manifest, node: yaml.Node | None, source: str) -> None:
    """Every model an endpoint names is a model or an ensemble of the manifest. A multi-model endpoint with a
    ``store:`` is the exception for its ``models:``: those may live in the store."""
    known = {m.name for m in manifest.models} | {e.name for e in manifest.ensembles}
    issues: list[tuple[str, int | None, str]] = []
    for i, ep in enumerate(manifest.endpoints):
        named: list[tuple[tuple[str | int, ...], str]] = []
        if ep.model is not None:
            named.append((("model",), ep.model))
        named += [(("variants", j, "model"), v.model) for j, v in enumerate(ep.variants)]
        if not (ep.mode == "multi-model" and ep.store):
            named += [(("models", j), m) for j, m in enumerate(ep.models)]
        for loc, model in named:
            if model not in known:
                full = ("endpoints", i, *loc)
                message = f"endpoint {ep.name!r} names unknown model {model!r} (no model or ensemble has that name)"
                issues.append((format_loc(full), _line_of(node, full), message))
    if issues:
        raise ManifestError(source, issues)


def manifest_json_schema() -> str:
    """The JSON schema of the manifest, for editors (yaml-language-server) and ``tritonctl schema``."""
    return json.dumps(Manifest.model_json_schema(), indent=2, sort_keys=True)
