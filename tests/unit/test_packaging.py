"""pyproject.toml against the code: every third-party import of toolkit/ is declared, in the core or in the extra of
the module that imports it; a core-only install imports, runs the CLI and says which extra to install; the
nvidia-pytriton range is the one locate.py knows; the license is an SPDX string; constraints.txt pins what make
installs; the demo builds into a git-ignored directory.

Read statically (ast) where possible; module -> distribution comes from the installed metadata (the dev venv has
every extra installed), with a fallback for the optional modules that are not installed here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from toolkit.extras import EXTRAS
from toolkit.server.locate import PYTRITON_RANGE, check_pytriton_version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# top-level modules whose distribution may not be installed in the dev venv (optional hardware support)
NOT_INSTALLED = {"pynvml": {"nvidia-ml-py"}}


def _names(reqs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in reqs}


CORE = _names(PROJECT["dependencies"])
OPTIONAL = {extra: _names(reqs) for extra, reqs in PROJECT["optional-dependencies"].items()}


@cache
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # scans every installed distribution: once


def _distributions(module: str) -> set[str]:
    found = _packages_distributions().get(module)
    if found:
        return {canonicalize_name(d) for d in found}
    assert module in NOT_INSTALLED, f"no installed distribution provides {module!r}: add it to NOT_INSTALLED"
    return NOT_INSTALLED[module]


def _third_party_imports() -> dict[str, set[str]]:
    """{top-level module: {toolkit files importing it}} over toolkit/'s packages (templates run inside Triton)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "toolkit").rglob("*.py")):
        if "templates" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("toolkit", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared() -> None:
    """A module of an extra (toolkit.extras.EXTRAS) must come from the core or that extra; any other from the core."""
    extra_of = {m: extra for extra, mods in EXTRAS.items() for m in mods}
    imports = _third_party_imports()
    assert {"tritonclient", "pydantic", "locust"} <= set(imports)  # the reader works
    problems = []
    for module, files in sorted(imports.items()):
        extra = extra_of.get(module)
        allowed = CORE | (OPTIONAL[extra] if extra else set())
        dists = _distributions(module)
        if not dists & allowed:
            where = f"[{extra}] or the core" if extra else "the core (dependencies)"
            problems.append(f"{module} ({', '.join(sorted(dists))}), imported by {', '.join(sorted(files))}: {where}")
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


def test_every_extra_of_the_table_is_declared() -> None:
    """The hint `pip install 'tritonctl[X]'` names an extra that exists and provides the modules it is given for."""
    for extra, modules in EXTRAS.items():
        assert extra in OPTIONAL, f"toolkit.extras names [{extra}], which pyproject.toml does not declare"
        for module in modules:
            assert _distributions(module) & OPTIONAL[extra], f"[{extra}] does not provide {module}"


def test_the_core_is_lean() -> None:
    """What the core install does not pull: the load tester, its web UI, plots, CUDA bindings, training."""
    heavy = {"locust", "flask", "gevent", "matplotlib", "cuda-python", "scikit-learn", "onnxruntime", "perf-analyzer"}
    assert not CORE & heavy
    tritonclient = next(Requirement(r) for r in PROJECT["dependencies"] if r.startswith("tritonclient"))
    assert tritonclient.extras == {"http", "grpc"}  # not [all]: cuda-python and the perf-analyzer package


def _closure(reqs: list[str]) -> set[str]:
    """The distributions a ``pip install`` of ``reqs`` brings, read from the installed metadata (markers evaluated)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in reqs]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(key)
        try:
            deps = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for dep in map(Requirement, deps):
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in {"", *req.extras}):
                dep.marker = None
                todo.append(dep)
    return {name for name, _ in seen}


def _core_only_missing() -> list[str]:
    """The extras' modules that a core-only install lacks (gevent, say, comes with tritonclient[http] anyway)."""
    core = _closure(PROJECT["dependencies"])
    return sorted({m for mods in EXTRAS.values() for m in mods if not _distributions(m) & core})


def _blocked_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python where the modules a core-only install lacks fail to import."""
    blocked = _core_only_missing()
    assert {"locust", "matplotlib", "onnxruntime"} <= set(blocked), blocked
    prelude = f"""
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Block())
import importlib.util
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in {blocked!r} else _find(name, *a)
"""
    return subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_core_install_imports_every_module_and_names_the_extra() -> None:
    """Without the extras: every toolkit module imports (but the Locust user module), `tritonctl --help` and
    `generate` work, and `tritonctl loadtest` fails with one line naming the extra."""
    code = """
