"""GPU telemetry: an NVML sampler armed per call (sampler.py) over a thin NVML layer (nvml.py)."""
