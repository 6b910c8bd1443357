"""GPU telemetry against a scripted fake NVML, plus the real pynvml on a GPU-less machine."""

from __future__ import annotations

import logging
import math
import statistics
import time

import pytest

from tr111.telemetry import sampler as telemetry
from tr111.telemetry.sampler import (
    ROW_KEYS,
    GpuInfo,
    GpuTelemetry,
    detect_gpus,
    null_row,
    summarise_samples,
)
from tr111.telemetry.nvml import Sample

try:
    import fake_nvml as fake
except ImportError:  # tests/ collected as a package
    from tests import fake_nvml as fake

INFO = GpuInfo(index=0, name="G", driver="1", uuid=None, memory_total_mb=100.0,
               has_energy_counter=False)


@pytest.fixture(autouse=True)
def fresh_off_log(monkeypatch):
    """'telemetry off' is logged once per process; each test starts as a new process."""
    monkeypatch.setattr(telemetry, "_off_logged", False)


def run_call(tel: GpuTelemetry, seconds: float, nvml: fake.FakeNvml | None = None):
    """Sample one fake 'LLM call' that sleeps; returns (stats, t_enter_s, t_exit_s) on nvml's clock."""
    t_enter = nvml.elapsed_s() if nvml else 0.0
    with tel.sample_call() as call:
        time.sleep(seconds)
    t_exit = nvml.elapsed_s() if nvml else 0.0
    return call.stats, t_enter, t_exit


# --- pure aggregation -------------------------------------------------------------------

def test_summary_is_time_weighted_and_integrates_power():
    ms = 1_000_000
    samples = [  # irregular spacing: the 1 ms tail must not count like the 10 ms steps
        Sample(0 * ms, 100.0, 0.0, 100.0, None, 50.0, 1000.0),
        Sample(10 * ms, 300.0, 100.0, 200.0, None, 70.0, 2000.0),
        Sample(20 * ms, 200.0, 100.0, 200.0, None, 65.0, 2000.0),
        Sample(21 * ms, 150.0, 0.0, 100.0, None, 60.0, 1000.0),
    ]
    stats = summarise_samples(samples, INFO)
    assert stats.samples == 4
    assert stats.duration_ms == pytest.approx(21.0)
    assert stats.mem_used_peak_mb == 300.0
    assert stats.temp_max_c == 70.0
    # util area: 50*10 + 100*10 + 50*1 = 1550 %*ms over 21 ms
    assert stats.util_mean_pct == pytest.approx(1550 / 21)
    # power area: 150*10 + 200*10 + 150*1 = 3650 W*ms = 3.65 J
    assert stats.energy_source == "integrated"
    assert stats.energy_j == pytest.approx(3.65)
    assert stats.power_mean_w == pytest.approx(3650 / 21)
    assert stats.sm_clock_mean_mhz == pytest.approx((15000 + 20000 + 1500) / 21)


def test_summary_prefers_counter_and_skips_missing_values():
    ms = 1_000_000
    samples = [
        Sample(0, None, None, 100.0, 5_000_000.0, None, None),
        Sample(10 * ms, None, None, None, 5_000_700.0, None, None),
        Sample(20 * ms, None, None, 100.0, 5_001_000.0, None, None),
    ]
    stats = summarise_samples(samples, INFO)
    assert stats.energy_source == "counter"
    assert stats.energy_j == pytest.approx(1.0)
    assert stats.power_mean_w == pytest.approx(100.0)
    assert stats.mem_used_peak_mb is stats.util_mean_pct is stats.temp_max_c is None
    assert stats.sm_clock_mean_mhz is None


def test_counter_going_backwards_falls_back_to_integration():
    ms = 1_000_000
    samples = [Sample(0, None, None, 50.0, 9e9, None, None),
               Sample(100 * ms, None, None, 50.0, 1.0, None, None)]
    stats = summarise_samples(samples, INFO)
    assert (stats.energy_source, stats.energy_j) == ("integrated", pytest.approx(5.0))


