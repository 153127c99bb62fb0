"""Mutation testing of the front door's guards: does every check have a test that fails without it?

    python tests/mutation.py                  # every target (``make mutation``)
    python tests/mutation.py auth names       # some targets
    python tests/mutation.py --list auth      # the mutants, not run
    python tests/mutation.py --only auth.py:271 -v   # one line's mutants, with pytest's output

Each mutant is one small change to one target module's syntax tree (below); the target's unit tests run against it
in a forked child (the module is served from the mutated tree by an import hook; nothing on disk changes) and the
mutant is *killed* when a test fails, errors or runs past the time limit, else it *survived*: a change to the guard
that no test notices. Score = killed / (mutants - equivalent); ``EQUIVALENT`` lists, with the reason, the mutants
that cannot change behaviour and so cannot be killed.

Mutations (the one-line bugs a guard suffers):
- comparisons: ``<`` <-> ``<=``, ``<`` -> ``>=`` (and the mirror images), ``==`` <-> ``!=``, ``in`` <-> ``not in``,
  ``is`` <-> ``is not``;
- ``and`` <-> ``or``; ``not x`` -> ``x``; ``-x`` -> ``x``; ``abs(x)`` -> ``x``; ``any`` <-> ``all``, ``min`` <->
  ``max``;
- constants: an integer n -> n + 1 and n - 1, ``True`` <-> ``False``, a non-empty string -> ``""`` (but not the
  text of messages: f-strings, an exception's message, a log line, docstrings);
- arithmetic: ``+`` <-> ``-``, ``*`` -> ``/``, ``//`` -> ``*``, ``**`` -> ``*``, ``<<`` <-> ``>>``, ``&`` <-> ``|``,
  and the same in ``+=``-style assignments;
- statements deleted: a ``raise``, a call on its own, an augmented assignment, ``continue``/``break``; an ``if``
  whose condition becomes ``False`` (the guard removed);
- returns: ``return <value>`` -> ``return None``; a returned condition negated.

Hypothesis runs derandomized with no example database, so a run's result depends only on the code and the tests.
"""

from __future__ import annotations

