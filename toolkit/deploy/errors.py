"""One error type for deployment, and the translation of AWS's answers into one line a user can act on.

botocore raises ``ClientError`` with a code and a long message; the CLI prints ``error: <one line>``. The codes that
have an obvious remedy (no credentials, access denied, quota, a role SageMaker cannot assume) get a sentence saying
so; anything else keeps AWS's own code and message, on one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from toolkit.errors import TritonctlError


class DeployError(TritonctlError):
    """A deployment cannot be planned, built or applied; the message is one line."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Run AWS calls for ``what`` (e.g. ``sagemaker CreateModel digits-...``); failures become ``DeployError``."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        msg = _one_line(err.get("Message", "") or str(exc))
        if code in ("AccessDenied", "AccessDeniedException", "403", "Forbidden", "InvalidAccessKeyId"):
            raise DeployError(f"{what}: access denied ({code}): {msg}") from None
        if code in ("ResourceLimitExceeded", "LimitExceededException", "ServiceQuotaExceededException"):
            raise DeployError(
                f"{what}: quota exceeded ({code}): {msg} (request an increase in the Service Quotas console)"
            ) from None
        if code == "NoSuchBucket":
            raise DeployError(f"{what}: the bucket does not exist (create it, or fix deploy.bucket)") from None
        if "role" in msg.lower() and ("assume" in msg.lower() or "not authorized" in msg.lower()):
            raise DeployError(f"{what}: SageMaker cannot use the role: {msg}") from None
        raise DeployError(f"{what}: {code}: {msg}") from None
    except NoCredentialsError:
        raise DeployError(f"{what}: no AWS credentials (configure a profile, environment or instance role)") from None
    except NoRegionError:
        raise DeployError(f"{what}: no AWS region (set deploy.region, --region or AWS_DEFAULT_REGION)") from None
    except EndpointConnectionError as exc:
        raise DeployError(f"{what}: AWS unreachable: {_one_line(str(exc))}") from None
    except BotoCoreError as exc:
        raise DeployError(f"{what}: {_one_line(str(exc))}") from None