def test_no_power_and_no_counter_gives_no_energy():
    samples = [Sample(0, 1.0, None, None, None, None, None),
               Sample(1000, 1.0, None, None, None, None, None)]
    stats = summarise_samples(samples, INFO)
    assert (stats.energy_j, stats.energy_source, stats.power_mean_w) == (None, "none", None)


def test_rows_have_the_same_keys():
    stats = summarise_samples([Sample(0, 1.0, 2.0, 3.0, None, 4.0, 5.0)] * 2, INFO)
    row = stats.as_row()
    assert tuple(row) == ROW_KEYS == tuple(null_row())
    assert set(null_row().values()) == {None}
    assert row["gpu_name"] == "G" and row["gpu_samples"] == 2


# --- sampler with the fake NVML ---------------------------------------------------------

def test_energy_from_counter_delta():
    """The counter rises at 300 W while power reads 100 W: energy must come from the counter."""
    gpu = fake.FakeGpu(power_w=fake.const(100.0), energy_mj=lambda t: 7e9 + 300_000.0 * t)
    nvml = fake.FakeNvml([gpu])
    with GpuTelemetry.open(0, interval_ms=10, nvml=nvml) as tel:
        assert tel.enabled and tel.info.has_energy_counter
        stats, _, _ = run_call(tel, 0.2, nvml)
    assert stats.energy_source == "counter"
    assert stats.energy_j == pytest.approx(300.0 * stats.duration_ms / 1000, rel=0.02, abs=0.01)
    assert stats.power_mean_w == pytest.approx(100.0)
    assert stats.samples >= 5
    assert nvml.refcount == 0


def test_energy_integrated_from_power_without_counter():
    """Old GPU (NotSupported counter): trapezoid of a sine power trace vs its exact integral."""
    period = 0.6

    def power(t):
        return 200.0 + 100.0 * math.sin(2 * math.pi * t / period)

    def exact_joules(t0, t1):
        k = period / (2 * math.pi)
        return 200.0 * (t1 - t0) + 100.0 * k * (math.cos(t0 / k) - math.cos(t1 / k))

    nvml = fake.FakeNvml([fake.FakeGpu(power_w=power, energy_mj=None)])
    with GpuTelemetry.open(0, interval_ms=5, nvml=nvml) as tel:
        assert not tel.info.has_energy_counter
        nvml.restart_clock()
        stats, t_enter, t_exit = run_call(tel, 0.3, nvml)
    assert stats.energy_source == "integrated"
    assert stats.energy_j == pytest.approx(exact_joules(t_enter, t_exit), rel=0.03)
    assert stats.power_mean_w == pytest.approx(stats.energy_j / (stats.duration_ms / 1000),
                                               rel=1e-6)
    assert stats.samples >= 10


def test_peak_memory_mean_util_max_temp_mean_clock():
    gpu = fake.FakeGpu(
        mem_used_mb=lambda t: 3000.0 if 0.05 < t < 0.1 else 1000.0,
        util_pct=fake.const(40.0),
        temp_c=lambda t: 50.0 + 100.0 * t,
        sm_clock_mhz=fake.const(1410.0),
        name=b"NVIDIA Bytes GPU",
    )
    nvml = fake.FakeNvml([gpu], driver=b"535.104.05")
    with GpuTelemetry.open(0, interval_ms=5, nvml=nvml) as tel:
        nvml.restart_clock()
        stats, _, t_exit = run_call(tel, 0.2, nvml)
    assert stats.mem_used_peak_mb == pytest.approx(3000.0)
    assert stats.util_mean_pct == pytest.approx(40.0)
    assert stats.sm_clock_mean_mhz == pytest.approx(1410.0)
    assert 65.0 <= stats.temp_max_c <= 50.0 + 100.0 * t_exit + 1
    assert (stats.gpu_name, stats.gpu_driver, stats.gpu_index) == \
        ("NVIDIA Bytes GPU", "535.104.05", 0)
    assert 190.0 <= stats.duration_ms < 1000.0


