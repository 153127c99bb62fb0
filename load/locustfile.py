"""Plain-Locust entry point to the same users and scenarios, for the web UI or a distributed Locust you run yourself.

    TRITONCTL_SCENARIO=mixed locust -f load/locustfile.py --host http://127.0.0.1:8000
    TRITONCTL_SCENARIO=single_model TRITONCTL_PROTOCOL=grpc locust -f load/locustfile.py --host 127.0.0.1:8001 \
        --headless -u 8 -r 8 -t 30s

Here Locust's own statistics are used (whole-millisecond buckets); ``tritonctl loadtest`` runs the same users with
sub-millisecond histograms, server-side breakdown and the HTML report. Targets whose inputs the scenario leaves out
are resolved from the model metadata at test start (``TRITONCTL_TRITON_URL``, default: the host for http).
"""

from __future__ import annotations

import os
from typing import Any

from locust import events

from toolkit.loadtest.runner import RunOptions, resolve_targets
from toolkit.loadtest.scenario import TargetMix, load_scenario
from toolkit.loadtest.users import configure

SCENARIO = load_scenario(os.environ.get("TRITONCTL_SCENARIO", "single_model"))
PROTOCOL = os.environ.get("TRITONCTL_PROTOCOL", SCENARIO.protocol)
# The scenario's traffic (the only User class here: Locust runs every concrete User it finds in the module);
# targets are filled in at test start, because resolving them needs the host.
TritonUser = configure(
    PROTOCOL, [], SCENARIO.encoding == "binary", os.environ.get("TRITONCTL_ENDPOINT", ""), None, SCENARIO.timeout
)


@events.test_start.add_listener
def _resolve(environment: Any, **_: Any) -> None:
    opts = RunOptions(
        scenario=SCENARIO,
        target=environment.host or "",
        protocol=PROTOCOL,
        triton_url=os.environ.get("TRITONCTL_TRITON_URL"),
    )
    targets = resolve_targets(opts)
    TritonUser.targets = targets
    TritonUser.mix = TargetMix([t.weight for t in targets])
