"""Turn ensemble specs (pipeline, scatter_gather, aggregate, dynamic, ab) into Triton model directories.

Static patterns become ``platform: "ensemble"`` configs whose ``ensemble_scheduling`` is derived from the step models'
declared tensors, so a user never writes ``input_map``/``output_map`` by hand unless names and types do not line up.
Patterns that need code (aggregators, routers) get a python model whose ``model.py`` is a template copied verbatim and
configured through config.pbtxt parameters. Every inconsistency is an ``EnsembleError`` naming ensemble, step, tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.ensembles.types import (
    ABOptions,
    AggregateOptions,
    DynamicOptions,
    EnsembleError,
    ScatterOptions,
    Signature,
    Tensor,
    parse_options,
    signature_of,
    signature_of_config,
    tensor_of,
)
from toolkit.repository.config import dtype_enum
from toolkit.repository.protos import model_config_pb2 as mc
from toolkit.repository.types import GeneratedModel
from toolkit.spec.models import EnsembleSpec, Manifest, StepSpec

__all__ = ["EnsembleError", "build_ensembles"]

TEMPLATES = Path(__file__).parent / "templates"
AGGREGATE_TEMPLATE = TEMPLATES / "aggregate.py"
ROUTER_TEMPLATE = TEMPLATES / "router.py"
SEP = "__"  # namespacing of ensemble tensors: <model>__<tensor>
MAX_PIPELINE_STEPS = 15
# Triton needs a version directory even for an ensemble (which has no files); an empty one would not survive git.
VERSION_KEEP = {"1/.keep": b"an ensemble has no model file; Triton only needs this version directory\n"}


# -- config helpers ------------------------------------------------------------------------------------------------
def _io(t: Tensor, is_input: bool) -> mc.ModelInput | mc.ModelOutput:
    msg = mc.ModelInput() if is_input else mc.ModelOutput()
    msg.name = t.name
    msg.data_type = dtype_enum(t.dtype)
    msg.dims.extend(t.dims)
    if is_input and t.optional:
        msg.optional = True
    return msg


def _ensemble_config(
    name: str, mbs: int, inputs: list[Tensor], outputs: list[Tensor], steps: list[mc.ModelEnsembling.Step]
) -> mc.ModelConfig:
    cfg = mc.ModelConfig()
    cfg.name = name
    cfg.platform = "ensemble"
    cfg.max_batch_size = mbs
    cfg.input.extend(_io(t, True) for t in inputs)
    cfg.output.extend(_io(t, False) for t in outputs)
    cfg.ensemble_scheduling.step.extend(steps)
    return cfg


def _python_config(
    name: str, mbs: int, inputs: list[Tensor], outputs: list[Tensor], params: dict[str, str], instances: int = 1
) -> mc.ModelConfig:
    cfg = mc.ModelConfig()
    cfg.name = name
    cfg.backend = "python"
    cfg.max_batch_size = mbs
    cfg.input.extend(_io(t, True) for t in inputs)
    cfg.output.extend(_io(t, False) for t in outputs)
    group = cfg.instance_group.add()
    group.name, group.kind, group.count = f"{name}_0", mc.ModelInstanceGroup.KIND_CPU, instances
    for key in sorted(params):
        cfg.parameters[key].string_value = params[key]
    return cfg


def _step(model: str, version: int, inputs: dict[str, str], outputs: dict[str, str]) -> mc.ModelEnsembling.Step:
    s = mc.ModelEnsembling.Step()
    s.model_name, s.model_version = model, version
    for k in sorted(inputs):
        s.input_map[k] = inputs[k]
    for k in sorted(outputs):
        s.output_map[k] = outputs[k]
    return s


@dataclass
class _Flow:
    """A pipeline's tensors as its steps are mapped in turn."""

    produced: dict[str, Tensor] = field(default_factory=dict)  # ensemble tensor -> type (ensemble inputs, step outputs)
    visible: dict[str, str] = field(default_factory=dict)  # model-facing name -> latest ensemble tensor carrying it
    inputs: list[Tensor] = field(default_factory=list)  # the ensemble's own inputs
    prev_out: list[tuple[Tensor, str]] = field(default_factory=list)  # the previous step's outputs, ensemble tensors


