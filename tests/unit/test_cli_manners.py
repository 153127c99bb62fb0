"""The CLI's manners, without a server: start-up cost (counted in modules, not seconds), help that reads at 80
columns, ``--version``, shell completion, ``--json`` that parses, and one-line errors with a hint when nothing answers.

Start-up is checked by the modules a command imports, in a fresh interpreter: a wall-clock bound would flake on a busy
machine, while an import of aiohttp or numpy at start-up is what made ``tritonctl --help`` cost 0.7 s, and shows here
as a name in ``sys.modules`` whatever the machine's load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from toolkit.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
# What a command that does not talk to a server, train, plot or load-test has no use for at start-up.
HEAVY = ("aiohttp", "grpc", "tritonclient", "boto3", "botocore", "numpy", "matplotlib", "locust", "gevent", "moto")
runner = CliRunner()


def _modules_after(*argv: str, cwd: Path = ROOT) -> set[str]:
    """The modules ``tritonctl ARGV`` has imported when it exits, in a fresh interpreter (as a user's shell runs it)."""
    code = (
        "import sys, json\n"
        f"sys.argv = ['tritonctl', *{list(argv)!r}]\n"
        "from toolkit.cli.main import app\n"
        "try:\n    app(prog_name='tritonctl')\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write('\\n' + json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)
    return set(json.loads(r.stderr.rsplit("\n", 1)[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_help_imports_nothing_heavy() -> None:
    mods = _modules_after("--help")
    assert _heavy(mods) == []
    # nor rich's renderer (help is click's plain formatter), pydantic or YAML (the manifest is not read)
    assert not [m for m in mods if m.split(".")[0] in ("rich", "pydantic", "yaml", "markdown_it")]
    assert len(mods) < 260, len(mods)  # 165 when written; python alone is ~40 and typer/click ~100


def test_generate_imports_no_client_or_server_code(tmp_path: Path) -> None:
    """generate needs the manifest (pydantic) and Triton's ModelConfig protobuf, loaded without the package
    ``tritonclient.grpc`` (grpcio, numpy: toolkit.repository.protos)."""
    mods = _modules_after("generate", str(ROOT / "tritonctl.yaml"), "-o", str(tmp_path / "repo"))
    assert (tmp_path / "repo" / "digits_mlp" / "config.pbtxt").is_file()  # it did run
    assert _heavy(mods) == ["tritonclient", "tritonclient.grpc.model_config_pb2"]


def test_model_config_module_is_shared_with_tritonclient() -> None:
    """The ModelConfig classes generate uses are the ones tritonclient's own clients use, whichever came first."""
    code = (
        "from toolkit.repository.protos import model_config_pb2 as ours\n"
        "import tritonclient.grpc as g\n"
        "from tritonclient.grpc import model_config_pb2 as theirs\n"
        "assert ours is theirs is g.model_config_pb2, (ours, theirs)\n"
        "assert g.InferenceServerClient\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert r.returncode == 0, r.stderr


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group under ``group`` (typer's vendored click: duck-typed, not click's classes)."""
    out = [(path, group)]
    for name, cmd in getattr(group, "commands", {}).items():
        out += _commands(cmd, (*path, name))
    return out


COMMANDS = _commands(typer.main.get_command(app))


def test_every_command_is_walked() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"serve", "status", "models list", "mme load", "deploy status", "loadtest", "invoke"} <= names
    assert len(names) >= 20


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "tritonctl")
def test_help_at_80_columns_shows_every_flag_whole(path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    cmd = dict(COMMANDS)[path]
    r = runner.invoke(app, [*path, "--help"], terminal_width=80)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(ln) for ln in lines) <= 80, [ln for ln in lines if len(ln) > 80]
    for param in cmd.params:
        if param.param_type_name == "option" and not param.hidden:
            for flag in (*param.opts, *param.secondary_opts):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", r.output), (flag, r.output)
    # each subcommand's one-line description is whole (click cuts a long first sentence with "...")
    listed = r.output.partition("\nCommands:\n")[2]
    assert not [ln for ln in listed.splitlines() if ln.endswith("...")], listed
    # help text is wrapped in a column at least 40 characters wide (rich's table once left ~19 at 80 columns)
    indents = [len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()]
    assert max(indents) <= 40, r.output


def test_serve_help_at_80_columns_in_a_real_terminal_width() -> None:
    """The issue's reproduction, as a user runs it: COLUMNS=80 tritonctl serve --help."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    r = subprocess.run([sys.executable, "-m", "toolkit", "serve", "--help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith("Usage: tritonctl serve"), r.stdout
    for flag in ("--gateway-grpc-port", "--gpu-memory-fraction", "--metrics-port", "--no-gateway", "--drain"):
        assert re.search(rf"(?<![\w-]){flag}(?![\w-])", r.stdout), flag
    assert "…" not in r.stdout and max(len(ln) for ln in r.stdout.splitlines()) <= 80


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith(f"tritonctl {version('tritonctl')} (nvidia-pytriton ")


def test_invoke_model_version_keeps_the_old_spelling() -> None:
    params = {p.name: p for p in dict(COMMANDS)[("invoke",)].params}
    assert {"--model-version", "--version"} <= set(params["version"].opts)
    assert "--model-version" in runner.invoke(app, ["invoke", "--help"]).output


def test_shell_completion_is_on() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_TRITONCTL_COMPLETE": "complete_bash"}
    for words, cword, want in (
        ("tritonctl mo", "1", "models"),
        ("tritonctl serve --gateway-g", "2", "--gateway-grpc-port"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "toolkit"], env={**env, "COMP_WORDS": words, "COMP_CWORD": cword},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.stdout.split() == [want], (words, r.stdout, r.stderr)
    assert "--install-completion" in runner.invoke(app, ["--help"]).output


def test_json_output_parses_validate_and_generate(tmp_path: Path) -> None:
    r = runner.invoke(app, ["generate", str(ROOT / "tritonctl.yaml"), "-o", str(tmp_path / "repo"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["output"] == str(tmp_path / "repo") and doc["removed"] == [] and doc["unchanged"] == []
    assert str(tmp_path / "repo" / "digits_mlp" / "config.pbtxt") in doc["written"]
    r = runner.invoke(app, ["validate", str(tmp_path / "repo"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True
    (tmp_path / "repo" / "digits_mlp" / "config.pbtxt").write_text('name: "other"\n')  # name != directory
    r = runner.invoke(app, ["validate", str(tmp_path / "repo"), "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["ok"] is False
    assert any(f["severity"] == "error" and "digits_mlp" in f["file"] for f in doc["findings"]), doc


def test_json_output_parses_mme_simulate_and_models_ready_offline() -> None:
    r = runner.invoke(app, ["mme", "simulate", "--models", "20", "--requests", "500", "--budget", "5", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("models", "list"),
        ("models", "ready", "digits_mlp"),
        ("models", "load", "digits_mlp"),
        ("invoke", "digits_mlp", "-i", "X=[1]"),
        ("mme", "list", "-r", "model_repository"),
    ],
)
def test_nothing_listening_is_one_line_with_a_hint(args: tuple[str, ...]) -> None:
    r = runner.invoke(app, [*args, "--url", "http://127.0.0.1:9"])
    assert r.exit_code == 1, r.output
    err = r.stderr
    assert err.count("\n") == 1 and err.startswith("error: ") and "127.0.0.1:9" in err, err
    assert "is a server running there?" in err and "--url or $TRITONCTL_URL" in err, err


def test_models_load_and_mme_load_say_how_they_differ() -> None:
    models = runner.invoke(app, ["models", "load", "--help"]).output
    mme = runner.invoke(app, ["mme", "load", "--help"]).output
    assert "tritonctl mme load" in " ".join(models.split())
    assert "tritonctl models load" in " ".join(mme.split())


def test_metrics_json_is_strict_json_even_for_nan() -> None:
    """Prometheus has NaN and +Inf, JSON has not: they come out as Prometheus spells them, and strict parsers agree."""
    from toolkit.cli.main import _samples

    text = '# HELP up x\n# TYPE up gauge\nup{job="a b"} 1\nratio NaN\nlat_bucket{le="+Inf"} +Inf\n'
    got = _samples(text)
    assert got == [
        {"name": "up", "labels": {"job": "a b"}, "value": 1.0},
        {"name": "ratio", "labels": {}, "value": "NaN"},
        {"name": "lat_bucket", "labels": {"le": "+Inf"}, "value": "+Inf"},
    ]
    json.dumps(got, allow_nan=False)


# Commands without --json, and why: they print no data a script would parse.
NO_JSON = {
    "schema": "its output is a JSON document already",
    "serve": "runs until stopped; prints addresses and progress",
    "graph": "prints a drawing (Mermaid text) or writes a file",
    "loadtest": "writes its report files (report.json among them)",
    "models load": "an action: prints what it did",
    "models unload": "an action",
    "mme load": "an action, with a progress bar",
    "mme unload": "an action",
    "deploy sagemaker": "an action: prints AWS progress",
}


def test_every_command_that_prints_data_has_json() -> None:
    leaves = {" ".join(p): cmd for p, cmd in COMMANDS if p and not hasattr(cmd, "commands")}
    assert set(NO_JSON) <= set(leaves), set(NO_JSON) - set(leaves)  # the list names real commands
    missing = [name for name, cmd in leaves.items() if name not in NO_JSON and not _has_flag(cmd, "--json")]
    assert missing == []


def _has_flag(cmd: Any, flag: str) -> bool:
    return any(flag in getattr(p, "opts", ()) for p in cmd.params)


def test_metrics_with_no_gateway_listening_names_the_flag() -> None:
    r = runner.invoke(app, ["metrics", "--gateway", "127.0.0.1:9", "--url", "http://127.0.0.1:9"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: gateway metrics at http://127.0.0.1:9 unreachable") and "--gateway" in r.stderr
    r = runner.invoke(app, ["metrics", "--url", "http://127.0.0.1:9"])  # Triton's own metrics: the usual hint
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "127.0.0.1:11" in r.stderr, r.stderr
