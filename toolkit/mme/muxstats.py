"""The hosts' counters, folded into the manager's metrics so that multiplexed models report like any other.

Why files: a python-backend model cannot attach parameters to its responses on Triton 2.51 (InferenceResponse
``parameters=`` raises TypeError), and a metric inside each response would change what clients receive. Each host
instance writes ``<root>/.state/<instance>.json`` (changes at most once a second, atomically); the gateway reads them
when metrics or states are asked for. Counters restart at zero when a host restarts (new pid): only increases since
the last reading are added, so ``ModelCacheHit`` and friends stay monotonic across host crashes.

Fresh at scrape: a file's mtime is the moment (``time.time_ns()``) up to which it counts every request. A scrape that
must include the answers a client already has (``wait_fresh(since)``: since = the last answer's time) touches
``<root>/.state/want``; each live host writes or re-stamps its file within ~20 ms, and the scrape waits (bounded: a
dead or stuck host never hangs it) until every live file is stamped at or after ``since``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.mme.footprint import pid_alive
from toolkit.mme.metrics import MMEMetrics
from toolkit.mme.muxspec import HOST_PREFIX

HITS, MISSES, LOADS, FAILURES, LAST_USED = range(5)
WANT = "want"  # the file a reader touches to ask the hosts for fresh state files (the host template's name for it)
FRESH_TIMEOUT_S = 0.5  # the longest a scrape waits for fresh files (a host writes within ~20 ms when alive)
_POLL_S = 0.005
_LIVE_TTL_S = 0.5  # how long ``live()`` trusts its last look at the hosts' pids between readings (a /proc read each)

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    pid: int = 0
    counts: dict[str, list[float]] = field(default_factory=dict)
    evictions: int = 0
    load_seq: int = 0


@dataclass(frozen=True)
class MuxModelState:
    """One multiplexed model, as ``mme list`` and the admin API show it (the fields of ``ModelState``)."""

    name: str
    state: str
    in_flight: int
    size_bytes: int
    last_used: float
    loads: int
    hits: int
    pinned: bool = False
    error: str | None = None
    kind: str = "mux"
    host: str = ""


def read_stamped(root: Path) -> dict[str, tuple[dict[str, Any], int]]:
    """Each host instance's last written state and its stamp (the file's mtime in ns, from the same open file), by
    instance name (unreadable or half-written files skipped)."""
    out: dict[str, tuple[dict[str, Any], int]] = {}
    state_dir = root / ".state"
    if not state_dir.is_dir():
        return out
    for p in sorted(state_dir.glob("*.json")):
        with contextlib.suppress(OSError, ValueError), open(p, "rb") as fh:
            stamp = os.fstat(fh.fileno()).st_mtime_ns
            doc = json.loads(fh.read())
            if isinstance(doc, dict):
                out[p.stem] = (doc, stamp)
    return out


def read_states(root: Path) -> dict[str, dict[str, Any]]:
    """Each host instance's last written state, by instance name."""
    return {k: doc for k, (doc, _) in read_stamped(root).items()}


def _stale(root: Path, since: int) -> list[str]:
    """State files of live hosts stamped before ``since`` (a file's pid is read only when it is stale: the head of
    the JSON, ``{"pid":N,``, which the host writes first)."""
    out = []
    for p in (root / ".state").glob("*.json"):
        with contextlib.suppress(OSError, ValueError), open(p, "rb") as fh:
            if os.fstat(fh.fileno()).st_mtime_ns < since:
                head = fh.read(64).split(b",", 1)[0]
                if head.startswith(b'{"pid":') and pid_alive(int(head[7:])):
                    out.append(p.stem)
    return out


