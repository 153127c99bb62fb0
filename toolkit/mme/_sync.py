"""The manager's records kept true to Triton's index: models loaded behind its back adopted, a restart's losses seen.

Why apart from the manager: this is the one place that trusts Triton's index over the records, and it has three
callers with different rules. A Triton seen dead (``forget_resident``, at once: the first requests after a restart load
what they need instead of being forwarded to a model the fresh Triton lacks); the supervisor's restart and the
manager's start (``resync``: adopt what is READY, drop what vanished; an operation in progress owns its entry and is
left alone); and a periodic read (``adopt_forever``: adoption only, then the budgets trimmed, because a model that
vanished is found by a request, the stub check or the resync, never by an index read that raced with a load of ours).
Every model Triton holds counts against the budgets, however it was loaded (targets a generated router loads itself,
models loaded by hand).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from toolkit.mme._eviction import Evictor
from toolkit.mme._loading import Loader
from toolkit.mme._residency import Residency, State
from toolkit.mme._triton import TritonRepository
from toolkit.mme.policies import EvictionPolicy
from toolkit.server.client import names_in_state

log = logging.getLogger(__name__)


class IndexSync:
    """Adoption and resync against Triton's index for one manager (its records, Triton, evictor, loader, policy)."""

    def __init__(
        self,
        res: Residency,
        triton: TritonRepository,
        evictor: Evictor,
        loader: Loader,
        policy: EvictionPolicy,
        interval: float,
    ) -> None:
        self._res, self._triton, self._evictor, self._loader, self.policy = res, triton, evictor, loader, policy
        self.interval = interval  # seconds between index reads (``adopt_forever``); 0 = never

    def forget_resident(self) -> None:
        """Triton is dead: nothing it held is loaded any more (on the manager's loop)."""
        if self._evictor.gpu is not None:
            self._evictor.gpu.note_unload()
        for e in self._res.entries.values():
            if e.state is State.READY:
                e.state = State.UNLOADED
                self.policy.on_evict(e.name)
        self._res.update_gauges()

    async def resync(self) -> None:
        """Make the records match Triton's index (models loaded behind our back are adopted, vanished ones dropped);
        an operation in progress owns its entry, so it is left alone."""
        ready = names_in_state(await self._triton.index())
        self.adopt(ready)
        for e in self._res.entries.values():
            if e.state is State.READY and e.name not in ready:
                e.state = State.UNLOADED
                self.policy.on_evict(e.name)
                if self._evictor.gpu is not None:
                    self._evictor.gpu.note_unload()
        self._res.update_gauges()
        self._res.notify()

    async def adopt_forever(self) -> None:
        """Every ``interval`` s: adopt, then trim to budget (idle models only)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                if self.adopt(names_in_state(await self._triton.index())):
                    self._res.update_gauges()
                    self._res.notify()
                await self._evictor.trim_to_budget()
            except Exception as exc:  # Triton restarting or unreachable: the next round (or the resync) catches up
                log.debug("index sync skipped: %s", exc)

    def adopt(self, ready: Collection[str]) -> bool:
        """Records for READY models the manager did not load (an operation in progress owns its entry); True when
        there was one."""
        adopted = False
        for name in ready:
            e = self._res.entry(name)
            if e.state is not State.READY and e.future is None:
                e.state = State.READY
                e.size_bytes = e.size_bytes or self._loader.estimate(name)
                if self._evictor.gpu is not None:  # adopted: never measured here, so charged its estimate
                    self._evictor.gpu.sizes.setdefault(name, self._loader.estimate_gpu(name))
                self.policy.on_load(name, self._res.now(), e.size_bytes, 0.0)
                adopted = True
        return adopted