import argparse
import ast
import importlib.abc
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Target:
    name: str
    path: str  # relative to the checkout
    tests: tuple[str, ...]  # the fast unit tests that guard it, most likely killers first
    scope: tuple[str, ...] = ()  # qualified names to mutate (a class, a method, a constant); empty: all

    @property
    def module(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")


TARGETS = [
    Target("auth", "toolkit/gateway/auth.py", ("tests/unit/test_auth.py", "tests/unit/test_names.py")),
    Target(
        "names",
        "toolkit/names.py",
        ("tests/unit/test_names.py", "tests/unit/test_names_nested.py", "tests/unit/test_auth.py"),
    ),
    # the slot and the limits; admission's other rules need a model provider with models (integration tests)
    Target("admission", "toolkit/gateway/admission.py", ("tests/unit/test_limits.py",), ("Ticket", "Admission._slot")),
    Target(
        "options",
        "toolkit/gateway/options.py",
        ("tests/unit/test_limits.py",),
        ("MiB", "GatewayOptions.max_body_bytes", "GatewayOptions.max_concurrency"),
    ),
    Target("bodies", "toolkit/gateway/bodies.py", ("tests/unit/test_bodies.py",)),
    Target("protowire", "toolkit/gateway/protowire.py", ("tests/unit/test_protowire.py",)),
    Target("ustar", "toolkit/mme/_ustar.py", ("tests/unit/test_ustar.py",)),
]

_EMPTY_PATH = (
    'an empty path becomes the name "", which check_model_name refuses at the end of canonical_target with the same '
    "words under the same TargetModel prefix"
)
_UNREACHABLE_SHIFT = (
    "a value varint's 10th byte (shift 63) is refused if it is above 1, so with its continuation bit: "
    "the shift never reaches 70, nor 69"
)

# (target path, the mutated line's source stripped, mutation, column in that stripped line or None for any) -> why
# no test can tell the mutant from the original. "*" as the mutation: every mutant of that line.
EQUIVALENT: dict[tuple[str, str, str, int | None], str] = {
    ("toolkit/mme/_ustar.py", 'field = field.split(b"\\0", 1)[0]', "`1` -> `2`", None): (
        "only the part before the first NUL is read: splitting at two NULs gives the same first part"
    ),
    ("toolkit/mme/_ustar.py", 'return field.split(b"\\0", 1)[0].decode(_ENCODING, _ERRORS)', "`1` -> `2`", None): (
        "only the part before the first NUL is read: splitting at two NULs gives the same first part"
    ),
    (
        "toolkit/gateway/auth.py",
        'if not any(r == "*" or like(r, resource) for r in self.resources):',
        "`'*'` -> `''`",
        None,
    ): 'a shortcut: like("*", resource) matches every resource, so `r == ""` instead changes nothing',
    (
        "toolkit/gateway/auth.py",
        'key = headers.get("X-Api-Key") or (authz[7:].strip() if authz[:7].lower() == "bearer " else "")',
        "`7` -> `6`",
        41,  # authz[7:], not authz[:7]
    ): 'authz[:7] is "bearer " there, so authz[6:] is the key behind one more space, which strip() removes',
    (
        "toolkit/gateway/bodies.py",
        "out = z.decompress(data, limit + 1)",
        "`1` -> `2`",
        None,
    ): "one byte past the limit is enough to refuse; two past it refuses the same bodies",
    (
        "toolkit/gateway/bodies.py",
        "if list not in kinds and dict not in kinds:",
        "`if` condition -> `False`",
        None,
    ): "a fast path: without it a flat list is counted value by value, to the same len(data)",
    (
        "toolkit/gateway/protowire.py",
        "self._need = 0  # bytes still to skip (_SKIP) or to read into the name (_NAME)",
        "*",
        None,
    ): "never read before _key or _length sets it",
    (
        "toolkit/gateway/protowire.py",
        "self._field = 0  # the length-delimited field whose length is being read",
        "*",
        None,
    ): "never read before _key sets it (for the field whose length follows)",
    (
        "toolkit/gateway/protowire.py",
        "if self._shift >= (35 if state == _KEY else 70) or (self._shift == 63 and b > 1):",
        "`35` -> `34`",
        None,
    ): "the shift grows by 7: 28 (5th byte, allowed) and 35 (6th, refused) are on the same sides of 34 as of 35",
    (
        "toolkit/gateway/protowire.py",
        "if self._shift >= (35 if state == _KEY else 70) or (self._shift == 63 and b > 1):",
        "`70` -> `71`",
        None,
    ): _UNREACHABLE_SHIFT,
    (
        "toolkit/gateway/protowire.py",
        "if self._shift >= (35 if state == _KEY else 70) or (self._shift == 63 and b > 1):",
        "`70` -> `69`",
        None,
    ): _UNREACHABLE_SHIFT,
    ("toolkit/names.py", "if not path:", "`if` condition -> `False`", None): _EMPTY_PATH,
    ("toolkit/names.py", "if SEPARATOR not in name:", "`if` condition -> `False`", None): (
        "a fast path: a flat name is one segment, which check_model_name has already passed and _check_segments "
        "passes too (a last segment may end with '.'), and joining one segment gives the name back"
    ),
    (
        "toolkit/names.py",
        'raise ModelNameError(f"{what}: model name must be a non-empty string")',
        "raise deleted",
        None,
    ): _EMPTY_PATH,
    ("toolkit/gateway/protowire.py", "return _LENGTH", "return value -> `None`", None): (
        "a state of None is read as _LENGTH everywhere: every check compares with another state (_KEY, _VARINT, "
        "_SKIP, _NAME), and reading a length is what is left"
    ),
}


@dataclass
class Mutant:
    target: Target
    index: int  # the node's position in a pre-order walk of the module's tree
    line: int
    col: int  # in the stripped source line
    what: str
    apply: Callable[[ast.AST, ast.AST, str, int | None], None] = field(repr=False)
    source: str = ""

    @property
    def where(self) -> str:
        return f"{self.target.path}:{self.line}"

    def equivalent(self) -> str | None:
        """Why this mutant is equivalent, or None."""
        for (path, source, what, col), why in EQUIVALENT.items():
            if (
                (path, source) == (self.target.path, self.source)
                and what in ("*", self.what)
                and col in (None, self.col)
            ):
                return why
        return None


# -- finding the mutants ---------------------------------------------------------------------------------------------
CMP_SWAPS: dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]] = {
    ast.Lt: (ast.LtE, ast.GtE),
    ast.LtE: (ast.Lt, ast.Gt),
    ast.Gt: (ast.GtE, ast.LtE),
    ast.GtE: (ast.Gt, ast.Lt),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
}
BIN_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.FloorDiv: ast.Mult,
    ast.Pow: ast.Mult,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
}
CALL_SWAPS = {"any": "all", "all": "any", "min": "max", "max": "min"}
SYMBOL = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in",
    ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
    ast.Div: "/", ast.FloorDiv: "//", ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&",
    ast.BitOr: "|", ast.And: "and", ast.Or: "or",
}  # fmt: skip
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def _walk(tree: ast.AST) -> Iterator[tuple[ast.AST, ast.AST | None, str, int | None]]:
    """Pre-order: (node, parent, field, index in that field's list or None)."""
    stack: list[tuple[ast.AST, ast.AST | None, str, int | None]] = [(tree, None, "", None)]
    while stack:
        node, parent, fname, idx = stack.pop()
        yield node, parent, fname, idx
        children = []
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                children += [(v, node, name, i) for i, v in enumerate(value) if isinstance(v, ast.AST)]
            elif isinstance(value, ast.AST):
                children.append((value, node, name, None))
        stack.extend(reversed(children))


