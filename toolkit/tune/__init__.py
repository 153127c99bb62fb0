"""``tritonctl tune``: find the serving config (instance count, max batch size, dynamic batching, concurrency) that
meets a p99 target at the highest throughput or lowest cost, on the embedded Triton or an external one, with configs
swapped through the repository API's config override (no restart). See docs/tune.md.

Layered above server/repository/mme (it drives Triton, generates repositories, reuses the MME simulator) and below
the CLI. ``run.tune`` is the entry point; ``search`` the strategies; ``space`` the configs; ``target`` the models on
a Triton; ``measure`` perf_analyzer; ``cost``, ``report`` and ``apply`` the outputs; ``mme_plan`` the multi-model
endpoint's sizing.
"""
