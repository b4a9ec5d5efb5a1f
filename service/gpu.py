"""GPU usage through NVML (``nvidia-ml-py``'s ``pynvml``), sampled when Prometheus scrapes.

Nothing here runs on the request path: :class:`GpuCollector` is registered on the app's metrics
registry and reads NVML only from ``collect()``. NVML is initialised once, on the first scrape.

- No driver, no library or no GPU: ``loragate_gpu_available 0`` and nothing else fails.
- Per GPU (``gpu`` = index, ``name`` = the product name): utilisation (0..1), memory used and
  total (bytes), power (watts) and temperature (Celsius). A reading a GPU does not support is
  left out; a GPU whose reading fails otherwise is skipped for this scrape and counted in
  ``loragate_gpu_scrape_errors_total``, and the others are still reported.

Tests pass a fake module with the same functions (``nvml=``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED
GPU_LABELS = ("gpu", "name")
_GAUGES = {
    "utilization_ratio": "GPU utilisation over the last sample period (0..1).",
    "memory_used_bytes": "GPU memory in use.",
    "memory_total_bytes": "GPU memory in all.",
    "power_watts": "GPU power draw.",
    "temperature_celsius": "GPU core temperature.",
}


class GpuCollector(Collector):
    def __init__(self, nvml: Any = None):
        self._nvml = nvml  # None: import pynvml on the first scrape
        self._ready: bool | None = None  # None: not tried yet
        self._errors = 0
        self._lock = threading.Lock()  # scrapes may overlap; NVML is initialised once

    def describe(self) -> Iterator[Metric]:
        """The families without samples: registering must not touch NVML."""
        available, gauges, errors = _families()
        return iter([available, *gauges.values(), errors])

    def collect(self) -> Iterator[Metric]:
        available, gauges, errors = _families()
        with self._lock:
            if self._init():
                self._sample(available, gauges)
            else:
                available.add_metric([], 0)
            errors.add_metric([], self._errors)
        return iter([available, *gauges.values(), errors])

    def close(self) -> None:
        with self._lock:
            if self._ready:
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError as exc:
                    log.warning("nvmlShutdown failed: %s", exc)
            self._ready = None

    def _init(self) -> bool:
        if self._ready is None:
            try:
                if self._nvml is None:
                    import pynvml

                    self._nvml = pynvml
                self._nvml.nvmlInit()
                self._ready = True
            except Exception as exc:  # ImportError, NVMLError (no library, no driver), OSError
                log.info("no GPU metrics: NVML is not available (%s)", exc)
                self._ready = False
        return self._ready

    def _sample(self, available: GaugeMetricFamily, gauges: dict[str, GaugeMetricFamily]) -> None:
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            log.warning("NVML cannot count GPUs: %s", exc)
            self._errors += 1
            count = 0
        available.add_metric([], 1 if count else 0)
        for index in range(count):
            try:
                readings = self._read(index)
            except nvml.NVMLError as exc:
                log.warning("NVML failed on GPU %d, skipped: %s", index, exc)
                self._errors += 1
                continue
            name = readings.pop("name")
            for key, value in readings.items():
                if value is not None:
                    gauges[key].add_metric([str(index), str(name)], float(value))

    def _read(self, index: int) -> dict[str, Any]:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = self._optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
        power = self._optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000)  # milliwatts
        temperature = self._optional(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        return {
            "name": name.decode() if isinstance(name, bytes) else name,
            "utilization_ratio": utilization,
            "memory_used_bytes": memory.used,
            "memory_total_bytes": memory.total,
            "power_watts": power,
            "temperature_celsius": temperature,
        }

    def _optional(self, read: Callable[[], float]) -> float | None:
        """A reading, or None where this GPU does not support it; other NVML errors propagate."""
        try:
            return read()
        except self._nvml.NVMLError as exc:
            if getattr(exc, "value", None) == NOT_SUPPORTED:
                return None
            raise


def _families() -> tuple[GaugeMetricFamily, dict[str, GaugeMetricFamily], CounterMetricFamily]:
    available = GaugeMetricFamily("loragate_gpu_available", "Whether NVML sees a GPU (1/0).")
    gauges = {
        key: GaugeMetricFamily(f"loragate_gpu_{key}", text, labels=GPU_LABELS)
        for key, text in _GAUGES.items()
    }
    errors = CounterMetricFamily("loragate_gpu_scrape_errors", "GPUs skipped because NVML failed.")
    return available, gauges, errors
