"""Find dead python stubs under READY models and reload those models.

Measured on tritonserver 2.51 (python backend): after ``kill -9`` of a model's stub, Triton keeps saying that the
server, the model and its repository index entry are READY, for ever; each inference waits ~1 s and fails with 500
"Stub process '<model>_0_0' is not healthy." (the dead stub stays a zombie under tritonserver). A load of the model is
a no-op (Triton sees nothing changed). An unload followed at once by a load starts a new stub and serves again in
0.2-0.5 s; waiting for the unload to finish first is not an option: once the dead model has been sent a request,
Triton keeps its old version UNLOADING for ever (a leak inside Triton until it restarts, and a zombie stub).

So the manager watches the stubs itself. Each READY model's stub processes are found once (a process scan, in a
thread, after the model is READY: never on the cold path), and from then on only those processes are looked at, every
``interval`` seconds (one /proc read each). A stub gone or a zombie means the model is dead: its entry leaves READY at
once (no more cache hits are counted for it; requests wait for it as for a cold load), it is unloaded through the
evictor (which is told not to wait for Triton to finish that unload) and reloaded through the usual single-flight
load. Before that, one fresh scan tells a dead stub from a model
that was reloaded behind the record's back (a Triton restart, an eviction and reload between two checks): new stubs
of the model replace the record instead of triggering a reload. So does a dead stub whose model *instance* (the
``<model>_<group>_<n>`` argument of the stub's command line) has a live stub again: Triton reloaded the model and
replaced it. Measured under load (a router and an ensemble loading the same step at once): Triton loads a model a
second time right after the first, the scan records the old and the new stub, the old one exits -- and, before this
rule, the manager took that for a death and unloaded a model an ensemble had just been loaded over.

Models without local stubs (ensembles, native backends, a remote Triton) record nothing and are never checked.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil

from toolkit.mme._eviction import Evictor
from toolkit.mme._residency import Entry, Residency, State
from toolkit.mme.footprint import stub_processes
from toolkit.mme.metrics import MMEMetrics

log = logging.getLogger("toolkit.mme.manager")  # the public module's logger: existing log filters keep working


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (``is_running`` also catches a recycled pid)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _dead(procs: list[psutil.Process]) -> bool:
    """Whether any of a model's recorded stubs has died."""
    return not all(_alive(p) for p in procs)


_INSTANCE = re.compile(r".+_\d+_\d+")


def _instance(proc: psutil.Process) -> str | None:
    """The model instance a stub serves (``housing_postprocess_0_0``: the argument after the shared-memory sizes)."""
    info = getattr(proc, "info", None)
    try:
        cmd = info["cmdline"] if isinstance(info, dict) and info.get("cmdline") else proc.cmdline()
    except psutil.Error:
        return None
    return next((arg for arg in reversed(cmd) if _INSTANCE.fullmatch(arg)), None)


