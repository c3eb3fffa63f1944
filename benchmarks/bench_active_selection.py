"""Active vs random selection of pairs to label: reward-model held-out accuracy per number of labels.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/bench_active_selection.py \
        --plot docs/img/active_selection.png --out runs/bench_active_selection/result_10seeds.json

The labeller is the demo's simulated clinician (annotation/simulated.py, `simulated:clinician-v2`), so
this measures how many *simulated* labels each strategy needs, not clinicians' time.

Pool: the 500 MedQuAD questions of data/medquad, split by question into a labelling pool (350) and a
held-out test set (150). Each question gets cheap drafts built from expert answers: the reference
itself, its first half cut mid-sentence, its first sentences only, the reference of another question
of the same type (an answer to a related but different question), the reference with its words
shuffled, its first sentences repeated, and half of it followed by half of the other answer. Six
pairs of drafts per question, labelled by the simulated clinician (ties dropped).

Reward model: MiniLM (the reward backbone, `builtin:minilm-l6`) kept frozen; a Bradley-Terry
logistic head on the difference of the two answers' features (answer embedding, answer x question
embedding, cosine(question, answer), log length, finished-sentence flag, distinct-trigram share).
Fine-tuning MiniLM once per labelling round (20 rounds x 3 arms x seeds) does not fit on 2 CPU cores;
the frozen backbone makes the study feasible and isolates the selection rule.

Arms, all starting from the same 20 random labels per seed and adding 20 per round:
- random: the next pairs in a random order;
- density: `annotation.active_selection.rank_candidates` with its defaults (what `clinalign annotate
  select` runs) on a 5-member bootstrap ensemble of heads: entropy of the members' mean P(a) times the
  pair's representativeness (mean squared cosine of its feature difference to the unlabelled pool),
  one pair per question per round;
- active: the same without the representativeness weight (entropy of the members' mean P(a) only);
- active-bald: the same plus the members' disagreement (mutual information, `--disagreement-weight 1`);
- uncertainty: the same rule with one head (entropy of its P(a)).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MEDQUAD = ROOT / "data" / "medquad" / "medquad_prompts_500.jsonl"
CACHE = ROOT / "runs" / "bench_active_selection"

from annotation.active_selection import Candidate, rank_candidates  # noqa: E402
from annotation.records import CandidatePair  # noqa: E402
from annotation.simulated import judge  # noqa: E402

ARMS = {
    "random": "random order",
    "density": "5-head ensemble: entropy of mean P(a) x representativeness, 1 pair/question/round "
               "(annotate select default)",
    "active": "5-head ensemble: entropy of mean P(a), 1 pair/question/round",
    "active-bald": "same + members' disagreement (mutual information, --disagreement-weight 1)",
    "uncertainty": "1 head: entropy of P(a), 1 pair/question/round",
}
LEGEND = {"random": "random", "density": "entropy x representativeness (default)",
          "active": "active (ensemble entropy)",
          "active-bald": "active + disagreement (BALD)", "uncertainty": "uncertainty (1 head)"}
ARM_WEIGHT = {"active-bald": 1.0}  # disagreement_weight per arm (0 elsewhere)
DEFAULT_ARM = "density"  # what `clinalign annotate select` runs
DRAFTS = ("reference", "truncated", "lead", "other", "shuffled", "repeated", "mixed")


# --- pool -------------------------------------------------------------------------------------
def _sentences(text: str) -> list[str]:
    import re

    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _lead(text: str, share: float = 0.3) -> str:
    out, words = [], 0
    total = len(text.split())
    for s in _sentences(text):
        out.append(s)
        words += len(s.split())
        if words >= share * total:
            break
    return " ".join(out)


def drafts_for(row: dict, other: dict, rng: random.Random) -> dict[str, str]:
    ref, alt = row["reference_answer"].strip(), other["reference_answer"].strip()
    words = ref.split()
    shuffled = words[:]
    rng.shuffle(shuffled)
    lead = _lead(ref)
    return {
        "reference": ref,
        "truncated": " ".join(words[:max(3, len(words) // 2)]),
        "lead": lead,
        "other": alt,
        "shuffled": " ".join(shuffled),
        "repeated": " ".join([lead] * 3),
        "mixed": " ".join(words[:len(words) // 2]) + " " + " ".join(alt.split()[len(alt.split()) // 2:]),
    }


def build_pool(pairs_per_prompt: int = 6) -> tuple[list[dict], list[dict]]:
    """(pairs, prompts): labelled pairs of drafts, each with its prompt index and the judge's winner."""
    rows = [json.loads(line) for line in MEDQUAD.read_text().splitlines() if line.strip()]
    rng = random.Random(1234)  # the pool is fixed; seeds vary the selection only
    by_type: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_type.setdefault(r["qtype"], []).append(i)
    pairs: list[dict] = []
    for i, row in enumerate(rows):
        same = [j for j in by_type[row["qtype"]] if j != i] or [j for j in range(len(rows)) if j != i]
        drafts = drafts_for(row, rows[rng.choice(same)], rng)
        texts = {k: v for k, v in drafts.items() if v.strip()}
        combos = [(a, b) for a, b in combinations(DRAFTS, 2) if texts.get(a) and texts.get(b)
                  and texts[a].strip() != texts[b].strip()]
        for a, b in rng.sample(combos, min(pairs_per_prompt, len(combos))):
            if rng.random() < 0.5:
                a, b = b, a
            pair = CandidatePair(prompt=row["question"], response_a=texts[a], response_b=texts[b],
                                 model_a=a, model_b=b, reference=row["reference_answer"], prompt_id=row["id"])
            fb = judge(pair)
            if fb is None or fb.preference not in ("a", "b"):
                continue
            pairs.append({"prompt": i, "a": texts[a], "b": texts[b], "kinds": (a, b),
                          "y": 1.0 if fb.preference == "a" else 0.0, "id": pair.id})
    return pairs, rows