def _replace(parent: ast.AST, fname: str, idx: int | None, new: ast.AST) -> None:
    if idx is None:
        setattr(parent, fname, new)
    else:
        getattr(parent, fname)[idx] = new


def _is_message_call(call: ast.Call) -> bool:
    """A call whose first argument is human text: an exception raised, a log line."""
    f = call.func
    return isinstance(f, ast.Attribute) and f.attr in LOG_METHODS


class _Context:
    """What each node is inside of: the qualified name, and the places where mutations are noise."""

    def __init__(self, tree: ast.Module) -> None:
        self._raised: set[ast.expr] = set()
        self.qualname: dict[int, str] = {}
        self.skip: set[int] = set()  # nodes (and their subtrees) never mutated
        self.message: set[int] = set()  # string constants that are text for people
        for n in ast.walk(tree):  # annotations, wherever they are: types, not behaviour
            if isinstance(n, (ast.AnnAssign, ast.arg)):
                self._skip_tree(n.annotation)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._skip_tree(n.returns)
        self._visit(tree.body, "")

    def _skip_tree(self, node: ast.AST | None) -> None:
        if node is not None:
            self.skip.update(id(n) for n in ast.walk(node))

    def _messages(self, node: ast.AST) -> None:
        for n in ast.walk(node):
            if isinstance(n, ast.JoinedStr):
                self.message.update(id(m) for m in ast.walk(n))
            elif isinstance(n, ast.Call) and n.args and (_is_message_call(n) or n in self._raised):
                self.message.update(id(m) for m in ast.walk(n.args[0]))

    def _visit(self, body: list[ast.stmt], prefix: str) -> None:
        for i, stmt in enumerate(body):
            if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                self._skip_tree(stmt)  # a docstring
                continue
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                self._skip_tree(stmt)
                continue
            if isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name) and stmt.test.id == "TYPE_CHECKING":
                self._skip_tree(stmt)
                continue
            name = prefix
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{stmt.name}"
                for d in stmt.decorator_list:  # run once at import (lru_cache sizes, dataclass flags)
                    self._skip_tree(d)
                if not isinstance(stmt, ast.ClassDef):
                    self._skip_tree(stmt.args)  # defaults and annotations
                    self._skip_tree(stmt.returns)
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                if names:
                    name = f"{prefix}{names[0]}"
                if names and names[0] in ("__slots__", "__all__"):
                    self._skip_tree(stmt)
                    continue
                if isinstance(stmt, ast.AnnAssign):
                    self._skip_tree(stmt.annotation)
            if isinstance(stmt, ast.ClassDef):
                self._visit(stmt.body, f"{name}.")  # the inner names first: the most specific one wins
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = stmt.body[0] if stmt.body else None
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    self._skip_tree(first)  # its docstring
            for n in ast.walk(stmt):
                self.qualname.setdefault(id(n), name)
            self._raised = {r.exc for r in ast.walk(stmt) if isinstance(r, ast.Raise) and r.exc is not None}
            self._messages(stmt)


