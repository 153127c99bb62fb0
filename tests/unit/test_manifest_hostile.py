"""Hostile manifests get one clear line, in bounded time and memory, and lose nothing (review item 10, manifest part).

Each case is what a careless or hostile manifest does: bytes that are not UTF-8, YAML nested 100,000 deep, a "billion
laughs" of aliases, ``ensemble_files`` naming a file outside the project (its lines must never reach the error), an
empty manifest, an endpoint naming a model that does not exist, and a ``generate`` that fails (no folder left behind,
an existing one untouched). No Triton: the library and the CLI (in-process and as a subprocess) only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from toolkit.cli.main import app
from toolkit.errors import GenerateError, ManifestError
from toolkit.repository import generate as gen
from toolkit.repository.generate import generate_repository
from toolkit.spec import load_manifest
from toolkit.spec.safeyaml import MAX_BYTES, MAX_NODES, YamlInputError, parse

ROOT = Path(__file__).resolve().parents[2]
SECRET = "root:$6$Zm9vYmFy$c2VjcmV0aGFzaA:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
MODELS = """models:
  - {name: a, framework: python, artifact: m.py, inputs: [{name: X, dtype: FP32, dims: [1]}],
     outputs: [{name: Y, dtype: FP32, dims: [1]}]}
  - {name: b, framework: python, artifact: m.py, inputs: [{name: X, dtype: FP32, dims: [1]}],
     outputs: [{name: Y, dtype: FP32, dims: [1]}]}
