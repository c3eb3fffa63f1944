"""What several benchmarks share: the PPO benchmarks' prompts, update timing and the process's resident-set figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

PROMPTS = ["What is asthma and how is it treated?", "What are the symptoms of type 2 diabetes?",
           "What causes gout?", "Is aspirin safe during pregnancy?", "What is a transient ischemic attack?",
           "How do statins lower cholesterol?", "What are the side effects of metformin?",
           "When should a fever in a child be checked by a doctor?"]


def status_mb(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MB; NaN where there is none."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """VmHWM := the current RSS, so the next high-water mark is this phase's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def timed_updates(step: Callable[[], object], n: int) -> list[float]:
    """Seconds of each of `n` calls of `step`, after one untimed warm-up call (first-call costs excluded)."""
    step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times
