"""One full round of the loop, as `clinalign demo` runs it on embedded defaults.

generate → simulated feedback → export → reward model → DPO (or PPO) → evaluation → manifest.
Every stage writes its artefact under the round's folder with its own manifest; the round
manifest lists them all with their hashes and metrics.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from align.generate import SamplingSetting, make_pairs
from align.progress import console, progress_bar
from align.prompts import load_prompts
from align.round_config import RoundConfig
from align.stages import export_preferences, gate_pairs
from annotation.errors import ClinalignError
from annotation.manifest import build_manifest, read_manifest, ref, write_manifest
from annotation.simulated import judge
from annotation.sqlite_store import SQLiteStore

MARKER = ".clinalign-round"


def _prepare_dir(out: Path) -> None:
    """A round folder is recreated only if clinalign made it; anything else is never deleted."""
    if out.exists():
        if not (out / MARKER).exists():
            raise ClinalignError(f"{out} exists and is not a clinalign round folder; choose another output_dir")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by clinalign; safe to delete\n")


class Round:
    def __init__(self, cfg: RoundConfig, config_path: str | None = None):
        self.cfg, self.config_path = cfg, config_path
        self.out = Path(cfg.output_dir)
        self.stages: dict[str, dict[str, Any]] = {}
        self.inputs: list[dict[str, str]] = []

    def _stage(self, name: str, fn):
        console.rule(f"[bold cyan]{name}")
        t0 = time.perf_counter()
        result = fn()
        self.stages[name] = {"seconds": round(time.perf_counter() - t0, 1), **(result or {})}
        return result

    # -- stages --------------------------------------------------------------------------------
    def generate(self) -> dict[str, Any]:
        c = self.cfg
        side_a = SamplingSetting(c.policy, c.temperature_a, max_new_tokens=c.max_new_tokens, seed=c.seed)
        side_b = SamplingSetting(c.policy, c.temperature_b, max_new_tokens=c.max_new_tokens, seed=c.seed + 1)
        sets = [(s, load_prompts(s["path"], limit=s.get("limit"), offset=s.get("offset", 0))) for s in c.prompt_sets]
        total = sum(len(p) for _, p in sets)
        made, skipped, withheld = 0, 0, 0
        store = SQLiteStore(self.out / "feedback.sqlite")
        with progress_bar("generating pairs", total=2 * total) as advance:
            for spec, prompts in sets:
                self.inputs.append(ref(f"prompts:{spec['name']}", spec["path"]))
                pairs, stats = make_pairs(prompts, side_a, side_b, batch_size=c.batch_size,
                                          source=f"generated:{spec['name']}", progress=advance)
                kept = gate_pairs(pairs, mode=c.phi_mode, audit_dir=self.out)
                store.add_pairs(kept)
                made += len(kept)
                withheld += len(pairs) - len(kept)
                skipped += stats.skipped_identical + stats.skipped_empty
        store.close()
        return {"pairs": made, "skipped_identical_or_empty": skipped, "withheld_by_phi_gate": withheld}

    def annotate(self) -> dict[str, Any]:
        store = SQLiteStore(self.out / "feedback.sqlite")
        feedback = [fb for p in store.iter_pairs() if (fb := judge(p)) is not None]
        new = store.add_feedback(feedback)
        store.close()
        prefs = {k: sum(f.preference == k for f in feedback) for k in ("a", "b", "tie")}
        console.print(f"simulated annotator [bold]simulated:reference-overlap[/] judged {new} pairs {prefs}")
        return {"feedback": new, "annotator": "simulated:reference-overlap", "preferences": prefs}

    def export(self) -> dict[str, Any]:
        report = export_preferences(str(self.out / "feedback.sqlite"), self.out / "preferences",
                                    include_simulated=True, include_seeds=self.cfg.include_seeds,
                                    phi_mode=self.cfg.phi_mode_export)
        return {"path": str(self.out / "preferences"), "rows": report["rows"],
                "rows_by_source": report["rows_by_source"]}

    def reward(self) -> dict[str, Any]:
        from reward_models.train import train_from_yaml

        overrides = {"dataset_path": str(self.out / "preferences"), "output_dir": str(self.out / "reward_model"),
                     **self.cfg.reward_overrides}
        out = train_from_yaml(self.cfg.reward_config, overrides)
        self.inputs.append(ref("config:reward", self.cfg.reward_config))
        metrics = read_manifest(out).get("metrics", {})
        return {"path": str(out), **{k: v for k, v in metrics.items() if "accuracy" in k or k == "train_loss"}}

    def policy(self) -> dict[str, Any]:
        c = self.cfg
        common = {"output_dir": str(self.out / "policy"), "model_name_or_path": c.policy}
        if c.policy_stage == "dpo":
            from align.dpo import train_from_yaml

            out = train_from_yaml(c.dpo_config, {**common, "dataset_path": str(self.out / "preferences"),
                                                 **c.dpo_overrides})
            self.inputs.append(ref("config:dpo", c.dpo_config))
        else:
            from align.ppo import train_from_yaml as ppo_train

            out = ppo_train(c.ppo_config, {**common, "reward_model_path": str(self.out / "reward_model"),
                                           **c.ppo_overrides})
            self.inputs.append(ref("config:ppo", c.ppo_config))
        metrics = read_manifest(out).get("metrics", {})
        keep = ("train_loss", "rewards/accuracies", "rewards/margins", "objective/kl", "reward_mean")
        return {"path": str(out), "stage": c.policy_stage, **{k: v for k, v in metrics.items() if k in keep}}

    def evaluate(self) -> dict[str, Any]:
        from align.evaluate import win_rate
        from reward_models.scoring import RewardScorer

        c, e = self.cfg, self.cfg.eval_prompts
        prompts = load_prompts(e["path"], limit=e.get("limit"), offset=e.get("offset", 0))
        self.inputs.append(ref("prompts:eval", e["path"]))
        cand = SamplingSetting(c.policy, 0.0, max_new_tokens=c.max_new_tokens, adapter=str(self.out / "policy"))
        base = SamplingSetting(c.policy, 0.0, max_new_tokens=c.max_new_tokens)
        with progress_bar("win-rate vs base policy", total=2 * len(prompts)) as advance:
            result = win_rate(cand, base, prompts, RewardScorer(str(self.out / "reward_model")),
                              batch_size=c.batch_size, progress=advance)
        evaluation: dict[str, Any] = {"win_rate": result}
        if c.pubmedqa_limit:
            evaluation["pubmedqa"] = self._pubmedqa()
        eval_dir = self.out / "evaluation"
        eval_dir.mkdir(exist_ok=True)
        (eval_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        write_manifest(eval_dir, build_manifest(
            "evaluation", "evaluation", inputs=[ref("policy", self.out / "policy"),
                                                ref("reward_model", self.out / "reward_model")],
            metrics=_flat_eval(evaluation)))
        return _flat_eval(evaluation)

    def _pubmedqa(self) -> dict[str, Any]:
        from align.medical_eval import evaluate_pubmedqa

        c = self.cfg
        before = evaluate_pubmedqa(c.policy, limit=c.pubmedqa_limit)
        after = evaluate_pubmedqa(c.policy, adapter=str(self.out / "policy"), limit=c.pubmedqa_limit)
        return {"before": before, "after": after}

    # -- the whole round -----------------------------------------------------------------------
    def run(self) -> Path:
        from align.recipe_utils import set_threads

        set_threads(self.cfg.num_threads)
        _prepare_dir(self.out)
        if self.config_path:
            self.inputs.append(ref("config:round", self.config_path))
        t0 = time.perf_counter()
        self._stage("1 generate candidate pairs", self.generate)
        self._stage("2 feedback (simulated annotator)", self.annotate)
        self._stage("3 export preference dataset", self.export)
        self._stage("4 reward model", self.reward)
        self._stage(f"5 policy ({self.cfg.policy_stage})", self.policy)
        self._stage("6 evaluation", self.evaluate)
        return self.write_manifest(time.perf_counter() - t0)

    def write_manifest(self, seconds: float) -> Path:
        outputs = [ref(name, self.out / name) for name in ("feedback.sqlite", "preferences", "reward_model", "policy", "evaluation")
                   if (self.out / name).exists()]
        store = SQLiteStore(self.out / "feedback.sqlite")
        by_annotator: dict[str, int] = {}
        for fb in store.iter_feedback():
            by_annotator[fb.annotator_id] = by_annotator.get(fb.annotator_id, 0) + 1
        store.close()
        agreement = json.loads((self.out / "preferences" / "agreement.json").read_text())
        metrics = {name: {k: v for k, v in s.items() if k not in ("path",)} for name, s in self.stages.items()}
        manifest = build_manifest("round", self.cfg.name, inputs=self.inputs, outputs=outputs,
                                  config=asdict(self.cfg), metrics=metrics | {"total_seconds": round(seconds, 1)},
                                  annotations={"feedback_by_annotator": by_annotator, "agreement": agreement,
                                               "simulated": any(a.startswith("simulated:") for a in by_annotator)})
        return write_manifest(self.out / "manifest.json", manifest)


def _flat_eval(evaluation: dict[str, Any]) -> dict[str, Any]:
    wr = evaluation["win_rate"]
    flat = {"win_rate": wr["win_rate"], "win_rate_ci95": wr["win_rate_ci95"], "n_prompts": wr["n_prompts"],
            "mean_reward_policy": wr["mean_reward_candidate"], "mean_reward_base": wr["mean_reward_baseline"]}
    if "pubmedqa" in evaluation:
        flat["pubmedqa_accuracy_before"] = evaluation["pubmedqa"]["before"]["accuracy"]
        flat["pubmedqa_accuracy_after"] = evaluation["pubmedqa"]["after"]["accuracy"]
        flat["pubmedqa_n"] = evaluation["pubmedqa"]["after"]["n"]
    return flat


def summary_table(manifest_path: Path) -> Table:
    m = json.loads(Path(manifest_path).read_text())
    table = Table(title=f"clinalign round '{m['name']}' — {manifest_path}", show_lines=True)
    table.add_column("stage", style="bold")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    for name, stage in m["metrics"].items():
        if not isinstance(stage, dict):
            continue
        shown = {k: v for k, v in stage.items() if k != "seconds"}
        text = "\n".join(f"{k} = {_fmt(v)}" for k, v in shown.items())
        table.add_row(name, text, str(stage.get("seconds", "")))
    for out in m["outputs"]:
        table.add_row(f"→ {out['role']}", out["path"], "")
    table.caption = ("feedback here is SIMULATED (annotator 'simulated:reference-overlap'), not clinicians'"
                     if m["annotations"].get("simulated") else None)
    return table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)
