"""Reward-model ensembles: k members trained with different seeds, scored as mean and spread.

`clinalign reward train --members k` trains members into `<out>/member-<i>` (seed + i each) and
then writes `<out>/ensemble.json` (members, their seeds, hashes and metrics) and a lineage
manifest. ensemble.json is written only once every member is trained: a run killed half-way
leaves no folder that reads as an ensemble. `EnsembleScorer` loads such a folder (or a single model, spread 0) and is a drop-in for
`RewardScorer`: `score()` returns the members' mean reward per item as a list of floats that also
carries `.spread` (population std over members) and `.members` (each member's rewards).

Why the spread: members agree where the data pinned the reward down and disagree where it did not,
so the spread (and the disagreement on a pair's margin) is what active selection asks clinicians
to label first, and what a policy optimiser should not trust.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clinalign_base.atomic import write_json_atomic
from clinalign_base.errors import ClinalignError, InputError
from clinalign_base.manifest import build_manifest, path_sha256, read_manifest, ref, write_manifest
from reward_models.scoring import ENSEMBLE_MANIFEST, RewardScorer, is_ensemble

SCHEMA = "clinalign.reward_ensemble/1"


class EnsembleScores(list):
    """Mean reward per item (a plain list of floats to any caller), with the ensemble's detail."""

    def __init__(self, members: Sequence[Sequence[float]]):
        m = np.asarray(members, dtype=float)  # (k, n)
        super().__init__(m.mean(axis=0).tolist())
        self.members: list[list[float]] = m.tolist()
        self.spread: list[float] = m.std(axis=0).tolist()


