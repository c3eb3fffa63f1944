"""Training metrics: one JSON line per update (survives a kill), trackers via accelerate, a PNG at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "reward_kl_curves.png"


class MetricsLog:
    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / METRICS_NAME

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so curves have no duplicate steps."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


PPO_PANELS = [("objective/scores", "reward-model score"), ("objective/kl", "KL to reference (nats/seq)"),
              ("objective/rlhf_reward", "score - kl_coef * KL")]


def plot_curves(rows: list[dict], out: Path, title: str = "PPO",
                panels: list[tuple[str, str]] | None = None) -> Path | None:
    """Reward and KL (or any logged keys) against the update step, one panel each."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    panels = panels or PPO_PANELS
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    axes = axes[0]
    for ax, (key, label) in zip(axes, panels, strict=True):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], marker="o", ms=3)
        ax.set_xlabel("update")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out