import pathlib, importlib, json, tempfile
failed = {}
for p in sorted(pathlib.Path("toolkit").rglob("*.py")):
    if "templates" in p.parts or p.name == "__main__.py":  # __main__ runs the CLI
        continue
    name = ".".join(p.with_suffix("").parts).removesuffix(".__init__")
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed[name] = exc.name
from typer.testing import CliRunner
from toolkit.cli.main import app
runner = CliRunner()
help = runner.invoke(app, ["--help"])
with tempfile.TemporaryDirectory() as tmp:
    gen = runner.invoke(app, ["generate", "tritonctl.yaml", "-o", tmp + "/repo"])
lt = runner.invoke(app, ["loadtest", "single_model", "--report", tmp + "/r"])
print(json.dumps({"failed": failed, "help": help.exit_code, "generate": [gen.exit_code, gen.output[-300:]],
                  "loadtest": [lt.exit_code, lt.output]}))
"""
    r = _blocked_python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["failed"] == {"toolkit.loadtest.users": "locust"}  # imported only by the load workers
    assert out["help"] == 0
    assert out["generate"][0] == 0, out["generate"][1]
    code, text = out["loadtest"]
    assert code != 0
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith("pip install 'tritonctl[loadtest]'"), text


def test_the_report_plots_name_the_extra() -> None:
    r = _blocked_python(
        "from toolkit.extras import MissingExtraError\n"
        "from toolkit.loadtest import report\n"
        "try:\n    report._plt()\nexcept MissingExtraError as exc:\n    print(exc)\n"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("pip install 'tritonctl[loadtest]'"), r.stdout


def test_pytriton_is_capped_to_the_layout_locate_knows() -> None:
    req = next(Requirement(r) for r in PROJECT["dependencies"] if Requirement(r).name == "nvidia-pytriton")
    assert req.specifier == SpecifierSet(PYTRITON_RANGE)
    for ok in ("0.5.0", "0.6.0", "0.7.0", "0.7.1.post1"):
        check_pytriton_version(ok)
    from toolkit.errors import ServerError

    for bad in ("0.4.2", "0.8.0", "1.0"):
        with pytest.raises(ServerError, match=r"not supported.*pip install 'nvidia-pytriton>=0\.5,<0\.8'"):
            check_pytriton_version(bad)


def test_license_is_an_spdx_expression() -> None:
    """PEP 639: a string and license-files (the table form is deprecated and warns on every build)."""
    assert PROJECT["license"] == "Apache-2.0"
    for pattern in PROJECT["license-files"]:
        assert list(ROOT.glob(pattern)), pattern
    setuptools = next(Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools"))
    assert not setuptools.specifier.contains("76.9")  # >= 77 reads the SPDX string


def test_the_demo_builds_into_an_ignored_directory() -> None:
    """`make demo` writes under build/demo, which git ignores, so it can never rewrite a tracked file."""
    from examples.demo import BUILD

    rel = BUILD.relative_to(ROOT)
    r = subprocess.run(["git", "check-ignore", "-q", str(rel / "model_repository")], cwd=ROOT, check=False)
    if r.returncode == 128:
        pytest.skip("not a git checkout")
    assert r.returncode == 0, f"{rel} is not git-ignored"


def test_the_demo_checks_quality_not_bytes() -> None:
    from examples.demo import compare_quality

    committed = {"digits_accuracy": {"a": 0.96}, "housing_r2": {"b": 0.9}}
    assert compare_quality(committed, {"digits_accuracy": {"a": 0.955}, "housing_r2": {"b": 0.91}}) == []
    assert compare_quality(committed, {"digits_accuracy": {"a": 0.90}, "housing_r2": {"b": 0.9}}) == [
        "digits_accuracy.a: 0.96 committed, 0.9 rebuilt (tolerance 0.02)"
    ]
    assert compare_quality(committed, {"digits_accuracy": {}, "housing_r2": {"b": 0.9}}) == [
        "digits_accuracy.a: 0.96 committed, None rebuilt"
    ]


def test_constraints_pin_every_declared_requirement() -> None:
    """constraints.txt (what make installs with) pins each distribution pyproject.toml names, for CI's Python."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", line
            assert req.marker is not None and "python_version" in str(req.marker), line
            pins[canonicalize_name(req.name)] = req
    makefile = (ROOT / "Makefile").read_text()
    extras = next(line.split(":=")[1].strip() for line in makefile.splitlines() if line.startswith("EXTRAS :="))
    declared = set(CORE).union(*(OPTIONAL[e] for e in extras.split(",")))
    unpinned = sorted(declared - set(pins))
    assert not unpinned, f"not in constraints.txt: {unpinned} (make lock, or add name==version as the others)"
