"""Budget checks, victim selection and unload-in-progress accounting for the MME manager.

Triton's unload is asynchronous (a python model lingers ~1 s in UNLOADING), and the two budgets treat that window
differently: for the *count* budget an unloading model no longer counts (Triton will not refuse the next load), for
the *byte* budget its memory counts until Triton reports it gone (its stub process still holds the RAM). A load that
only needs the unloads already under way to finish waits for them instead of evicting more models than necessary.

A GPU budget (``gpu``, a ``GpuMeter`` set once the manager has read the GPUs at start) is a third, independent check
with the byte budget's rules: the GPU bytes charged to each model are reserved at admission and count until Triton
reports the model gone. Every unload is noted on the meter, since it makes a GPU measurement window ambiguous.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from toolkit.mme._residency import Entry, Residency, State
from toolkit.mme._triton import TritonRepository
from toolkit.mme.errors import InsufficientMemoryError, ModelLoadError, NoCapacityError
from toolkit.mme.gpu import GpuMeter
from toolkit.mme.metrics import MMEMetrics
from toolkit.mme.policies import EvictionPolicy
from toolkit.server.client import names_in_state

log = logging.getLogger("toolkit.mme.manager")  # the public module's logger: existing log filters keep working
UNLOAD_GIVE_UP_S = 60.0  # an unload Triton never confirms is treated as done after this long


class Evictor:
    """Keeps the resident set within ``max_models`` / ``memory_budget_bytes`` / the GPU budget by unloading idle,
    unpinned models in the policy's order; a model with requests in flight or pinned by a loaded ensemble is never
    chosen."""

    def __init__(
        self,
        residency: Residency,
        triton: TritonRepository,
        policy: EvictionPolicy,
        metrics: MMEMetrics,
        *,
        max_models: int | None,
        memory_budget_bytes: int | None,
        load_timeout: float,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        on_unloaded: Callable[[Entry], None],
    ) -> None:
        self._res = residency
        self._triton = triton
        self._policy = policy
        self._metrics = metrics
        self.max_models = max_models
        self.memory_budget_bytes = memory_budget_bytes
        self._load_timeout = load_timeout
        self._spawn = spawn
        self._on_unloaded = on_unloaded
        # Serialises admission: two loads must not both see the same free slot.
        self._admit = asyncio.Lock()
        self._unloading: dict[str, tuple[Entry, asyncio.Future[None], float]] = {}
        self._watching = False
        self.gpu: GpuMeter | None = None  # the GPU budget, once read at start

    # ----------------------------------------------------------------------------------------------- budget ---
    def resident_count(self, exclude: str = "") -> int:
        return sum(
            1
            for e in self._res.entries.values()
            if e.name != exclude and (e.state is State.READY or (e.state is State.LOADING and e.reserved))
        )

    def resident_bytes(self, exclude: str = "", *, unloading: bool = True) -> int:
        """Bytes held; ``unloading=False`` is what will be held once the unloads under way finish."""
        held = (State.READY, State.UNLOADING) if unloading else (State.READY,)
        return sum(
            e.size_bytes
            for e in self._res.entries.values()
            if e.name != exclude and (e.state in held or (e.state is State.LOADING and e.reserved))
        )

    def resident_gpu_bytes(self, exclude: str = "", *, unloading: bool = True) -> int:
        """GPU bytes charged to held models (0 without a GPU budget); ``unloading`` as in ``resident_bytes``."""
        if self.gpu is None:
            return 0
        held = (State.READY, State.UNLOADING) if unloading else (State.READY,)
        sizes = self.gpu.sizes
        return sum(
            sizes.get(e.name, 0)
            for e in self._res.entries.values()
            if e.name != exclude and (e.state in held or (e.state is State.LOADING and e.reserved))
        )

    def fits(self, e: Entry, size: int, *, unloading: bool = True, gpu_size: int = 0) -> bool:
        if self.max_models is not None and self.resident_count(e.name) + 1 > self.max_models:
            return False
        budget = self.memory_budget_bytes
        if budget is not None and self.resident_bytes(e.name, unloading=unloading) + size > budget:
            return False
        gpu = self.gpu
        return gpu is None or self.resident_gpu_bytes(e.name, unloading=unloading) + gpu_size <= gpu.budget_bytes

    def within_budgets(self, *, unloading: bool = True) -> bool:
        """Whether what is held (``unloading=False``: once the unloads under way finish) fits the count, byte and GPU
        budgets (the count matters once models loaded behind the manager's back are adopted)."""
        if self.max_models is not None and self.resident_count() > self.max_models:
            return False
        budget = self.memory_budget_bytes
        if budget is not None and self.resident_bytes(unloading=unloading) > budget:
            return False
        return self.gpu is None or self.resident_gpu_bytes(unloading=unloading) <= self.gpu.budget_bytes

    async def make_room(self, e: Entry, size: int, gpu_size: int = 0) -> None:
        """Evict until ``e`` (needing ``size`` bytes, and ``gpu_size`` GPU bytes) fits, then reserve its place;
        NoCapacityError after the load timeout when everything resident stays busy or pinned."""
        if self.memory_budget_bytes is not None and size > self.memory_budget_bytes:
            raise InsufficientMemoryError(
                e.name,
                f"needs {size} bytes (its measured or estimated footprint), more than the whole memory budget of "
                f"{self.memory_budget_bytes} bytes: raise --memory-budget, or declare its real size "
                "(tritonctl.memory_bytes in config.pbtxt)",
            )
        if self.gpu is not None and gpu_size > self.gpu.budget_bytes:
            raise InsufficientMemoryError(
                e.name,
                f"needs {gpu_size} GPU bytes, more than the whole GPU budget of {self.gpu.budget_bytes} bytes: raise "
                "--gpu-memory-fraction, or declare its real size (tritonctl.gpu_memory_bytes in config.pbtxt)",
            )
        deadline = time.monotonic() + self._load_timeout
        async with self._admit:
            await self._evict_until(
                lambda: self.fits(e, size, gpu_size=gpu_size),
                deadline,
                e,
                eventually=lambda: self.fits(e, size, unloading=False, gpu_size=gpu_size),
            )
            if self.gpu is not None:
                self.gpu.sizes[e.name] = gpu_size
            e.reserved = True

    async def trim_to_budget(self) -> None:
        """Footprints were re-measured and may exceed a budget now: evict idle models, never wait for busy ones."""
        if not self.within_budgets():
            async with self._admit:
                # Stop once the unloads under way suffice: a model still UNLOADING is not a reason to evict more.
                await self._evict_until(self.within_budgets, eventually=lambda: self.within_budgets(unloading=False))

    async def _evict_until(
        self,
        ok: Callable[[], bool],
        deadline: float | None = None,
        e: Entry | None = None,
        eventually: Callable[[], bool] | None = None,
    ) -> None:
        """Evict idle, unpinned READY models (policy order) until ``ok()``; wait for busy ones up to ``deadline``.

        ``eventually()`` says whether the unloads already under way will be enough: then wait, evict no more."""
        entries = self._res.entries
        while not ok():
            idle = [x.name for x in entries.values() if x.state is State.READY and x.in_flight == 0]
            candidates = [n for n in idle if not entries[n].pinned_by and (e is None or n != e.name)]
            if candidates and not (eventually is not None and eventually()):
                victim = self._policy.choose_victim(candidates, self._res.now())
                self._metrics.evictions.inc()
                await self.unload_entry(entries[victim])
                continue
            if deadline is None:
                return
            if e is not None and not candidates:
                self._refuse_if_stuck(e)
            unloading = any(x.state is State.UNLOADING for x in entries.values())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                busy = sorted(x.name for x in entries.values() if x.state is State.READY)
                raise NoCapacityError(
                    e.name if e else "?",
                    self._load_timeout,
                    f"budget full and nothing evictable (resident, busy or pinned: {busy}"
                    f"{'; waiting for unloads' if unloading else ''})",
                )
            await self._res.wait_change(remaining)

    def _refuse_if_stuck(self, e: Entry) -> None:
        """InsufficientMemoryError when waiting cannot make room for ``e``: nothing evictable, and nothing busy,
        loading or unloading whose end could free a place (every resident model pinned by a loaded ensemble, by ``e``
        itself -- an ensemble whose steps fill the budget -- or by an ensemble loading ``e`` as a step). A busy model
        may go idle, another load may end: then the load waits, up to the load timeout (429 then)."""
        entries = self._res.entries.values()
        for x in entries:
            if x is e or (x.state is State.LOADING and e.name in x.composing):
                continue  # an ensemble waiting for ``e`` frees nothing until ``e`` is in
            if x.state in (State.LOADING, State.UNLOADING) or (x.state is State.READY and x.in_flight):
                return
        pinned = sorted(x.name for x in entries if x.state is State.READY and x.pinned_by)
        limits = [f"--max-models {self.max_models}"] if self.max_models is not None else []
        if self.memory_budget_bytes is not None:
            limits.append(f"--memory-budget {self.memory_budget_bytes} bytes")
        if self.gpu is not None:
            limits.append(f"GPU budget {self.gpu.budget_bytes} bytes")
        shown = ", ".join(pinned[:5]) + (" ..." if len(pinned) > 5 else "")
        raise InsufficientMemoryError(
            e.name,
            f"cannot fit within {' and '.join(limits) or 'the budget'}: every resident model is pinned by an ensemble "
            f"({shown}), loaded or loading; raise the budget, or unload an ensemble",
        )

    # ---------------------------------------------------------------------------------------------- unload ---
    async def unload_entry(self, e: Entry) -> None:
        """Ask Triton to unload; the entry is UNLOADING (with a Future) until Triton reports the model gone."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        e.state, e.future = State.UNLOADING, fut
        if self.gpu is not None:
            self.gpu.note_unload()
        self._policy.on_evict(e.name)
        self._res.unpin_composing(e)
        t0 = time.monotonic()
        try:
            await self._triton.unload(e.name)
        except ModelLoadError as exc:
            log.warning("unload of %s failed: %s", e.name, exc)
        self._res.update_gauges()
        self._unloading[e.name] = (e, fut, t0)
        if not self._watching:
            self._watching = True
            self._spawn(self._watch_unloads())

    async def _watch_unloads(self) -> None:
        """One poller for every model Triton is still unloading (not one per model): finish those gone."""
        try:
            while self._unloading:
                try:
                    index = await self._triton.index()
                    still = names_in_state(index, ("READY", "UNLOADING"))
                except ModelLoadError:
                    still = set()  # Triton is gone: so are its models
                now = time.monotonic()
                for name, (e, fut, t0) in list(self._unloading.items()):
                    if name not in still or now - t0 > UNLOAD_GIVE_UP_S:
                        del self._unloading[name]
                        self._metrics.unloading.observe(now - t0)
                        self._finish_unload(e, fut)
                if self._unloading:
                    await asyncio.sleep(0.025)
        finally:
            self._watching = False

    def _finish_unload(self, e: Entry, fut: asyncio.Future[None]) -> None:
        e.state, e.future = State.UNLOADED, None
        if self.gpu is not None:
            self.gpu.note_unload()
        self._on_unloaded(e)
        if not fut.done():
            fut.set_result(None)
        self._res.update_gauges()
        self._res.notify()

    def give_up_unload(self, e: Entry) -> None:
        """Count ``e`` as unloaded now instead of waiting for Triton to report it gone. For a model whose python stub
        died: once such a model has been sent a request, Triton keeps its old version UNLOADING for ever (measured on
        2.51), while a load of the same model right away works and serves."""
        item = self._unloading.pop(e.name, None)
        if item is not None:
            self._metrics.unloading.observe(time.monotonic() - item[2])
            self._finish_unload(e, item[1])

    def finish_all(self) -> None:
        """On close: release every unload waiter now (nobody will poll Triton any more)."""
        for e, fut, _t0 in list(self._unloading.values()):
            self._finish_unload(e, fut)
        self._unloading.clear()
