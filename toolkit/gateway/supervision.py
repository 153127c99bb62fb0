"""Restart Triton empty, then re-warm: back to serving in well under 5 s however many models were resident.

The base ``Supervisor`` restarts Triton with every previously loaded model on its command line, and Triton is not
ready until all of them are loaded: with the example set (9 python-backend stubs importing scikit-learn on 2 cores)
that is ~7 s of 503s. Here Triton comes back with nothing loaded and is ready in a fraction of a second; requests
then load what they need through the MME manager (single-flight), while the gateway reloads the previously resident
models in the background, one at a time.
"""

from __future__ import annotations

from toolkit.server.supervisor import Supervisor


class LazyReloadSupervisor(Supervisor):
    """A ``Supervisor`` whose restarts load nothing up front; ``rewarm`` lists what was resident before the crash."""

    rewarm: list[str]

    def _restart(self) -> None:
        self.rewarm = sorted(self.loaded_models())
        with self._lock:
            self._loaded = set()  # the base class passes this set as --load-model on restart
        super()._restart()
