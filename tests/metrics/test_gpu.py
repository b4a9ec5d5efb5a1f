"""The NVML collector with a fake NVML: several GPUs, a GPU that fails, no driver, scrape time only."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.app import create_app
from service.config import Settings
from service.gpu import GpuCollector
from tests.conftest import API_KEY
from tests.fakes import FakeEngine

from .fake_nvml import FakeGpu, FakeNvml
from .helpers import CHAT_URL, Scrape, parse, scrape

GIB = 2**30


def collect(collector: GpuCollector) -> Scrape:
    registry = CollectorRegistry()
    registry.register(collector)
    return parse(generate_latest(registry).decode())


def test_every_gpu_is_reported_with_its_readings() -> None:
    nvml = FakeNvml(
        [FakeGpu(), FakeGpu(name=b"NVIDIA L4", utilization=7, used=GIB, total=24 * GIB, temperature=61)]
    )
    out = collect(GpuCollector(nvml))
    assert out.get("loragate_gpu_available") == 1
    h200, l4 = {"gpu": "0", "name": "NVIDIA H200"}, {"gpu": "1", "name": "NVIDIA L4"}  # bytes names decoded
    assert out.get("loragate_gpu_utilization_ratio", **h200) == 0.5
    assert out.get("loragate_gpu_utilization_ratio", **l4) == 0.07
    assert out.get("loragate_gpu_memory_used_bytes", **l4) == GIB
    assert out.get("loragate_gpu_memory_total_bytes", **h200) == 141 * GIB
    assert out.get("loragate_gpu_power_watts", **h200) == 300.0
    assert out.get("loragate_gpu_temperature_celsius", **l4) == 61
    assert out.get("loragate_gpu_scrape_errors_total") == 0
    assert out.types["loragate_gpu_scrape_errors"] == "counter"


def test_a_failing_gpu_is_skipped_and_counted_the_others_reported() -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(lost=True), FakeGpu(name="third")])
    collector = GpuCollector(nvml)
    for scrapes in (1, 2):
        out = collect(collector)
        assert out.get("loragate_gpu_scrape_errors_total") == scrapes
    assert out.get("loragate_gpu_available") == 1
    assert {
        dict(labels)["gpu"] for name, labels in out.samples if name == "loragate_gpu_memory_used_bytes"
    } == {
        "0",
        "2",
    }


def test_an_unsupported_reading_is_left_out_not_an_error() -> None:
    out = collect(GpuCollector(FakeNvml([FakeGpu(power_mw=None)])))
    assert out.get("loragate_gpu_power_watts", gpu="0", name="NVIDIA H200") is None
    assert out.get("loragate_gpu_temperature_celsius", gpu="0", name="NVIDIA H200") == 40
    assert out.get("loragate_gpu_scrape_errors_total") == 0


def test_no_driver_says_so_and_nothing_fails() -> None:
    nvml = FakeNvml([FakeGpu()], driver=False)
    collector = GpuCollector(nvml)
    for _ in range(3):
        out = collect(collector)
        assert out.get("loragate_gpu_available") == 0
        assert out.sum("loragate_gpu_memory_total_bytes") == 0
    assert nvml.calls["nvmlInit"] == 1, "NVML is initialised once, lazily"
    assert nvml.calls["nvmlDeviceGetCount"] == 0


def test_no_gpu_reads_unavailable() -> None:
    out = collect(GpuCollector(FakeNvml([])))
    assert out.get("loragate_gpu_available") == 0


def test_registering_does_not_touch_nvml() -> None:
    nvml = FakeNvml([FakeGpu()])
    registry = CollectorRegistry()
    registry.register(GpuCollector(nvml))
    assert sum(nvml.calls.values()) == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_nvml_is_read_at_scrape_time_only(stream: bool) -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu()])
    engine = FakeEngine()
    app = create_app(Settings(api_key=API_KEY, model_name=engine.model_name), lambda _: engine, nvml=nvml)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            body = {
                "model": engine.model_name,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": stream,
            }
            for _ in range(3):
                response = await client.post(
                    CHAT_URL, json=body, headers={"Authorization": f"Bearer {API_KEY}"}
                )
                assert response.status_code == 200
            assert sum(nvml.calls.values()) == 0, "no NVML call on the request path"
            out = await scrape(client)
    assert nvml.calls["nvmlInit"] == 1 and nvml.calls["nvmlDeviceGetMemoryInfo"] == 2
    assert out.get("loragate_gpu_available") == 1
    assert out.get("loragate_gpu_memory_used_bytes", gpu="1", name="NVIDIA H200") == 10 * GIB
    assert nvml.calls["nvmlShutdown"] == 1, "the app's shutdown releases NVML"