class _Builder:
    """Builds the models of one ensemble spec against the signatures of the models it may compose."""

    def __init__(self, spec: EnsembleSpec, sigs: dict[str, Signature]) -> None:
        self.spec = spec
        self.sigs = sigs
        self.where = f"ensemble {spec.name!r}"

    def sig(self, model: str, step: str) -> Signature:
        if model not in self.sigs:
            raise EnsembleError(f"{self.where}, {step}: model {model!r} is not in the manifest")
        return self.sigs[model]

    def batch(self, models: list[str]) -> int:
        mbs = min(self.sigs[m].max_batch_size for m in models)
        if self.spec.max_batch_size is not None:
            if self.spec.max_batch_size > mbs:
                worst = min(models, key=lambda m: self.sigs[m].max_batch_size)
                raise EnsembleError(
                    f"{self.where}: max_batch_size {self.spec.max_batch_size} exceeds step {worst!r}'s {mbs}"
                )
            return self.spec.max_batch_size
        return mbs

    # -- serial pipeline ---------------------------------------------------------------------------------------------
    def pipeline(self) -> list[GeneratedModel]:
        steps = self.spec.steps or [StepSpec(model=m) for m in self.spec.models]
        if not 2 <= len(steps) <= MAX_PIPELINE_STEPS:
            raise EnsembleError(f"{self.where}: a pipeline has 2 to {MAX_PIPELINE_STEPS} steps, got {len(steps)}")
        flow = _Flow()
        built: list[tuple[StepSpec, dict[str, str], dict[str, str]]] = []
        for i, st in enumerate(steps):
            label = f"step {i} ({st.model})"
            sig = self.sig(st.model, label)
            imap = self._map_inputs(label, st, sig, flow)
            omap = self._map_outputs(label, st, sig, flow, last=i == len(steps) - 1)
            built.append((st, imap, omap))
        # declared outputs: pick (and rename) produced tensors, checking their types; else the last step's outputs
        pairs = self._declared_outputs(flow) if self.spec.outputs else [(e, e) for e in built[-1][2].values()]
        ren = {src: name for src, name in pairs}
        consumed = {v for _, imap, _ in built for v in imap.values()} | set(ren)
        pb_steps = [
            _step(
                st.model,
                st.version,
                {k: ren.get(v, v) for k, v in imap.items()},
                {k: ren.get(v, v) for k, v in omap.items() if v in consumed},
            )
            for st, imap, omap in built
        ]
        outputs = [Tensor(name, flow.produced[src].dtype, flow.produced[src].dims) for src, name in pairs]
        mbs = self.batch([st.model for st in steps])
        return [
            GeneratedModel(
                self.spec.name,
                _ensemble_config(self.spec.name, mbs, flow.inputs, outputs, pb_steps),
                dict(VERSION_KEEP),
            )
        ]

    def _map_inputs(self, label: str, st: StepSpec, sig: Signature, flow: _Flow) -> dict[str, str]:
        """Model input -> ensemble tensor for one step, checking the types."""
        imap: dict[str, str] = {}
        explicit = st.input_map or {}
        for key in explicit:
            if sig.input(key) is None:
                raise EnsembleError(f"{self.where}, {label}: input_map names {key!r}, not an input of the model")
        taken = {flow.visible.get(v, v) for v in explicit.values()}
        for t in sig.inputs:
            src = self._source(label, t, explicit, sig, flow, taken)
            have = flow.produced.get(src)
            if have is None:
                raise EnsembleError(f"{self.where}, {label}: input {t.name!r} maps to {src!r}, never produced")
            if have.dtype != t.dtype or not _dims_match(have.dims, t.dims):
                raise EnsembleError(
                    f"{self.where}, {label}: input {t.name!r} is {t.dtype}{list(t.dims)} but tensor {src!r} is "
                    f"{have.dtype}{list(have.dims)}"
                )
            imap[t.name] = src
            taken.add(src)
        return imap

    def _source(
        self, label: str, t: Tensor, explicit: dict[str, str], sig: Signature, flow: _Flow, taken: set[str]
    ) -> str:
        """The ensemble tensor feeding input ``t``: by input_map, by name, by type, or else a new ensemble input."""
        if t.name in explicit:
            return flow.visible.get(explicit[t.name], explicit[t.name])
        if t.name in flow.visible:
            return flow.visible[t.name]
        # by type: the one previous output of the same dtype and dims nobody consumed by name
        cands = [e for o, e in flow.prev_out if (o.dtype, o.dims) == (t.dtype, t.dims) and e not in taken]
        if len(cands) == 1 and sum((u.dtype, u.dims) == (t.dtype, t.dims) for u in sig.inputs) == 1:
            return cands[0]
        # not produced upstream: the ensemble's own input
        if not any(e.name == t.name for e in flow.inputs):
            if t.name in flow.produced:
                raise EnsembleError(f"{self.where}, {label}: tensor {t.name!r} is ambiguous; give input_map")
            flow.inputs.append(Tensor(t.name, t.dtype, t.dims, t.optional))
            flow.produced[t.name] = t
        return t.name

    def _map_outputs(self, label: str, st: StepSpec, sig: Signature, flow: _Flow, last: bool) -> dict[str, str]:
        """Model output -> ensemble tensor for one step (namespaced by model, but for the last step's)."""
        omap: dict[str, str] = {}
        flow.prev_out = []
        for o in sig.outputs:
            ens = (st.output_map or {}).get(o.name) or (o.name if last else f"{st.model}{SEP}{o.name}")
            if ens in flow.produced:
                raise EnsembleError(f"{self.where}, {label}: output {o.name!r} -> {ens!r} is produced twice")
            flow.produced[ens] = Tensor(ens, o.dtype, o.dims)
            flow.visible[o.name] = ens
            omap[o.name] = ens
            flow.prev_out.append((o, ens))
        return omap

    def _declared_outputs(self, flow: _Flow) -> list[tuple[str, str]]:
        """(ensemble tensor, declared output name) for each declared output, checking its type."""
        pairs = []
        for d in self.spec.outputs or []:
            src = flow.visible.get(d.name, d.name)
            have = flow.produced.get(src)
            if have is None:
                raise EnsembleError(f"{self.where}: declared output {d.name!r} is produced by no step")
            if have.dtype != tensor_of(d).dtype or not _dims_match(have.dims, tuple(d.dims)):
                raise EnsembleError(
                    f"{self.where}: declared output {d.name!r} is {d.dtype}{d.dims} but the step produces "
                    f"{have.dtype}{list(have.dims)}"
                )
            if src != d.name and d.name in flow.produced:
                raise EnsembleError(f"{self.where}: declared output {d.name!r} clashes with another tensor")
            pairs.append((src, d.name))
        return pairs

    # -- scatter-gather and aggregate --------------------------------------------------------------------------------
    def _fan_out(self, models: list[str]) -> list[Tensor]:
        if len(models) < 2:
            raise EnsembleError(f"{self.where}: needs at least 2 models, got {len(models)}")
        first = self.sig(models[0], f"step 0 ({models[0]})").inputs
        for i, m in enumerate(models[1:], 1):
            if self.sig(m, f"step {i} ({m})").inputs != first:
                raise EnsembleError(
                    f"{self.where}, step {i} ({m}): inputs {_fmt(self.sigs[m].inputs)} differ from {models[0]!r}'s "
                    f"{_fmt(first)}; every model of a fan-out takes the same request"
                )
        return list(first)

    def _gathered(self, models: list[str], tensor: str) -> Tensor:
        kinds = set()
        for i, m in enumerate(models):
            o = self.sigs[m].output(tensor)
            if o is None:
                raise EnsembleError(f"{self.where}, step {i} ({m}): model has no output {tensor!r}")
            kinds.add((o.dtype, o.dims))
        if len(kinds) != 1:
            raise EnsembleError(f"{self.where}: output {tensor!r} has different dtype/dims across models: {kinds}")
        dtype, dims = kinds.pop()
        return Tensor(tensor, dtype, dims)

    def _with_aggregator(
        self, models: list[str], per_model: dict[str, list[str]], gathered: str, params: dict[str, str],
        agg_outputs: list[Tensor], suffix: str,
    ) -> list[GeneratedModel]:  # fmt: skip
        inputs = self._fan_out(models)
        mbs = self.batch(models)
        g = self._gathered(models, gathered)
        steps = [
            _step(m, -1, {t.name: t.name for t in inputs}, {o: f"{m}{SEP}{o}" for o in per_model[m]}) for m in models
        ]
        agg_name = f"{self.spec.name}_{suffix}"
        agg_in = [Tensor(f"in_{i}", g.dtype, g.dims) for i in range(len(models))]
        steps.append(
            _step(agg_name, -1, {f"in_{i}": f"{m}{SEP}{gathered}" for i, m in enumerate(models)},
                  {t.name: t.name for t in agg_outputs})
        )  # fmt: skip
        agg = _python_config(agg_name, mbs, agg_in, agg_outputs, params)
        extra = [Tensor(f"{m}{SEP}{o}", *_type_of(self.sigs[m].output(o))) for m in models for o in per_model[m]]
        extra = [t for t in extra if t.name not in {a.name for a in agg_outputs}]
        shown = extra if self.spec.pattern == "scatter_gather" else []
        ens = _ensemble_config(self.spec.name, mbs, inputs, [*shown, *agg_outputs], steps)
        return [
            GeneratedModel(self.spec.name, ens, dict(VERSION_KEEP)),
            GeneratedModel(agg_name, agg, {"1/model.py": AGGREGATE_TEMPLATE}),
        ]

    def scatter_gather(self) -> list[GeneratedModel]:
        opts: ScatterOptions = parse_options(self.spec, ScatterOptions)
        models = list(self.spec.models)
        inputs = self._fan_out(models)
        if opts.pick is None:  # plain fan-out: every model's outputs, namespaced by model
            steps, outs = [], []
            for m in models:
                omap = {o.name: f"{m}{SEP}{o.name}" for o in self.sigs[m].outputs}
                steps.append(_step(m, -1, {t.name: t.name for t in inputs}, omap))
                outs += [Tensor(f"{m}{SEP}{o.name}", o.dtype, o.dims) for o in self.sigs[m].outputs]
            cfg = _ensemble_config(self.spec.name, self.batch(models), inputs, outs, steps)
            return [GeneratedModel(self.spec.name, cfg, dict(VERSION_KEEP))]
        g = self._gathered(models, opts.score)
        outs = [
            Tensor("probabilities", g.dtype, g.dims),
            Tensor("label", "INT64", (1,)),
            Tensor("confidence", "FP32", (1,)),
            Tensor("model", "BYTES", (1,)),
        ]
        per_model = {m: [o.name for o in self.sigs[m].outputs] for m in models}
        params = {"tritonctl.method": "most_probable", "tritonctl.names": json.dumps(models)}
        return self._with_aggregator(models, per_model, opts.score, params, outs, "picker")

    def aggregate(self) -> list[GeneratedModel]:
        opts: AggregateOptions = parse_options(self.spec, AggregateOptions)
        models = list(self.spec.models)
        self._fan_out(models)
        params: dict[str, str] = {"tritonctl.method": opts.method}
        if opts.method == "majority_vote":
            gathered = opts.label
            outs = [Tensor("label", "INT64", (1,)), Tensor("votes", "INT32", (1,))]
        else:
            gathered = opts.score
            g = self._gathered(models, gathered) if len(models) >= 2 else None
            outs = [Tensor("probabilities", "FP32", g.dims if g else (-1,)), Tensor("label", "INT64", (1,))]
        if opts.method == "weighted_mean":
            if not opts.weights or len(opts.weights) != len(models) or sum(opts.weights) <= 0:
                raise EnsembleError(f"{self.where}: weighted_mean needs options.weights, one per model ({len(models)})")
            params["tritonctl.weights"] = json.dumps(opts.weights)
        elif opts.weights:
            raise EnsembleError(f"{self.where}: options.weights only apply to method weighted_mean")
        return self._with_aggregator(models, {m: [gathered] for m in models}, gathered, params, outs, "aggregator")

    # -- routers (BLS): dynamic selection and A/B ---------------------------------------------------------------------
    def _router(self, targets: list[str], params: dict[str, str], served: str, key_inputs: list[Tensor],
                instances: int, delay_us: int = 0) -> list[GeneratedModel]:  # fmt: skip
        if not targets:
            raise EnsembleError(f"{self.where}: no route targets")
        base = self.sig(targets[0], f"route {targets[0]!r}")
        for m in targets[1:]:
            s = self.sig(m, f"route {m!r}")
            if (s.inputs, s.outputs) != (base.inputs, base.outputs):
                raise EnsembleError(
                    f"{self.where}, route {m!r}: tensors {_fmt(s.inputs)} -> {_fmt(s.outputs)} differ from "
                    f"{targets[0]!r}'s {_fmt(base.inputs)} -> {_fmt(base.outputs)}; routes must be interchangeable"
                )
        mbs = self.batch(sorted(set(targets)))
        extra = [t for t in key_inputs if base.input(t.name) is None]
        inputs = list(base.inputs) + extra + [tensor_of(t) for t in self.spec.inputs or [] if base.input(t.name) is None
                                              and t.name not in {e.name for e in extra}]  # fmt: skip
        params = {**params, "tritonctl.forward": json.dumps([t.name for t in base.inputs]), "tritonctl.served": served}
        outputs = [*base.outputs, Tensor(served, "BYTES", (1,))]
        cfg = _python_config(self.spec.name, mbs, inputs, outputs, params, instances)
        if mbs > 0:
            cfg.dynamic_batching.SetInParent()  # rows of concurrent requests reach the router together
            cfg.dynamic_batching.max_queue_delay_microseconds = delay_us
        return [GeneratedModel(self.spec.name, cfg, {"1/model.py": ROUTER_TEMPLATE})]

    def dynamic(self) -> list[GeneratedModel]:
        o: DynamicOptions = parse_options(self.spec, DynamicOptions)
        params = {"tritonctl.mode": "dynamic", "tritonctl.by": o.by, "tritonctl.default": o.default or ""}
        key_inputs: list[Tensor] = []
        if o.by in ("parameter", "input"):
            if not o.key or not o.routes:
                raise EnsembleError(f"{self.where}: by {o.by} needs options.key and options.routes")
            params["tritonctl.key"] = o.key
            params["tritonctl.routes"] = json.dumps(o.routes, sort_keys=True)
            targets = list(o.routes.values())
            if o.by == "input":
                declared = next((t for t in self.spec.inputs or [] if t.name == o.key), None)
                key_inputs.append(tensor_of(declared) if declared else Tensor(o.key, "BYTES", (1,)))
        else:
            if not o.rules:
                raise EnsembleError(f"{self.where}: by rules needs options.rules (an ordered list)")
            params["tritonctl.rules"] = json.dumps([r.model_dump(exclude_none=True) for r in o.rules])
            targets = [r.model for r in o.rules]
        if o.default:
            targets.append(o.default)
        return self._router(list(dict.fromkeys(targets)), params, o.served, key_inputs, o.instances, o.batch_delay_us)

    def ab(self) -> list[GeneratedModel]:
        o: ABOptions = parse_options(self.spec, ABOptions)
        if sum(v.weight for v in o.variants) <= 0:
            raise EnsembleError(f"{self.where}: variant weights must not all be 0")
        params = {
            "tritonctl.mode": "ab",
            "tritonctl.variants": json.dumps([v.model_dump() for v in o.variants]),
            "tritonctl.sticky": o.sticky or "",
            "tritonctl.seed": "" if o.seed is None else str(o.seed),
        }
        targets = list(dict.fromkeys(v.model for v in o.variants))
        return self._router(targets, params, o.served, [], o.instances, o.batch_delay_us)


