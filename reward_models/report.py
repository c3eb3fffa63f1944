"""The reward-model evaluation report: report.json, report.md and reliability.png in one folder.

Input is the dict `evaluate_reward_model` returns; nothing is recomputed here. The Markdown is
written for a clinician or an operator deciding whether PPO may optimise this model: the headline
accuracy next to the baselines it must beat, where it is miscalibrated, whether it simply rewards
length, and whether it agrees with graded expert ratings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def plot_reliability(calibration: dict, path: Path, title: str = "Reward model reliability") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in calibration["bins"] if b["n"]]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0.5, 1.0], [0.5, 1.0], "--", color="grey", label="perfect calibration")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="C0",
            label=f"model (ECE {calibration['ece']:.3f})")
    for b in calibration["bins"]:
        if b["n"]:
            ax.bar((b["lo"] + b["hi"]) / 2, b["accuracy"], width=b["hi"] - b["lo"], alpha=0.15, color="C0",
                   edgecolor="C0")
    ax.set_ylabel("observed accuracy (human picked the model's pick)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right")
    hist.bar([(b["lo"] + b["hi"]) / 2 for b in calibration["bins"]], [b["n"] for b in calibration["bins"]],
             width=(calibration["bins"][0]["hi"] - calibration["bins"][0]["lo"]) * 0.9, color="C1")
    hist.set_xlabel("model confidence max(P(chosen), 1 - P(chosen))")
    hist.set_ylabel("pairs")
    hist.set_xlim(0.5, 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_markdown(r: dict) -> str:
    lb, cal = r["length_bias"], r["calibration"]
    lines = [
        "# Reward model evaluation", "",
        f"- model: `{r['model']}`", f"- held-out pairs: `{r['dataset']}` (sha256 `{r['dataset_sha256'][:12]}`)",
        f"- pairs scored: {r['n']} (responses cut to fit {r['max_length']} tokens: {r['n_responses_cut']})", "",
        "## Pairwise accuracy", "",
        "| | accuracy | 95% CI / n |", "|---|---|---|",
        f"| **reward model** | **{_f(r['accuracy'])}** | {_f(r['ci95'][0])}–{_f(r['ci95'][1])} |",
        f"| baseline: prefer the longer answer | {_f(lb['baseline_prefer_longer'])} | |",
        f"| baseline: prefer the shorter answer | {_f(lb['baseline_prefer_shorter'])} | |",
        f"| model, pairs where chosen is shorter | {_f(lb['accuracy_when_chosen_shorter'])} | "
        f"{lb['n_chosen_shorter']} |",
        f"| model, pairs where chosen is longer | {_f(lb['accuracy_when_chosen_longer'])} | "
        f"{lb['n_chosen_longer']} |", "",
        f"Spearman of reward against response length (words): {_f(lb['spearman_reward_vs_length'])}. "
        "A model that only measures length scores high on one of the two subsets above and low on the other.", "",
        "## Calibration", "",
        f"P(chosen) = sigmoid(r_chosen − r_rejected). ECE {_f(cal['ece'])} over {cal['n_bins']} confidence bins; "
        f"mean P(chosen) {_f(r['mean_p_chosen'])}. See `reliability.png`.", "",
        "| confidence | pairs | model confidence | observed accuracy |", "|---|---|---|---|",
    ]
    lines += [f"| {b['lo']:.2f}–{b['hi']:.2f} | {b['n']} | {_f(b['confidence'])} | {_f(b['accuracy'])} |"
              for b in cal["bins"] if b["n"]]
    lines += ["", "## By source", "", "| source | pairs | accuracy |", "|---|---|---|"]
    lines += [f"| {src} | {v['n']} | {_f(v['accuracy'])} |" for src, v in r["by_source"].items()]
    if r.get("ratings"):
        g = r["ratings"]
        ci = g.get("spearman_ci95") or [None, None]
        lines += ["", "## Agreement with graded human ratings", "",
                  f"- rated set: `{g['path']}` ({g['n']} answers; fields {g['fields']})",
                  f"- Spearman(reward, rating): **{_f(g['spearman'])}** (95% CI {_f(ci[0])}–{_f(ci[1])})",
                  f"- mean within-question Spearman: {_f(g['mean_within_prompt_spearman'])} "
                  f"over {g['n_prompts_used']} questions",
                  "- mean reward by rating: " + ", ".join(f"{k}: {_f(v)}" for k, v in
                                                          g["mean_reward_by_rating"].items())]
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: str | os.PathLike) -> Path:
    """Write report.json, report.md and reliability.png into `out_dir` (replaced atomically)."""
    from annotation.atomic import atomic_dir, write_json_atomic

    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        write_json_atomic(tmp / "report.json", result)
        (tmp / "report.md").write_text(render_markdown(result), encoding="utf-8")
        plot_reliability(result["calibration"], tmp / "reliability.png")
    return out
