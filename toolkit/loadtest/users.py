"""Locust users for Triton: KServe v2 over HTTP (FastHttpUser) and gRPC, and the SageMaker runtime API (SigV4).

Importing this module imports locust, which monkey-patches the process with gevent: only worker processes (and
locustfiles) import it, never the CLI or the test process. Each user times its own calls with ``perf_counter`` and
reports float milliseconds through Locust's ``request`` event, where ``Recorder`` keeps sub-ms histograms.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

import numpy as np
from locust import FastHttpUser, LoadTestShape, User, constant, constant_throughput, task
from locust.env import Environment
from locust.exception import StopTest

from toolkit.loadtest.payload import grpc_request, http_request, make_arrays, sagemaker_request
from toolkit.loadtest.recorder import Recorder, describe_error
from toolkit.loadtest.scenario import Shape, Target, TargetMix


class InferHTTPError(Exception):
    """A non-200 answer; the message keeps the status and the server's error text, which is the error *type*."""


class _Traffic:
    """Target choice shared by all user kinds: weighted random over the scenario's (resolved) targets."""

    targets: ClassVar[list[Target]] = []
    mix: ClassVar[TargetMix] = TargetMix([1.0])
    binary: ClassVar[bool] = True
    endpoint: ClassVar[str] = ""
    timeout: ClassVar[float] = 60.0
    recorder: ClassVar[Recorder | None] = None  # set by the worker; None in a plain locustfile (Locust's events)

    def report(self, name: str, ms: float, start: float, exc: BaseException | None) -> None:
        """Hand a measurement to our recorder directly (cheapest), or fire Locust's request event."""
        if self.recorder is not None:
            self.recorder.add(name, ms, start, None if exc is None else describe_error(exc))
            return
        self.environment.events.request.fire(  # type: ignore[attr-defined]
            request_type="infer",
            name=name,
            response_time=ms,
            response_length=0,
            exception=exc,
            context={},
            start_time=start,
        )

    def pick(self) -> int:
        return self.mix.pick()


def _error_text(status: int, body: bytes | None) -> str:
    import json

    msg = ""
    if body:
        try:
            msg = str(json.loads(body).get("error") or json.loads(body).get("message") or "")
        except (ValueError, AttributeError):
            msg = body[:160].decode(errors="replace")
    return f"HTTP {status}: {msg}".strip()


