"""A trial's system metrics, as MLflow names them (system/cpu_utilization_percentage,
system/system_memory_usage_megabytes, system/gpu_0_utilization_percentage, ...), measured where
the trial runs and logged by the driver, MLflow's only writer.

A Train worker samples what MLflow's own system-metrics monitors sample, through the same
libraries (psutil for CPU and memory, pynvml from nvidia-ml-py for NVIDIA GPUs when it is
installed), in a background thread; each report it sends to Ray carries the mean of the samples
since its previous report under system/..., plus the worker process's own CPU and resident memory
(the machine's figures include every other trial on it). The driver logs them with the report's
step, like any metric with a "/". MLflow itself is not imported here: it costs a worker seconds.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import psutil

PREFIX = "system/"
INTERVAL_S = 2.0


class SystemSampler:
    """CPU, memory (and GPU, where there is one) figures, sampled every `interval_s`."""

    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.gpus = _gpu_handles()
        self.process = psutil.Process()
        self._samples: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        psutil.cpu_percent()  # the first call only starts the interval
        self.process.cpu_percent()
        self._thread = threading.Thread(target=self._loop, name="sla-sweep-system", daemon=True)

    def start(self) -> SystemSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        memory = psutil.virtual_memory()
        now = {
            "cpu_utilization_percentage": psutil.cpu_percent(),
            "system_memory_usage_megabytes": memory.used / 1e6,
            "system_memory_usage_percentage": memory.used / memory.total * 100,
            "process_cpu_utilization_percentage": self.process.cpu_percent(),
            "process_memory_rss_megabytes": self.process.memory_info().rss / 1e6,
        }
        for i, handle in enumerate(self.gpus):
            now.update(_gpu_figures(i, handle))
        with self._lock:
            for key, value in now.items():
                self._samples[key].append(float(value))

    def figures(self) -> dict[str, float]:
        """The means since the last call, system/...; sampled now when nothing was since."""
        if not self._samples:
            self.sample()
        with self._lock:
            out = {PREFIX + k: round(sum(v) / len(v), 1) for k, v in self._samples.items() if v}
            self._samples.clear()
        return out


def _gpu_handles() -> list:
    """NVML handles of this machine's NVIDIA GPUs; none without nvidia-ml-py, a driver or a GPU."""
    try:
        import pynvml  # optional (nvidia-ml-py), only for NVIDIA GPUs
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError:  # no driver, no device
        return []


def _gpu_figures(i: int, handle) -> dict[str, float]:
    """MLflow's GPU figures of one device: memory, utilisation, power."""
    import pynvml  # optional: there once _gpu_handles found a device

    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
    return {
        f"gpu_{i}_memory_usage_percentage": memory.used / memory.total * 100,
        f"gpu_{i}_memory_usage_megabytes": memory.used / 1e6,
        f"gpu_{i}_utilization_percentage": float(rates.gpu),
        f"gpu_{i}_power_usage_watts": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
    }
