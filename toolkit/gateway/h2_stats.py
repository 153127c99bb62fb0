"""A gRPC call through the frame-forwarding front (``h2_front``), counted and timed as an HTTP request is.

Why a module of its own: the front forwards frames and never holds a call as an object of the metrics path; what a
call needs for its one ``RequestStats.record`` is kept on its ``Stream`` as it goes (start time, first message sent
to Triton, Triton's answer starting, the admitted model, the cold-load wait, the status) and turned into a record
here, once, when the call ends (``H2Connection.end``). The rules for labels and timing are those of the HTTP wing
(``telemetry``), with gRPC's own status as ``code``:

* ``code``: Triton's ``grpc-status`` (its trailers, decoded by ``TritonReader`` with ``h2_status``), the gateway's
  refusal, CANCELLED when the client reset the call or its connection closed first, UNKNOWN when Triton ended it
  without trailers.
* timed: ``ModelInfer`` (request latency from the call's HEADERS to its end; upstream latency from its message
  going to Triton to Triton's response HEADERS), as HTTP times invocations only. ``ModelStreamInfer`` is counted
  once per call (label: its first message's model) and not timed: its length is the client's choice, not a latency.
* cold-load wait: the time admission waited for a load (``h2_policy``), for any call that waited.
* model label: the admitted model; a name the provider does not know (a refused call, a readiness probe) is ``""``.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from toolkit.gateway.admission import KSERVE_ENDPOINT
from toolkit.gateway.grpc_service import STREAM
from toolkit.gateway.h2_status import CANCELLED, UNSET
from toolkit.gateway.telemetry import GRPC_API

if TYPE_CHECKING:
    from toolkit.gateway.core import GatewayCore
    from toolkit.gateway.h2_frames import Stream

ADMITTED = frozenset(("ModelInfer", STREAM, "ModelMetadata", "ModelConfig"))  # answered OK: their model is known


def record_call(core: GatewayCore, s: Stream) -> None:
    """The call is over: one ``RequestStats`` update (once, whichever way it ended).

    A warm ``ModelInfer`` answered OK takes ``RequestStats.hot``, as the HTTP hot path does (this function then
    measured ~700 instructions less under callgrind than through ``record``); every other call ``record``."""
    s.recorded = True
    stats, code, t_up = core.stats, s.code, s.t_up
    if not code and s.cold is None and s.method == "ModelInfer" and s.t_answer > t_up > 0:
        key = (GRPC_API, KSERVE_ENDPOINT, s.model, 0)
        took, up = perf_counter() - s.t0, s.t_answer - t_up
        stats.hot(key, took, up)
        if stats.access is not None:
            stats.log(key, took, up, None, s.principal.name, s.trace)
        return
    if code == UNSET:
        code = CANCELLED
    model = s.model
    if model and (code or s.method not in ADMITTED) and not core.models.knows(model):
        model = ""  # label values stay bounded: no client-made names
    seconds: float | None = None
    upstream: float | None = None
    if s.method == "ModelInfer":
        seconds = perf_counter() - s.t0
        if t_up and s.t_answer > t_up:
            upstream = s.t_answer - t_up
    stats.record(GRPC_API, KSERVE_ENDPOINT, model, code, seconds, upstream, s.cold, s.principal.name, s.trace)
