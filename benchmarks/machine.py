"""What the benchmarks report about the machine while they time."""

from __future__ import annotations

import os


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
