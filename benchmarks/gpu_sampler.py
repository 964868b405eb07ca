"""nvidia-smi sampled every second into a CSV while commands run, and the GPU's busy share over a
time window of those samples (benchmarks.wan_study)."""

from __future__ import annotations

import contextlib
import csv
import shutil
import subprocess
import threading
import time
from pathlib import Path


class GpuSampler:
    """nvidia-smi's utilization.gpu and memory.used every second into a CSV (unix time first);
    nothing where there is no nvidia-smi."""

    QUERY = "timestamp,utilization.gpu,memory.used"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi") is None:
            return self
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={self.QUERY}", "--format=csv,noheader,nounits",
             "-lms", "1000"], stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()
        return self

    def _drain(self) -> None:
        with self.path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["unix_s", "util_pct", "mem_mib"])
            for line in self.proc.stdout:
                parts = [p.strip() for p in line.split(",")]
                with contextlib.suppress(ValueError, IndexError):
                    out.writerow([f"{time.time():.3f}", float(parts[1]), float(parts[2])])
                    f.flush()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.thread.join(10)


def read_samples(path: Path) -> list[tuple[float, float, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [(float(r["unix_s"]), float(r["util_pct"]), float(r["mem_mib"]))
                for r in csv.DictReader(f)]  # fmt: skip


def busy_share(samples: list[tuple[float, float, float]], start: float, end: float) -> dict:
    """The mean utilization.gpu (the share of each second a kernel ran) over [start, end)."""
    inside = [s for s in samples if start <= s[0] < end]
    if not inside:
        return {"samples": 0}
    return {"samples": len(inside), "busy_share": sum(s[1] for s in inside) / 100 / len(inside),
            "peak_mem_mib": max(s[2] for s in inside), "seconds": end - start}  # fmt: skip
