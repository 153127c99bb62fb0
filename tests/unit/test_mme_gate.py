"""The load gate (``toolkit.mme._gate``): at most ``limit`` holders, the rest admitted first come, first served, and a
waiter cancelled at any point never leaks or loses a slot. Pure asyncio: the gate's own logic, no Triton."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from toolkit.mme._gate import TRITON_LOAD_THREADS, LoadGate, default_limit


async def _hold(gate: LoadGate, name: str, started: list[str], release: asyncio.Event) -> None:
    async with gate.slot():
        started.append(name)
        await release.wait()


def test_limit_and_first_come_first_served() -> None:
    async def body() -> None:
        gate = LoadGate(2)
        started: list[str] = []
        events = {n: asyncio.Event() for n in "abcdef"}
        tasks = []
        for n in "abcdef":  # each asks after the previous one is queued
            tasks.append(asyncio.create_task(_hold(gate, n, started, events[n])))
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert started == ["a", "b"] and gate.active == 2 and gate.waiting == 4
        for n, expect in (("b", "abc"), ("a", "abcd"), ("d", "abcde"), ("c", "abcdef")):
            events[n].set()
            await asyncio.sleep(0.01)
            assert "".join(started) == expect
            assert gate.active == 2
        for e in events.values():
            e.set()
        await asyncio.gather(*tasks)
        assert gate.active == 0 and gate.peak == 2 and gate.waiting == 0

    asyncio.run(body())


def test_a_newcomer_does_not_overtake_waiters() -> None:
    """A slot freed while others wait goes to the oldest waiter, not to whoever asks next."""

    async def body() -> None:
        gate = LoadGate(1)
        started: list[str] = []
        ev = {n: asyncio.Event() for n in "abc"}
        ta = asyncio.create_task(_hold(gate, "a", started, ev["a"]))
        await asyncio.sleep(0)
        tb = asyncio.create_task(_hold(gate, "b", started, ev["b"]))
        await asyncio.sleep(0)
        ev["a"].set()
        tc = asyncio.create_task(_hold(gate, "c", started, ev["c"]))  # asks in the same tick as a's release
        await asyncio.sleep(0.01)
        assert started == ["a", "b"]
        ev["b"].set()
        ev["c"].set()
        await asyncio.gather(ta, tb, tc)
        assert started == ["a", "b", "c"] and gate.active == 0

    asyncio.run(body())


@pytest.mark.parametrize("when", ["waiting", "handed_over"])
def test_a_cancelled_waiter_leaks_no_slot(when: str) -> None:
    """Cancelled while queued: it leaves the queue. Cancelled after the slot was handed to it but before it ran: it
    passes the slot on. Either way c gets in and the count of holders stays right."""

    async def body() -> None:
        gate = LoadGate(1)
        started: list[str] = []
        ev = {n: asyncio.Event() for n in "bc"}
        held = gate.slot()
        await held.__aenter__()  # the test holds the one slot
        tb = asyncio.create_task(_hold(gate, "b", started, ev["b"]))
        tc = asyncio.create_task(_hold(gate, "c", started, ev["c"]))
        await asyncio.sleep(0.01)
        assert gate.waiting == 2
        if when == "handed_over":
            await held.__aexit__(None, None, None)  # hands the slot to b (no suspension: b has not run yet)
            tb.cancel()
        else:
            tb.cancel()
            await asyncio.sleep(0)
            await held.__aexit__(None, None, None)
        with pytest.raises(asyncio.CancelledError):
            await tb
        await asyncio.sleep(0.01)
        assert started == ["c"] and gate.active == 1 and gate.waiting == 0
        ev["c"].set()
        await tc
        assert gate.active == 0

    asyncio.run(body())


def test_no_limit_and_the_default() -> None:
    async def body() -> None:
        gate = LoadGate(None)
        started: list[str] = []
        ev = asyncio.Event()
        tasks = [asyncio.create_task(_hold(gate, str(i), started, ev)) for i in range(10)]
        await asyncio.sleep(0.01)
        assert len(started) == 10 and gate.peak == 10
        ev.set()
        await asyncio.gather(*tasks)

    asyncio.run(body())
    assert 1 <= default_limit() <= TRITON_LOAD_THREADS


@pytest.mark.parametrize(("threads", "flag"), [(None, None), (2, None), (4, None), (6, "--model-load-thread-count=6")])
def test_triton_gets_more_load_threads_only_beyond_its_four(
    tmp_path: Path, threads: int | None, flag: str | None
) -> None:
    """``--max-concurrent-loads`` above Triton's 4 load threads raises Triton's count to match; below, the gate does
    the bounding and Triton keeps its threads (a restart's reload and routers' loads use them too)."""
    from toolkit.server.launcher import EmbeddedTriton, ServerOptions

    triton = EmbeddedTriton(ServerOptions(repository=tmp_path, model_load_threads=threads))
    triton._ports = (1, 2, 3)
    got = [a for a in triton.command() if a.startswith("--model-load-thread-count")]
    assert got == ([flag] if flag else [])
