"""The gateway's limits without Triton: the concurrency slot at its exact boundary, and the defaults that are the
limits when nothing is configured (SageMaker's 6 MiB request payload).

The slot is the real ``Admission`` over a real ``RepositoryModels`` whose Triton address is never contacted: nothing
below opens a connection (the provider is only ``open``ed by ``start``), and the slot is taken before any model is
looked at. What needs a model (``admit``/``admit_now`` holding a slot across a real inference, the 429 a client sees,
the body limit at the connection layer) is tested through the real gateway in tests/integration/test_gateway_limits.py.
"""

from __future__ import annotations

import asyncio

import pytest

from toolkit.gateway.admission import NO_TICKET, Admission, Ticket, Use
from toolkit.gateway.auth import ANONYMOUS
from toolkit.gateway.errors import ThrottlingError
from toolkit.gateway.models import RepositoryModels
from toolkit.gateway.options import GatewayOptions, MiB
from toolkit.server.endpoint import TritonEndpoint

NEVER = TritonEndpoint.from_url("http://127.0.0.1:9")  # the discard port; nothing here connects to it


def admission(limit: int) -> Admission:
    return Admission(GatewayOptions(max_concurrency=limit), RepositoryModels(NEVER))


def test_the_default_limits() -> None:
    opts = GatewayOptions()
    assert MiB == 1024 * 1024
    assert opts.max_body_bytes == 6 * 1024 * 1024 == 6_291_456  # SageMaker's real-time payload limit
    assert opts.max_concurrency == 256


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_exactly_the_limit_is_admitted_and_the_next_is_429(limit: int) -> None:
    a = admission(limit)
    for i in range(limit):
        a._slot()
        assert a.inflight == i + 1
    with pytest.raises(ThrottlingError) as e:
        a._slot()
    assert e.value.status == 429 and e.value.code == "ThrottlingException" and f"limit {limit}" in e.value.message
    assert a.inflight == limit  # a refused request holds nothing


def test_a_released_slot_admits_one_more_and_only_one() -> None:
    a = admission(2)
    a._slot()
    a._slot()
    t = Ticket(a, [])
    t.release()
    assert a.inflight == 1
    t.release()  # released once, however often it is called
    assert a.inflight == 1
    a._slot()
    with pytest.raises(ThrottlingError):
        a._slot()


def test_a_ticket_gives_back_its_pins_once_and_its_slot_once() -> None:
    a = admission(3)
    a._slot()
    released: list[str] = []
    t = Ticket(a, [lambda: released.append("m1"), lambda: released.append("m2")])
    t.release()
    t.release()
    assert released == ["m1", "m2"] and a.inflight == 0
    no_slot = Ticket(None, [lambda: released.append("m3")])  # a stream or a load: pins, no slot
    no_slot.release()
    assert released == ["m1", "m2", "m3"] and a.inflight == 0
    NO_TICKET.release()
    assert a.inflight == 0


def test_a_full_gateway_refuses_before_looking_at_the_model() -> None:
    """``admit`` takes the slot before it loads anything: at the limit, the 429 comes without a word to Triton."""
    a = admission(1)
    a._slot()
    with pytest.raises(ThrottlingError):
        asyncio.run(a.admit(ANONYMOUS, "e", "some_model", Use.INVOKE))
    assert a.inflight == 1
    assert asyncio.run(a.admit(ANONYMOUS, "e", "some_model", Use.LOOK)) is NO_TICKET  # readiness takes no slot
    assert a.inflight == 1
