"""Per-config rules for ``tritonctl validate``: tensors, batching, instance groups, warmup, python sources.

Each rule mirrors a check Triton 2.51 makes at load (model_config_utils.cc ValidateModelConfig / ValidateIOShape,
the instance-group and python-backend loaders). Messages quote Triton's own wording where it helps searching.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from pathlib import Path

from toolkit.repository.protos import model_config_pb2 as mc
from toolkit.repository.types import Finding

PYTHON_CLASS = "TritonPythonModel"


def _bad_dims(dims: Sequence[int]) -> list[int]:
    return [d for d in dims if d == 0 or d < -1]


def _element_count(dims: Sequence[int]) -> int:
    """Triton's GetElementCount: -1 when any dimension is variable, 0 for an empty shape."""
    count = 0
    for d in dims:
        if d == -1:
            return -1
        count = d if count == 0 else count * d
    return count


def _trunks(dims: Sequence[int]) -> list[int]:
    """Element counts of the runs between variable (-1) dimensions: [2, 4, -1, 6] -> [8, 6]."""
    out, cur = [], 1
    for d in dims:
        if d == -1:
            out.append(cur)
            cur = 1
        else:
            cur *= d
    out.append(cur)
    return out


def _reshape_matches(dims: Sequence[int], shape: Sequence[int]) -> bool:
    """Triton's rule: equal element counts (an empty reshape needs one element), and with variable dimensions each
    trunk between -1s must hold the same number of elements."""
    a, b = _element_count(dims), _element_count(shape)
    if a != b and (b != 0 or a != 1):
        return False
    return a != -1 or _trunks(dims) == _trunks(shape)


def _check_tensors(
    kind: str, tensors: Iterable[mc.ModelInput | mc.ModelOutput], file: str, out: list[Finding]
) -> list[str]:
    names: list[str] = []
    for i, t in enumerate(tensors):
        field = f"{kind}[{i}]"
        if not t.name:
            out.append(Finding(file, f"{field}.name", f"model {kind} must specify 'name'"))
        elif t.name in names:
            out.append(
                Finding(
                    file,
                    f"{field}.name",
                    f"duplicate {kind} name {t.name!r} (also {kind}[{names.index(t.name)}]); Triton 2.51 loads it "
                    "but requests cannot tell the two apart",
                    "warning",
                )
            )
        names.append(t.name)
        if t.data_type == mc.TYPE_INVALID:
            out.append(Finding(file, f"{field}.data_type", f"model {kind} {t.name!r} must specify a valid data_type"))
        if not t.dims:
            out.append(Finding(file, f"{field}.dims", f"model {kind} {t.name!r} must specify 'dims'"))
        bad = _bad_dims(t.dims)
        if bad:
            out.append(
                Finding(
                    file,
                    f"{field}.dims",
                    f"{list(t.dims)}: dimension {bad[0]} is invalid; each must be >= 1, or -1 for a variable size "
                    "(the batch dimension is implicit when max_batch_size > 0)",
                )
            )
        if t.HasField("reshape"):
            shape = list(t.reshape.shape)
            if _bad_dims(shape):
                out.append(Finding(file, f"{field}.reshape", f"{shape}: each dimension must be >= 1 or -1"))
            elif not bad and t.dims and not _reshape_matches(list(t.dims), shape):
                out.append(
                    Finding(
                        file,
                        f"{field}.reshape",
                        f"dims {list(t.dims)} and reshape {shape} differ in size (element counts, and the runs "
                        "between -1 dimensions, must match)",
                    )
                )
    return names


def _check_batching(cfg: mc.ModelConfig, file: str, out: list[Finding]) -> None:
    mbs = cfg.max_batch_size
    if mbs < 0:
        out.append(Finding(file, "max_batch_size", f"{mbs}: must be >= 0 (0 = the model does not batch)"))
    if not cfg.HasField("dynamic_batching"):
        return
    if mbs == 0 and cfg.platform != "ensemble":  # ensembles: toolkit.ensembles.dag reports it as an error
        out.append(
            Finding(
                file,
                "dynamic_batching",
                "set on a model with max_batch_size 0; Triton 2.51 loads it, but a model that does not batch "
                "cannot form batches",
                "warning",
            )
        )
    for i, size in enumerate(cfg.dynamic_batching.preferred_batch_size):
        field = f"dynamic_batching.preferred_batch_size[{i}]"
        if size <= 0:
            out.append(Finding(file, field, f"{size}: dynamic batching preferred size must be positive"))
        elif mbs > 0 and size > mbs:
            out.append(Finding(file, field, f"{size} exceeds max_batch_size {mbs}"))