# --- features ---------------------------------------------------------------------------------
def embed(texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Mean-pooled, normalised MiniLM embeddings (the reward backbone, frozen), cached on disk."""
    key = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
    cache = CACHE / f"embeddings-{key}.npy"
    if cache.is_file():
        return np.load(cache)
    import torch
    from transformers import AutoModel, AutoTokenizer

    from reward_models.backbones import MINILM, resolve_backbone

    path = resolve_backbone(MINILM)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cache, out)
    return out


def surface(text: str) -> list[float]:
    words = text.split()
    grams = list(zip(words, words[1:], words[2:], strict=False))
    distinct = len(set(grams)) / len(grams) if grams else 1.0
    finished = float(text.rstrip().endswith((".", "!", "?", ")", '"')))
    return [math.log1p(len(words)), finished, distinct]


def pair_features(pairs: list[dict], prompts: list[dict]) -> np.ndarray:
    """x = f(q, a) - f(q, b), standardised: the Bradley-Terry head needs no intercept."""
    texts = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs})
    questions = [r["question"] for r in prompts]
    started = time.perf_counter()
    emb = embed(texts + questions)
    print(f"embedded {len(texts) + len(questions)} texts in {time.perf_counter() - started:.1f} s", flush=True)
    pos = {t: i for i, t in enumerate(texts)}
    q_emb = emb[len(texts):]

    def f(text: str, q: int) -> np.ndarray:
        e, qe = emb[pos[text]], q_emb[q]
        return np.concatenate([e, e * qe * 10, [float(e @ qe)], surface(text)])

    x = np.stack([f(p["a"], p["prompt"]) - f(p["b"], p["prompt"]) for p in pairs])
    return x / (x.std(axis=0) + 1e-6)


# --- the reward head --------------------------------------------------------------------------
def fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0, w0: np.ndarray | None = None, iters: int = 30) -> np.ndarray:
    """L2-regularised logistic regression (no intercept: antisymmetric in a/b): Newton steps with
    backtracking on the exact loss, so a warm start from the previous round cannot diverge."""
    w = np.zeros(x.shape[1]) if w0 is None else w0.copy()
    sign = 2 * y - 1

    def loss(v: np.ndarray) -> float:
        return float(np.logaddexp(0, -sign * (x @ v)).sum() + 0.5 * l2 * v @ v)

    eye = l2 * np.eye(x.shape[1])
    current = loss(w)
    for _ in range(iters):
        p = 0.5 * (1 + np.tanh(0.5 * (x @ w)))  # sigmoid without overflow
        grad = x.T @ (p - y) + l2 * w
        hess = (x.T * (p * (1 - p))) @ x + eye
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-4 and loss(w - t * step) > current - 1e-4 * t * float(grad @ step):
            t *= 0.5
        w = w - t * step
        new = loss(w)
        if current - new < 1e-8 * max(1.0, current):
            break
        current = new
    return w


def accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    s = x @ w
    return float(np.mean(np.where(s == 0, 0.5, (s > 0) == (y > 0.5))))


def run_arm(arm: str, seed: int, x: np.ndarray, y: np.ndarray, groups: list[int], prompts_text: list[str],
            pool: np.ndarray, test: np.ndarray, start: int, batch: int, budget: int, members: int) -> list[float]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(pool)
    labelled = list(order[:start])
    rest = [i for i in order if i not in set(labelled)]
    curve = []
    w = None
    while True:
        lab = np.array(labelled)
        w = fit(x[lab], y[lab], w0=w)
        curve.append(accuracy(w, x[test], y[test]))
        if len(labelled) >= budget:
            return curve
        if arm == "random":
            take = rest[:batch]
        else:
            if arm in ("active", "active-bald", "density"):
                heads = [fit(x[b], y[b], w0=w) for b in (rng.choice(lab, size=len(lab)) for _ in range(members))]
            else:
                heads = [w]
            margins = np.stack([x[rest] @ h for h in heads], axis=1)
            cands = [Candidate(str(i), prompts_text[groups[i]], tuple(m), group=str(groups[i]), features=tuple(f))
                     for i, m, f in zip(rest, margins.tolist(), x[rest].tolist(), strict=True)]
            take = [int(s.pair_id) for s in rank_candidates(cands, batch, max_per_group=1,
                                                            disagreement_weight=ARM_WEIGHT.get(arm, 0.0),
                                                            density_power=1.0 if arm == "density" else 0.0)]
        chosen = set(take)
        labelled += take
        rest = [i for i in rest if i not in chosen]


def t_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds."""
    from scipy import stats

    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return float(a.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return float(a.mean()), float(a.mean() - half), float(a.mean() + half)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = result["budgets"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"random": "tab:gray", "density": "tab:green", "active": "tab:blue", "active-bald": "tab:purple", "uncertainty": "tab:orange"}
    for arm, summary in result["arms"].items():
        mean = [s[0] for s in summary]
        lo, hi = [s[1] for s in summary], [s[2] for s in summary]
        ax.plot(budgets, mean, label=LEGEND.get(arm, arm), color=colours.get(arm))
        ax.fill_between(budgets, lo, hi, alpha=0.2, color=colours.get(arm))
    target = result["random_full_budget_accuracy"]
    ax.axhline(target, ls="--", lw=0.8, color="tab:gray")
    default = result["labels_to_reach"].get(DEFAULT_ARM)
    if default is not None:
        ax.axvline(default, ls=":", lw=0.8, color="tab:green")
    ax.set_xlabel("labels (simulated clinician)")
    ax.set_ylabel("held-out pairwise accuracy")
    seeds = result["seeds"]
    ax.set_title(f"Active vs random selection ({len(seeds)} seeds, {min(seeds)}-{max(seeds)}; 95% CI)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--start", type=int, default=20, help="random labels every arm starts from")
    ap.add_argument("--batch", type=int, default=20, help="labels added per round")
    ap.add_argument("--budget", type=int, default=400)
    ap.add_argument("--members", type=int, default=5, help="bootstrap heads in the active arm's ensemble")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--plot", default=None, help="PNG path")
    ap.add_argument("--out", default=None, help="JSON path")
    ap.add_argument("--replot", default=None, help="only redraw --plot from a result JSON of an earlier run")
    args = ap.parse_args()
    if args.replot:
        if not args.plot:
            ap.error("--replot needs --plot PATH")
        plot(json.loads(Path(args.replot).read_text()), args.plot)
        return

    t0 = time.perf_counter()
    pairs, prompts = build_pool()
    x = pair_features(pairs, prompts)
    y = np.array([p["y"] for p in pairs])
    groups = [p["prompt"] for p in pairs]
    split = np.random.default_rng(99).permutation(len(prompts))
    test_prompts = set(split[:150].tolist())
    pool = np.array([i for i, g in enumerate(groups) if g not in test_prompts])
    test = np.array([i for i, g in enumerate(groups) if g in test_prompts])
    print(f"{len(pairs)} labelled pairs: pool {len(pool)} ({len(prompts) - 150} questions), test {len(test)} "
          f"(150 questions); P(a) = {y.mean():.2f}", flush=True)
    full = fit(x[pool], y[pool])
    ceiling = accuracy(full, x[test], y[test])
    print(f"ceiling (all {len(pool)} pool labels): {ceiling:.3f}", flush=True)
    questions = [r["question"] for r in prompts]
    curves: dict[str, list[list[float]]] = {arm: [] for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            curves[arm].append(run_arm(arm, seed, x, y, groups, questions, pool, test, args.start, args.batch,
                                       args.budget, args.members))
            print(f"seed {seed} {arm:11s} " + " ".join(f"{a:.3f}" for a in curves[arm][-1][::4])
                  + f" ... {curves[arm][-1][-1]:.3f}", flush=True)
    budgets = list(range(args.start, args.budget + 1, args.batch))
    summary = {arm: [t_ci([c[k] for c in cs]) for k in range(len(budgets))] for arm, cs in curves.items()}
    target = summary["random"][-1][0]
    reach = {}
    for arm in args.arms:
        hit = [b for b, s in zip(budgets, summary[arm], strict=True) if s[0] >= target]
        reach[arm] = hit[0] if hit else None
    at60 = budgets.index(min(budgets, key=lambda b: abs(b - 0.6 * args.budget)))
    diff60 = {arm: t_ci([c[at60] - r[-1] for c, r in zip(curves[arm], curves["random"], strict=True)])
              for arm in args.arms if arm != "random"}
    per_seed_reach = {arm: [next((b for b, a in zip(budgets, c, strict=True) if a >= r[-1]), None)
                            for c, r in zip(curves[arm], curves["random"], strict=True)] for arm in args.arms}
    result = {"seeds": args.seeds, "arm_descriptions": {a: ARMS[a] for a in args.arms}, "budgets": budgets, "n_pool": int(len(pool)), "n_test": int(len(test)),
              "ceiling_all_pool_labels": ceiling, "arms": summary, "curves": curves,
              "random_full_budget_accuracy": target, "labels_to_reach": reach,
              "labels_to_reach_per_seed": per_seed_reach,
              "saving": {arm: (None if reach[arm] is None else 1 - reach[arm] / args.budget) for arm in args.arms},
              "at_60pct_minus_random_full": {"labels": budgets[at60], **diff60},
              "seconds": round(time.perf_counter() - t0, 1), "load_average": os.getloadavg()}
    print(f"random at {args.budget} labels: {target:.3f}")
    for arm in args.arms:
        if arm == "random":
            continue
        r = reach[arm]
        m, lo, hi = diff60[arm]
        print(f"{arm}: reaches it with {r if r is not None else '>' + str(args.budget)} labels"
              + (f" ({r / args.budget:.0%} of the budget)" if r else "")
              + f"; at {budgets[at60]} labels: {m:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}) vs random at {args.budget};"
              f" per seed: {per_seed_reach[arm]}")
    print(f"{result['seconds']} s, load average {result['load_average']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
