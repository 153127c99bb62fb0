"""The MME's GPU pieces that need no server: the parser of Triton's ``nv_gpu_memory_*`` gauges, on text in Triton's
exposition format, and the GPU meter's measurement window (eviction under a GPU budget, through a real manager and a
real Triton, is tests/integration/test_mme_gpu.py)."""

from __future__ import annotations

import asyncio

import pytest

from toolkit.mme.gpu import GpuMeter, GpuReading, GpuUnavailableError, gpu_budget_bytes, parse_gpu_memory

# The shape of Triton's GPU gauges, as printed by `curl localhost:8002/metrics` on a GPU Triton (one gauge per GPU,
# labelled gpu_uuid, HELP/TYPE lines, values with six decimals). Source: a Triton metrics dump quoted in
# gitlab.com/gitlab-org/modelops/applied-ml/code-suggestions/ai-assist/-/issues/123, and the metric table of
# Triton's docs/metrics.md ("GPU Total Memory" / "GPU Used Memory", per GPU). The second GPU uses the exponent form
# other Prometheus client versions print; the nv_inference line checks that other families are ignored.
TRITON_GPU_METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="densenet_onnx",version="1"} 3.000000
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-c06bbf33-c250-ca45-579b-19134b518844"} 0.000000
# HELP nv_gpu_memory_total_bytes GPU total memory, in bytes
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-c06bbf33-c250-ca45-579b-19134b518844"} 42949672960.000000
nv_gpu_memory_total_bytes{gpu_uuid="GPU-0f7218e4-bc2a-1777-8b0c-06612b7f338e"} 8.589934592e+10
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-c06bbf33-c250-ca45-579b-19134b518844"} 33763098624.000000
nv_gpu_memory_used_bytes{gpu_uuid="GPU-0f7218e4-bc2a-1777-8b0c-06612b7f338e"} 1048576
# HELP nv_cpu_memory_used_bytes CPU used memory (RAM), in bytes
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 0
"""


def test_parse_triton_gpu_metrics_text() -> None:
    readings = parse_gpu_memory(TRITON_GPU_METRICS)
    assert readings == {
        "GPU-0f7218e4-bc2a-1777-8b0c-06612b7f338e": GpuReading(1048576, 85899345920),
        "GPU-c06bbf33-c250-ca45-579b-19134b518844": GpuReading(33763098624, 42949672960),
    }
    assert gpu_budget_bytes(0.5, readings) == (42949672960 + 85899345920) // 2
    assert parse_gpu_memory("# TYPE nv_cpu_memory_used_bytes gauge\nnv_cpu_memory_used_bytes 0\n") == {}
    # A GPU with only one of the two gauges cannot be budgeted: left out.
    half = "\n".join(line for line in TRITON_GPU_METRICS.splitlines() if "0f7218e4" not in line or "used" in line)
    assert set(parse_gpu_memory(half)) == {"GPU-c06bbf33-c250-ca45-579b-19134b518844"}
    with pytest.raises(GpuUnavailableError):
        gpu_budget_bytes(0.5, {})


def test_measurement_window_is_serialised_and_an_unload_makes_it_ambiguous() -> None:
    class Device:
        source, settle_s = "test", 0.01

        def __init__(self) -> None:
            self.used = 100

        def read(self) -> dict[str, GpuReading]:
            return {"g": GpuReading(self.used, 1000)}

    async def body() -> None:
        dev = Device()
        meter = GpuMeter(dev, 500, 1000)
        w = await meter.begin("a")
        second = asyncio.ensure_future(meter.begin("b"))
        await asyncio.sleep(0.05)
        assert not second.done()  # one window at a time
        dev.used += 40
        assert await meter.finish(w) == 40 and meter.measured == {"a": 40}
        wb = await second
        dev.used += 70
        meter.note_unload()  # an unload inside the window: the delta is not b's alone
        assert await meter.finish(wb) is None and "b" not in meter.measured and meter.discarded == 1

    asyncio.run(body())
