"""Evaluate a reward model on held-out preference pairs (and optionally graded human ratings).

`evaluate_reward_model` scores every pair through `RewardScorer` (the training text format),
then computes pairwise accuracy with a bootstrap CI, calibration of P(chosen), length bias with
the prefer-longer / prefer-shorter baselines, a per-source breakdown and, given a rated set
(prompt, answer, grade), Spearman agreement with the grades. JSON out; `report.write_report`
turns the same dict into Markdown + a reliability PNG.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from annotation.atomic import write_json_atomic
from annotation.errors import InputError
from annotation.jsonl import read_jsonl
from reward_models import metrics as M

PROMPT_FIELDS = ("prompt", "question", "question_message")
RESPONSE_FIELDS = ("response", "answer", "completion")
RATING_FIELDS = ("rating", "score", "grade")
GROUP_FIELDS = ("prompt_id", "question_id", "livequestion_id")


def _words(text: str) -> int:
    return len(text.split())


def _pick(obj: dict, wanted: str | None, candidates: tuple[str, ...], *, path: str, line: int, what: str) -> str:
    names = (wanted,) if wanted else candidates
    for name in names:
        if name in obj:
            return name
    raise InputError(f"no {what} field (looked for {', '.join(names)})", path=path, line=line)


def load_rated(path: str, *, prompt_field: str | None = None, response_field: str | None = None,
               rating_field: str | None = None, limit: int | None = None) -> tuple[list[dict], dict]:
    """(items, fields used) from a JSONL of graded answers; every bad line is reported."""
    items: list[dict] = []
    fields: dict[str, str] = {}
    for line, obj in read_jsonl(path):
        if not fields:
            fields = {"prompt": _pick(obj, prompt_field, PROMPT_FIELDS, path=path, line=line, what="prompt"),
                      "response": _pick(obj, response_field, RESPONSE_FIELDS, path=path, line=line, what="response"),
                      "rating": _pick(obj, rating_field, RATING_FIELDS, path=path, line=line, what="rating")}
            fields["group"] = next((g for g in GROUP_FIELDS if g in obj), fields["prompt"])
        for role in ("prompt", "response"):
            value = obj.get(fields[role])
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"field '{fields[role]}' missing or empty", path=path, line=line)
        rating = obj.get(fields["rating"])
        if isinstance(rating, bool) or not isinstance(rating, int | float) or not math.isfinite(rating):
            raise InputError(f"rating '{fields['rating']}' must be a number, got {rating!r}", path=path, line=line)
        items.append({"prompt": obj[fields["prompt"]], "response": obj[fields["response"]],
                      "rating": float(rating), "group": str(obj.get(fields["group"], obj[fields["prompt"]]))})
        if limit and len(items) >= limit:
            break
    if not items:
        raise InputError("no rated answers in file", path=path)
    return items, fields


def _score(scorer, prompts: list[str], responses: list[str], label: str) -> list[float]:
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=len(prompts))
        return scorer.score(prompts, responses, progress=lambda n: bar.advance(task, n))


def evaluate_pairs(scorer, rows: list[dict], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    prompts = [r["prompt"] for r in rows]
    rc = _score(scorer, prompts, [r["chosen"] for r in rows], "scoring chosen")
    cut = scorer.n_cut
    rr = _score(scorer, prompts, [r["rejected"] for r in rows], "scoring rejected")
    cut += scorer.n_cut
    outcomes = M.pair_outcomes(rc, rr)
    p = M.p_chosen(rc, rr)
    ensemble = {}
    if hasattr(rc, "members"):  # an ensemble: its members, the spread, and whether the spread finds errors
        from reward_models.ensemble import spread_metrics

        ensemble = {"ensemble": spread_metrics(rc, rr)}
    return {
        **M.accuracy_with_ci(outcomes, n_boot=n_boot, seed=seed),
        "mean_p_chosen": float(p.mean()),
        "calibration": M.calibration(p),
        "length_bias": M.length_bias(outcomes, [_words(r["chosen"]) for r in rows],
                                     [_words(r["rejected"]) for r in rows], rc, rr),
        "by_source": M.by_source(outcomes, [r.get("source") or "unknown" for r in rows]),
        "reward_stats": {"chosen_mean": float(np.mean(rc)), "rejected_mean": float(np.mean(rr)),
                         "std": float(np.std(rc + rr)), "mean_margin": float(np.mean(np.subtract(rc, rr)))},
        "n_responses_cut": cut,
        **ensemble,
    }


def evaluate_rated(scorer, path: str, *, limit: int | None = None, n_boot: int = 1000, seed: int = 0,
                   **fields: str | None) -> dict[str, Any]:
    items, used = load_rated(path, limit=limit, **fields)
    scores = _score(scorer, [i["prompt"] for i in items], [i["response"] for i in items], "scoring rated")
    return {"path": str(path), "fields": used,
            **M.rating_agreement(scores, [i["rating"] for i in items], [i["group"] for i in items],
                                 n_boot=n_boot, seed=seed)}


def zero_shot_scorer(backbone: str, *, batch_size: int = 32):
    """A scorer whose reward is the backbone's own cosine(question, answer): the bi-encoder at step 0."""
    from transformers import AutoTokenizer

    from reward_models.backbones import BIENCODER_SEPARATOR, load_biencoder, resolve_backbone
    from reward_models.formatting import RewardFormat
    from reward_models.scoring import RewardScorer

    path = resolve_backbone(backbone)
    tok = AutoTokenizer.from_pretrained(path)
    seg = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2: the baseline as published
    fmt = RewardFormat(separator=BIENCODER_SEPARATOR, eos_token=tok.eos_token or tok.sep_token, max_length=16 * seg)
    model = load_biencoder(path, tok, segment_max_length=seg, dtype="float32")
    return RewardScorer(backbone, model=model, tokenizer=tok, fmt=fmt, batch_size=batch_size)