def _in_scope(target: Target, qualname: str) -> bool:
    return not target.scope or any(qualname == s or qualname.startswith(s + ".") for s in target.scope)


def _setter(attr: str, value: Any) -> Callable[[ast.AST, ast.AST, str, int | None], None]:
    def apply(node: ast.AST, parent: ast.AST, fname: str, idx: int | None) -> None:
        setattr(node, attr, value() if callable(value) else value)

    return apply


def _negate_return(node: ast.AST, parent: ast.AST, fname: str, idx: int | None) -> None:
    node.value = ast.UnaryOp(ast.Not(), node.value)  # type: ignore[attr-defined]


def _mutations(node: ast.AST, parent: ast.AST | None, ctx: _Context) -> Iterator[tuple[str, Callable[..., None]]]:
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for new in CMP_SWAPS[type(op)]:

                def swap(n: ast.AST, p: ast.AST, f: str, x: int | None, i: int = i, new: type = new) -> None:
                    n.ops[i] = new()  # type: ignore[attr-defined]

                yield f"`{SYMBOL[type(op)]}` -> `{SYMBOL[new]}`", swap
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield f"`{SYMBOL[type(node.op)]}` -> `{SYMBOL[new]}`", _setter("op", new)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        sign = "not " if isinstance(node.op, ast.Not) else "-"

        def unwrap(n: ast.AST, p: ast.AST, f: str, x: int | None) -> None:
            _replace(p, f, x, n.operand)  # type: ignore[attr-defined]

        yield f"`{sign}x` -> `x`", unwrap
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BIN_SWAPS:
        new = BIN_SWAPS[type(node.op)]
        eq = "=" if isinstance(node, ast.AugAssign) else ""
        yield f"`{SYMBOL[type(node.op)]}{eq}` -> `{SYMBOL[new]}{eq}`", _setter("op", new)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        fn = node.func.id
        if fn == "abs" and len(node.args) == 1:

            def drop(n: ast.AST, p: ast.AST, f: str, x: int | None) -> None:
                _replace(p, f, x, n.args[0])  # type: ignore[attr-defined]

            yield "`abs(x)` -> `x`", drop
        if fn in CALL_SWAPS:
            yield (
                f"`{fn}(...)` -> `{CALL_SWAPS[fn]}(...)`",
                _setter("func", lambda: ast.Name(CALL_SWAPS[fn], ast.Load())),
            )
    elif isinstance(node, ast.Constant) and id(node) not in ctx.message:
        v = node.value
        if isinstance(v, bool):
            yield f"`{v}` -> `{not v}`", _setter("value", not v)
        elif isinstance(v, int):
            yield f"`{v}` -> `{v + 1}`", _setter("value", v + 1)
            yield f"`{v}` -> `{v - 1}`", _setter("value", v - 1)
        elif isinstance(v, (str, bytes)) and v:
            yield f"`{v!r}` -> `{type(v)()!r}`", _setter("value", type(v)())
    if isinstance(node, ast.stmt) and isinstance(parent, ast.AST):
        deletable = isinstance(node, (ast.Raise, ast.AugAssign, ast.Continue, ast.Break)) or (
            isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await))
        )
        if deletable:

            def delete(n: ast.AST, p: ast.AST, f: str, x: int | None) -> None:
                _replace(p, f, x, ast.Pass())

            kind = type(node).__name__.lower() if not isinstance(node, ast.Expr) else "call"
            yield f"{kind} deleted", delete
        if isinstance(node, ast.If):
            yield "`if` condition -> `False`", _setter("test", lambda: ast.Constant(False))
        if isinstance(node, ast.Return) and node.value is not None:
            if not (isinstance(node.value, ast.Constant) and not node.value.value):  # False, 0, "": None is alike
                yield "return value -> `None`", _setter("value", None)
            if isinstance(node.value, (ast.Compare, ast.BoolOp, ast.Call)) or (
                isinstance(node.value, ast.UnaryOp) and isinstance(node.value.op, ast.Not)
            ):
                yield "returned condition negated", _negate_return