def test_not_supported_metric_is_none_and_not_asked_again():
    nvml = fake.FakeNvml([fake.FakeGpu(util_pct=None, temp_c=None)])
    with GpuTelemetry.open(0, interval_ms=5, nvml=nvml) as tel:
        stats, _, _ = run_call(tel, 0.05)
        stats2, _, _ = run_call(tel, 0.01)
    assert stats.util_mean_pct is None and stats.temp_max_c is None
    assert stats.mem_used_peak_mb is not None and stats.power_mean_w is not None
    assert stats2.samples >= 2
    assert nvml.calls["util_pct"] == 1 and nvml.calls["temp_c"] == 1


class _PynvmlWithoutEnergy(fake.FakeNvml):
    """An nvidia-ml-py too old to have nvmlDeviceGetTotalEnergyConsumption."""

    def __getattribute__(self, name):
        if name == "nvmlDeviceGetTotalEnergyConsumption":
            raise AttributeError(name)
        return super().__getattribute__(name)


def _raise_function_not_found(_t):
    raise fake.NVMLError_FunctionNotFound()


@pytest.mark.parametrize("nvml", [
    _PynvmlWithoutEnergy([fake.FakeGpu(energy_mj=fake.const(1.0))]),
    fake.FakeNvml([fake.FakeGpu(energy_mj=_raise_function_not_found)]),  # driver too old
], ids=["old-pynvml", "old-driver"])
def test_missing_energy_function_falls_back_to_power(nvml):
    with GpuTelemetry.open(0, interval_ms=5, nvml=nvml) as tel:
        assert tel.enabled and not tel.info.has_energy_counter
        stats, _, _ = run_call(tel, 0.02)
    assert stats.energy_source == "integrated"
    assert stats.energy_j == pytest.approx(100.0 * stats.duration_ms / 1000, rel=1e-3)


def test_transient_error_only_blanks_that_sample():
    def flaky_power(t):
        if t < 0.03:
            raise fake.NVMLError_Unknown()
        return 120.0

    nvml = fake.FakeNvml([fake.FakeGpu(power_w=flaky_power)])
    with GpuTelemetry.open(0, interval_ms=5, nvml=nvml) as tel:
        nvml.restart_clock()
        stats, _, _ = run_call(tel, 0.1, nvml)
    assert stats.power_mean_w == pytest.approx(120.0)
    assert stats.energy_source == "integrated"


def test_overlapping_calls_both_get_samples_and_the_thread_parks():
    nvml = fake.FakeNvml()
    with GpuTelemetry.open(0, interval_ms=5, nvml=nvml) as tel:
        with tel.sample_call() as outer:
            time.sleep(0.02)
            inner_stats, _, _ = run_call(tel, 0.05)
            time.sleep(0.02)
        # the outer call sees every poll made during the inner one, plus its own ends
        assert outer.stats.samples >= inner_stats.samples >= 2
        assert outer.stats.duration_ms > inner_stats.duration_ms
        time.sleep(0.1)
        polls = nvml.calls["power_w"]
        time.sleep(0.05)
        assert nvml.calls["power_w"] == polls, "sampler must not poll between calls"
        assert not tel._active.is_set()


def test_stats_are_set_when_the_call_raises():
    with GpuTelemetry.open(0, interval_ms=5, nvml=fake.FakeNvml()) as tel:
        with pytest.raises(RuntimeError), tel.sample_call() as call:
            raise RuntimeError("server dropped the stream")
    assert call.stats is not None and call.stats.samples >= 2