def evaluate_reward_model(model_dir: str, dataset: str, out_path: str | None = None, *, limit: int | None = None,
                          rated: str | None = None, rated_limit: int | None = None, report_dir: str | None = None,
                          batch_size: int = 32, allow_untrained: bool = False, n_boot: int = 1000,
                          seed: int = 0, zero_shot_cosine: bool = False) -> dict[str, Any]:
    """Held-out metrics of the reward model in `model_dir` on the preference pairs in `dataset`.

    With `zero_shot_cosine`, `model_dir` names a sentence-encoder backbone (e.g. builtin:minilm-l6)
    and the score is its untrained cosine(question, answer): the baseline a trained model must beat.
    Returns (and writes to `out_path` as JSON) at least {"accuracy", "n", "ci95"}; with `rated`
    also {"ratings": {"spearman", ...}}; with `report_dir` also report.md + reliability.png there.
    """
    from annotation.manifest import path_sha256
    from annotation.preferences import load_preference_rows
    from reward_models.scoring import load_scorer

    rows = load_preference_rows(dataset)
    if limit:
        rows = rows[:limit]
    if zero_shot_cosine:
        scorer = zero_shot_scorer(model_dir, batch_size=batch_size)
    else:
        scorer = load_scorer(model_dir, batch_size=batch_size, allow_untrained=allow_untrained)
    result: dict[str, Any] = {"model": str(model_dir), "dataset": str(dataset),
                              "scorer": "zero-shot cosine(question, answer) of the untrained backbone"
                              if zero_shot_cosine else "reward model",
                              "dataset_sha256": path_sha256(dataset), "limit": limit,
                              "max_length": scorer.fmt.max_length}
    result.update(evaluate_pairs(scorer, rows, n_boot=n_boot, seed=seed))
    if rated:
        result["ratings"] = evaluate_rated(scorer, rated, limit=rated_limit, n_boot=n_boot, seed=seed)
    if out_path:
        write_json_atomic(out_path, result)
    if report_dir:
        from reward_models.report import write_report

        write_report(result, report_dir)
    return result