def _type_of(t: Tensor | None) -> tuple[str, tuple[int, ...]]:
    assert t is not None
    return t.dtype, t.dims


def _dims_match(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _fmt(ts: tuple[Tensor, ...] | list[Tensor]) -> str:
    return "[" + ", ".join(f"{t.name} {t.dtype}{list(t.dims)}" for t in ts) + "]"


def _referenced(spec: EnsembleSpec) -> set[str]:
    """The models a spec names. Its options are not validated yet: what is malformed names nothing here, and the
    builder's parse_options reports it (naming the option)."""
    opts = spec.options
    refs: list[object] = [*spec.models, *(s.model for s in spec.steps or []), opts.get("default")]
    routes = opts.get("routes")
    if isinstance(routes, dict):
        refs += routes.values()
    for key in ("rules", "variants"):
        items = opts.get(key)
        if isinstance(items, list):
            refs += [item.get("model") for item in items if isinstance(item, dict)]
    return {r for r in refs if isinstance(r, str)}


def build_ensembles(manifest: Manifest, target: str = "embedded") -> list[GeneratedModel]:
    """Every model directory the manifest's ensembles need (ensemble configs, aggregators, routers).

    Ensembles may compose other ensembles (e.g. a pipeline through a router); they are built in dependency order.
    The output is the same for both targets: ensembles and python helpers need no native backend.
    """
    del target  # same configs for the embedded Triton and the NGC container
    sigs = {m.name: signature_of(m) for m in manifest.models}
    pending = list(manifest.ensembles)
    out: list[GeneratedModel] = []
    while pending:
        ready = [e for e in pending if _referenced(e) <= set(sigs) | {p.name for p in manifest.models}]
        if not ready:  # the rest reference each other or unknown models: build one to get the precise error
            ready = pending[:1]
        for spec in ready:
            pending.remove(spec)
            models = getattr(_Builder(spec, sigs), spec.pattern)()
            for gm in models:
                sigs[gm.name] = signature_of_config(gm.config)
            out.extend(models)
    return out
