"""Fixtures both tiers use: the example manifest and a repository generated from it (no server).

The example repository is generated afresh into a temporary directory from the root manifest, so tests exercise
`generate` as well and never depend on the committed model_repository/ being current. Fixtures that start a server
(Triton, moto) live in tests/integration/conftest.py; tests/unit never starts one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from validate_corpus import CONTROL, ENSEMBLE_CONTROL, build_corpus, write_valid_ensemble, write_valid_model

from toolkit.repository.generate import generate_repository
from toolkit.spec import load_manifest

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "tritonctl.yaml"


@pytest.fixture(scope="session")
def example_manifest():  # type: ignore[no-untyped-def]
    return load_manifest(MANIFEST)


@pytest.fixture(scope="session")
def example_repo(tmp_path_factory: pytest.TempPathFactory, example_manifest) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("example_repo")
    generate_repository(example_manifest, out)
    return out


@pytest.fixture(scope="session")
def corpus_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The validate corpus (tests/validate_corpus.py) written out, with a healthy model and a healthy ensemble among the
    broken ones: read offline by tests/unit/test_validate.py, loaded into Triton by
    tests/integration/test_validate_triton.py."""
    root = tmp_path_factory.mktemp("validate_corpus")
    build_corpus(root)
    write_valid_model(root, CONTROL)
    write_valid_ensemble(root, ENSEMBLE_CONTROL)
    return root
