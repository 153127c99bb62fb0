"""Server fixtures for the integration tier: a real embedded Triton (session-scoped, free ports, loopback) over the
example repository, and moto's S3 server. No mocks: every test here talks to a real server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin, free_port


@pytest.fixture(scope="session")
def triton(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """One embedded Triton for the whole session, in explicit mode with nothing loaded: tests load what they use."""
    work = tmp_path_factory.mktemp("triton_work")
    server = EmbeddedTriton(ServerOptions(repository=example_repo, workdir=work, log_file=work / "triton.log"))
    server.start(timeout=90)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def admin(triton: EmbeddedTriton) -> Iterator[TritonAdmin]:
    a = TritonAdmin(triton.endpoint)
    yield a
    a.close()


def _moto_update_endpoint(self: Any) -> Any:
    """SageMaker's UpdateEndpoint, which moto 5 lacks (it answers 500 "not implemented"): the endpoint moves to the
    new endpoint config and its variants become the config's, as the API reference documents; the config must
    exist (ValidationException otherwise). moto stands in for AWS here; this adds the one call it misses, nothing of
    ours, so ``tritonctl deploy``'s re-deploy (update, then clean-up of the old config) runs end to end."""
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.sagemaker.exceptions import ValidationError

    backend = self.sagemaker_backend
    name, config = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
    endpoint = backend.endpoints.get(name)
    if endpoint is None:
        raise ValidationError(message=f"Could not find endpoint '{name}'.")
    variants = backend.describe_endpoint_config(config)["ProductionVariants"]  # ValidationError if missing
    endpoint.endpoint_config_name = config
    endpoint.production_variants = endpoint._process_production_variants(variants)
    endpoint.last_modified_time = utcnow()
    return ActionResult({"EndpointArn": endpoint.arn})


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's server mode on a free loopback port: a real HTTP S3 for the stores and the MME. Its backends are
    process-wide, so every test uses a bucket name of its own. SageMaker's UpdateEndpoint is added to it
    (``_moto_update_endpoint``)."""
    from moto.sagemaker.responses import SageMakerResponse
    from moto.server import ThreadedMotoServer

    if not hasattr(SageMakerResponse, "update_endpoint"):
        SageMakerResponse.update_endpoint = _moto_update_endpoint  # type: ignore[attr-defined]

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
