"""What the benchmarks report about the machine while they time."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy so far (Linux ``/proc/stat``), or None elsewhere.

    The difference over a timed section, minus the benchmark's own CPU time, is what other
    processes took: on a small machine they distort the timings.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def time_round_robin(steps: Mapping[str, Callable[[], object]], repeats: int) -> tuple[dict[str, dict], float | None]:
    """Times every step ``repeats`` times, one call of each per round, so load drift on the machine spreads evenly.

    Returns name → ``median_ms``, ``spread`` (interquartile range over the median) and ``samples_s``; and how many
    CPUs other processes kept busy meanwhile (None where the machine does not say).
    """
    samples: dict[str, list[float]] = {name: [] for name in steps}
    busy, own, wall = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - start)
    others = None
    if busy is not None:
        others = max(0.0, busy_cpu_seconds() - busy - (time.process_time() - own)) / (time.perf_counter() - wall)
    timed = {}
    for name, times in samples.items():
        median = statistics.median(times)
        q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (median, median, median)
        timed[name] = {"median_ms": 1e3 * median, "spread": (q3 - q1) / median, "samples_s": times}
    return timed, others