def _parents(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The tritonservers the stubs belong to (their parent processes), recorded with them."""
    found = []
    for proc in procs:
        try:
            parent = proc.parent()
        except psutil.Error:
            continue
        if parent is not None:
            found.append(parent)
    return found


class StubWatch:
    """Records each READY model's stubs, checks them every ``interval`` s, and reloads a model whose stub died."""

    def __init__(
        self,
        residency: Residency,
        evictor: Evictor,
        metrics: MMEMetrics,
        *,
        repository: Path,
        interval: float,
        reload: Callable[[str], Awaitable[object]],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self._res = residency
        self._evictor = evictor
        self._metrics = metrics
        self.repository = repository
        self.interval = interval
        self._reload = reload
        self._spawn = spawn
        self._stubs: dict[str, list[psutil.Process]] = {}  # READY model -> its stubs when it was first seen READY
        self._servers: dict[str, list[psutil.Process]] = {}  # READY model -> the tritonserver its stubs belong to
        self._instances: dict[int, str | None] = {}  # recorded stub pid -> the model instance it serves
        self._lock = asyncio.Lock()  # one round at a time: two would heal one model twice

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # one bad round (Triton restarting, a process table oddity) must not end the watch
                log.exception("checking the python stubs failed; trying again in %.1f s", self.interval)

    def watched(self, name: str) -> list[int]:
        """The pids of ``name``'s stubs being watched (empty until the first round after the model became READY:
        a stub that dies before then is only found through ``check_soon``)."""
        return [p.pid for p in self._stubs.get(name, [])]

    def check_soon(self, name: str) -> None:
        """Triton answered a request for ``name`` with "Stub process ... is not healthy": look at it now, not at the
        next tick. This also covers what the periodic round cannot see: a stub that died before its model's stubs
        were first recorded, and a Triton on another host (no local stubs at all)."""
        e = self._res.get(name)
        names = set(e.composing) if e is not None and e.composing else {name}  # an ensemble has no stub of its own
        self._spawn(self.check(names))

    async def check(self, suspects: set[str] | None = None) -> list[str]:
        """One round: record new READY models, look at the recorded stubs, reload the models whose stub died (with
        ``suspects``: only confirm those). Returns the names of the models being reloaded."""
        async with self._lock:
            if suspects is not None:
                return await self._confirm(sorted(suspects))
            ready = {e.name for e in self._ready()}
            for name in list(self._stubs):
                if name not in ready:  # left READY: a later READY period gets a fresh record
                    self._forget(name)
            new = ready - set(self._stubs)
            if new:
                await self._record({n: [] for n in new} | await asyncio.to_thread(stub_processes, self.repository, new))
            watched = {n: procs for n, procs in self._stubs.items() if procs}
            dead = await asyncio.to_thread(lambda: [n for n, procs in watched.items() if _dead(procs)])
            return await self._confirm(dead) if dead else []

    async def _record(self, stubs: dict[str, list[psutil.Process]]) -> None:
        servers = await asyncio.to_thread(lambda: {n: _parents(procs) for n, procs in stubs.items()})
        instances = await asyncio.to_thread(lambda: {p.pid: _instance(p) for ps in stubs.values() for p in ps})
        for pid, instance in instances.items():  # a stub read again after it exited keeps what was read before
            if instance is not None or pid not in self._instances:
                self._instances[pid] = instance
        self._stubs.update(stubs)
        self._servers.update(servers)

    def _forget(self, name: str) -> None:
        for p in self._stubs.get(name, []):
            self._instances.pop(p.pid, None)
        self._stubs.pop(name, None)
        self._servers.pop(name, None)

    async def _confirm(self, suspects: list[str]) -> list[str]:
        """A fresh scan: new stubs of a suspect mean it was reloaded meanwhile (re-record); none new: it is dead --
        unless its tritonserver died as well: a crashed or killed Triton is the supervisor's to restart, and the
        manager hears of it through ``on_triton_down``."""
        live = await asyncio.to_thread(stub_processes, self.repository, suspects)
        servers_gone = await asyncio.to_thread(
            lambda: {n for n in suspects if self._servers.get(n) and not any(map(_alive, self._servers[n]))}
        )
        dead = []
        for name in suspects:
            recorded = {p.pid for p in self._stubs.get(name, [])}
            now = live.get(name, [])
            alive = {p.pid for p in now}
            if alive - recorded:  # stubs not seen before: reloaded meanwhile, or never recorded
                await self._record({name: now})
                continue
            if recorded and recorded <= alive:  # every stub alive: a stale report
                continue
            if now and self._replaced(recorded - alive, now):  # Triton reloaded it: each dead stub has a successor
                self._forget(name)
                await self._record({name: now})
                continue
            e = self._res.get(name)
            if name in servers_gone or e is None or e.state is not State.READY or e.future is not None:
                self._forget(name)
                continue
            self._forget(name)
            dead.append(name)
            log.warning(
                "python stub of model %s died (pid %s) while Triton still calls it READY; unloading and reloading it",
                name, ", ".join(map(str, sorted(recorded - alive))) or "none left",
            )  # fmt: skip
            self._metrics.stub_failures.inc(model=name)
            # UNLOADING from this very step (no await before the state changes): no request counts a hit any more,
            # each waits for the reload as for a cold load.
            await self._evictor.unload_entry(e)
            self._evictor.give_up_unload(e)
            self._spawn(self._reload_now(e.name))
        return dead

    def _replaced(self, dead: set[int], live: list[psutil.Process]) -> bool:
        """Whether every dead stub's model instance is served by a live stub now (Triton never restarts a dead
        stub itself: only a reload of the model starts another one for the same instance)."""
        gone = [self._instances.get(pid) for pid in dead]
        return bool(gone) and None not in gone and set(gone) <= {_instance(p) for p in live}

    async def _reload_now(self, name: str) -> None:
        try:
            await self._reload(name)
        except Exception as exc:  # the entry says FAILED (with the reason) and the next request retries
            log.warning("reloading %s after its stub died failed: %s", name, exc)

    def _ready(self) -> list[Entry]:
        return [e for e in self._res.entries.values() if e.state is State.READY and e.future is None]
