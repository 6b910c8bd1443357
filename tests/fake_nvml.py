"""A scripted stand-in for the ``pynvml`` module (nvidia-ml-py) so telemetry is tested without a GPU.

``FakeNvml(...)`` instances are passed as ``nvml=``; they expose the functions,
constants and exception classes telemetry uses, with the same units as NVML
(bytes, percent, milliwatts, millijoules, degrees C, MHz). Each metric of a
``FakeGpu`` is a function of seconds since ``FakeNvml.restart_clock()``; a
metric set to None answers ``NVMLError_NotSupported`` like an old GPU does,
and a script may raise any NVMLError itself to simulate a flaky read.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_UNKNOWN = 999
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like pynvml: carries the NVML return code in ``value``."""

    def __init__(self, value: int = NVML_ERROR_UNKNOWN) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


def _error_class(name: str, code: int) -> type[NVMLError]:
    def __init__(self: NVMLError) -> None:
        NVMLError.__init__(self, code)

    return type(name, (NVMLError,), {"__init__": __init__})


NVMLError_Uninitialized = _error_class("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _error_class("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _error_class("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_DriverNotLoaded = _error_class("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _error_class("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_FunctionNotFound = _error_class("NVMLError_FunctionNotFound",
                                          NVML_ERROR_FUNCTION_NOT_FOUND)
NVMLError_Unknown = _error_class("NVMLError_Unknown", NVML_ERROR_UNKNOWN)

Script = Callable[[float], float]


def const(value: float) -> Script:
    return lambda _t: value


@dataclass
class FakeGpu:
    """One scripted device; None for a metric means the GPU does not support it."""

    name: str | bytes = "NVIDIA Fake A100"
    uuid: str | bytes = "GPU-00000000-fake"
    memory_total_mb: float = 40960.0
    mem_used_mb: Script | None = const(1024.0)
    util_pct: Script | None = const(50.0)
    power_w: Script | None = const(100.0)
    energy_mj: Script | None = None
    temp_c: Script | None = const(60.0)
    sm_clock_mhz: Script | None = const(1410.0)


class FakeNvml:
    """Module-like object: ``FakeNvml(gpus=[...]).nvmlInit()`` etc., with call counters."""

    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_InvalidArgument = NVMLError_InvalidArgument
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    NVMLError_Unknown = NVMLError_Unknown
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_FUNCTION_NOT_FOUND = NVML_ERROR_FUNCTION_NOT_FOUND
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = NVML_CLOCK_SM

    def __init__(self, gpus: list[FakeGpu] | None = None, *,
                 init_error: type[NVMLError] | None = None,
                 driver: str | bytes = "550.54.15") -> None:
        self.gpus = [FakeGpu()] if gpus is None else gpus
        self.init_error = init_error
        self.driver = driver
        self.refcount = 0  # nvmlInit minus nvmlShutdown, like pynvml's own refcount
        self.calls: Counter[str] = Counter()
        self.restart_clock()

    def restart_clock(self) -> None:
        """Make t=0 of every script now."""
        self._t0_ns = time.perf_counter_ns()

    def elapsed_s(self) -> float:
        return (time.perf_counter_ns() - self._t0_ns) / 1e9

    def _metric(self, handle: FakeGpu, name: str) -> float:
        self.calls[name] += 1
        if self.refcount <= 0:
            raise NVMLError_Uninitialized()
        script = getattr(handle, name)
        if script is None:
            raise NVMLError_NotSupported()
        return script(self.elapsed_s())

    # --- the pynvml functions telemetry calls -------------------------------------------
    def nvmlInit(self) -> None:
        self.calls["init"] += 1
        if self.init_error is not None:
            raise self.init_error()
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self.calls["shutdown"] += 1
        if self.refcount <= 0:
            raise NVMLError_Uninitialized()
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if not 0 <= index < len(self.gpus):
            raise NVMLError_InvalidArgument()
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str | bytes:
        return handle.name

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str | bytes:
        return handle.uuid

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> SimpleNamespace:
        used = self._metric(handle, "mem_used_mb") * 2**20
        total = handle.memory_total_mb * 2**20
        return SimpleNamespace(total=int(total), used=int(used), free=int(total - used))

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> SimpleNamespace:
        return SimpleNamespace(gpu=int(round(self._metric(handle, "util_pct"))), memory=0)

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        return int(round(self._metric(handle, "power_w") * 1000.0))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        return int(round(self._metric(handle, "energy_mj")))

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:
        assert sensor == NVML_TEMPERATURE_GPU
        return int(round(self._metric(handle, "temp_c")))

    def nvmlDeviceGetClockInfo(self, handle: FakeGpu, clock_type: int) -> int:
        assert clock_type == NVML_CLOCK_SM
        return int(round(self._metric(handle, "sm_clock_mhz")))
