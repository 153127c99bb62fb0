"""Run a plan: each ``Call`` through boto3, in order, stopping at the first failure with one line.

Nothing is retried or rolled back here on purpose: every object is content-addressed, so running ``deploy`` again
after a failure re-plans from what exists and continues where it stopped, and ``deploy delete`` removes everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from toolkit.deploy.errors import DeployError, aws_errors
from toolkit.deploy.plan import WAIT, Call

Echo = Callable[[str], None]
TERMINAL_OK = "InService"


def wait_in_service(
    sm: Any, endpoint: str, echo: Echo, timeout_s: float = 3600.0, poll_s: float = 15.0
) -> dict[str, Any]:
    """Poll DescribeEndpoint until InService; Failed raises with SageMaker's FailureReason. Prints each change."""
    start = time.monotonic()
    last = None
    while True:
        with aws_errors(f"sagemaker DescribeEndpoint {endpoint}"):
            desc = sm.describe_endpoint(EndpointName=endpoint)
        status = desc.get("EndpointStatus")
        if status != last:
            echo(f"  {endpoint}: {status} ({time.monotonic() - start:.0f} s)")
            last = status
        if status == TERMINAL_OK:
            return dict(desc)
        if status in ("Failed", "OutOfService"):
            reason = " ".join(str(desc.get("FailureReason", "no FailureReason given")).split())
            raise DeployError(f"endpoint {endpoint} {status}: {reason}")
        if time.monotonic() - start > timeout_s:
            raise DeployError(f"endpoint {endpoint} still {status} after {timeout_s:.0f} s (tritonctl deploy status)")
        time.sleep(poll_s)


def run_calls(
    clients: Any, calls: list[Call], echo: Echo, *, wait_timeout_s: float = 3600.0, poll_s: float = 15.0
) -> None:
    """Make each call; ``echo`` gets one line per call."""
    by_service = {"s3": clients.s3, "sagemaker": clients.sagemaker, "application-autoscaling": clients.autoscaling}
    for i, call in enumerate(calls, 1):
        echo(f"[{i}/{len(calls)}] {call}")
        client = by_service[call.service]
        if call.operation == WAIT:
            wait_in_service(client, call.params["EndpointName"], echo, wait_timeout_s, poll_s)
            continue
        what = f"{call.service} {call.operation} {_subject(call)}"
        with aws_errors(what):
            if call.operation == "put_object":
                client.put_object(Body=call.body, **call.params)
            else:
                getattr(client, call.operation)(**call.params)


def _subject(call: Call) -> str:
    p = call.params
    for key in ("EndpointName", "EndpointConfigName", "ModelName", "ResourceId", "PolicyName"):
        if key in p:
            return str(p[key])
    if "Key" in p:
        return f"s3://{p.get('Bucket')}/{p['Key']}"
    return ""
