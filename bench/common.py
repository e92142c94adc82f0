"""Shared bits for the benchmarks: peak memory, interleaved repeated timing, and the result files."""
from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path

import torch


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak on a GPU, sampled RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page / 2**20
            self.peak_mb = max(self.peak_mb, rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


def timed(fn, device: torch.device):
    """(result, seconds, peak MB) of fn()."""
    with PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return result, seconds, mem.peak_mb


def describe(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def interleaved(paths: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each path over `repeats` rounds, the order alternating (A B C, C B A, A B C, ...) so that
    a machine getting faster or slower during the run (other jobs, thermal) weighs on every path alike.
    Call after a real warm-up pass of every path."""
    names, seconds = list(paths), {name: [] for name in paths}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            seconds[name].append(timed(paths[name], device)[1])
    return seconds


def ratio_spread(numerator: list[float], denominator: list[float]) -> dict:
    """Median and range of per-round ratios (each from one round of `interleaved`, so from adjacent runs)."""
    ratios = sorted(n / d for n, d in zip(numerator, denominator))
    mid = len(ratios) // 2
    median = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
    return {"median": round(median, 4), "min": round(ratios[0], 4), "max": round(ratios[-1], 4), "rounds": len(ratios)}


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "bench"


def write_result(name: str, module: str, summary: dict, argv: list[str] | None) -> Path:
    """docs/results/bench/<name>.json: the summary, with the command that measured it, the machine and the
    date. The docs quote these files."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    record = {**summary, "command": " ".join(["python", "-m", f"bench.{module}", *args]),
              "machine": describe(torch.device(summary.get("device", "cpu"))), "cpus": os.cpu_count(),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return path