def find_mutants(target: Target) -> list[Mutant]:
    source = (ROOT / target.path).read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    ctx = _Context(tree)
    out: list[Mutant] = []
    for index, (node, parent, _f, _i) in enumerate(_walk(tree)):
        if id(node) in ctx.skip or not hasattr(node, "lineno"):
            continue
        if not _in_scope(target, ctx.qualname.get(id(node), "")):
            continue
        for what, apply in _mutations(node, parent, ctx):
            line = node.lineno  # type: ignore[attr-defined]
            text = lines[line - 1]
            col = node.col_offset - (len(text) - len(text.lstrip()))  # type: ignore[attr-defined]
            out.append(Mutant(target, index, line, col, what, apply, text.strip()))
    return out


def mutated_code(m: Mutant) -> Any:
    tree = ast.parse((ROOT / m.target.path).read_text())
    for index, (node, parent, fname, idx) in enumerate(_walk(tree)):
        if index == m.index:
            m.apply(node, parent, fname, idx)  # type: ignore[arg-type]
            break
    ast.fix_missing_locations(tree)
    return compile(tree, str(ROOT / m.target.path), "exec")


# -- running the tests against one ------------------------------------------------------------------------------------
class _Loader(importlib.abc.Loader):
    def __init__(self, code: Any) -> None:
        self.code = code

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        exec(self.code, module.__dict__)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, path: Path, code: Any) -> None:
        self.name, self.path, self.code = name, path, code

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=_Loader(self.code))


class _ExamplesLast:
    """Plain tests first, property-based ones last: most mutants fall to a table row, and ``-x`` stops there."""

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        items.sort(key=lambda item: hasattr(getattr(item, "obj", None), "hypothesis"))


def _child(target: Target, code: Any, verbose: bool) -> int:
    import pytest

    if not verbose:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
    for name in [n for n in sys.modules if n == "toolkit" or n.startswith("toolkit.")]:
        del sys.modules[name]  # imported afresh, so that every importer sees the mutant
    if code is not None:
        sys.meta_path.insert(0, _Finder(target.module, ROOT / target.path, code))
    args = [*target.tests, "-x", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), "-o", "addopts="]
    return int(pytest.main(args, plugins=[_ExamplesLast()]))


def run(target: Target, code: Any, limit: float, verbose: bool = False) -> tuple[str, float]:
    """'survived', 'killed' (a test failed), 'error' (collection or import broke), or 'timeout'."""
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        rc = 3
        try:
            os.chdir(ROOT)
            rc = _child(target, code, verbose)
        finally:
            os._exit(rc)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > limit:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - t0
        time.sleep(0.02)
    rc = os.waitstatus_to_exitcode(status)
    verdict = {0: "survived", 1: "killed"}.get(rc, "error")
    return verdict, time.monotonic() - t0


