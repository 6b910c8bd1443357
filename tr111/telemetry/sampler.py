"""GPU telemetry per LLM call: a background NVML sampler armed around each call.

One long-lived daemon thread per ``GpuTelemetry`` polls the device while at least
one call is in flight; each call takes one sample at start and one at stop in
the caller's thread (so even a 1 ms call has two) and folds every sample into
running aggregates, so stopping costs O(1) however long the call ran.

Figures are device-wide: concurrent calls on the same GPU each see the whole
GPU's power and energy. Without an NVIDIA driver (or without ``pynvml``)
telemetry is off, one info line is logged per process, and every ``gpu_*``
column is stored as NULL (``null_row()``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from tr111.telemetry.nvml import GpuInfo, NvmlDevice, Sample, describe_error, load_nvml

__all__ = [
    "ROW_KEYS",
    "CallSampler",
    "GpuCallStats",
    "GpuInfo",
    "GpuTelemetry",
    "detect_gpus",
    "null_row",
    "summarise_samples",
]

ROW_KEYS: tuple[str, ...] = (
    "gpu_index",
    "gpu_name",
    "gpu_driver",
    "gpu_mem_peak_mb",
    "gpu_util_mean_pct",
    "gpu_power_mean_w",
    "gpu_energy_j",
    "gpu_energy_source",
    "gpu_temp_max_c",
    "gpu_sm_clock_mean_mhz",
    "gpu_samples",
)

_LOG = logging.getLogger(__name__)
_off_logged = False  # "telemetry off" is said once per process, not once per run/config
_off_log_lock = threading.Lock()


@dataclass(frozen=True)
class GpuCallStats:
    """One LLM call on one device; a metric is None when the GPU does not report it."""

    gpu_index: int
    gpu_name: str
    gpu_driver: str
    samples: int
    mem_used_peak_mb: float | None  # MiB
    util_mean_pct: float | None  # time-weighted mean
    power_mean_w: float | None  # time-weighted mean of the power readings
    energy_j: float | None
    energy_source: str  # "counter" | "integrated" | "none"
    temp_max_c: float | None
    sm_clock_mean_mhz: float | None  # time-weighted mean
    duration_ms: float  # first to last sample

    def as_row(self) -> dict[str, Any]:
        """Warehouse columns (``ROW_KEYS``), same keys as ``null_row()``."""
        return {
            "gpu_index": self.gpu_index,
            "gpu_name": self.gpu_name,
            "gpu_driver": self.gpu_driver,
            "gpu_mem_peak_mb": self.mem_used_peak_mb,
            "gpu_util_mean_pct": self.util_mean_pct,
            "gpu_power_mean_w": self.power_mean_w,
            "gpu_energy_j": self.energy_j,
            "gpu_energy_source": self.energy_source,
            "gpu_temp_max_c": self.temp_max_c,
            "gpu_sm_clock_mean_mhz": self.sm_clock_mean_mhz,
            "gpu_samples": self.samples,
        }


def null_row() -> dict[str, Any]:
    """What a call stores when telemetry is off: every ``gpu_*`` column NULL."""
    return dict.fromkeys(ROW_KEYS)


class _Series:
    """Running peak and trapezoid area of one metric, so a call's summary is O(1)."""

    __slots__ = ("count", "first_ns", "last_ns", "last", "area", "total", "peak")

    def __init__(self) -> None:
        self.count = 0
        self.first_ns = self.last_ns = 0
        self.last = self.area = self.total = 0.0
        self.peak: float | None = None

    def add(self, ts_ns: int, value: float | None) -> None:
        if value is None:
            return
        if self.count:
            self.area += (value + self.last) * 0.5 * (ts_ns - self.last_ns)
        else:
            self.first_ns = ts_ns
        if self.peak is None or value > self.peak:
            self.peak = value
        self.count += 1
        self.total += value
        self.last, self.last_ns = value, ts_ns

    def mean(self) -> float | None:
        """Time-weighted so the closely spaced start/stop samples don't get extra weight."""
        if not self.count:
            return None
        span_ns = self.last_ns - self.first_ns
        return self.area / span_ns if span_ns > 0 else self.total / self.count

    def integral_s(self) -> float | None:
        """Area in value-seconds (W -> J); None without two readings."""
        return self.area / 1e9 if self.count >= 2 else None


