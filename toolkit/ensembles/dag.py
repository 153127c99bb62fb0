"""Offline validation of Triton ensemble DAGs (``tritonctl validate``), before any server sees them.

Triton checks ensembles only when it loads them, and reports the first problem it meets in terms of its internal
graph; these rules read the parsed configs of a whole repository and report every problem with the ensemble, the step
and the tensor involved, so a broken DAG is fixed in one pass. Each rule is paired with a test that loads the same
broken ensemble into a real Triton.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.repository.protos import model_config_pb2 as mc
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


_Producers = dict[str, tuple[int, _Type | None]]  # ensemble tensor -> (step index, -1 for an ensemble input; type)
_Consumers = list[tuple[int, str, str, _Type | None]]  # (step, model input, ensemble tensor, input type)


class _EnsembleCheck:
    """The rules for one ensemble config, in order; ``err`` collects a finding each."""

    def __init__(self, name: str, cfg: mc.ModelConfig, configs: dict[str, mc.ModelConfig], file: str) -> None:
        self.cfg, self.configs, self.file = cfg, configs, file
        self.ens = f"ensemble {name!r}"
        self.mbs = cfg.max_batch_size
        self.steps = list(cfg.ensemble_scheduling.step)
        self.out: list[Finding] = []

    def err(self, field: str, msg: str, severity: str = "error") -> None:
        self.out.append(Finding(self.file, field, f"{self.ens}: {msg}", severity))

    def run(self) -> list[Finding]:
        if self.cfg.HasField("dynamic_batching"):
            # In ModelConfig, dynamic_batching and ensemble_scheduling are one oneof: a file with both does not even
            # parse, and one with dynamic_batching alone has lost its steps. Triton rejects both.
            self.err(
                "dynamic_batching",
                "an ensemble may not have dynamic_batching (it replaces ensemble_scheduling, and Triton rejects it); "
                "put dynamic_batching on the step models instead",
            )
            return self.out
        if not self.steps:
            self.err("ensemble_scheduling", "has no steps")
            return self.out
        producers: _Producers = {t.name: (-1, _full(t, self.mbs)) for t in self.cfg.input}
        consumers: _Consumers = []
        for i, st in enumerate(self.steps):
            self.step(i, st, producers, consumers)
        edges = self.consumed(producers, consumers)
        self.declared_outputs(producers)
        self.unused_tensors(producers, consumers)
        cycle = _find_cycle(edges, len(self.steps))
        if cycle:
            path = " -> ".join(f"step {k} ({self.steps[k].model_name})" for k in cycle)
            self.err("ensemble_scheduling", f"steps form a cycle: {path}")
        self.useless_steps()
        return self.out

    def step(self, i: int, st: mc.ModelEnsembling.Step, producers: _Producers, consumers: _Consumers) -> None:
        """One step against its model; records what it consumes and produces."""
        where = f"ensemble_scheduling.step[{i}]"
        sname = f"step {i} ({st.model_name})"
        model = self.configs.get(st.model_name)
        if not st.output_map:
            self.err(
                f"{where}.output_map", f"{sname}: has no output_map (Triton requires every step to produce a tensor)"
            )
        if model is None:
            self.err(f"{where}.model_name", f"{sname}: model {st.model_name!r} is not in the repository")
        else:
            self.step_model(where, sname, st, model)
        for key, tensor in st.input_map.items():
            t_in = next((t for t in model.input if t.name == key), None) if model else None
            consumers.append((i, key, tensor, _full(t_in, model.max_batch_size) if model and t_in else None))
        for key, tensor in st.output_map.items():
            t_out = next((t for t in model.output if t.name == key), None) if model else None
            if tensor in producers:
                other = producers[tensor][0]
                by = "the ensemble input" if other < 0 else f"step {other} ({self.steps[other].model_name})"
                self.err(f"{where}.output_map[{key}]", f"{sname}: tensor {tensor!r} is already produced by {by}")
                continue
            producers[tensor] = (i, _full(t_out, model.max_batch_size) if model and t_out else None)

    def step_model(self, where: str, sname: str, st: mc.ModelEnsembling.Step, model: mc.ModelConfig) -> None:
        """A step's batch size and maps against the model it runs."""
        mbs = self.mbs
        if mbs > 0 and model.max_batch_size < mbs:
            its = "does not batch" if model.max_batch_size == 0 else f"has max_batch_size {model.max_batch_size}"
            self.err("max_batch_size", f"max_batch_size {mbs} is above {sname}'s: that model {its}")
        names_in = {t.name for t in model.input}
        for key in st.input_map:
            if key not in names_in:
                self.err(f"{where}.input_map[{key}]", f"{sname}: {key!r} is not an input of {st.model_name!r}")
        for t in model.input:
            if t.name not in st.input_map and not t.optional:
                self.err(f"{where}.input_map", f"{sname}: input {t.name!r} of {st.model_name!r} is not mapped")
        names_out = {t.name for t in model.output}
        for key in st.output_map:
            if key not in names_out:
                self.err(f"{where}.output_map[{key}]", f"{sname}: {key!r} is not an output of {st.model_name!r}")

    def consumed(self, producers: _Producers, consumers: _Consumers) -> dict[int, set[int]]:
        """Every consumed tensor is produced, with a compatible type; returns the step graph (producer -> consumers)."""
        edges: dict[int, set[int]] = {}
        for i, key, tensor, want in consumers:
            where = f"ensemble_scheduling.step[{i}].input_map[{key}]"
            sname = f"step {i} ({self.steps[i].model_name})"
            if tensor not in producers:
                self.err(
                    where,
                    f"{sname}: input {key!r} consumes tensor {tensor!r}, which no step or ensemble input produces",
                )
                continue
            src, have = producers[tensor]
            if src >= 0:
                edges.setdefault(src, set()).add(i)
            if want is not None and have is not None and not _compatible(have, want):
                self.err(where, f"{sname}: input {key!r} is {want.text()} but tensor {tensor!r} is {have.text()}")
        return edges

    def declared_outputs(self, producers: _Producers) -> None:
        for j, t in enumerate(self.cfg.output):
            if t.name not in producers:
                self.err(f"output[{j}]", f"declared output {t.name!r} is produced by no step")
                continue
            src, have = producers[t.name]
            want = _full(t, self.mbs)
            if have is not None and not _compatible(have, want):
                by = f"step {src} ({self.steps[src].model_name})" if src >= 0 else "the ensemble input"
                self.err(f"output[{j}]", f"declared output {t.name!r} is {want.text()} but {by} produces {have.text()}")

    def unused_tensors(self, producers: _Producers, consumers: _Consumers) -> None:
        consumed = {tensor for _, _, tensor, _ in consumers} | {t.name for t in self.cfg.output}
        for tensor, (src, _) in producers.items():
            if tensor in consumed:
                continue
            if src < 0:
                self.err("input", f"ensemble input {tensor!r} is consumed by no step (Triton rejects unused tensors)")
            else:
                key = next(k for k, v in self.steps[src].output_map.items() if v == tensor)
                self.err(
                    f"ensemble_scheduling.step[{src}].output_map[{key}]",
                    f"step {src} ({self.steps[src].model_name}): output {key!r} -> tensor {tensor!r} is consumed by no "
                    "step and is not an ensemble output (Triton rejects unused tensors; drop it from output_map)",
                )

    def useless_steps(self) -> None:
        """Steps nothing of which reaches a declared output (a warning)."""
        needed = {t.name for t in self.cfg.output}
        useful: set[int] = set()
        changed = True
        while changed:
            changed = False
            for i, st in enumerate(self.steps):
                if i not in useful and any(v in needed for v in st.output_map.values()):
                    useful.add(i)
                    needed |= set(st.input_map.values())
                    changed = True
        for i, st in enumerate(self.steps):
            if i not in useful:
                self.err(
                    f"ensemble_scheduling.step[{i}]",
                    f"step {i} ({st.model_name}) contributes to no ensemble output; it runs for nothing",
                    "warning",
                )


def check_ensemble(name: str, cfg: mc.ModelConfig, configs: dict[str, mc.ModelConfig], file: str) -> list[Finding]:
    """Every rule, for one ensemble config."""
    return _EnsembleCheck(name, cfg, configs, file).run()


def check_ensemble_configs(configs: dict[str, mc.ModelConfig], files: dict[str, str]) -> list[Finding]:
    """Findings for every ensemble among ``configs`` (model name -> parsed config); ``files`` maps a model name to
    the config file to cite (default ``<name>/config.pbtxt``). Non-ensemble configs are only read as step models."""
    findings: list[Finding] = []
    for name in sorted(configs):
        cfg = configs[name]
        if cfg.platform == "ensemble":
            findings.extend(check_ensemble(name, cfg, configs, files.get(name, f"{name}/config.pbtxt")))
    return findings
