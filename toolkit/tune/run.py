"""``tune(options)``: one tuning run end to end -- Triton (embedded, started once, or external), the search, the
restore of the original configs, the cost, the report and ``--apply``. The CLI command is a thin wrapper of this.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from toolkit.server import TritonAdmin
from toolkit.spec.models import Manifest
from toolkit.tune.cost import resolve_price
from toolkit.tune.measure import PerfAnalyzer, find_perf_analyzer
from toolkit.tune.result import TuneOptions, TuneResult
from toolkit.tune.search import Search, SearchOptions
from toolkit.tune.space import TuneError
from toolkit.tune.target import Target, triton_for

__all__ = ["TuneOptions", "TuneResult", "tune"]


def _manifest(options: TuneOptions) -> Manifest | None:
    if options.manifest is None or not options.manifest.is_file():
        return None
    from toolkit.spec import load_manifest

    return load_manifest(options.manifest)


def tune(options: TuneOptions, progress: Callable[[str], None] | None = None) -> TuneResult:
    """Run the search and return its result (the report and --apply included when asked for)."""
    options.check()
    t0 = time.monotonic()
    manifest = _manifest(options)
    price = resolve_price(options.price_per_hour, manifest, options.instance_type)
    if options.objective == "cost" and price is None:
        raise TuneError("--objective cost needs a price: --price-per-hour, or deploy.prices in the manifest")
    binary = find_perf_analyzer(options.perf_analyzer)
    manifest_path = options.manifest if options.url is None else None
    with triton_for(options.url, manifest_path, options.model, options.grpc_url) as ep:
        target = Target.open(TritonAdmin(ep, timeout=120.0), options.model)
        analyzer = PerfAnalyzer(binary, ep.grpc if options.protocol == "grpc" else ep.http, options.protocol,
                                options.window_ms)  # fmt: skip
        search_options = SearchOptions(
            p99_ms=options.p99_ms, budget_s=options.budget_s, strategy=options.strategy,
            objective=options.objective, repeats=options.repeats, noise_floor=options.noise_floor,
        )  # fmt: skip
        search = Search(target, analyzer, target.spaces(options.space), search_options, progress)
        start_label = search.label(target.start())
        try:
            outcome = search.run()
        finally:
            problems = target.restore()
    wall = time.monotonic() - t0
    result = TuneResult(options, target.models, target.is_ensemble, outcome, start_label, target.start(), price,
                        problems, wall)  # fmt: skip
    if options.apply and result.found and options.manifest is not None:
        from toolkit.tune.apply import apply_settings

        apply_settings(options.manifest, result.changed_settings())
        result.applied = True
    if options.report_dir is not None:
        from toolkit.tune.report import write_report

        write_report(result, options.report_dir)
    return result
