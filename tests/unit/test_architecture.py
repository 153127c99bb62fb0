"""The shape of toolkit/'s imports, read statically (no Triton, nothing imported): no cycles, no upward imports.

Why: cycles hid for a long time behind function-level imports (``ensembles -> repository.generate -> ensembles``), and
shared types lived wherever their first user was (``TritonEndpoint`` in the launcher), so a package low in the stack
had to reach up for them. These tests make the intended structure executable.

What counts as an import of a toolkit module: every ``import toolkit...`` and ``from toolkit... import ...`` (relative
ones resolved) wherever it is written -- at module level, under ``if TYPE_CHECKING:``, and inside functions. All of
them count for both rules: a lazy import still makes one module depend on another (it only hides a cycle from the
interpreter, not from the design), and a TYPE_CHECKING import is a dependency of the type checker and the reader.
``from pkg import name`` depends on ``pkg.name`` when that is a module, else on ``pkg``. Importing ``pkg.mod`` also
runs ``pkg/__init__.py``, so for cycles a module also depends on each package above its target that it is not itself
inside ("implied"); layers are checked on the imports as written (an ``__init__`` is checked on its own imports).
Not seen: imports by computed name (``importlib``), which toolkit does not use (asserted below).

Modules are the .py files in packages (directories with ``__init__.py``) under toolkit/. The ``templates`` directories
are not packages: their files are copied into model directories and run inside Triton's python stub, where toolkit is
not installed, so they must import nothing from it (asserted below).
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "toolkit"

# Layers, bottom to top: a module may import its own layer and the layers below, never one above. An entry names a
# module and, for a package, everything in it (except the root ``toolkit``, which is only its own __init__); the
# longest entry matching a module gives its layer. Every module must match an entry.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation: typed errors, model names, optional extras", ("toolkit.errors", "toolkit.names", "toolkit.extras")),
    ("spec: the manifest", ("toolkit.spec",)),
    # config.pbtxt from Triton's protobuf, and the types the repository writer/checker share with the ensemble builders
    ("model configs", ("toolkit.repository.config", "toolkit.repository.protos", "toolkit.repository.types")),
    ("ensembles: pattern builders, DAG rules", ("toolkit.ensembles",)),
    ("repository: generate and validate (they call the ensemble builders and rules)", ("toolkit.repository",)),
    ("server: endpoint, launcher, supervisor, the control-plane client", ("toolkit.server",)),
    ("mme: the multi-model manager", ("toolkit.mme",)),
    ("gateway: KServe/SageMaker front door", ("toolkit.gateway",)),
    (
        "serving: the system wired from one config (the library's serve API)",
        ("toolkit.serve_config", "toolkit.serving"),
    ),
    ("deploy: SageMaker endpoints from the manifest (tarballs from the repository, boto3)", ("toolkit.deploy",)),
    ("loadtest", ("toolkit.loadtest",)),
    ("tune: search serving configs on Triton, report, write back to the manifest", ("toolkit.tune",)),
    ("cli", ("toolkit.cli", "toolkit.__main__")),
    # the package's own __init__: the curated public API, re-exporting from every layer on first use
    ("public API facade", ("toolkit",)),
]

# Cycles that exist today, each as the set of modules of its strongly connected component. The list can only shrink:
# a cycle not listed here fails, and so does a listed one that no longer exists (delete its entry then).
KNOWN_CYCLES: list[frozenset[str]] = []


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    kind: str  # "top", "lazy" (in a function), "typing" (under TYPE_CHECKING) or "implied" (a package __init__ run)

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line}, {self.kind})"


def find_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file, for the .py files whose directories are packages all the way up to ``root/package``."""
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if not all((root.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.here = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, str | None, int, str]] = []  # (base, imported name or None, line, kind)
        self._kinds = ["top"]

    def _within(self, kind: str, nodes: list[ast.stmt] | list[ast.AST]) -> None:
        self._kinds.append(kind)
        for n in nodes:
            self.visit(n)
        self._kinds.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._within("lazy", [*node.decorator_list, *node.body])

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        typing = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if typing:
            self._within("typing", node.body)
            self._within(self._kinds[-1], node.orelse)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, None, node.lineno, self._kinds[-1]))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.here.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            self.found.append((base, alias.name, node.lineno, self._kinds[-1]))


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> tuple[dict[str, Path], list[Import]]:
    """Every module of ``package`` and every import between two of them (written ones, then the implied ones)."""
    modules = find_modules(root, package)
    imports: list[Import] = []
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        written: list[Import] = []
        for base, imported, line, kind in visitor.found:
            if base != package and not base.startswith(package + "."):
                continue
            target = f"{base}.{imported}" if imported and f"{base}.{imported}" in modules else base
            if target in modules and target != name:
                written.append(Import(name, target, line, kind))
        inside = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
        implied = [
            Import(name, parent, imp.line, "implied")
            for imp in written
            for parent in (imp.target.rsplit(".", i)[0] for i in range(1, imp.target.count(".") + 1))
            if parent not in inside and parent in modules
        ]
        imports += written + implied
    return modules, imports


def cycles(modules: dict[str, Path], imports: list[Import]) -> list[tuple[frozenset[str], list[Import]]]:
    """Each strongly connected component of more than one module, with one shortest cycle through it (to name)."""
    out_edges: dict[str, list[Import]] = {m: [] for m in modules}
    for imp in imports:
        out_edges[imp.source].append(imp)
    found = []
    for comp in _components(modules, out_edges):
        path = _shortest_cycle(comp, out_edges)
        if path is not None:
            found.append((frozenset(comp), path))
    return found


