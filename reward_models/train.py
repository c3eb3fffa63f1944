"""Bradley–Terry reward-model training with TRL's RewardTrainer, from a TRL-native YAML file.

The YAML is parsed by `trl.TrlParser` into three dataclasses, as in TRL's own scripts:
`RewardScriptArguments` (data and text format), `trl.RewardConfig` (training), `trl.ModelConfig`
(backbone, LoRA). Pairs are tokenized by `reward_models.formatting.encode` (the same function the
scorer uses) before TRL sees them, so TRL's `max_length` filter has nothing left to drop: long
prompts are cut from the left and the counts are reported. The model is trained into a temporary
sibling folder and renamed into place at the end, so a failure never leaves half an output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotation.atomic import swap_into_place, temp_dir_beside
from annotation.errors import ClinalignError, InputError
from annotation.manifest import build_manifest, path_sha256, ref, write_manifest
from reward_models.backbones import BIENCODER_SEPARATOR, MINILM, load_biencoder, resolve_backbone
from reward_models.formatting import RewardFormat, encode, prepare_tokenizer

HELDOUT_FILE = "heldout_pairs.jsonl"


@dataclass
class RewardScriptArguments:
    """Data and text-format arguments of `clinalign reward train` (the YAML's non-TRL keys)."""

    dataset_path: str | None = field(default=None, metadata={
        "help": "Preference dataset folder (annotation export) or JSONL with prompt/chosen/rejected."})
    eval_dataset_path: str | None = field(default=None, metadata={
        "help": "Held-out preference pairs scored after training (never trained on)."})
    eval_fraction: float = field(default=0.0, metadata={
        "help": "Fraction of dataset_path held out for evaluation when eval_dataset_path is not given."})
    max_train_pairs: int | None = field(default=None, metadata={"help": "Use at most this many pairs."})
    separator: str = field(default="\n\n", metadata={"help": "Text between prompt and response."})
    min_prompt_tokens: int = field(default=16, metadata={
        "help": "Pairs whose response leaves less room than this for the prompt are dropped."})
    use_margin: bool = field(default=True, metadata={
        "help": "Subtract the dataset's margin column inside the Bradley–Terry loss (TRL's margin)."})
    margin_scale: float = field(default=1.0, metadata={"help": "Multiplier applied to the margin column."})
    merge_lora: bool = field(default=True, metadata={
        "help": "With use_peft: save the merged model (else the adapter, loaded with its base)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None: torch default)."})
    overwrite: bool = field(default=True, metadata={"help": "Replace an existing output_dir."})
    multi_objective: bool = field(default=False, metadata={
        "help": "Also train rating heads (accuracy/harm/completeness) from ratings_chosen/ratings_rejected."})
    rating_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the rating heads' MSE."})
    objective_weights: str = field(default='{"accuracy": 0.5, "completeness": 0.25}', metadata={
        "help": "JSON weights of the predicted ratings added to the reward in the combined scalar."})
    harm_threshold: float = field(default=3.5, metadata={
        "help": "Predicted harm (1-5, higher = more harmful) at or above which the hard penalty applies."})
    harm_penalty: float = field(default=-5.0, metadata={"help": "Combined scalar for a harmful answer."})
    pairs_recipe: str | None = field(default=None, metadata={
        "help": "Build training pairs from data_dir: 'medical' (reward_models/medical_pairs.py: right answer vs "
                "related, similar, random and truncated answers). Added to dataset_path's pairs when both are set."})
    data_dir: str = field(default="data", metadata={"help": "Folder with medquad/, kqa/, pubmedqa/ (pairs_recipe)."})
    dedupe_against: list[str] = field(default_factory=list, metadata={
        "help": "Evaluation JSONL files (any built pair whose answer overlaps their answers is dropped), or "
                "shipped exclusion lists (.json from `clinalign reward exclusions`: our overlapping answers)."})
    pair_sources: list[str] = field(default_factory=lambda: ["medquad", "kqa", "pubmedqa"], metadata={
        "help": "pairs_recipe medical: which of data_dir's sources to build pairs from."})
    n_mined: int = field(default=0, metadata={
        "help": "pairs_recipe medical, biencoder: hard negatives per question mined with the backbone itself "
                "(the other answers nearest to the question by cosine)."})
    n_similar: int = field(default=2, metadata={
        "help": "pairs_recipe medical: hard negatives per question from the most similar other-topic questions."})
    dedupe_threshold: float = field(default=0.3, metadata={
        "help": "Share of an answer's 8-word shingles found in an evaluation answer that counts as overlap."})
    reward_architecture: str = field(default="cross", metadata={
        "help": "cross: [CLS] prompt+response → linear head (random init). biencoder: scale * cos(question, "
                "answer) + bias over mean-pooled sentence embeddings, exactly the backbone's cosine at step 0. "
                "probe: a frozen causal LM's response-mean hidden state at one layer → linear head fitted in "
                "closed form, layer and L2 chosen by grouped cross-validation (reward_models/probe.py)."})
    probe_layers: list[int] = field(default_factory=lambda: [6, 10, 14, 18], metadata={
        "help": "probe: candidate backbone layers (the forward pass stops after the deepest)."})
    probe_penalties: list[float] = field(default_factory=lambda: [3.0, 1.0, 0.3, 0.1], metadata={
        "help": "probe: candidate L2 penalties of the head (on standardised features)."})
    probe_folds: int = field(default=5, metadata={"help": "probe: cross-validation folds, grouped by conversation."})
    probe_batch_size: int = field(default=8, metadata={"help": "probe: answers per forward pass."})
    cosine_scale: float = field(default=20.0, metadata={"help": "biencoder: initial scale of the cosine."})
    segment_max_length: int = field(default=256, metadata={
        "help": "biencoder: tokens per side (question, answer), cut from the right as sentence-transformers does."})
    early_stopping_patience: int | None = field(default=None, metadata={
        "help": "Stop after this many evaluations without improvement of metric_for_best_model (needs a held-out "
                "split and eval_strategy); the best checkpoint is the one saved."})


def _override_args(overrides: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Overrides as CLI arguments (typed by argparse); `None` values become config defaults."""
    cli: list[str] = []
    as_defaults: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            as_defaults[key] = None
        elif isinstance(value, list | tuple):
            cli += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            cli += [f"--{key}", json.dumps(value)]
        else:
            cli += [f"--{key}", str(value)]
    return cli, as_defaults


def parse_config(path: str, overrides: dict[str, Any] | None = None):
    """(RewardScriptArguments, RewardConfig, ModelConfig) from a YAML file plus overrides."""
    import yaml
    from trl import ModelConfig, RewardConfig, TrlParser

    cfg_path = Path(path)
    if not cfg_path.is_file():
        raise InputError("config file not found", path=path)
    try:
        config = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid YAML ({exc})", path=path) from None
    if not isinstance(config, dict):
        raise InputError("config must be a YAML mapping of argument: value", path=path)
    for key, value in (config.pop("env", None) or {}).items():
        os.environ[key] = str(value)
    cli, as_defaults = _override_args(dict(overrides or {}))
    config.update(as_defaults)
    parser = TrlParser((RewardScriptArguments, RewardConfig, ModelConfig))
    unknown = parser.set_defaults_with_config(**config)
    if unknown:
        raise InputError(f"unknown keys {unknown[::2]} (not in RewardScriptArguments, trl.RewardConfig "
                         f"or trl.ModelConfig)", path=path)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):  # argparse prints its whole usage before exiting
            script, train_args, model_args = parser.parse_args_into_dataclasses(args=cli)
    except SystemExit:
        reason = (errors.getvalue().strip().splitlines() or ["invalid value"])[-1].split("error: ", 1)[-1]
        raise InputError(f"invalid override ({reason})", path=path) from None
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc), path=path) from None
    return script, train_args, model_args


def split_rows(rows: list[dict], script: RewardScriptArguments, seed: int) -> tuple[list[dict], list[dict]]:
    if script.eval_dataset_path:
        from annotation.preferences import load_preference_rows

        return rows, load_preference_rows(script.eval_dataset_path)
    if not 0.0 <= script.eval_fraction < 1.0:
        raise InputError(f"eval_fraction must be in [0, 1), got {script.eval_fraction}")
    if script.eval_fraction == 0.0:
        return rows, []
    # By prompt (or topic group): no prompt's pairs on both sides, so validation measures new questions.
    groups = sorted({_group(r) for r in rows})
    random.Random(seed).shuffle(groups)
    held = set(groups[:max(1, round(len(groups) * script.eval_fraction))])
    return [r for r in rows if _group(r) not in held], [r for r in rows if _group(r) in held]


def _group(row: dict) -> str:
    return str(row.get("group") or row.get("prompt_id") or row["prompt"])


def encode_pairs(rows: list[dict], tokenizer, fmt: RewardFormat, script: RewardScriptArguments,
                 ratings: tuple[list, list] | None = None, keep_index: bool = False) -> tuple[dict, dict]:
    """Columns for TRL (chosen_ids, rejected_ids[, margin][, ratings_*]) and the truncation counts
    (keep_index: also stats["kept"], the indices of the rows that were not dropped)."""
    from rich.progress import track

    cols: dict[str, list] = {"chosen_ids": [], "rejected_ids": [], "margin": [],
                             "ratings_chosen": [], "ratings_rejected": []}
    stats: dict[str, Any] = {"n_pairs": len(rows), "n_prompt_truncated": 0, "n_dropped_too_long": 0}
    kept: list[int] = []
    for i, row in enumerate(track(rows, description="Tokenizing pairs", transient=True)):
        c = encode(tokenizer, row["prompt"], row["chosen"], fmt)
        r = encode(tokenizer, row["prompt"], row["rejected"], fmt)
        if c.too_long or r.too_long:
            stats["n_dropped_too_long"] += 1
            continue
        stats["n_prompt_truncated"] += int(c.prompt_cut or r.prompt_cut)
        kept.append(i)
        cols["chosen_ids"].append(c.input_ids)
        cols["rejected_ids"].append(r.input_ids)
        cols["margin"].append(float(row.get("margin") or 0.0) * script.margin_scale)
        if ratings is not None:
            cols["ratings_chosen"].append(ratings[0][i])
            cols["ratings_rejected"].append(ratings[1][i])
    if not script.use_margin:
        del cols["margin"]
    if ratings is None:
        del cols["ratings_chosen"], cols["ratings_rejected"]
    stats["n_used"] = len(cols["chosen_ids"])
    if keep_index:
        stats["kept"] = kept
    return cols, stats


def pairwise_accuracy(model, tokenizer, fmt: RewardFormat, rows: list[dict], *, batch_size: int = 32) -> dict:
    """Held-out accuracy of an in-memory model through the scorer's own path."""
    from reward_models.scoring import RewardScorer

    scorer = RewardScorer("<in-memory>", model=model, tokenizer=tokenizer, fmt=fmt, batch_size=batch_size,
                          device=next(model.parameters()).device)
    chosen = scorer.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = scorer.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]
    return {"accuracy": sum(wins) / len(wins), "n": len(wins),
            "mean_margin": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(wins)}


def _multi_objective_setup(script: RewardScriptArguments, rows: list[dict], model, config_path: str):
    from reward_models.multi_objective import MultiObjectiveSpec, feature_size, rating_columns

    try:
        weights = json.loads(script.objective_weights)
    except json.JSONDecodeError as exc:
        raise InputError(f"objective_weights is not JSON ({exc.msg})", path=config_path) from None
    spec = MultiObjectiveSpec(rating_loss_weight=script.rating_loss_weight, weights=weights,
                              harm_threshold=script.harm_threshold, harm_penalty=script.harm_penalty,
                              hidden_size=feature_size(model))
    unknown = sorted(set(weights) - set(spec.attributes))
    if unknown:
        raise InputError(f"objective_weights names unknown attributes {unknown}", path=config_path)
    chosen, rejected, n_rated = rating_columns(rows, spec.attributes, script.dataset_path)
    if n_rated == 0:
        raise InputError("multi_objective is set but no pair carries ratings_chosen/ratings_rejected",
                         path=script.dataset_path)
    return spec, (chosen, rejected)


def _count_rated(ratings: tuple[list, list]) -> int:
    import math

    return sum(any(not math.isnan(x) for x in c + r) for c, r in zip(*ratings, strict=True))


def _rating_eval(model_dir: Path, rows: list[dict], spec) -> dict:
    """Held-out error of the rating heads (on rated eval pairs) and accuracy of the combined scalar."""
    import math

    from reward_models.multi_objective import rating_columns
    from reward_models.scoring import RewardScorer

    scorer = RewardScorer(str(model_dir))
    prompts = [r["prompt"] for r in rows]
    det_c = scorer.score_detailed(prompts, [r["chosen"] for r in rows])
    det_r = scorer.score_detailed(prompts, [r["rejected"] for r in rows])
    truth_c, truth_r, _ = rating_columns(rows, spec.attributes, "eval")
    out: dict[str, Any] = {"eval_combined_accuracy": sum(
        1.0 if c["combined"] > r["combined"] else 0.5 if c["combined"] == r["combined"] else 0.0
        for c, r in zip(det_c, det_r, strict=True)) / len(rows)}
    for j, attr in enumerate(spec.attributes):
        errs = [abs(d["ratings"][attr] - t[j]) for dets, truths in ((det_c, truth_c), (det_r, truth_r))
                for d, t in zip(dets, truths, strict=True) if not math.isnan(t[j])]
        if errs:
            out[f"eval_{attr}_mae"] = sum(errs) / len(errs)
    return out


def _load_backbone(model_args, train_args, script: RewardScriptArguments):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = model_args.model_name_or_path or MINILM
    path = resolve_backbone(spec)
    dtype = getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else "auto"
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=train_args.trust_remote_code)
    if script.reward_architecture == "biencoder":
        model = load_biencoder(path, tok, cosine_scale=script.cosine_scale,
                               segment_max_length=script.segment_max_length, dtype=dtype)
    elif script.reward_architecture == "cross":
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=dtype, trust_remote_code=train_args.trust_remote_code,
            attn_implementation=model_args.attn_implementation)
    else:
        raise InputError(f"reward_architecture must be 'cross', 'biencoder' or 'probe', "
                         f"got {script.reward_architecture!r}")
    return spec, path, tok, model


