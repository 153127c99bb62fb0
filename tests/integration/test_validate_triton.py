"""The validate corpus (tests/validate_corpus.py) loaded into a real Triton: validate's severities are truthful.

Every case validate calls an error must fail to load in the embedded Triton 2.51, and every case it only warns about
must load there. A healthy control model in the same repository loads, so a rejection is due to the one thing each
case breaks. The offline half (what validate reports for each case) is tests/unit/test_validate.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from validate_corpus import CASES, CONTROL, ENSEMBLE_CONTROL, BrokenCase

from toolkit.errors import InferenceError
from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin

LOADED_CASES = [c for c in CASES if c.triton != "offline"]


@pytest.fixture(scope="session")
def corpus_admin(corpus_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonAdmin]:
    """One embedded Triton over the whole corpus (explicit mode: nothing loads until a test asks)."""
    work = tmp_path_factory.mktemp("validate_triton")
    server = EmbeddedTriton(ServerOptions(repository=corpus_repo, workdir=work, log_file=work / "triton.log"))
    server.start(timeout=90)
    admin = TritonAdmin(server.endpoint, timeout=30)
    try:
        yield admin
    finally:
        admin.close()
        server.stop()


def test_control_loads(corpus_admin: TritonAdmin) -> None:
    for control in (CONTROL, ENSEMBLE_CONTROL):  # the ensemble loads its step model with it
        corpus_admin.load(control)
        assert corpus_admin.model_ready(control)
        corpus_admin.unload(control, unload_dependents=True)


@pytest.mark.parametrize("case", LOADED_CASES, ids=lambda c: c.name)
def test_triton_agrees(case: BrokenCase, corpus_admin: TritonAdmin) -> None:
    if case.triton == "rejects":
        with pytest.raises(InferenceError):
            corpus_admin.load(case.name)
        assert case.name not in corpus_admin.loaded()
    else:
        corpus_admin.load(case.name)
        assert corpus_admin.model_ready(case.name)
        corpus_admin.unload(case.name)
