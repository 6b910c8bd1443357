"""Exercise tr111's GPU telemetry on a real NVIDIA GPU and print the figures (< 60 s).

Run: ``python -m bench.gpu_telemetry_check [--seconds 2] [--device 0]``.
It samples one idle "call" and two loaded ones (torch matmuls, else cupy,
else idle only), prints GpuInfo, each GpuCallStats, watts from the energy
figure, the cost of one NVML read per metric and the per-call start/stop
overhead of the sampler. Needs nothing but tr111 and nvidia-ml-py; without a
driver it prints why telemetry is off and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from typing import Callable

from tr111.telemetry.sampler import GpuCallStats, GpuTelemetry, detect_gpus


def make_load(device: int) -> tuple[str, Callable[[float], int] | None]:
    """A function that keeps the GPU busy for N seconds (returns matmuls done), and its name."""
    try:
        import torch

        if torch.cuda.is_available():
            dev = torch.device("cuda", device)
            a = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
            b = torch.randn(8192, 8192, device=dev, dtype=torch.float16)

            def torch_load(seconds: float) -> int:
                done, end = 0, time.perf_counter() + seconds
                while time.perf_counter() < end:
                    for _ in range(8):
                        a @ b
                    torch.cuda.synchronize(dev)
                    done += 8
                return done

            return f"torch {torch.__version__} fp16 8192^2 matmul", torch_load
        print("torch present but CUDA unavailable")
    except ImportError:
        pass
    try:
        import cupy as cp

        with cp.cuda.Device(device):
            a = cp.random.rand(6144, 6144, dtype=cp.float32)
            b = cp.random.rand(6144, 6144, dtype=cp.float32)

        def cupy_load(seconds: float) -> int:
            done, end = 0, time.perf_counter() + seconds
            with cp.cuda.Device(device):
                while time.perf_counter() < end:
                    for _ in range(4):
                        a @ b
                    cp.cuda.Device(device).synchronize()
                    done += 4
            return done

        return f"cupy {cp.__version__} fp32 6144^2 matmul", cupy_load
    except ImportError:
        pass
    return "none (neither torch+CUDA nor cupy importable): idle sampling only", None


def show(label: str, stats: GpuCallStats | None) -> None:
    if stats is None:
        print(f"  {label}: no stats (telemetry off)")
        return
    seconds = stats.duration_ms / 1000
    watts = f"{stats.energy_j / seconds:.1f} J/s" if stats.energy_j is not None else "n/a"
    by_power = (f"{stats.power_mean_w * seconds:.1f} J"
                if stats.power_mean_w is not None else "n/a")
    print(f"  {label}: {stats}")
    print(f"    energy per second {watts} ({stats.energy_source}); "
          f"mean power x duration = {by_power}")


def nvml_read_costs(tel: GpuTelemetry, repeats: int = 200) -> None:
    """Median µs of one NVML read per metric: what each poll and each call edge costs."""
    device = tel._device  # the script is a diagnostic; it may look inside
    assert device is not None
    for name, reader in device._readers.items():
        if reader is None:
            print(f"  {name:13s} not supported")
            continue
        costs = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            reader()
            costs.append(time.perf_counter_ns() - t0)
        print(f"  {name:13s} {statistics.median(costs) / 1000:8.1f} µs")


def call_overhead(tel: GpuTelemetry, repeats: int = 300) -> None:
    """Start+stop cost of an empty sampled call: the harness overhead the sampler adds."""
    costs = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        with tel.sample_call():
            pass
        costs.append(time.perf_counter_ns() - t0)
    costs.sort()
    print(f"  empty call start+stop: median {statistics.median(costs) / 1000:.1f} µs, "
          f"p99 {costs[int(len(costs) * 0.99)] / 1000:.1f} µs")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_telemetry_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each sampled call")
    parser.add_argument("--interval-ms", type=float, default=50.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    print(f"python {sys.version.split()[0]}")
    print("GPUs:", detect_gpus() or "none visible to NVML")
    tel = GpuTelemetry.open(args.device, interval_ms=args.interval_ms)
    if not tel.enabled:
        with tel.sample_call() as call:
            time.sleep(0.1)
        show("idle 0.1 s", call.stats)
        print(f"telemetry off: {tel.reason_disabled}")
        return 0
    with tel:
        print("GpuInfo:", tel.info)
        print("NVML read cost per metric:")
        nvml_read_costs(tel)
        call_overhead(tel)
        backend, load = make_load(args.device)
        print(f"load backend: {backend}")
        with tel.sample_call() as call:
            time.sleep(args.seconds)
        show(f"idle {args.seconds:g} s", call.stats)
        if load is not None:
            load(0.5)  # warm up clocks and kernels outside the measured calls
            for n in (1, 2):
                with tel.sample_call() as call:
                    matmuls = load(args.seconds)
                show(f"load #{n} {args.seconds:g} s ({matmuls} matmuls)", call.stats)
        with tel.sample_call() as call:
            time.sleep(0.005)
        show("very short 5 ms", call.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