def _warm() -> None:
    """Import what the tests import, once, in the parent: each forked child then starts in milliseconds."""
    os.environ.setdefault("TRITONCTL_FUZZ_EXAMPLES", "300")
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "mutation", database=None, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
    )
    settings.load_profile("mutation")
    import boto3
    import multidict  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import tritonclient.grpc  # noqa: F401

    import toolkit.gateway.server
    import toolkit.repository.generate
    import toolkit.server  # noqa: F401

    boto3.client("sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", help=f"of {', '.join(t.name for t in TARGETS)} (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    ap.add_argument("--only", help="PATH:LINE (PATH may be a file name): only that line's mutants")
    ap.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    ap.add_argument("--min-score", type=float, default=0.0, help="exit 1 below this score (percent)")
    args = ap.parse_args(argv)
    unknown = set(args.targets) - {t.name for t in TARGETS}
    if unknown:
        ap.error(f"unknown targets {sorted(unknown)}")
    targets = [t for t in TARGETS if not args.targets or t.name in args.targets]
    mutants = {t.name: find_mutants(t) for t in targets}
    if args.only:
        path, _, line = args.only.rpartition(":")
        mutants = {
            k: [m for m in ms if m.target.path.endswith(path) and m.line == int(line)] for k, ms in mutants.items()
        }
    if args.list:
        for ms in mutants.values():
            for m in ms:
                eq = m.equivalent()
                print(f"{m.where}:{m.col}: {m.what}    | {m.source}" + (f"    [equivalent: {eq}]" if eq else ""))
        print(f"{sum(map(len, mutants.values()))} mutants")
        return 0
    _warm()
    rows = []
    survivors: list[Mutant] = []
    t_all = time.monotonic()
    if not args.targets and not args.only:
        everything = [m for ms in mutants.values() for m in ms]
        for key, why in EQUIVALENT.items():
            path, source, what, col = key
            if not any(
                (m.target.path, m.source) == (path, source) and what in ("*", m.what) and col in (None, m.col)
                for m in everything
            ):
                print(f"stale EQUIVALENT entry (no such mutant): {key}: {why}", file=sys.stderr)
                return 2
    for t in targets:
        verdict, base = run(t, None, 600, args.verbose)
        if verdict != "survived":
            print(f"{t.name}: the unmutated tests do not pass ({verdict}); fix that first", file=sys.stderr)
            return 2
        limit = 3 * base + 10
        counts = {"killed": 0, "error": 0, "timeout": 0, "survived": 0, "equivalent": 0}
        print(f"== {t.name}: {len(mutants[t.name])} mutants ({t.path}; tests {base:.1f} s, limit {limit:.0f} s)")
        for m in mutants[t.name]:
            if m.equivalent() is not None:
                counts["equivalent"] += 1
                continue
            try:
                code = mutated_code(m)
            except (SyntaxError, ValueError, TypeError):
                counts["error"] += 1
                continue
            verdict, took = run(t, code, limit, args.verbose)
            counts[verdict] += 1
            if verdict in ("survived", "timeout"):  # a timeout counts as killed: shown, to be judged
                survivors.append(m)
                print(f"  {verdict.upper()} {m.where}: {m.what}    | {m.source}", flush=True)
            elif args.verbose or args.only:
                print(f"  {verdict} ({took:.1f} s) {m.where}: {m.what}    | {m.source}", flush=True)
        rows.append((t, counts))
    print()
    print("| target | mutants | equivalent | killed: failed | killed: error | killed: timeout | survived | score |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    total = {"n": 0, "eq": 0, "k": 0, "s": 0}
    for t, c in rows:
        n = sum(c.values())
        killed = c["killed"] + c["error"] + c["timeout"]
        denom = n - c["equivalent"]
        total["n"] += n
        total["eq"] += c["equivalent"]
        total["k"] += killed
        total["s"] += c["survived"]
        score = f"{100 * killed / denom:.1f}%" if denom else "-"
        print(
            f"| {t.path} | {n} | {c['equivalent']} | {c['killed']} | {c['error']} | {c['timeout']} | {c['survived']} "
            f"| {score} |"
        )
    denom = total["n"] - total["eq"]
    score = 100 * total["k"] / denom if denom else 100.0
    print(f"| **all** | {total['n']} | {total['eq']} | {total['k']} killed | | | {total['s']} | **{score:.1f}%** |")
    print(f"\n{total['k']} of {denom} non-equivalent mutants killed ({score:.1f}%) in {time.monotonic() - t_all:.0f} s")
    return 1 if score < args.min_score else 0


if __name__ == "__main__":
    sys.exit(main())
