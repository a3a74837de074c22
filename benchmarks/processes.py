"""Running the benchmarks' subprocesses a few at a time, one log each, skipping finished ones."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path


def run_at_most(jobs: Mapping[Hashable, tuple[Sequence[str], Path]], parallel: int, env: Mapping[str, str],
                finished: Callable[[Hashable], bool]) -> None:
    """Runs each ``key → (command, log)`` not yet ``finished(key)``, ``parallel`` at a time; raises if one fails."""
    pending = [key for key in jobs if not finished(key)]
    running = []
    while pending or running:
        while pending and len(running) < parallel:
            key = pending.pop(0)
            command, log_path = jobs[key]
            log = open(log_path, "w")  # noqa: SIM115 (closed when the job ends)
            running.append((key, log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)))
        for entry in list(running):
            key, log, process = entry
            if process.poll() is not None:
                log.close()
                if process.returncode != 0:
                    raise RuntimeError(f"{key} failed; see {log.name}")
                running.remove(entry)
        time.sleep(1)
