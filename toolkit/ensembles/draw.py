"""Pictures of ensembles: Mermaid text always, SVG/PNG through graphviz ``dot`` when it is installed.

The graph is read from generated (or parsed) configs, not from the spec, so it shows exactly what Triton will run:
ensemble inputs, every step with the tensor on each edge, the outputs, and for routers (dynamic selection, A/B) their
possible targets as dashed edges labelled with the route key or variant weight.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import TritonctlError
from toolkit.repository.protos import model_config_pb2 as mc


class GraphError(TritonctlError):
    """An ensemble cannot be drawn (unknown name, unsupported output format, graphviz failure)."""


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    kind: str  # input | output | model | helper | router | target


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    label: str
    dashed: bool = False


@dataclass
class Graph:
    name: str
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def add(self, node: Node) -> str:
        if all(n.id != node.id for n in self.nodes):
            self.nodes.append(node)
        return node.id


def _param(cfg: mc.ModelConfig, key: str) -> str:
    return cfg.parameters[key].string_value if key in cfg.parameters else ""


def _routes(cfg: mc.ModelConfig) -> list[tuple[str, str]]:
    """(label, target model) for a generated router; empty for any other model."""
    mode = _param(cfg, "tritonctl.mode")
    if mode == "ab":
        variants = json.loads(_param(cfg, "tritonctl.variants") or "[]")
        total = sum(float(v["weight"]) for v in variants) or 1.0
        return [(f"{v['name']} {100 * float(v['weight']) / total:.0f}%", v["model"]) for v in variants]
    if mode == "dynamic":
        key = _param(cfg, "tritonctl.key")
        out = [(f"{key}={k}", m) for k, m in json.loads(_param(cfg, "tritonctl.routes") or "{}").items()]
        for n, r in enumerate(json.loads(_param(cfg, "tritonctl.rules") or "[]")):
            out.append((r.get("name") or f"rule {n}", r["model"]))
        if _param(cfg, "tritonctl.default"):
            out.append(("default", _param(cfg, "tritonctl.default")))
        return out
    return []


def _kind(cfg: mc.ModelConfig | None) -> str:
    if cfg is None:
        return "model"
    if _param(cfg, "tritonctl.mode"):
        return "router"
    return "helper" if _param(cfg, "tritonctl.method") else "model"


def _targets(g: Graph, src: str, cfg: mc.ModelConfig) -> None:
    for label, model in _routes(cfg):
        g.add(Node(f"target_{model}", model, "target"))
        g.edges.append(Edge(src, f"target_{model}", label, dashed=True))


def build_graph(name: str, configs: dict[str, mc.ModelConfig]) -> Graph:
    """The drawable graph of one ensemble (or generated router) among ``configs``."""
    if name not in configs:
        drawable = sorted(n for n, c in configs.items() if c.platform == "ensemble" or _routes(c))
        raise GraphError(f"no ensemble {name!r}; ensembles here: {', '.join(drawable) or 'none'}")
    cfg = configs[name]
    if cfg.platform == "ensemble":
        return _ensemble_graph(name, cfg, configs)
    if not _routes(cfg):
        raise GraphError(f"{name!r} is a plain model, not an ensemble or router: nothing to draw")
    g = Graph(name)
    node = g.add(Node(f"m_{name}", name, "router"))
    for t in cfg.input:
        g.edges.append(Edge(g.add(Node(f"in_{t.name}", t.name, "input")), node, t.name))
    for t in cfg.output:
        g.edges.append(Edge(node, g.add(Node(f"out_{t.name}", t.name, "output")), t.name))
    _targets(g, node, cfg)
    return g


def _ensemble_graph(name: str, cfg: mc.ModelConfig, configs: dict[str, mc.ModelConfig]) -> Graph:
    g = Graph(name)
    producer: dict[str, str] = {}
    for t in cfg.input:
        producer[t.name] = g.add(Node(f"in_{t.name}", t.name, "input"))
    steps = list(cfg.ensemble_scheduling.step)
    ids = [f"s{i}_{st.model_name}" for i, st in enumerate(steps)]
    for i, st in enumerate(steps):
        sub = configs.get(st.model_name)
        g.add(Node(ids[i], st.model_name, _kind(sub)))
        for tensor in st.output_map.values():
            producer[tensor] = ids[i]
    for i, st in enumerate(steps):
        for key, tensor in sorted(st.input_map.items()):
            if tensor in producer:
                short = tensor.rsplit("__", 1)[-1]  # namespaced <model>__<tensor>: the edge's source says the model
                g.edges.append(Edge(producer[tensor], ids[i], key if short == key else f"{short} → {key}"))
        sub = configs.get(st.model_name)
        if sub is not None:
            _targets(g, ids[i], sub)
    for t in cfg.output:
        if t.name in producer:
            g.edges.append(Edge(producer[t.name], g.add(Node(f"out_{t.name}", t.name, "output")), ""))
    return g


def _id(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", s)


def _q(s: str) -> str:
    return s.replace('"', "'")


MERMAID_SHAPE = {
    "input": '(["{}"])',
    "output": '(["{}"])',
    "model": '["{}"]',
    "helper": '{{{{"{}"}}}}',
    "router": '{{"{}"}}',
    "target": '["{}"]',
}


def to_mermaid(g: Graph) -> str:
    lines = [f"%% ensemble {g.name} (generated by tritonctl graph)", "flowchart LR"]
    for n in g.nodes:
        lines.append(f"    {_id(n.id)}{MERMAID_SHAPE[n.kind].format(_q(n.label))}")
    for e in g.edges:
        arrow = "-.->" if e.dashed else "-->"
        label = f'|"{_q(e.label)}"| ' if e.label else " "
        lines.append(f"    {_id(e.src)} {arrow}{label}{_id(e.dst)}")
    lines += ["    classDef input fill:#e8f4ff,stroke:#4a90d9", "    classDef helper fill:#fff4e0,stroke:#d9a04a"]
    lines += ["    classDef router fill:#f3e8ff,stroke:#8a4ad9"]
    for kind in ("input", "helper", "router"):
        members = [_id(n.id) for n in g.nodes if n.kind == kind or (kind == "input" and n.kind == "output")]
        if members:
            lines.append(f"    class {','.join(members)} {kind}")
    return "\n".join(lines) + "\n"


DOT_STYLE = {
    "input": 'shape=ellipse, style=filled, fillcolor="#e8f4ff"',
    "output": 'shape=ellipse, style=filled, fillcolor="#e8f4ff"',
    "model": 'shape=box, style="rounded,filled", fillcolor="#ffffff"',
    "helper": 'shape=hexagon, style=filled, fillcolor="#fff4e0"',
    "router": 'shape=diamond, style=filled, fillcolor="#f3e8ff"',
    "target": 'shape=box, style="rounded,dashed"',
}


def to_dot(g: Graph) -> str:
    lines = [f'digraph "{_q(g.name)}" {{', "  rankdir=LR;", '  node [fontname="Helvetica"];']
    lines.append(f'  labelloc=t; label="{_q(g.name)}"; edge [fontname="Helvetica", fontsize=10];')
    for n in g.nodes:
        lines.append(f'  {_id(n.id)} [label="{_q(n.label)}", {DOT_STYLE[n.kind]}];')
    for e in g.edges:
        style = ", style=dashed" if e.dashed else ""
        lines.append(f'  {_id(e.src)} -> {_id(e.dst)} [label="{_q(e.label)}"{style}];')
    return "\n".join(lines) + "\n}\n"


def render(g: Graph, output: Path) -> str:
    """Write ``output`` (.mmd, .dot, .svg or .png) and return a line saying what was written. Without graphviz,
    .svg/.png degrade to Mermaid text next to the requested path, and the line says so."""
    suffix = output.suffix.lower()
    output.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".mmd", ".mermaid", ".md"):
        text = to_mermaid(g)
        output.write_text(f"```mermaid\n{text}```\n" if suffix == ".md" else text)
        return f"wrote Mermaid to {output}"
    if suffix == ".dot":
        output.write_text(to_dot(g))
        return f"wrote graphviz source to {output}"
    if suffix not in (".svg", ".png"):
        raise GraphError(f"unsupported output {output.name!r}: use .svg, .png (graphviz), .dot or .mmd (Mermaid)")
    dot = shutil.which("dot")
    if dot is None:
        fallback = output.with_suffix(".mmd")
        fallback.write_text(to_mermaid(g))
        return (
            f"graphviz 'dot' is not installed (Debian: apt-get install graphviz), so no {suffix[1:].upper()}; "
            f"wrote Mermaid to {fallback} instead"
        )
    proc = subprocess.run(
        [dot, f"-T{suffix[1:]}", "-o", str(output)], input=to_dot(g).encode(), capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise GraphError(f"dot failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()[:300]}")
    return f"wrote {suffix[1:].upper()} to {output}"