"""


def manifest(tmp_path: Path, text: str | bytes, name: str = "m.yaml") -> Path:
    (tmp_path / "m.py").write_text("class TritonPythonModel:\n    pass\n")
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def issues(path: Path, **kwargs: bool) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, **kwargs)
    return info.value.issues


def cli(*args: str) -> tuple[int, str]:
    """The CLI in-process: exit code and stderr; an exception escaping the command fails the test (a traceback)."""
    r = CliRunner().invoke(app, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.stderr


# 1. Bytes that are not UTF-8: the file, the byte and its offset, never a UnicodeDecodeError.


def test_non_utf8_manifest_names_file_line_and_byte_offset(tmp_path: Path) -> None:
    path = manifest(tmp_path, "models:\n  - name: caf\xe9\n".encode("latin-1"))
    assert issues(path) == [("<file>", 2, "not UTF-8: byte 0xe9 at offset 21 (invalid continuation byte)")]
    code, err = cli("generate", str(path), "-o", str(tmp_path / "out"))
    assert code == 1 and err.splitlines() == [
        "error: invalid manifest",
        f"{path}:2: <file>: not UTF-8: byte 0xe9 at offset 21 (invalid continuation byte)",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit", "generate", str(path), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "offset 21" in proc.stderr


def test_non_utf8_ensemble_file_is_named_with_its_offset(tmp_path: Path) -> None:
    (tmp_path / "ens.yaml").write_bytes(b"name: p\npattern: pipeline\nmodels: [a, b]\ndescription: \xff\n")
    path = manifest(tmp_path, MODELS + "ensemble_files: [ens.yaml]\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.source == str(tmp_path / "ens.yaml")
    assert info.value.issues == [("<file>", 4, "not UTF-8: byte 0xff at offset 54 (invalid start byte)")]


def test_characters_yaml_forbids_are_one_line(tmp_path: Path) -> None:
    assert issues(manifest(tmp_path, "models: []\nversion: 1\x00\n")) == [
        ("<yaml>", 2, "character #x0000 (text offset 21) is not allowed in YAML")
    ]


def test_an_unreadable_manifest_is_one_line(tmp_path: Path) -> None:
    """A path that cannot be read as a manifest file (a directory: root reads files of any mode, and CI runs as root):
    one line, no traceback."""
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    assert issues(folder) == [("<file>", None, "manifest file not found")]


def test_validate_reports_non_utf8_configs_in_one_line(tmp_path: Path) -> None:
    """``validate`` reads a repository, not a manifest: a config.pbtxt that is not UTF-8 is one finding."""
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_bytes(b'name: "m"\nbackend: "python"\n# caf\xe9\n')
    code, err = cli("validate", str(tmp_path / "repo"))
    assert code == 1 and "m/config.pbtxt: syntax: error: not UTF-8 text:" in err and "position 33" in err


# 2. Deep nesting and alias bombs: refused while parsing, in bounded time and memory.

DEEP = {  # kind: (text, the line of the 65th level)
    "flow sequences": ("models: " + "[" * 100_000 + "]" * 100_000 + "\n", 1),
    "flow mappings": ("models: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n", 1),
    "block sequences": ("models:\n" + "- " * 100_000 + "x\n", 2),
    "block mappings": ("models:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 300)) + " " * 300 + "x: 1\n", 64),
}


@pytest.mark.parametrize("kind", sorted(DEEP))
def test_deep_nesting_is_refused_quickly(tmp_path: Path, kind: str) -> None:
    text, line = DEEP[kind]
    path = manifest(tmp_path, text)
    started = time.perf_counter()
    assert issues(path) == [("<yaml>", line, "nested deeper than 64 levels")]
    assert time.perf_counter() - started < 2


def laughs(levels: int) -> str:
    """The billion laughs: each anchor is a list of ten aliases of the one before (10**levels strings)."""
    lines = ["x-l0: &l0 [" + ", ".join(['"lol"'] * 10) + "]"]
    lines += [f"x-l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def rules_bomb(levels: int) -> str:
    """A bomb where it used to go off: a dynamic ensemble's rule ``value`` (Any) is json-dumped into config.pbtxt,
    so ``generate`` walked all 10**levels leaves (10**6: 14 s and 89 MB; 10**9: killed at 5 GB)."""
    rule = f"{{field: X, op: in, value: *l{levels}, model: a}}"
    return (
        laughs(levels)
        + MODELS
        + f"ensembles:\n  - {{name: r, pattern: dynamic, options: {{by: rules, rules: [{rule}], default: b}}}}\n"
    )


def test_billion_laughs_is_refused_in_bounded_time_and_memory(tmp_path: Path) -> None:
    path = manifest(tmp_path, rules_bomb(9))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        found = issues(path)
        elapsed, (_, peak) = time.perf_counter() - started, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == [("<yaml>", 6, f"more than {MAX_NODES} nodes once aliases are expanded (a YAML bomb?)")]
    assert elapsed < 2 and peak < 20 * 2**20, (elapsed, peak)
    assert not (tmp_path / "out").exists()


def test_alias_tricks_are_refused(tmp_path: Path) -> None:
    merges = ["x-m0: &m0 {" + ", ".join(f"k{j}: {j}" for j in range(10)) + "}"]
    merges += [f"x-m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + "]}" for i in range(1, 9)]
    chain = "".join(f"x-c{i}: &c{i} [*c{i - 1}]\n" for i in range(1, 80))
    cases = {
        "merges": ("\n".join(merges) + "\n" + MODELS, "more than 250000 nodes once aliases are expanded"),
        "deep chain": ("x-c0: &c0 [1]\n" + chain + MODELS, "nested deeper than 64 levels once aliases are expanded"),
        "cycle": ("ensembles:\n  - &e {name: p, pattern: pipeline, options: {me: *e}}\n", "alias *e is inside"),
        "undefined": ("models: *nope\n", "found undefined alias 'nope'"),
    }
    for name, (text, needle) in cases.items():
        [(where, _, message)] = issues(manifest(tmp_path, text))
        assert where == "<yaml>" and needle in message, name


def test_size_and_scalar_limits(tmp_path: Path) -> None:
    big = manifest(tmp_path, MODELS + "#" * MAX_BYTES + "\n")
    assert issues(big) == [("<file>", None, f"larger than {MAX_BYTES} bytes; a manifest never needs that much")]
    digits = "9" * 5000
    assert issues(manifest(tmp_path, MODELS + f"version: {digits}\n")) == [
        ("<yaml>", 6, "cannot read this int value: Exceeds the limit (4300 digits) for integer string conversion: "
         "value has 5000 digits")
    ]  # fmt: skip
    [(_, line, message)] = issues(manifest(tmp_path, MODELS + "version: 2001-13-45\n"))
    assert line == 6 and message == "cannot read this timestamp value: month must be in 1..12"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([*"[]{}:,-?&*!|>'\"# \n\tab1<\x00", "!!int ", "!!timestamp ", "&a ", "*a "])).map("".join)
)
def test_any_text_parses_or_gives_a_yaml_input_error(text: str) -> None:
    try:
        parse(text)
    except YamlInputError as exc:
        assert exc.where in ("<file>", "<yaml>") and "\n" not in exc.message


# 3. Files outside the manifest's directory, and files that are not ensemble files: never quoted.


def test_ensemble_files_outside_the_manifest_directory_are_refused(tmp_path: Path) -> None:
    project, outside = tmp_path / "project", tmp_path / "outside"
    project.mkdir()
    outside.mkdir()
    (outside / "secret").write_text(SECRET)
    (project / "ens").mkdir()
    (project / "ens" / "link.yaml").symlink_to(outside / "secret")
    base = project.resolve()
    cases = {
        "/etc/shadow": "/etc/shadow is outside the manifest's directory",
        "../outside/secret": "../outside/secret is outside the manifest's directory",
        "ens/link.yaml": f"ens/link.yaml is outside the manifest's directory {base} (it resolves to",
    }
    for listed, needle in cases.items():
        path = manifest(project, MODELS + f"ensemble_files: [{listed}]\n")
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        [(where, line, message)] = info.value.issues
        assert (where, line) == ("ensemble_files[0]", 6) and message.startswith(needle), message
        assert message.endswith("; --allow-outside reads it anyway")
        assert "root:" not in str(info.value) and "daemon" not in str(info.value)
    code, err = cli("generate", str(project / "m.yaml"), "-o", str(tmp_path / "out"))
    assert code == 1 and len(err.splitlines()) == 2 and "ensemble_files[0]: ens/link.yaml is outside" in err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_an_ensemble_file_is_never_quoted(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text(SECRET)
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.yaml").write_text(SECRET)
    for listed, kwargs in (("../outside/secret", {"allow_outside": True}), ("notes.yaml", {})):
        path = manifest(tmp_path / "project", MODELS + f"ensemble_files: [{listed}]\n")
        with pytest.raises(ManifestError) as info:
            load_manifest(path, **kwargs)
        assert info.value.issues == [
            ("<root>", 1, "not an ensemble file (expected ensembles: [...], or one ensemble with name: and pattern:)")
        ]
        assert "root:" not in str(info.value) and "daemon" not in str(info.value)
    code, err = cli("generate", str(path), "-o", str(tmp_path / "out"), "--allow-outside")
    assert code == 1 and "not an ensemble file" in err and "daemon" not in err


def test_a_file_that_is_not_a_manifest_is_never_quoted(tmp_path: Path) -> None:
    assert issues(manifest(tmp_path, SECRET)) == [
        (
            "<root>",
            1,
            "not a tritonctl manifest (no key of deploy, endpoints, ensemble_files, ensembles, models, version)",
        )
    ]
    code, err = cli("generate", str(tmp_path / "m.yaml"), "-o", str(tmp_path / "out"))
    assert code == 1 and "root:" not in err and "daemon" not in err


def test_ensemble_files_inside_keep_working_and_their_typos_are_named(tmp_path: Path) -> None:
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "one.yaml").write_text("x-models: &ms [a, b]\nname: p\npattern: pipeline\nmodels: *ms\n")
    (tmp_path / "ens" / "many.yaml").write_text("ensembles:\n  - {name: q, pattern: pipeline, models: [a, b]}\n")
    m = load_manifest(manifest(tmp_path, MODELS + "ensemble_files: [ens/one.yaml, ./ens/../ens/many.yaml]\n"))
    assert [e.name for e in m.ensembles] == ["p", "q"]
    (tmp_path / "ens" / "many.yaml").write_text("ensembles: []\ncolour: red\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "m.yaml")
    assert info.value.issues == [("colour", 2, "Extra inputs are not permitted")]


# 4. Empty manifests and endpoints naming models that do not exist.


@pytest.mark.parametrize("text", ["", "{}\n", "# only\n# comments\n", "models: []\n", "version: 1\n"])
def test_a_manifest_without_models_is_an_error(tmp_path: Path, text: str) -> None:
    assert issues(manifest(tmp_path, text)) == [("models", 1, "no models: a manifest declares at least one model")]
    code, err = cli("generate", str(tmp_path / "m.yaml"), "-o", str(tmp_path / "out"))
    assert code == 1 and err.endswith("models: no models: a manifest declares at least one model\n")
    assert not (tmp_path / "out").exists()


ENDPOINTS = """ensembles:
  - {name: pipe, pattern: pipeline, models: [a, b]}
