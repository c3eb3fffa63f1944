"""Re-run a pilot round's policy and evaluation stages with other policy settings (rm_val only).

    .venv/bin/python scripts/pilot_policy.py --from runs/pilot3 --out runs/pilot_beta03 \
        --dpo '{"beta": 0.3, "learning_rate": 2.5e-4, "num_train_epochs": 1}'

Hyperparameter pilots need the same candidates, feedback and reward model and differ only in the
policy stage, so this copies the finished round's split, prompts, preferences and reward model, then
runs stages 7 (policy) and 8 (evaluation) of `clinalign demo --config configs/demo/round_pilot.yaml`.
It refuses a round whose evaluation split is `test`: settings are chosen on validation prompts only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from align.round import Round
from align.round_config import RoundConfig

COPIED = ("split.json", "prompts", "preferences", "preferences_rm_val", "reward_model", "feedback.sqlite")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", required=True, help="A finished pilot round's output folder.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default="configs/demo/round_pilot.yaml")
    ap.add_argument("--dpo", default="{}", help="JSON: DPO overrides on top of the round config's.")
    ap.add_argument("--round", default="{}", help="JSON: round config overrides (e.g. pubmedqa_limit).")
    args = ap.parse_args()
    cfg = RoundConfig.load(args.config, {"output_dir": args.out, **json.loads(args.round)})
    if cfg.eval_split != "rm_val":
        sys.exit(f"{args.config}: eval_split is {cfg.eval_split!r}; pilots evaluate on rm_val only")
    cfg.dpo_overrides = {**cfg.dpo_overrides, **json.loads(args.dpo)}
    src, out = Path(args.src), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in COPIED:
        (shutil.copytree if (src / name).is_dir() else shutil.copy2)(src / name, out / name)
    rnd = Round(cfg, args.config)
    rnd.split()  # deterministic: the same prompts as the source round (checked below)
    if json.loads((src / "split.json").read_text())["used_this_round"] != \
            json.loads((out / "split.json").read_text())["used_this_round"]:
        sys.exit(f"{src}: its split differs from {args.config}'s")
    for name, stage in (("policy", rnd.policy), ("evaluation", rnd.evaluate)):
        t0 = time.perf_counter()
        result = stage()
        print(json.dumps({"stage": name, "seconds": round(time.perf_counter() - t0, 1),
                          **{k: v for k, v in result.items() if not isinstance(v, (dict, list)) or k.endswith("ci95")}}),
              flush=True)


if __name__ == "__main__":
    main()