def _check_instances(cfg: mc.ModelConfig, file: str, gpus: bool, out: list[Finding]) -> None:
    kinds = mc.ModelInstanceGroup.Kind
    for i, g in enumerate(cfg.instance_group):
        field = f"instance_group[{i}]"
        if g.kind == kinds.KIND_GPU and not gpus:
            out.append(
                Finding(
                    file,
                    f"{field}.kind",
                    "KIND_GPU but this (embedded, CPU-only) Triton has no GPUs: the load fails here; use KIND_CPU or "
                    "KIND_AUTO, or serve it from the NGC GPU container (validate --gpus accepts it)",
                )
            )
        if g.kind == kinds.KIND_CPU and g.gpus:
            out.append(Finding(file, f"{field}.gpus", "KIND_CPU instances must not list gpus"))
        if g.count < 1:
            out.append(
                Finding(
                    file,
                    f"{field}.count",
                    f"{g.count}: Triton 2.51 accepts it but the count should be >= 1",
                    "warning",
                )
            )


def _check_warmup(cfg: mc.ModelConfig, file: str, out: list[Finding]) -> None:
    inputs = {t.name: t for t in cfg.input}
    for i, w in enumerate(cfg.model_warmup):
        field = f"model_warmup[{i}]"
        if cfg.max_batch_size > 0 and w.batch_size > cfg.max_batch_size:
            out.append(
                Finding(
                    file,
                    f"{field}.batch_size",
                    f"{w.batch_size} exceeds max_batch_size {cfg.max_batch_size} (Triton 2.51 never finishes the load)",
                )
            )
        for name in sorted(w.inputs):
            wi = w.inputs[name]
            if name not in inputs:
                out.append(Finding(file, f'{field}.inputs["{name}"]', "not an input of the model"))
                continue
            want = list(inputs[name].dims)
            got = list(wi.dims)
            if len(want) != len(got) or any(a != -1 and a != b for a, b in zip(want, got, strict=False)):
                out.append(Finding(file, f'{field}.inputs["{name}"].dims', f"{got} do not fit the input dims {want}"))
            if wi.data_type != inputs[name].data_type:
                out.append(Finding(file, f'{field}.inputs["{name}"].data_type', "differs from the input's data_type"))


def check_config(cfg: mc.ModelConfig, file: str, *, gpus: bool = False) -> list[Finding]:
    """Rules that need only the parsed config (layout and artifacts are checked by the caller)."""
    out: list[Finding] = []
    _check_batching(cfg, file, out)
    in_names = _check_tensors("input", cfg.input, file, out)
    out_names = _check_tensors("output", cfg.output, file, out)
    for name in sorted(set(in_names) & set(out_names) - {""}):
        out.append(
            Finding(
                file,
                f"output[{out_names.index(name)}].name",
                f"{name!r} is both an input and an output name; Triton 2.51 loads it but clients get confused",
                "warning",
            )
        )
    native = cfg.backend not in ("", "python") or cfg.platform not in ("", "ensemble")
    if native:
        for kind, names in (("input", in_names), ("output", out_names)):
            if not names:
                out.append(
                    Finding(
                        file,
                        kind,
                        f"no {kind}s: with auto-complete disabled the {cfg.backend or cfg.platform} backend compares "
                        f"the config's {kind}s with the model's and refuses the load",
                    )
                )
    _check_instances(cfg, file, gpus, out)
    _check_warmup(cfg, file, out)
    return out


def check_python_source(path: Path, rel: str) -> list[Finding]:
    """model.py must parse and define (or import) ``TritonPythonModel``, which the python backend instantiates."""
    try:
        tree = ast.parse(path.read_bytes(), filename=rel)
    except SyntaxError as exc:
        return [Finding(rel, "syntax", f"line {exc.lineno}:{exc.offset}: {exc.msg}")]
    except ValueError as exc:  # null bytes
        return [Finding(rel, "syntax", str(exc))]
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == PYTHON_CLASS:
            return []
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == PYTHON_CLASS for a in node.names):
            return []
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == PYTHON_CLASS for t in node.targets):
            return []
    return [Finding(rel, PYTHON_CLASS, f"no class {PYTHON_CLASS} at module level; the python backend instantiates it")]