class CallSampler:
    """Context manager around one LLM call; ``stats`` is set on exit (None when off)."""

    __slots__ = ("_telemetry", "_armed", "_start", "_count", "_mem", "_util",
                 "_power", "_temp", "_clock", "stats")

    def __init__(self, telemetry: GpuTelemetry | None) -> None:
        self._telemetry = telemetry
        self._armed = False
        self._start: Sample | None = None
        self._count = 0
        self.stats: GpuCallStats | None = None

    def __enter__(self) -> CallSampler:
        if self._telemetry is not None:
            self._reset()
            self._telemetry._arm(self)
        return self

    def _reset(self) -> None:
        self._mem, self._util, self._power = _Series(), _Series(), _Series()
        self._temp, self._clock = _Series(), _Series()

    def __exit__(self, *exc_info: object) -> None:
        if self._telemetry is not None and self._armed:
            self.stats = self._telemetry._disarm(self)

    def _add(self, sample: Sample) -> None:
        """Fold one sample in; called with samples in time order."""
        ts = sample.ts_ns
        self._count += 1
        self._mem.add(ts, sample.mem_used_mb)
        self._util.add(ts, sample.util_pct)
        self._power.add(ts, sample.power_w)
        self._temp.add(ts, sample.temp_c)
        self._clock.add(ts, sample.sm_clock_mhz)

    def _summarise(self, stop: Sample, info: GpuInfo) -> GpuCallStats:
        start = self._start
        assert start is not None
        energy_j, source = None, "none"
        if start.energy_mj is not None and stop.energy_mj is not None \
                and stop.energy_mj >= start.energy_mj:
            energy_j, source = (stop.energy_mj - start.energy_mj) / 1000.0, "counter"
        else:
            energy_j = self._power.integral_s()
            if energy_j is not None:
                source = "integrated"
        return GpuCallStats(
            gpu_index=info.index,
            gpu_name=info.name,
            gpu_driver=info.driver,
            samples=self._count,
            mem_used_peak_mb=self._mem.peak,
            util_mean_pct=self._util.mean(),
            power_mean_w=self._power.mean(),
            energy_j=energy_j,
            energy_source=source,
            temp_max_c=self._temp.peak,
            sm_clock_mean_mhz=self._clock.mean(),
            duration_ms=(stop.ts_ns - start.ts_ns) / 1e6,
        )


def summarise_samples(samples: Sequence[Sample], info: GpuInfo) -> GpuCallStats:
    """The stats the sampler would report for these time-ordered samples (offline, tests)."""
    if len(samples) < 2:
        raise ValueError("need at least a start and a stop sample")
    call = CallSampler(None)
    call._reset()
    call._start = samples[0]
    for sample in samples:
        call._add(sample)
    return call._summarise(samples[-1], info)