class TritonHttpUser(_Traffic, FastHttpUser):
    """POST /v2/models/{m}/infer with a pre-built JSON or binary-tensor body."""

    abstract = True  # made concrete by configure()
    wait_time = constant(0)
    network_timeout = 60.0
    connection_timeout = 60.0

    def on_start(self) -> None:
        from geventhttpclient.url import URL

        assert self.host is not None  # FastHttpUser.__init__ stops the test without a host
        self._base_url = self.host.rstrip("/")
        rng = np.random.default_rng(os.getpid() ^ id(self))
        self._requests = [self._build(t, make_arrays(t, rng)) for t in self.targets]
        self._url_split = URL(self.host)
        self._conn: Any = None

    def _build(self, t: Target, arrays: dict[str, np.ndarray]) -> tuple[str, bytes, dict[str, str]]:
        path, body, headers = http_request(t, arrays, self.binary)
        headers["Accept-Encoding"] = "identity"  # as perf_analyzer: no response compression
        return path, body, headers

    def _headers(self, path: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        return headers

    @task
    def infer(self) -> None:
        """One request on the FastHttpUser's own keep-alive connection (its geventhttpclient pool), timed here.

        FastHttpSession.request adds ~40 µs of bookkeeping per call (URL building, header copies, a response
        context manager, Locust's ms-bucketed stats); on a ~1 ms round trip that is the difference between
        matching perf_analyzer with one process or needing two, so the hot path goes one level down.
        """
        i = self.pick()
        path, body, headers = self._requests[i]
        headers = self._headers(path, body, headers)
        if self._conn is None:
            self._conn = self.client.client.clientpool.get_client(self._url_split)
        start = time.time()
        t0 = time.perf_counter()
        exc: BaseException | None = None
        try:
            resp = self._conn.request("POST", path, body=body, headers=headers)
            try:
                content = resp.read()
                status = resp.status_code
            finally:
                resp.release()
            if status != 200:
                exc = InferHTTPError(_error_text(status, content))
        except Exception as e:  # connection refused/reset, timeouts: reported by type, and the connection renewed
            exc = e
            self._conn = None
        elapsed = (time.perf_counter() - t0) * 1000.0
        self.report(self.targets[i].label, elapsed, start, exc)


class SageMakerUser(TritonHttpUser):
    """POST /endpoints/{endpoint}/invocations, SigV4-signed as the AWS SDK would (service ``sagemaker``)."""

    abstract = True

    def on_start(self) -> None:
        from botocore.auth import SigV4Auth
        from botocore.credentials import Credentials

        super().on_start()
        import boto3

        creds = boto3.Session().get_credentials()
        if creds is None:  # a local gateway: any well-formed credentials will do
            creds = Credentials("tritonctl-loadtest", "tritonctl-loadtest")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self._signer = SigV4Auth(creds.get_frozen_credentials(), "sagemaker", region)

    def _build(self, t: Target, arrays: dict[str, np.ndarray]) -> tuple[str, bytes, dict[str, str]]:
        path, body, headers = sagemaker_request(t, arrays, self.binary, self.endpoint)
        headers["Accept-Encoding"] = "identity"
        return path, body, headers

    def _headers(self, path: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        from botocore.awsrequest import AWSRequest

        req = AWSRequest(method="POST", url=f"{self._base_url}{path}", data=body, headers=dict(headers))
        self._signer.add_auth(req)  # X-Amz-Date + Authorization, fresh per request like the SDK
        return dict(req.headers.items())


class TritonGrpcUser(_Traffic, User):
    """KServe v2 gRPC with tritonclient.grpc's generated stub, under gevent (the worker calls
    ``grpc.experimental.gevent.init_gevent()`` before any channel exists).

    The ModelInferRequest protobufs are built once per user (raw_input_contents, as tritonclient sends them);
    ``InferenceServerClient.infer`` would rebuild and re-serialise them on every call, which costs more CPU than
    Triton spends on a small model.
    """

    abstract = True
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if self.host is None:  # as Locust's HTTP users: the test stops with this message
            raise StopTest("the gRPC user needs a host (host:port): --host, or the host attribute of the User class")
        self._address = self.host.split("://", 1)[-1].rstrip("/")

    def on_start(self) -> None:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self._channel = grpc.insecure_channel(self._address, options=opts)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        rng = np.random.default_rng(os.getpid() ^ id(self))
        self._requests = [grpc_request(t, make_arrays(t, rng)) for t in self.targets]

    def on_stop(self) -> None:
        self._channel.close()

    @task
    def infer(self) -> None:
        import grpc

        i = self.pick()
        start = time.time()
        t0 = time.perf_counter()
        exc: BaseException | None = None
        try:
            self._stub.ModelInfer(self._requests[i], timeout=self.timeout)
        except grpc.RpcError as e:
            exc = InferHTTPError(f"gRPC {e.code()}: {e.details()}")
        except Exception as e:
            exc = e
        elapsed = (time.perf_counter() - t0) * 1000.0
        self.report(self.targets[i].label, elapsed, start, exc)


def make_shape(shape: Shape, users: int, spawn_rate: float, duration: float, share: float) -> LoadTestShape | None:
    """A LoadTestShape for step/ramp (user counts scaled by this worker's ``share``); None for constant/rate."""
    if shape.kind in ("constant", "rate"):
        return None
    if shape.kind == "step":
        stages: list[tuple[float, int, float]] = []
        t, n = 0.0, 0
        while t < duration:
            n = min(users, n + shape.step_users)
            stages.append((min(shape.step_time, duration - t), n, spawn_rate))
            t += shape.step_time
    else:
        stages = [(s.duration, s.users, s.spawn_rate) for s in shape.stages]

    class _Stages(LoadTestShape):
        def tick(self) -> tuple[int, float] | None:
            run_time = self.get_run_time()
            end = 0.0
            for dur, n, rate in stages:
                end += dur
                if run_time < end:
                    return max(0, round(n * share)), max(rate * share, 0.1)
            return None

    return _Stages()


def configure(
    protocol: str, targets: list[Target], binary: bool, endpoint: str, rps_per_user: float | None, timeout: float
) -> type[User]:
    """A concrete user class for this run (class attributes carry the traffic; Locust instantiates it)."""
    base: type[Any] = {"http": TritonHttpUser, "grpc": TritonGrpcUser, "sagemaker": SageMakerUser}[protocol]
    attrs: dict[str, Any] = {
        "abstract": False,
        "targets": targets,
        "mix": TargetMix([t.weight for t in targets]) if targets else _Traffic.mix,  # empty: filled in at test start
        "binary": binary,
        "endpoint": endpoint,
        "timeout": timeout,
        "network_timeout": timeout,
        "wait_time": constant_throughput(rps_per_user) if rps_per_user else constant(0),
    }
    return type(f"Run{base.__name__}", (base,), attrs)