endpoints:
  - {name: one, mode: single, model: nope1}
  - {name: ab, mode: single, variants: [{name: x, model: a}, {name: y, model: nope2}]}
  - {name: mce, mode: multi-container, models: [a, nope3]}
  - {name: chain, mode: serial, models: [nope4, b]}
  - {name: ens, mode: serial, model: nope5}
  - {name: mme, mode: multi-model, models: [a, nope6]}
  - {name: store, mode: multi-model, store: s3://bucket/models, models: [in_the_store]}
  - {name: fine, mode: serial, model: pipe}
"""


def test_endpoints_naming_unknown_models_are_errors_with_their_lines(tmp_path: Path) -> None:
    path = manifest(tmp_path, MODELS + ENDPOINTS)
    found = issues(path)
    msg = "endpoint {!r} names unknown model {!r} (no model or ensemble has that name)".format
    assert found == [
        ("endpoints[0].model", 9, msg("one", "nope1")),
        ("endpoints[1].variants[1].model", 10, msg("ab", "nope2")),
        ("endpoints[2].models[1]", 11, msg("mce", "nope3")),
        ("endpoints[3].models[0]", 12, msg("chain", "nope4")),
        ("endpoints[4].model", 13, msg("ens", "nope5")),
        ("endpoints[5].models[1]", 14, msg("mme", "nope6")),
    ]
    code, err = cli("generate", str(path), "-o", str(tmp_path / "out"))
    assert code == 1 and f"{path}:10: endpoints[1].variants[1].model: endpoint 'ab' names unknown model" in err


def test_a_merged_key_is_reported_where_it_is_written(tmp_path: Path) -> None:
    """The node tree is flattened like the data (one parse, not two): a bad value merged in with ``<<: *io`` is
    reported on the anchor's line, and a key the mapping overrides on the mapping's own line."""
    text = (
        "x-io: &io\n  max_batch_size: -1\n  colour: red\n"
        "models:\n  - name: a\n    framework: python\n    artifact: m.py\n    <<: *io\n"
        "    inputs: [{name: X, dtype: FP32, dims: [1]}]\n    outputs: [{name: Y, dtype: FP32, dims: [1]}]\n"
    )
    found = {path: line for path, line, _ in issues(manifest(tmp_path, text))}
    assert found == {"models[0].max_batch_size": 2, "models[0].colour": 3}
    found = {path: line for path, line, _ in issues(manifest(tmp_path, text + "    max_batch_size: -2\n"))}
    assert found == {"models[0].max_batch_size": 11, "models[0].colour": 3}


# 5. A failed generate leaves no folder behind and an existing one as it was.


def tree(root: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_failed_generate_creates_no_folder_and_keeps_an_existing_one(tmp_path: Path) -> None:
    good = load_manifest(manifest(tmp_path, MODELS))
    bad = load_manifest(manifest(tmp_path, MODELS.replace("artifact: m.py", "artifact: gone.py", 1), "bad.yaml"))
    new = tmp_path / "deep" / "er" / "repo"
    with pytest.raises(GenerateError, match=r"model 'a': .*gone\.py is not a readable file \(for 1/model\.py\)"):
        generate_repository(bad, new)
    assert not (tmp_path / "deep").exists()
    existing = tmp_path / "repo"
    generate_repository(good, existing)
    (existing / "handmade").mkdir()
    (existing / "handmade" / "config.pbtxt").write_text('name: "handmade"\n')
    before = tree(existing)
    with pytest.raises(GenerateError):
        generate_repository(bad, existing)
    assert tree(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "m.py", "m.yaml", "repo"]  # no temp sibling


def test_a_write_that_fails_halfway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_manifest(manifest(tmp_path, MODELS))
    real, calls = gen._write_if_changed, []

    def flaky(path: Path, data: bytes, report: gen.GenerateReport) -> None:
        calls.append(path)
        if len(calls) == 4:
            raise OSError(28, "No space left on device", str(path))
        real(path, data, report)

    monkeypatch.setattr(gen, "_write_if_changed", flaky)
    with pytest.raises(GenerateError, match=r"cannot write the repository .*repo: No space left on device"):
        generate_repository(spec, tmp_path / "repo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py", "m.yaml"]


def test_a_new_repository_is_renamed_into_place_with_the_usual_mode(tmp_path: Path) -> None:
    spec = load_manifest(manifest(tmp_path, MODELS))
    report = generate_repository(spec, tmp_path / "repo")
    assert (tmp_path / "repo").stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert report.written and all(p.is_file() and p.is_relative_to(tmp_path / "repo") for p in report.written)
    (tmp_path / "file").write_text("x")
    with pytest.raises(GenerateError, match="exists and is not a directory"):
        generate_repository(spec, tmp_path / "file")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