def test_close_stops_thread_and_shuts_down_once():
    nvml = fake.FakeNvml()
    tel = GpuTelemetry.open(0, interval_ms=5, nvml=nvml)
    thread = tel._thread
    tel.close()
    tel.close()
    assert not thread.is_alive()
    assert (nvml.calls["init"], nvml.calls["shutdown"], nvml.refcount) == (1, 1, 0)
    with tel.sample_call() as call:
        pass
    assert call.stats is None and not tel.enabled


def test_start_stop_overhead_is_well_under_a_millisecond():
    """Harness budget is 1 ms per call; arm+disarm with the fake NVML must be far below it."""
    with GpuTelemetry.open(0, interval_ms=50, nvml=fake.FakeNvml()) as tel:
        costs_ns = []
        for _ in range(300):
            t0 = time.perf_counter_ns()
            with tel.sample_call():
                pass
            costs_ns.append(time.perf_counter_ns() - t0)
    assert statistics.median(costs_ns) < 500_000


# --- telemetry off ----------------------------------------------------------------------

@pytest.mark.parametrize("error", [fake.NVMLError_LibraryNotFound, fake.NVMLError_DriverNotLoaded])
def test_no_driver_gives_disabled_instance_and_one_log_line(error, caplog):
    caplog.set_level(logging.INFO, logger="tr111.telemetry.sampler")
    nvml = fake.FakeNvml(init_error=error)
    first = GpuTelemetry.open(0, nvml=nvml)
    second = GpuTelemetry.open(0, nvml=nvml)
    for tel in (first, second):
        assert not tel.enabled and tel.info is None
        assert error.__name__ in tel.reason_disabled
        with tel.sample_call() as call:
            pass
        assert call.stats is None
        tel.close()
    off_lines = [r for r in caplog.records if r.getMessage().startswith("GPU telemetry off: ")]
    assert len(off_lines) == 1 and off_lines[0].levelno == logging.INFO
    assert nvml.calls["shutdown"] == 0
    assert detect_gpus(nvml) == []


def test_unexpected_init_exception_still_disables():
    class BrokenNvml(fake.FakeNvml):
        def nvmlInit(self):
            raise OSError("libnvidia-ml.so.1: wrong ELF class")

    tel = GpuTelemetry.open(0, nvml=BrokenNvml())
    assert not tel.enabled and "wrong ELF class" in tel.reason_disabled
    assert detect_gpus(BrokenNvml()) == []


@pytest.mark.parametrize("index", [None, 3])
def test_unusable_device_index_disables(index):
    nvml = fake.FakeNvml()
    tel = GpuTelemetry.open(index, nvml=nvml)
    assert not tel.enabled and tel.reason_disabled
    assert nvml.refcount == 0


def test_missing_pynvml_disables(monkeypatch):
    def no_pynvml(_nvml=None):
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(telemetry, "load_nvml", no_pynvml)
    tel = GpuTelemetry.open()
    assert not tel.enabled and "pynvml" in tel.reason_disabled
    assert detect_gpus() == []


def test_detect_gpus_lists_every_device():
    nvml = fake.FakeNvml([fake.FakeGpu(name=b"A", energy_mj=fake.const(1.0)),
                          fake.FakeGpu(name="B", energy_mj=None, uuid=b"GPU-b")])
    gpus = detect_gpus(nvml)
    assert [(g.index, g.name, g.has_energy_counter) for g in gpus] == \
        [(0, "A", True), (1, "B", False)]
    assert gpus[1].uuid == "GPU-b" and gpus[0].driver == "550.54.15"
    assert gpus[0].memory_total_mb == pytest.approx(40960.0)
    assert nvml.refcount == 0


def test_real_pynvml_without_gpu_is_disabled_without_raising():
    pytest.importorskip("pynvml")
    tel = GpuTelemetry.open()
    if tel.enabled:
        tel.close()
        pytest.skip("this machine has a working NVIDIA driver")
    assert tel.reason_disabled.startswith("NVML init failed")
    with tel.sample_call() as call:
        pass
    assert call.stats is None
    assert detect_gpus() == []