class HostStats:
    """Reads the hosts' state files and adds what changed to ``metrics`` (the manager's own ``MMEMetrics``)."""

    def __init__(self, root: Path, metrics: MMEMetrics) -> None:
        self.root = root
        self.metrics = metrics
        self._seen: dict[str, _Seen] = {}
        self.states: dict[str, dict[str, Any]] = {}
        self.covered = 0  # every request answered before this (time.time_ns()) was in the last reading
        self._live: tuple[float, dict[str, dict[str, Any]]] | None = None  # (monotonic time, ``live()``'s answer)

    def refresh(self) -> None:
        stamped = read_stamped(self.root)
        self.states = {k: doc for k, (doc, _) in stamped.items()}
        for instance, doc in self.states.items():
            self._fold(instance, doc)
        alive = [k for k, doc in self.states.items() if pid_alive(int(doc.get("pid", 0)))]
        self._live = (time.monotonic(), {k: self.states[k] for k in alive})  # ``live()``'s answer, as read now
        self.covered = min((stamped[k][1] for k in alive), default=time.time_ns())

    async def wait_fresh(self, since: int, timeout: float = FRESH_TIMEOUT_S) -> bool:
        """Ask the hosts for state files that count every request answered before ``since`` (``time.time_ns()``)
        and wait for them, ``timeout`` s at most. True when all live hosts' files are that fresh; nothing is asked
        when the last reading already was."""
        if since <= self.covered:
            return True
        want = self.root / ".state" / WANT
        deadline = time.monotonic() + timeout
        try:
            want.touch()
            now = time.time_ns()  # exact: the file system's own clock for touch() is coarse (a jiffy behind)
            os.utime(want, ns=(now, now))
        except OSError:
            return False  # no state directory: no host has started
        while stale := _stale(self.root, since):  # a few stat()s: no thread needed
            if time.monotonic() >= deadline:
                log.warning("model hosts %s did not write fresh counts within %.1f s", ", ".join(stale), timeout)
                return False
            await asyncio.sleep(_POLL_S)
        return True

    def _fold(self, instance: str, doc: dict[str, Any]) -> None:
        m = self.metrics
        pid = int(doc.get("pid", 0))
        seen = self._seen.get(instance)
        if seen is None or seen.pid != pid:  # a new host process: its counters start from zero
            seen = self._seen[instance] = _Seen(pid)
        for name, c in doc.get("counts", {}).items():
            old = seen.counts.get(name, [0, 0, 0, 0, 0.0])
            hits, misses, fails = c[HITS] - old[HITS], c[MISSES] - old[MISSES], c[FAILURES] - old[FAILURES]
            if hits > 0:
                m.cache_hit.inc(hits, model=name)
            if misses > 0:
                m.cache_miss.inc(misses, model=name)
            if hits + misses > 0:
                m.invocations.inc(hits + misses, model=name)
            if fails > 0:
                m.failures.inc(fails, model=name)
            seen.counts[name] = list(c)
        evictions = int(doc.get("evictions", 0))
        if evictions > seen.evictions:
            m.evictions.inc(evictions - seen.evictions)
        seen.evictions = evictions
        seq = int(doc.get("load_seq", 0))
        recent = doc.get("load_seconds", [])
        new = min(seq - seen.load_seq, len(recent))
        for seconds in recent[len(recent) - new :] if new > 0 else []:
            m.loading.observe(float(seconds))
        seen.load_seq = seq

    def live(self) -> dict[str, dict[str, Any]]:
        """States of host processes still running (a killed host's last file is not a resident set): looked at once
        per reading and again after ``_LIVE_TTL_S``, not on every call (``holds`` runs on every request, and a
        /proc read is ~30 µs)."""
        now = time.monotonic()
        if self._live is None or now - self._live[0] > _LIVE_TTL_S:
            self._live = (now, {k: v for k, v in self.states.items() if pid_alive(int(v.get("pid", 0)))})
        return self._live[1]

    def resident(self) -> dict[str, int]:
        """Models resident in a live host now, with their measured bytes (summed over the host's instances that hold
        it: each instance is a process with its own copy)."""
        out: dict[str, int] = {}
        for doc in self.live().values():
            for k, v in doc.get("resident", {}).items():
                out[str(k)] = out.get(str(k), 0) + int(v)
        return out

    def holds(self, name: str) -> bool:
        """``name in resident()`` without building it: the gateway asks this on every request for a multiplexed
        model (whether its wait counts as a cold load), and a host holds thousands of models. As of the last reading
        (a host that died since is seen within ``_LIVE_TTL_S``)."""
        return any(name in doc.get("resident", ()) for doc in self.live().values())

    def hosted(self) -> dict[str, str]:
        """Every model a live host has served since it started -> that host's name."""
        out: dict[str, str] = {}
        for doc in self.live().values():
            host = HOST_PREFIX + str(doc.get("signature", ""))
            out.update(dict.fromkeys(doc.get("counts", {}), host))
        return out

    def model_states(self, hosts: dict[str, str]) -> list[MuxModelState]:
        """One row per model routed to a host (``hosts``: model -> host), resident or not."""
        resident = self.resident()
        counts: dict[str, list[float]] = {}
        for doc in self.live().values():  # a host's instances count apart: hits, misses, loads, failures add up
            for name, c in doc.get("counts", {}).items():
                old = counts.get(name)
                if old is None:
                    counts[name] = list(c)
                else:
                    summed = [old[i] + c[i] for i in (HITS, MISSES, LOADS, FAILURES)]
                    counts[name] = [*summed, max(old[LAST_USED], c[LAST_USED])]
        rows = []
        for name in sorted(hosts):
            c = counts.get(name, [0, 0, 0, 0, 0.0])
            rows.append(
                MuxModelState(
                    name=name,
                    state="READY" if name in resident else "UNLOADED",
                    in_flight=0,
                    size_bytes=resident.get(name, 0),
                    last_used=float(c[LAST_USED]),
                    loads=int(c[LOADS]),
                    hits=int(c[HITS]),
                    host=hosts[name],
                )
            )
        return rows
