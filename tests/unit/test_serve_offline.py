"""What `tritonctl serve` decides before starting anything: the python backend stub for this interpreter, and model
names that are never paths (`tritonctl serve` itself, run as a user runs it, is tests/integration/test_serve_cli.py)."""

from __future__ import annotations

import pytest

from toolkit.errors import ServerError
from toolkit.server import locate_triton


def test_unsupported_python_is_a_clear_error() -> None:
    with pytest.raises(ServerError, match=r"no python backend stub for Python 2\.7 .*available: .*3\.11"):
        locate_triton(python_version="2.7")


def test_model_names_are_never_paths() -> None:
    """A name like `public/../secret` would pass a `public*` policy and, after URL normalisation, load `secret`."""
    from toolkit.gateway.models import RepositoryModels
    from toolkit.server import TritonEndpoint

    models = RepositoryModels(TritonEndpoint.from_url("http://127.0.0.1:9"), repository=None)
    assert models.knows("digits_mlp")
    assert not any(models.knows(n) for n in ("public/../secret", "..", "a/b", "", "x" * 200))
