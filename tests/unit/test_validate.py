"""``tritonctl validate`` offline: a corpus of broken repositories (tests/validate_corpus.py), each case reported with
its file and field and the severity Triton's behaviour calls for, plus the rules around it.

Truthfulness both ways is proven against a real Triton in tests/integration/test_validate_triton.py: every case
validate calls an error fails to load there, and every case it only warns about loads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc
from validate_corpus import CASES, CONTROL, ENSEMBLE_CONTROL, BrokenCase, edit_config, write_valid_model

from toolkit.errors import TritonctlError
from toolkit.repository.config import render_config
from toolkit.repository.validate import (
    Finding,
    RepositoryNotFoundError,
    format_findings,
    has_errors,
    validate_repository,
)


@pytest.fixture(scope="session")
def corpus_findings(corpus_repo: Path) -> list[Finding]:
    return validate_repository(corpus_repo)


def _of_model(findings: list[Finding], model: str) -> list[Finding]:
    return [f for f in findings if f.file == model or f.file.startswith(model + "/")]


def test_corpus_is_large_enough() -> None:
    assert len([c for c in CASES if c.triton == "rejects"]) >= 12
    assert len({c.name for c in CASES}) == len(CASES)


def test_example_repository_validates_clean(example_repo: Path) -> None:
    findings = validate_repository(example_repo)
    assert findings == [], format_findings(findings)


def test_control_model_is_clean(corpus_findings: list[Finding]) -> None:
    for control in (CONTROL, ENSEMBLE_CONTROL, f"{ENSEMBLE_CONTROL}_step"):
        assert _of_model(corpus_findings, control) == [], control


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_validate_reports_file_and_field(case: BrokenCase, corpus_findings: list[Finding]) -> None:
    mine = _of_model(corpus_findings, case.name)
    file = f"{case.name}/{case.file}" if case.file else case.name
    hits = [f for f in mine if f.file == file and f.field == case.field and f.severity == case.severity]
    assert hits, f"expected {case.severity} at {file}: {case.field}; got:\n{format_findings(mine)}"
    assert all(h.message for h in hits)
    if case.triton == "loads":  # Triton accepts it, so validate must not call anything about it an error
        assert not has_errors(mine), format_findings(mine)


def test_parse_error_names_line_and_column(corpus_findings: list[Finding]) -> None:
    (hit,) = [f for f in corpus_findings if f.file == "parse_error/config.pbtxt"]
    assert hit.message.startswith("line 5:3: ") and "dimz" in hit.message


def test_format_findings_and_summary(corpus_findings: list[Finding]) -> None:
    text = format_findings(corpus_findings)
    assert "zero_dim/config.pbtxt: input[0].dims: error: [0]" in text
    errors = sum(f.severity == "error" for f in corpus_findings)
    assert text.splitlines()[-1] == f"{errors} errors, {len(corpus_findings) - errors} warnings"
    first_warning = next(i for i, ln in enumerate(text.splitlines()) if ": warning: " in ln)
    assert all(": error: " in ln for ln in text.splitlines()[:first_warning])
    assert format_findings([]) == "0 errors, 0 warnings"


def test_gpu_kind_accepted_when_gpus_available(tmp_path: Path) -> None:
    m = write_valid_model(tmp_path, "on_gpu")
    edit_config(m, lambda c: setattr(c.instance_group[0], "kind", mc.ModelInstanceGroup.KIND_GPU))
    assert has_errors(validate_repository(tmp_path))
    assert validate_repository(tmp_path, gpus=True) == []


def test_only_versions_the_policy_loads_need_artifacts(tmp_path: Path) -> None:
    m = write_valid_model(tmp_path, "versioned")
    (m / "2").mkdir()  # latest (default policy) version has no model.py: Triton would load 2 and fail
    assert [(f.file, f.field) for f in validate_repository(tmp_path)] == [("versioned/2/model.py", "file")]
    edit_config(m, lambda c: c.version_policy.specific.versions.extend([1]))
    assert validate_repository(tmp_path) == []
    edit_config(m, lambda c: c.version_policy.specific.versions.extend([7]))
    (finding,) = validate_repository(tmp_path)
    assert (finding.field, finding.severity) == ("version_policy.specific", "warning")


def test_reshape_rules_follow_triton(tmp_path: Path) -> None:
    m = write_valid_model(tmp_path, "reshaped")

    def ok(c: mc.ModelConfig) -> None:
        c.input[0].ClearField("dims")
        c.input[0].dims.extend([2, 4, -1, 6])
        c.input[0].reshape.shape.extend([8, -1, 1, 6])

    edit_config(m, ok)
    assert validate_repository(tmp_path) == []
    shutil.rmtree(m)
    m = write_valid_model(tmp_path, "reshaped")

    def scalar(c: mc.ModelConfig) -> None:  # dims [1] -> reshape [] is how Triton spells a scalar
        c.input[0].dims[0] = 1
        c.input[0].reshape.SetInParent()

    edit_config(m, scalar)
    assert validate_repository(tmp_path) == []


def test_python_model_may_import_its_class(tmp_path: Path) -> None:
    m = write_valid_model(tmp_path, "imported")
    (m / "1" / "impl.py").write_text((m / "1" / "model.py").read_text())
    (m / "1" / "model.py").write_text("from .impl import TritonPythonModel  # noqa: F401\n")
    assert validate_repository(tmp_path) == []


def test_not_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError, match="not a directory"):
        validate_repository(tmp_path / "nope")
    assert issubclass(RepositoryNotFoundError, TritonctlError)


def test_hidden_directories_are_not_models(tmp_path: Path) -> None:
    write_valid_model(tmp_path, "fine")
    (tmp_path / ".git").mkdir()
    assert validate_repository(tmp_path) == []


def test_ensemble_dag_rules_are_included(tmp_path: Path) -> None:
    write_valid_model(tmp_path, "step")
    ens = mc.ModelConfig(name="pipeline", platform="ensemble", max_batch_size=8)
    for t, src in ((ens.input.add(), "X"), (ens.output.add(), "Y")):
        t.name, t.data_type = src, mc.TYPE_FP32
        t.dims.extend([4])
    step = ens.ensemble_scheduling.step.add(model_name="no_such_model", model_version=-1)
    step.input_map["X"] = "X"
    step.output_map["Y"] = "Y"
    (tmp_path / "pipeline" / "1").mkdir(parents=True)
    (tmp_path / "pipeline" / "config.pbtxt").write_text(render_config(ens))
    findings = validate_repository(tmp_path)
    assert ("pipeline/config.pbtxt", "ensemble_scheduling.step[0].model_name", "error") in [
        (f.file, f.field, f.severity) for f in findings
    ], format_findings(findings)
    step.model_name = "step"
    (tmp_path / "pipeline" / "config.pbtxt").write_text(render_config(ens))
    assert not has_errors(validate_repository(tmp_path))


def test_triton_target_rendering_validates_clean(example_manifest, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The NGC rendering (native backends, renamed artifacts, ensembles) passes too; it cannot load here."""
    from toolkit.repository.generate import generate_repository

    generate_repository(example_manifest, tmp_path, target="triton")
    findings = validate_repository(tmp_path, gpus=True)
    assert findings == [], format_findings(findings)
    (next(tmp_path.glob("*/1/model.onnx"))).unlink()
    assert any(f.field == "default_model_filename" for f in validate_repository(tmp_path))