def load_rows(script: RewardScriptArguments, config_path: str, seed: int,
               embed=None) -> tuple[list[dict], dict]:
    """The training rows: dataset_path's pairs plus the built recipe's (pairs_recipe)."""
    from annotation.preferences import load_preference_rows

    if not script.dataset_path and not script.pairs_recipe:
        raise InputError("neither dataset_path nor pairs_recipe is set", path=config_path)
    rows = load_preference_rows(script.dataset_path) if script.dataset_path else []
    built: dict = {}
    if script.pairs_recipe == "medical":
        from reward_models.medical_pairs import medical_pairs

        extra, built = medical_pairs(script.data_dir, dedupe_against=script.dedupe_against, seed=seed,
                                     threshold=script.dedupe_threshold, sources=script.pair_sources,
                                     n_similar=script.n_similar, embed=embed, n_mined=script.n_mined)
        rows = rows + extra
    elif script.pairs_recipe:
        raise InputError(f"unknown pairs_recipe {script.pairs_recipe!r} (known: medical)", path=config_path)
    if script.max_train_pairs:
        rows = rows[:script.max_train_pairs]
    return rows, {f"pairs_{k}": v for k, v in built.items()}


def _miner(script: RewardScriptArguments, model, tok, config_path: str):
    """texts → embeddings with the untrained backbone, for mining hard negatives (n_mined)."""
    if not script.n_mined:
        return None
    if script.reward_architecture != "biencoder":
        raise InputError("n_mined needs reward_architecture: biencoder (negatives mined by its cosine)",
                         path=config_path)
    from reward_models.backbones import embed_texts

    return lambda texts: embed_texts(model, tok, texts)


