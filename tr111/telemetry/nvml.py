"""Thin NVML access for GPU telemetry: load the module, probe a device, read one sample.

Kept apart from the sampler so the timing/threading logic in ``telemetry.py``
never touches NVML details, and so a fake ``pynvml`` module can stand in for the
real one (``nvml=`` is injectable everywhere).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

_MIB = 1024.0 * 1024.0

# NVML return codes (same values in every nvidia-ml-py release); used when a
# module does not expose the constant, e.g. a minimal fake.
_ERROR_NOT_SUPPORTED = 3
_ERROR_FUNCTION_NOT_FOUND = 13
_TEMPERATURE_GPU = 0
_CLOCK_SM = 1


@dataclass(frozen=True)
class GpuInfo:
    """What identifies the GPU a run measured; stored with every call and in the report."""

    index: int
    name: str
    driver: str
    uuid: str | None
    memory_total_mb: float  # MiB
    has_energy_counter: bool


class Sample(NamedTuple):
    """One poll of the device; a field is None when NVML could not report it."""

    ts_ns: int  # time.perf_counter_ns() when the poll began
    mem_used_mb: float | None
    util_pct: float | None
    power_w: float | None
    energy_mj: float | None  # total-energy counter, millijoules since driver load
    temp_c: float | None
    sm_clock_mhz: float | None


def load_nvml(nvml: Any = None) -> Any:
    """The injected module, else ``import pynvml`` (raises ImportError when absent)."""
    if nvml is not None:
        return nvml
    import pynvml  # noqa: PLC0415 - optional dependency, imported only when telemetry is wanted

    return pynvml


def describe_error(exc: BaseException) -> str:
    """A one-line reason such as 'NVML Shared Library Not Found (NVMLError_LibraryNotFound)'."""
    try:
        text = str(exc)
    except Exception:  # pynvml's __str__ itself calls into NVML and can fail
        text = repr(exc)
    return f"{text} ({type(exc).__name__})"


def _text(value: Any) -> str:
    """NVML strings are bytes in some nvidia-ml-py releases and str in others."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class NvmlDevice:
    """One GPU handle plus per-metric readers that degrade to None instead of raising.

    A metric that answers NotSupported / FunctionNotFound (or that this pynvml
    lacks) is never asked again, saving an exception per poll; other errors
    give None for that poll only.
    """

    def __init__(self, nvml: Any, index: int) -> None:
        self.nvml = nvml
        self.index = index
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self._unsupported_codes = {
            getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", _ERROR_NOT_SUPPORTED),
            getattr(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", _ERROR_FUNCTION_NOT_FOUND),
        }
        temp_sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", _TEMPERATURE_GPU)
        sm_clock = getattr(nvml, "NVML_CLOCK_SM", _CLOCK_SM)
        handle = self.handle
        # name -> zero-arg reader returning the value in the unit Sample stores
        self._readers: dict[str, Callable[[], float] | None] = {
            "mem_used_mb": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used / _MIB,
            "util_pct": lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            "energy_mj": lambda: float(nvml.nvmlDeviceGetTotalEnergyConsumption(handle)),
            "temp_c": lambda: float(nvml.nvmlDeviceGetTemperature(handle, temp_sensor)),
            "sm_clock_mhz": lambda: float(nvml.nvmlDeviceGetClockInfo(handle, sm_clock)),
        }

    def is_unsupported(self, exc: BaseException) -> bool:
        """True for errors that mean 'this GPU never reports that metric'."""
        not_supported = getattr(self.nvml, "NVMLError_NotSupported", None)
        if not_supported is not None and isinstance(exc, not_supported):
            return True
        return getattr(exc, "value", None) in self._unsupported_codes

    def _read(self, name: str) -> float | None:
        reader = self._readers[name]
        if reader is None:
            return None
        try:
            return reader()
        except Exception as exc:  # NVMLError mostly; AttributeError: pynvml too old for it
            if isinstance(exc, AttributeError) or self.is_unsupported(exc):
                self._readers[name] = None
            return None

    def supports(self, name: str) -> bool:
        """Whether the metric is still being read (False once it answered NotSupported)."""
        return self._readers[name] is not None

    def sample(self) -> Sample:
        """Poll every metric once; never raises NVMLError."""
        read = self._read
        return Sample(
            time.perf_counter_ns(),
            read("mem_used_mb"),
            read("util_pct"),
            read("power_w"),
            read("energy_mj"),
            read("temp_c"),
            read("sm_clock_mhz"),
        )

    def info(self) -> GpuInfo:
        """Identify the device; probes the energy counter once (Volta and newer have one)."""
        nvml, handle = self.nvml, self.handle
        try:
            uuid: str | None = _text(nvml.nvmlDeviceGetUUID(handle))
        except Exception:
            uuid = None
        try:
            memory_total_mb = nvml.nvmlDeviceGetMemoryInfo(handle).total / _MIB
        except Exception:
            memory_total_mb = 0.0
        self._read("energy_mj")  # a NotSupported answer switches the reader off
        has_energy_counter = self.supports("energy_mj")
        return GpuInfo(
            index=self.index,
            name=_text(nvml.nvmlDeviceGetName(handle)),
            driver=_text(nvml.nvmlSystemGetDriverVersion()),
            uuid=uuid,
            memory_total_mb=memory_total_mb,
            has_energy_counter=has_energy_counter,
        )
