"""What several benchmarks share: the PPO benchmarks' prompts and the process's resident-set figures."""

from __future__ import annotations

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