def reward_format(script: RewardScriptArguments, train_args, tok, config_path: str) -> RewardFormat:
    if script.reward_architecture == "biencoder":
        # Each side is cut inside the model (segment_max_length); the joint text only has to keep both.
        max_length = train_args.max_length or 8 * script.segment_max_length
        fmt = RewardFormat(separator=BIENCODER_SEPARATOR, eos_token=train_args.eos_token, max_length=max_length,
                           min_prompt_tokens=min(script.min_prompt_tokens, max_length // 4))
    else:
        max_length = train_args.max_length or min(512, tok.model_max_length)
        fmt = RewardFormat(separator=script.separator, eos_token=train_args.eos_token, max_length=max_length,
                           min_prompt_tokens=script.min_prompt_tokens)
    try:
        prepare_tokenizer(tok, fmt)
    except ValueError as exc:
        raise InputError(str(exc), path=config_path) from None
    train_args.eos_token, train_args.max_length = tok.eos_token, max_length
    return dataclasses.replace(fmt, eos_token=tok.eos_token)


def work_dir(out: Path) -> Path:
    """Where a run's checkpoints live until the model is in place: one fixed name beside `out`.

    Fixed, not random, so that every rank derives the same folder without talking to rank 0 and a
    killed run's checkpoints are found again by `resume_from_checkpoint: true`.
    """
    return out.parent / f".{out.name}.partial"


def find_checkpoint(resume: str | bool | None, out: Path) -> str | None:
    """The checkpoint to resume from: a path as given, or for true the newest in the work folder
    (a killed run) or in the finished model's checkpoints/ folder."""
    if resume in (None, False, "", "false", "False"):
        return None
    if resume not in (True, "true", "True"):
        if not Path(str(resume)).is_dir():
            raise InputError("resume_from_checkpoint is not a checkpoint folder", path=str(resume))
        return str(resume)
    for folder in (work_dir(out), out / "checkpoints"):
        if last := _last_complete_checkpoint(folder):
            return last
    raise InputError(f"resume_from_checkpoint: true, but no checkpoint-* under {work_dir(out)} or "
                     f"{out / 'checkpoints'}", path=str(out))


def _last_complete_checkpoint(folder: Path) -> str | None:
    """The highest-step checkpoint-N whose trainer_state.json exists: the Trainer writes that file last,
    so a run killed while saving leaves a checkpoint without it, which must not be resumed from."""
    done = [p for p in folder.glob("checkpoint-*") if p.name.rsplit("-", 1)[-1].isdigit()
            and (p / "trainer_state.json").is_file()] if folder.is_dir() else []
    return str(max(done, key=_step_of)) if done else None


def _encode_eval(rows: list[dict], tok, fmt: RewardFormat, script: RewardScriptArguments):
    from datasets import Dataset

    cols, _ = encode_pairs(rows, tok, fmt, script)
    return Dataset.from_dict(cols) if cols["chosen_ids"] else None


def _make_trainer(script, train_args, model, tok, cols: dict, eval_ds, peft_config, mo_spec):
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import RewardTrainer

    kwargs = dict(model=model, args=train_args, train_dataset=Dataset.from_dict(cols), processing_class=tok,
                  peft_config=peft_config, eval_dataset=eval_ds)
    if script.early_stopping_patience:
        if eval_ds is None or train_args.eval_strategy == "no":
            raise InputError("early_stopping_patience needs held-out pairs (eval_fraction or eval_dataset_path) "
                             "and eval_strategy: steps or epoch")
        train_args.load_best_model_at_end = True
        kwargs["callbacks"] = [EarlyStoppingCallback(early_stopping_patience=script.early_stopping_patience)]
    if mo_spec is None:
        return RewardTrainer(**kwargs)
    from reward_models.multi_objective import MultiObjectiveCollator, MultiObjectiveRewardTrainer, RatingHead

    head = RatingHead(mo_spec.hidden_size, len(mo_spec.attributes))
    return MultiObjectiveRewardTrainer(**kwargs, rating_head=head, rating_loss_weight=script.rating_loss_weight,
                                       data_collator=MultiObjectiveCollator(pad_token_id=tok.pad_token_id))


def train_from_yaml(path: str, overrides: dict[str, Any] | None = None) -> Path:
    """Train a reward model as configured in `path` (+ CLI-style overrides); return its folder.

    Checkpoints (save_strategy) go to a fixed work folder beside the output; the finished model is
    assembled in a temporary sibling, the checkpoints move into its `checkpoints/`, and it is
    renamed into place. On several ranks every rank trains, rank 0 alone writes, the others wait.
    """
    import torch
    from trl import get_peft_config

    script, train_args, model_args = parse_config(path, overrides)
    if script.num_threads:
        torch.set_num_threads(script.num_threads)
    if script.reward_architecture == "probe":
        from reward_models.probe_train import train_probe

        return train_probe(path, script, train_args, model_args)
    if not torch.cuda.is_available() and train_args.activation_checkpointing:
        # 3-4x slower on CPU and saves nothing we need (transformers 5 mirrors the old name)
        train_args.activation_checkpointing = train_args.gradient_checkpointing = False
    if not torch.cuda.is_available():
        train_args.dataloader_pin_memory = False  # nothing to pin for; avoids a warning per epoch
    out = Path(train_args.output_dir)
    if out.exists() and not script.overwrite:
        raise ClinalignError(f"output_dir '{out}' exists (set overwrite: true to replace it)")
    resume = find_checkpoint(train_args.resume_from_checkpoint, out)

    from transformers import set_seed

    set_seed(train_args.seed)  # the fresh head's init too, so a run (and a resumed one) is reproducible
    spec, backbone_path, tok, model = _load_backbone(model_args, train_args, script)
    rows, built = load_rows(script, path, train_args.seed, embed=_miner(script, model, tok, path))
    train_rows, eval_rows = split_rows(rows, script, train_args.seed)
    fmt = reward_format(script, train_args, tok, path)
    mo_spec, ratings = None, None
    if script.multi_objective:
        mo_spec, ratings = _multi_objective_setup(script, train_rows, model, path)
    cols, stats = encode_pairs(train_rows, tok, fmt, script, ratings)
    if stats["n_used"] < 1:
        raise InputError(f"no training pairs left after cutting to max_length={fmt.max_length} "
                         f"({stats['n_dropped_too_long']} dropped as too long)", path=script.dataset_path or path)
    eval_ds = _encode_eval(eval_rows, tok, fmt, script) if eval_rows and train_args.eval_strategy != "no" else None

    peft_config = None
    if model_args.use_peft:
        if model_args.lora_task_type == "CAUSAL_LM":
            model_args.lora_task_type = "SEQ_CLS"  # a reward model is a sequence classifier
        peft_config = get_peft_config(model_args)

    work = work_dir(out)
    if resume is None and int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(work, ignore_errors=True)  # a fresh run: an earlier run's checkpoints are not ours
    train_args.output_dir = str(work)
    trainer = _make_trainer(script, train_args, model, tok, cols, eval_ds, peft_config, mo_spec)
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except BaseException:
        if trainer.accelerator.is_main_process and not any(work.glob("checkpoint-*")):
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume from: leave no trace
        raise
    elapsed = time.perf_counter() - started
    final = trainer.model
    if model_args.use_peft and script.merge_lora:
        final = final.merge_and_unload()
    metrics: dict[str, Any] = {
        **stats, **built, "train_loss": result.training_loss, "global_step": result.global_step,
        "train_seconds": round(elapsed, 2), "resumed_from": resume,
        "seconds_per_step": round(elapsed / max(result.global_step - _step_of(resume), 1), 4)}
    metrics.update(_train_log_metrics(trainer))
    for holder in {id(trainer.model): trainer.model, id(final): final}.values():
        if "rating_head" in getattr(holder, "_modules", {}):
            del holder.rating_head  # saved on its own, beside the HF model
    if eval_rows:
        held = pairwise_accuracy(final, tok, fmt, eval_rows)
        metrics.update({"eval_accuracy": held["accuracy"], "eval_n": held["n"],
                        "eval_mean_margin": held["mean_margin"]})
    if trainer.accelerator.is_main_process:
        save_model_folder(getattr(trainer, "rating_head", None), final, tok, fmt, out, work, metrics, mo_spec,
                          ratings, eval_rows, (path, script, train_args, model_args, spec, backbone_path))
    trainer.accelerator.wait_for_everyone()  # the others return once rank 0 has put the model in place
    return out


def _place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder into place (an old one only with overwrite: true)."""
    if out.exists() and not overwrite:
        raise ClinalignError(f"output_dir '{out}' exists (set overwrite: true to replace it)")
    swap_into_place(tmp, out)


def _step_of(checkpoint: str | Path | None) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0


def _train_log_metrics(trainer) -> dict:
    out: dict[str, Any] = {}
    for key in ("accuracy", "margin", "rating_mse"):  # TRL's running train metrics, last logged value
        logged = [h[key] for h in trainer.state.log_history if key in h]
        if logged:
            out[f"train_{key}_last_log"] = logged[-1]
    if trainer.state.best_model_checkpoint:
        out["best_checkpoint"] = Path(trainer.state.best_model_checkpoint).name
        out["best_metric"] = trainer.state.best_metric
    return out


def save_model_folder(rating_head, final, tok, fmt: RewardFormat, out: Path, work: Path, metrics: dict, mo_spec,
                      ratings, eval_rows: list[dict], manifest_args: tuple,
                      trainer_name: str = "trl.RewardTrainer (Bradley-Terry)") -> None:
    """Rank 0: model, tokenizer, format, checkpoints and manifest into a temp sibling, then swapped in."""
    tmp = temp_dir_beside(out)
    try:
        final.config.pad_token_id = tok.pad_token_id
        final.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        fmt.save(tmp)
        if mo_spec is not None:
            from reward_models.multi_objective import save_head

            save_head(rating_head, mo_spec, tmp)
            metrics["n_rated_pairs"] = _count_rated(ratings)
            if eval_rows:
                metrics.update(_rating_eval(tmp, eval_rows, mo_spec))
        if eval_rows:  # the validation pairs by prompt, so `reward eval --data` can score the same split
            with open(tmp / HELDOUT_FILE, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in eval_rows)
        _write_manifest(tmp, out, *manifest_args, metrics, trainer_name)
        if any(work.glob("checkpoint-*")):  # kept, so a finished run can be continued (resume: true)
            os.replace(work, tmp / "checkpoints")
        _place(tmp, out, manifest_args[1].overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def _write_manifest(tmp: Path, out: Path, config_path: str, script, train_args, model_args, spec: str,
                    backbone_path: str, metrics: dict, trainer_name: str) -> None:
    inputs = [ref("config", config_path)]
    if script.dataset_path:
        inputs.append(ref("train_data", script.dataset_path))
    if script.pairs_recipe:  # the files the pairs were built from, and those read only to dedupe against
        from reward_models.medical_pairs import source_files

        inputs += [ref(f"train_data:{name}", p) for name, p in source_files(script.data_dir).items()
                   if name in script.pair_sources]
        inputs += [ref("dedupe_against", p) for p in script.dedupe_against]
    if script.eval_dataset_path:
        inputs.append(ref("eval_data", script.eval_dataset_path))
    if not spec.startswith("builtin:") or spec == MINILM:
        inputs.append(ref("base_model", backbone_path))
    train_cfg = {k: v for k, v in train_args.to_dict().items() if not k.startswith("_")}
    train_cfg["output_dir"] = str(out)
    manifest = build_manifest(
        "reward_model", out.name, inputs=inputs,
        outputs=[{"role": "reward_model", "path": str(out), "sha256": path_sha256(tmp)}],
        config={"script": dataclasses.asdict(script), "training": train_cfg,
                "model": dataclasses.asdict(model_args)},
        metrics=metrics, annotations={"base_model": spec, "trainer": trainer_name})
    write_manifest(tmp, manifest)
