"""Load a manifest from YAML and report every problem with its YAML path and line number.

pydantic reports locations as tuples (``("models", 2, "inputs", 0, "dims")``); users think in YAML, so each location
is rendered as ``models[2].inputs[0].dims`` and looked up in the composed YAML node tree for its line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from toolkit.errors import ManifestError
from toolkit.spec.models import EnsembleSpec, Manifest


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
    """Walk the composed YAML tree along ``loc``; return the 1-based line of the deepest node found."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def _parse(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ManifestError(source, [("<yaml>", line, str(getattr(exc, "problem", exc)))]) from None
    return data, node


def _validate(
    cls: type[Any], data: Any, node: yaml.Node | None, source: str, prefix: tuple[str | int, ...] = ()
) -> Any:
    try:
        return cls.model_validate(data if data is not None else {})
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            issues.append((format_loc(prefix + loc), _line_of(node, loc), msg))
        raise ManifestError(source, issues) from None


def load_manifest(path: str | Path) -> Manifest:
    """Read, validate and resolve a manifest: artifact paths become relative to the manifest's folder,
    and ``ensemble_files`` are read and appended to ``ensembles``."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(str(path), [("<file>", None, "manifest file not found")])
    data, node = _parse(path.read_text(), str(path))
    if isinstance(data, dict):  # top-level `x-...` keys hold YAML anchors (as in docker-compose), not settings
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    manifest: Manifest = _validate(Manifest, data, node, str(path))
    base = path.resolve().parent
    for m in manifest.models:
        if m.artifact is not None and not m.artifact.is_absolute():
            m.artifact = base / m.artifact
        for v in m.versions or []:
            if v.artifact is not None and not v.artifact.is_absolute():
                v.artifact = base / v.artifact
    for rel in manifest.ensemble_files:
        manifest.ensembles.extend(load_ensemble_file(base / rel if not rel.is_absolute() else rel))
    names = [m.name for m in manifest.models] + [e.name for e in manifest.ensembles]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ManifestError(str(path), [("ensembles", None, f"duplicate model/ensemble names: {', '.join(dupes)}")])
    return manifest


def load_ensemble_file(path: Path) -> list[EnsembleSpec]:
    """An ensemble file holds one ensemble mapping, or ``ensembles: [...]``."""
    if not path.is_file():
        raise ManifestError(str(path), [("<file>", None, "ensemble file not found")])
    data, node = _parse(path.read_text(), str(path))
    if isinstance(data, dict) and "ensembles" in data:
        items = data["ensembles"] or []
        seq = next((v for k, v in node.value if k.value == "ensembles"), None) if node else None
        return [
            _validate(EnsembleSpec, item, seq.value[i] if seq is not None else None, str(path), ("ensembles", i))
            for i, item in enumerate(items)
        ]
    return [_validate(EnsembleSpec, data, node, str(path))]


def manifest_json_schema() -> str:
    """The JSON schema of the manifest, for editors (yaml-language-server) and ``tritonctl schema``."""
    return json.dumps(Manifest.model_json_schema(), indent=2, sort_keys=True)