def member_paths(model_path: str | Path) -> list[str]:
    """The member folders of an ensemble folder, in order; a single model is its own one member."""
    path = Path(model_path)
    if not is_ensemble(path):
        return [str(model_path)]
    manifest_path = path / ENSEMBLE_MANIFEST
    try:
        spec = json.loads(manifest_path.read_text())
        members = [str(path / m["path"]) for m in spec["members"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a valid ensemble manifest ({exc})", path=str(manifest_path)) from None
    if not members:
        raise InputError("ensemble lists no members", path=str(manifest_path))
    missing = [m for m in members if not Path(m).is_dir()]
    if missing:
        raise InputError(f"ensemble member folder missing: {missing[0]}", path=str(manifest_path))
    return members


class EnsembleScorer:
    """Scores with every member; `score` is the mean (drop-in for RewardScorer.score)."""

    def __init__(self, model_path: str, *, members: Sequence[RewardScorer] | None = None, **kwargs: Any):
        """Load an ensemble folder (or one model: spread 0); `members` may be passed in-memory.
        kwargs go to each member's RewardScorer (device, batch_size, max_length, allow_untrained)."""
        self.path = str(model_path)
        self.members = list(members) if members is not None else \
            [RewardScorer(p, **kwargs) for p in member_paths(model_path)]
        if not self.members:
            raise ClinalignError("an ensemble needs at least one member")
        first = self.members[0]
        self.fmt, self.tokenizer, self.max_length = first.fmt, first.tokenizer, first.max_length
        self.batch_size = first.batch_size
        self.n_cut = 0

    def __len__(self) -> int:
        return len(self.members)

    def score(self, prompts: Sequence[str], responses: Sequence[str], *,
              progress: Callable[[int], None] | None = None) -> EnsembleScores:
        """Mean reward per item; `.spread` and `.members` ride along. `progress` adds up to the number
        of items (each member reports its share)."""
        k = len(self.members)
        share = None if progress is None else (lambda n: progress(n / k))
        out = []
        for member in self.members:
            out.append(member.score(prompts, responses, progress=share))
        self.n_cut = max(m.n_cut for m in self.members)
        return EnsembleScores(out)

    def score_with_spread(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[float], list[float]]:
        s = self.score(prompts, responses)
        return list(s), s.spread

    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        """The first member's features (members share the backbone's architecture; one pass is enough
        to say which pairs are typical)."""
        return self.members[0].features(prompts, responses)


def pair_disagreement(chosen: EnsembleScores, rejected: EnsembleScores) -> np.ndarray:
    """Per pair, the std over members of the margin r(chosen) - r(rejected)."""
    return (np.asarray(chosen.members) - np.asarray(rejected.members)).std(axis=0)


def spread_metrics(chosen: EnsembleScores, rejected: EnsembleScores, *, n_bins: int = 10) -> dict[str, Any]:
    """What evaluation reports for an ensemble: its members, the spread, and whether the spread
    points at the pairs the ensemble gets wrong (it should, to be worth a clinician's label)."""
    from reward_models import metrics as M

    margins = np.asarray(chosen.members) - np.asarray(rejected.members)  # (k, n)
    mean_margin = margins.mean(axis=0)
    correct = np.where(mean_margin > 0, 1.0, np.where(mean_margin == 0, 0.5, 0.0))
    disagreement = margins.std(axis=0)
    p_members = 1 / (1 + np.exp(-margins))
    out: dict[str, Any] = {
        "k": int(margins.shape[0]),
        "member_accuracy": [float(np.mean(np.where(m > 0, 1.0, np.where(m == 0, 0.5, 0.0)))) for m in margins],
        "mean_reward_spread": float(np.mean(chosen.spread + rejected.spread)),
        "mean_margin_spread": float(disagreement.mean()),
        # the members' mean probability, an alternative to sigmoid(mean reward); usually better calibrated
        "calibration_mean_member_p": M.calibration(p_members.mean(axis=0), n_bins=n_bins),
    }
    if len(correct) >= 4 and disagreement.std() > 0:
        high = disagreement >= np.median(disagreement)
        out["accuracy_low_spread_half"] = float(correct[~high].mean()) if (~high).any() else math.nan
        out["accuracy_high_spread_half"] = float(correct[high].mean())
        errors = 1 - correct
        out["spread_error_auroc"] = _auroc(disagreement, errors > 0.5) if 0 < errors.sum() < len(errors) else None
    return out


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties half (Mann-Whitney)."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# -- training -------------------------------------------------------------------------------------
def _prepare_folder(out: Path, k: int) -> None:
    """An existing ensemble is retrained in place (its manifest removed first, so a half-finished
    retrain never reads as the old ensemble); any other non-empty folder is refused."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise ClinalignError(f"output_dir '{out}' exists and is not a folder")
    if is_ensemble(out):
        (out / ENSEMBLE_MANIFEST).unlink()
        for stale in out.glob("member-*"):
            if stale.is_dir() and stale.name.split("-", 1)[1].isdigit() and int(stale.name.split("-", 1)[1]) >= k:
                shutil.rmtree(stale)
        return
    if any(out.iterdir()):
        raise ClinalignError(f"output_dir '{out}' exists and is not an ensemble folder: choose a new folder "
                             "for --members (a single reward model is not overwritten by an ensemble)")


def train_ensemble(config: str, overrides: dict[str, Any], k: int,
                   train: Callable[[str, dict[str, Any]], Path] | None = None) -> Path:
    """Train `k` members of `config` (seeds seed, seed+1, ...) into <output_dir>/member-<i>; write the
    ensemble manifest. `train` is `reward_models.train.train_from_yaml` (replaceable in tests)."""
    from reward_models.train import parse_config

    if k < 2:
        raise ClinalignError(f"an ensemble needs at least 2 members, got --members {k}")
    if train is None:
        from reward_models.train import train_from_yaml as train
    script, train_args, _ = parse_config(config, overrides)
    if script.reward_architecture == "probe":
        raise InputError("reward_architecture probe is fitted in closed form: members with other seeds would be "
                         "the same model, and their spread no uncertainty", path=config)
    out, seed = Path(train_args.output_dir), int(train_args.seed)
    _prepare_folder(out, k)
    members = []
    for i in range(k):
        member_dir = train(config, {**overrides, "seed": seed + i, "output_dir": str(out / f"member-{i}")})
        metrics = _metrics(member_dir)
        members.append({"path": f"member-{i}", "seed": seed + i, "sha256": path_sha256(member_dir),
                        "metrics": metrics})
    spec = {"schema": SCHEMA, "members": members, "aggregate": "mean", "spread": "std over members",
            "config": str(config), "overrides": {k_: v for k_, v in overrides.items() if k_ != "output_dir"}}
    write_json_atomic(out / ENSEMBLE_MANIFEST, spec)  # only once every member is trained
    write_manifest(out, build_manifest(
        "reward_ensemble", out.name, inputs=[ref("config", config)] + [ref(f"member-{i}", out / m["path"])
                                                                     for i, m in enumerate(members)],
        outputs=[{"role": "reward_ensemble", "path": str(out), "sha256": path_sha256(out)}],
        config={"members": k, "seeds": [m["seed"] for m in members], "overrides": spec["overrides"]},
        metrics=_ensemble_metrics(members), annotations={"aggregate": "mean reward; spread = std over members"}))
    return out


def _metrics(member_dir: Path) -> dict[str, Any]:
    try:
        return read_manifest(member_dir).get("metrics", {})
    except (OSError, ValueError):
        return {}


def _ensemble_metrics(members: list[dict]) -> dict[str, Any]:
    """Per-member training metrics side by side (held-out accuracy when the config has eval data)."""
    out: dict[str, Any] = {"members": len(members)}
    for key in ("eval_accuracy", "train_loss", "seconds_per_step", "global_step"):
        values = [m["metrics"][key] for m in members if key in m["metrics"]]
        if values:
            out[f"member_{key}"] = values
    return out