class GpuTelemetry:
    """NVML session on one device plus its sampler thread; use ``open()``, never raises."""

    def __init__(self, *, info: GpuInfo | None = None, device: NvmlDevice | None = None,
                 interval_ms: float = 50, reason_disabled: str | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.info = info
        self.reason_disabled = reason_disabled
        self.enabled = device is not None and info is not None
        self.interval_ms = interval_ms
        self._device = device
        self._log = logger or _LOG
        self._lock = threading.Lock()
        self._sessions: set[CallSampler] = set()
        self._active = threading.Event()  # set while at least one call is in flight
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="tr111-gpu-sampler",
                                            daemon=True)
            self._thread.start()

    @classmethod
    def open(cls, device_index: int | None = 0, *, interval_ms: float = 50,
             nvml: Any = None, logger: logging.Logger | None = None) -> GpuTelemetry:
        """Start NVML on ``device_index``; ``None`` means telemetry off on purpose.

        Any ImportError/NVMLError gives a disabled instance and one info line
        "GPU telemetry off: <reason>" (once per process).
        """
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        log = logger or _LOG
        if device_index is None:
            return cls._disabled("disabled (device_index=None)", log)
        try:
            module = load_nvml(nvml)
        except ImportError as exc:
            return cls._disabled(f"pynvml not importable ({exc}); pip install nvidia-ml-py", log)
        try:  # NVMLError mostly; Exception so that no pynvml surprise escapes
            module.nvmlInit()
        except Exception as exc:
            return cls._disabled(f"NVML init failed: {describe_error(exc)}", log)
        try:
            count = module.nvmlDeviceGetCount()
            if not 0 <= device_index < count:
                _shutdown(module)
                return cls._disabled(
                    f"no GPU at index {device_index} ({count} NVIDIA GPU(s) found)", log)
            device = NvmlDevice(module, device_index)
            info = device.info()
        except Exception as exc:
            _shutdown(module)
            return cls._disabled(f"GPU {device_index} probe failed: {describe_error(exc)}", log)
        log.info("GPU telemetry on: GPU %d %s, driver %s, energy %s, every %g ms",
                 info.index, info.name, info.driver,
                 "counter" if info.has_energy_counter else "integrated from power",
                 interval_ms)
        return cls(info=info, device=device, interval_ms=interval_ms, logger=logger)

    @classmethod
    def _disabled(cls, reason: str, log: logging.Logger) -> GpuTelemetry:
        global _off_logged
        with _off_log_lock:
            first = not _off_logged
            _off_logged = True
        if first:
            log.info("GPU telemetry off: %s", reason)
        return cls(reason_disabled=reason, logger=log)

    def sample_call(self) -> CallSampler:
        """``with tel.sample_call() as s: <LLM call>``; then ``s.stats`` (None when off)."""
        return CallSampler(self if self.enabled else None)

    def _arm(self, call: CallSampler) -> None:
        device = self._device
        assert device is not None
        call._start = device.sample()
        call._add(call._start)
        with self._lock:
            call._armed = True
            self._sessions.add(call)
            self._active.set()

    def _disarm(self, call: CallSampler) -> GpuCallStats:
        with self._lock:  # after this the sampler thread can no longer add to `call`
            call._armed = False
            self._sessions.discard(call)
            if not self._sessions:
                self._active.clear()
        assert self._device is not None and self.info is not None
        stop = self._device.sample()
        call._add(stop)
        return call._summarise(stop, self.info)

    def _run(self) -> None:
        """Sampler thread: park while idle, poll every interval while calls are in flight."""
        interval_s = self.interval_ms / 1000.0
        device = self._device
        assert device is not None
        while True:
            self._active.wait()
            if self._closing.wait(interval_s):
                return
            with self._lock:
                targets = tuple(self._sessions)
            if not targets:
                continue
            try:
                sample = device.sample()
            except Exception:  # never let a surprise kill the thread; start/stop still sample
                self._log.debug("GPU sample failed", exc_info=True)
                continue
            with self._lock:
                for call in targets:
                    if call._armed:
                        call._add(sample)

    def close(self) -> None:
        """Stop the sampler thread and shut NVML down; idempotent."""
        if not self.enabled:
            return
        self.enabled = False
        self.reason_disabled = "closed"
        self._closing.set()
        self._active.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._device is not None:
            _shutdown(self._device.nvml)

    def __enter__(self) -> GpuTelemetry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _shutdown(module: Any) -> None:
    """nvmlShutdown, ignoring errors: nothing useful can be done about them."""
    try:
        module.nvmlShutdown()
    except Exception:
        _LOG.debug("nvmlShutdown failed", exc_info=True)


def detect_gpus(nvml: Any = None) -> list[GpuInfo]:
    """Every NVIDIA GPU NVML sees, for the report's environment section; [] without a driver."""
    try:
        module = load_nvml(nvml)
    except ImportError:
        return []
    try:
        module.nvmlInit()
    except Exception:
        return []
    try:
        return [NvmlDevice(module, index).info() for index in range(module.nvmlDeviceGetCount())]
    except Exception as exc:
        _LOG.debug("GPU detection failed: %s", describe_error(exc))
        return []
    finally:
        _shutdown(module)
