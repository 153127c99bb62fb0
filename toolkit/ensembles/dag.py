"""Offline validation of Triton ensemble DAGs (``tritonctl validate``), before any server sees them.

Triton checks ensembles only when it loads them, and reports the first problem it meets in terms of its internal
graph; these rules read the parsed configs of a whole repository and report every problem with the ensemble, the step
and the tensor involved, so a broken DAG is fixed in one pass. Each rule is paired with a test that loads the same
broken ensemble into a real Triton.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from toolkit.repository.types import Finding


@dataclass(frozen=True)
class _Type:
    dtype: int
    shape: tuple[int, ...]  # full shape: a batching model's tensors get a leading -1

    def text(self) -> str:
        return f"{mc.DataType.Name(self.dtype).removeprefix('TYPE_')}{list(self.shape)}"


def _full(t: mc.ModelInput | mc.ModelOutput, mbs: int) -> _Type:
    return _Type(int(t.data_type), ((-1,) if mbs > 0 else ()) + tuple(int(d) for d in t.dims))


def _compatible(a: _Type, b: _Type) -> bool:
    if a.dtype != b.dtype or len(a.shape) != len(b.shape):
        return False
    return all(x == y or x == -1 or y == -1 for x, y in zip(a.shape, b.shape, strict=True))


def _find_cycle(edges: dict[int, set[int]], n: int) -> list[int] | None:
    """A cycle among steps (as a list of step indexes, first repeated at the end), or None."""
    state = [0] * n  # 0 new, 1 on stack, 2 done
    stack: list[int] = []

    def visit(u: int) -> list[int] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if state[v] == 1:
                return [*stack[stack.index(v) :], v]
            if state[v] == 0 and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in range(n):
        if state[u] == 0 and (found := visit(u)):
            return found
    return None


def check_ensemble(name: str, cfg: mc.ModelConfig, configs: dict[str, mc.ModelConfig], file: str) -> list[Finding]:
    """Every rule, for one ensemble config."""
    out: list[Finding] = []
    ens = f"ensemble {name!r}"

    def err(field: str, msg: str, severity: str = "error") -> None:
        out.append(Finding(file, field, f"{ens}: {msg}", severity))

    mbs = cfg.max_batch_size
    if cfg.HasField("dynamic_batching"):
        # In ModelConfig, dynamic_batching and ensemble_scheduling are one oneof: a file with both does not even
        # parse, and one with dynamic_batching alone has lost its steps. Triton rejects both.
        err(
            "dynamic_batching",
            "an ensemble may not have dynamic_batching (it replaces ensemble_scheduling, and Triton rejects it); "
            "put dynamic_batching on the step models instead",
        )
        return out
    steps = list(cfg.ensemble_scheduling.step)
    if not steps:
        err("ensemble_scheduling", "has no steps")
        return out
    # producers: ensemble tensor -> (step index or -1 for the ensemble input, its type)
    producers: dict[str, tuple[int, _Type | None]] = {t.name: (-1, _full(t, mbs)) for t in cfg.input}
    consumers: list[tuple[int, str, str, _Type | None]] = []  # (step, model input, ensemble tensor, input type)
    for i, st in enumerate(steps):
        where = f"ensemble_scheduling.step[{i}]"
        sname = f"step {i} ({st.model_name})"
        model = configs.get(st.model_name)
        if not st.output_map:
            err(f"{where}.output_map", f"{sname}: has no output_map (Triton requires every step to produce a tensor)")
        if model is None:
            err(f"{where}.model_name", f"{sname}: model {st.model_name!r} is not in the repository")
        else:
            if mbs > 0 and model.max_batch_size < mbs:
                its = "does not batch" if model.max_batch_size == 0 else f"has max_batch_size {model.max_batch_size}"
                err("max_batch_size", f"max_batch_size {mbs} is above {sname}'s: that model {its}")
            names_in = {t.name for t in model.input}
            for key in st.input_map:
                if key not in names_in:
                    err(f"{where}.input_map[{key}]", f"{sname}: {key!r} is not an input of {st.model_name!r}")
            for t in model.input:
                if t.name not in st.input_map and not t.optional:
                    err(f"{where}.input_map", f"{sname}: input {t.name!r} of {st.model_name!r} is not mapped")
            names_out = {t.name for t in model.output}
            for key in st.output_map:
                if key not in names_out:
                    err(f"{where}.output_map[{key}]", f"{sname}: {key!r} is not an output of {st.model_name!r}")
        for key, tensor in st.input_map.items():
            t_in = next((t for t in model.input if t.name == key), None) if model else None
            consumers.append((i, key, tensor, _full(t_in, model.max_batch_size) if model and t_in else None))
        for key, tensor in st.output_map.items():
            t_out = next((t for t in model.output if t.name == key), None) if model else None
            if tensor in producers:
                other = producers[tensor][0]
                by = "the ensemble input" if other < 0 else f"step {other} ({steps[other].model_name})"
                err(f"{where}.output_map[{key}]", f"{sname}: tensor {tensor!r} is already produced by {by}")
                continue
            producers[tensor] = (i, _full(t_out, model.max_batch_size) if model and t_out else None)
    edges: dict[int, set[int]] = {}
    for i, key, tensor, want in consumers:
        where = f"ensemble_scheduling.step[{i}].input_map[{key}]"
        sname = f"step {i} ({steps[i].model_name})"
        if tensor not in producers:
            err(where, f"{sname}: input {key!r} consumes tensor {tensor!r}, which no step or ensemble input produces")
            continue
        src, have = producers[tensor]
        if src >= 0:
            edges.setdefault(src, set()).add(i)
        if want is not None and have is not None and not _compatible(have, want):
            err(where, f"{sname}: input {key!r} is {want.text()} but tensor {tensor!r} is {have.text()}")
    for j, t in enumerate(cfg.output):
        if t.name not in producers:
            err(f"output[{j}]", f"declared output {t.name!r} is produced by no step")
            continue
        src, have = producers[t.name]
        want = _full(t, mbs)
        if have is not None and not _compatible(have, want):
            by = f"step {src} ({steps[src].model_name})" if src >= 0 else "the ensemble input"
            err(f"output[{j}]", f"declared output {t.name!r} is {want.text()} but {by} produces {have.text()}")
    consumed = {tensor for _, _, tensor, _ in consumers} | {t.name for t in cfg.output}
    for tensor, (src, _) in producers.items():
        if tensor in consumed:
            continue
        if src < 0:
            err("input", f"ensemble input {tensor!r} is consumed by no step (Triton rejects unused tensors)")
        else:
            key = next(k for k, v in steps[src].output_map.items() if v == tensor)
            err(
                f"ensemble_scheduling.step[{src}].output_map[{key}]",
                f"step {src} ({steps[src].model_name}): output {key!r} -> tensor {tensor!r} is consumed by no step and "
                "is not an ensemble output (Triton rejects unused tensors; drop it from output_map)",
            )
    cycle = _find_cycle(edges, len(steps))
    if cycle:
        path = " -> ".join(f"step {k} ({steps[k].model_name})" for k in cycle)
        err("ensemble_scheduling", f"steps form a cycle: {path}")
    # unused steps: nothing they produce reaches a declared output
    needed = {t.name for t in cfg.output}
    useful: set[int] = set()
    changed = True
    while changed:
        changed = False
        for i, st in enumerate(steps):
            if i not in useful and any(v in needed for v in st.output_map.values()):
                useful.add(i)
                needed |= set(st.input_map.values())
                changed = True
    for i, st in enumerate(steps):
        if i not in useful:
            err(
                f"ensemble_scheduling.step[{i}]",
                f"step {i} ({st.model_name}) contributes to no ensemble output; it runs for nothing",
                "warning",
            )
    return out


def check_ensemble_configs(configs: dict[str, mc.ModelConfig], files: dict[str, str]) -> list[Finding]:
    """Findings for every ensemble among ``configs`` (model name -> parsed config); ``files`` maps a model name to
    the config file to cite (default ``<name>/config.pbtxt``). Non-ensemble configs are only read as step models."""
    findings: list[Finding] = []
    for name in sorted(configs):
        cfg = configs[name]
        if cfg.platform == "ensemble":
            findings.extend(check_ensemble(name, cfg, configs, files.get(name, f"{name}/config.pbtxt")))
    return findings