def _components(modules: dict[str, Path], out_edges: dict[str, list[Import]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:  # toolkit's depth is far below the recursion limit
        index[v] = low[v] = len(index)
        stack.append(v)
        for imp in out_edges[v]:
            w = imp.target
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for m in sorted(modules):
        if m not in index:
            strongconnect(m)
    return components


def _shortest_cycle(comp: set[str], out_edges: dict[str, list[Import]]) -> list[Import] | None:
    """A shortest cycle through the component's first module: breadth-first inside the component, until an import
    leads back to it."""
    start = min(comp)
    came: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        back = next((i for i in out_edges[v] if i.target == start), None)
        if back is not None:
            path = [back]
            while path[0].source != start:
                path.insert(0, came[path[0].source])
            return path
        for imp in sorted(out_edges[v], key=lambda i: i.target):
            if imp.target in comp and imp.target not in came and imp.target != start:
                came[imp.target] = imp
                queue.append(imp.target)
    return None


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (entry length, layer)
    for rank, (_, entries) in enumerate(LAYERS):
        for e in entries:
            covers = module == e or (e != PACKAGE and module.startswith(e + "."))
            if covers and (best is None or len(e) > best[0]):
                best = (len(e), rank)
    return None if best is None else best[1]


MODULES, IMPORTS = import_graph()


def _describe(cycle: list[Import]) -> str:
    return " -> ".join(f"{i.source} (line {i.line}, {i.kind})" for i in cycle) + f" -> {cycle[-1].target}"


def test_no_import_cycles() -> None:
    new = [(comp, path) for comp, path in cycles(MODULES, IMPORTS) if comp not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(f"{_describe(p)}   [all of: {sorted(c)}]" for c, p in new)


def test_known_cycles_still_exist() -> None:
    """An allow-listed cycle that is gone must leave the list, so that it cannot come back unnoticed (the list is
    empty now: every cycle is gone)."""
    components = [comp for comp, _ in cycles(MODULES, IMPORTS)]
    stale = [sorted(k) for k in KNOWN_CYCLES if k not in components]
    assert not stale, f"stale KNOWN_CYCLES entries (the cycle is gone or changed; delete them): {stale}"


def test_every_module_has_a_layer_and_every_entry_a_module() -> None:
    assert not [m for m in MODULES if layer_of(m) is None], "modules in no layer: add them to LAYERS"
    entries = [e for _, es in LAYERS for e in es]
    stale = [e for e in entries if e not in MODULES and not any(m.startswith(e + ".") for m in MODULES)]
    assert not stale, f"LAYERS entries matching no module (delete them): {stale}"


def test_no_upward_imports() -> None:
    upward = [
        f"{imp}: layer {LAYERS[layer_of(imp.source) or 0][0]!r} imports layer {LAYERS[layer_of(imp.target) or 0][0]!r}"
        for imp in IMPORTS
        if imp.kind != "implied" and (layer_of(imp.target) or 0) > (layer_of(imp.source) or 0)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_templates_import_nothing_from_toolkit() -> None:
    in_packages = set(MODULES.values())
    templates = [p for p in (ROOT / PACKAGE).rglob("*.py") if p not in in_packages]
    assert templates, "expected the model templates (toolkit/*/templates/*.py) outside the packages"
    for path in templates:
        visitor = _Imports("template", False)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        assert not [b for b, *_ in visitor.found if b.split(".")[0] == PACKAGE], f"{path} imports toolkit"


def test_no_imports_by_computed_name() -> None:
    """The graph cannot see ``importlib.import_module(name)`` or ``__import__``: toolkit must not use them, except
    the public API facade (``toolkit/__init__``), whose lazy table mirrors its TYPE_CHECKING imports (seen here)."""
    for name, path in MODULES.items():
        if name == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                assert called not in ("import_module", "__import__"), f"{name}:{node.lineno} imports by computed name"


def test_the_graph_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The reader itself, on a small package: each kind of import, relative ones, implied __init__s, and a cycle
    through a lazy import (the shape of the ensembles/repository cycle this test was written against)."""
    pkg = tmp_path / "toolkit"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    (pkg / "tpl").mkdir()  # not a package: ignored
    files = {
        "__init__.py": "",
        "a/__init__.py": "from toolkit.a.x import X\n",
        "a/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from toolkit.b import y\nX = 1\n",
        "b/__init__.py": "",
        "b/y.py": "import json\n\ndef f():\n    from ..a import x\n    return x\n",
        "b/z.py": "from . import y\nimport toolkit.a\n",
        "tpl/t.py": "import toolkit.b.y\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    modules, imports = import_graph(tmp_path, "toolkit")
    assert set(modules) == {"toolkit", "toolkit.a", "toolkit.a.x", "toolkit.b", "toolkit.b.y", "toolkit.b.z"}
    assert {(i.source, i.target, i.kind) for i in imports} == {
        ("toolkit.a", "toolkit.a.x", "top"),
        ("toolkit.a.x", "toolkit.b.y", "typing"),
        ("toolkit.a.x", "toolkit.b", "implied"),
        ("toolkit.b.y", "toolkit.a.x", "lazy"),
        ("toolkit.b.y", "toolkit.a", "implied"),
        ("toolkit.b.z", "toolkit.b.y", "top"),
        ("toolkit.b.z", "toolkit.a", "top"),
    }
    ((component, path),) = cycles(modules, imports)
    assert component == {"toolkit.a", "toolkit.a.x", "toolkit.b.y"}
    assert path[-1].target == path[0].source and {i.source for i in path} <= component
