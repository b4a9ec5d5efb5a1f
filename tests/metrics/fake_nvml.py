"""A stand-in for the ``pynvml`` module: the functions GpuCollector calls, and a call log."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace

NOT_SUPPORTED, DRIVER_NOT_LOADED, GPU_IS_LOST = 3, 9, 15


class FakeNvmlError(Exception):
    def __init__(self, value: int):
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    name: str | bytes = "NVIDIA H200"
    utilization: int = 50  # percent
    used: int = 10 * 2**30
    total: int = 141 * 2**30
    power_mw: int | None = 300_000  # None: not supported on this GPU
    temperature: int = 40
    lost: bool = False  # every reading fails with GPU_IS_LOST


class FakeNvml:
    NVMLError = FakeNvmlError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[FakeGpu], *, driver: bool = True):
        self.gpus = gpus
        self.driver = driver
        self.calls: Counter[str] = Counter()

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if not self.driver:
            raise FakeNvmlError(DRIVER_NOT_LOADED)

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1

    def nvmlDeviceGetCount(self) -> int:
        self.calls["nvmlDeviceGetCount"] += 1
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self.calls["nvmlDeviceGetHandleByIndex"] += 1
        return self.gpus[index]

    def _reading(self, gpu: FakeGpu, name: str) -> None:
        self.calls[name] += 1
        if gpu.lost:
            raise FakeNvmlError(GPU_IS_LOST)

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str | bytes:
        self._reading(gpu, "nvmlDeviceGetName")
        return gpu.name

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> SimpleNamespace:
        self._reading(gpu, "nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(used=gpu.used, total=gpu.total, free=gpu.total - gpu.used)

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:
        self._reading(gpu, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=gpu.utilization, memory=0)

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        self._reading(gpu, "nvmlDeviceGetPowerUsage")
        if gpu.power_mw is None:
            raise FakeNvmlError(NOT_SUPPORTED)
        return gpu.power_mw

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        self._reading(gpu, "nvmlDeviceGetTemperature")
        assert sensor == self.NVML_TEMPERATURE_GPU
        return gpu.temperature
