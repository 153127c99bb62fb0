"""The project's benchmarks: ``make bench`` runs them all (``python -m bench [NAME ...]``), each also on its own.

Not part of the wheel: benchmarks import ``toolkit``, never the other way round. Run from the checkout's root (the
pages they write go to ``docs/benchmarks/``).
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity), which is what a benchmark's processes share."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
