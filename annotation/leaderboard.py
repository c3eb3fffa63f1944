"""Leaderboard from blind review votes: Bradley–Terry with ties (Davidson 1970), bootstrap CIs,
win-rate matrix, votes per clinician and outlier voters.

Model: for models i, j with strengths theta (log scale) and tie parameter nu > 0,
  P(i beats j) = e^ti / D,  P(j beats i) = e^tj / D,  P(tie) = nu * e^((ti+tj)/2) / D,
  D = e^ti + e^tj + nu * e^((ti+tj)/2).
Fitted by maximum likelihood (L-BFGS, analytic gradient, a very weak ridge so a model that won every
comparison stays finite); theta is centred to mean 0 and reported also on an Elo-like scale
(1000 + 400/ln10 * theta). "Both unsafe" votes count as ties (neither model was better) by default.

Outlier voters: each clinician's decisive votes are compared with a model fitted on everyone *else*'s
votes. Under that model the number of votes for the weaker model has a known mean and variance
(a sum of Bernoullis). A clinician is flagged when the count is both significant (z above the
Bonferroni-corrected one-sided 5% threshold) and large: at least `min_ratio` (1.5) times the expected
count ("far more than others"; the z-test alone also fires on honest voters with many votes, because
the consensus strengths are themselves estimates).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annotation.records import CandidatePair, Feedback

ELO_SCALE = 400.0 / math.log(10.0)
ELO_BASE = 1000.0


@dataclass(frozen=True)
class Comparison:
    """One vote between two different models: outcome 1 (first won), 0 (second won) or 0.5 (tie)."""

    first: str
    second: str
    outcome: float
    annotator: str
    pair_id: str
    both_bad: bool = False
    flagged: bool = False
    seconds_to_vote: float | None = None


def comparisons_from_feedback(feedback: Iterable[Feedback], pairs: dict[str, CandidatePair] | None = None,
                              *, origins: Sequence[str] = ("review",), both_bad: str = "tie") -> list[Comparison]:
    """Model-vs-model comparisons from feedback; same-model pairs and other origins are skipped."""
    out = []
    for fb in feedback:
        if origins and fb.origin not in origins:
            continue
        pair = (pairs or {}).get(fb.pair_id)
        model_a = pair.model_a if pair else fb.meta.get("model_a")
        model_b = pair.model_b if pair else fb.meta.get("model_b")
        if not model_a or not model_b or model_a == model_b:
            continue
        if fb.preference == "both_bad" and both_bad == "skip":
            continue
        outcome = {"a": 1.0, "b": 0.0}.get(fb.preference, 0.5)
        secs = fb.meta.get("seconds_to_vote") if isinstance(fb.meta, dict) else None
        out.append(Comparison(model_a, model_b, outcome, fb.annotator_id, fb.pair_id,
                              fb.preference == "both_bad", fb.flagged,
                              float(secs) if isinstance(secs, (int, float)) else None))
    return out


# -- fitting -------------------------------------------------------------------------------------
@dataclass
class _Counts:
    """Comparisons aggregated per ordered model pair: wins of i over j, wins of j over i, ties."""

    i: np.ndarray
    j: np.ndarray
    w_ij: np.ndarray
    w_ji: np.ndarray
    ties: np.ndarray


def _aggregate(comps: Sequence[Comparison], index: dict[str, int], weights: np.ndarray | None = None) -> _Counts:
    acc: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for k, c in enumerate(comps):
        w = 1.0 if weights is None else float(weights[k])
        if w == 0:
            continue
        a, b, out = index[c.first], index[c.second], c.outcome
        if a > b:
            a, b, out = b, a, 1.0 - out
        slot = acc[(a, b)]
        slot[0 if out == 1.0 else 1 if out == 0.0 else 2] += w
    keys = list(acc)
    vals = np.array([acc[k] for k in keys], dtype=float).reshape(-1, 3)
    return _Counts(np.array([k[0] for k in keys], dtype=int), np.array([k[1] for k in keys], dtype=int),
                   vals[:, 0], vals[:, 1], vals[:, 2])


def _nll_and_grad(params: np.ndarray, c: _Counts, n_models: int, ridge: float) -> tuple[float, np.ndarray]:
    theta, eta = params[:n_models], params[n_models]
    s, u = theta[c.i], theta[c.j]
    mid = 0.5 * (s + u)
    stack = np.stack([s, u, eta + mid])
    log_d = np.logaddexp.reduce(stack, axis=0)
    n = c.w_ij + c.w_ji + c.ties
    ll = c.w_ij * (s - log_d) + c.w_ji * (u - log_d) + c.ties * (eta + mid - log_d)
    p_ij, p_ji, p_tie = np.exp(s - log_d), np.exp(u - log_d), np.exp(eta + mid - log_d)
    g_s = c.w_ij + 0.5 * c.ties - n * (p_ij + 0.5 * p_tie)
    g_u = c.w_ji + 0.5 * c.ties - n * (p_ji + 0.5 * p_tie)
    grad = np.zeros_like(params)
    np.add.at(grad, c.i, -g_s)
    np.add.at(grad, c.j, -g_u)
    grad[n_models] = -(c.ties.sum() - (n * p_tie).sum())
    # A weak Gaussian prior (ridge) keeps an undefeated model finite and nu finite without ties; it
    # shrinks ratings by well under 1% once a model has a few dozen votes.
    value = -ll.sum() + 0.5 * ridge * (theta @ theta + eta * eta)
    grad[:n_models] += ridge * theta
    grad[n_models] += ridge * eta
    return float(value), grad


def fit_davidson(comps: Sequence[Comparison], models: Sequence[str], *, weights: np.ndarray | None = None,
                 ridge: float = 1e-2) -> tuple[np.ndarray, float]:
    """Maximum-likelihood (theta centred to mean 0, nu) for the given models."""
    from scipy.optimize import minimize

    index = {m: k for k, m in enumerate(models)}
    counts = _aggregate(comps, index, weights)
    n = len(models)
    if counts.i.size == 0:
        return np.zeros(n), 0.0
    x0 = np.zeros(n + 1)
    res = minimize(_nll_and_grad, x0, args=(counts, n, ridge), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000, "gtol": 1e-9})
    theta = res.x[:n] - res.x[:n].mean()
    return theta, float(math.exp(res.x[n]))


def davidson_probs(theta_i: float, theta_j: float, nu: float) -> tuple[float, float, float]:
    """(P(i wins), P(j wins), P(tie))."""
    a, b, t = math.exp(theta_i), math.exp(theta_j), nu * math.exp(0.5 * (theta_i + theta_j))
    d = a + b + t
    return a / d, b / d, t / d


# -- the leaderboard -----------------------------------------------------------------------------
@dataclass
class ModelRow:
    model: str
    theta: float
    rating: float
    ci_low: float
    ci_high: float
    votes: int
    wins: int
    losses: int
    ties: int
    both_unsafe: int
    flagged: int


@dataclass
class VoterRow:
    annotator: str
    votes: int
    decisive: int
    ties: int
    both_unsafe: int
    flagged: int
    against_consensus: int
    expected_against: float
    z: float
    outlier: bool
    median_seconds: float | None


@dataclass
class Leaderboard:
    models: list[ModelRow]
    nu: float
    win_rates: dict[str, dict[str, float | None]]  # row model's share of points vs column (tie = 1/2)
    games: dict[str, dict[str, int]]
    voters: list[VoterRow]
    n_votes: int
    n_bootstrap: int
    confidence: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, include_voters: bool = True) -> dict[str, Any]:
        out = {"models": [asdict(m) for m in self.models], "nu": self.nu, "win_rates": self.win_rates,
               "games": self.games, "n_votes": self.n_votes, "n_bootstrap": self.n_bootstrap,
               "confidence": self.confidence, "config": self.config}
        if include_voters:
            out["voters"] = [asdict(v) for v in self.voters]
        return out


def build_leaderboard(comps: Sequence[Comparison], *, n_bootstrap: int = 1000, confidence: float = 0.95,
                      seed: int = 0, min_voter_votes: int = 10, alpha: float = 0.05,
                      progress=None) -> Leaderboard:
    models = sorted({c.first for c in comps} | {c.second for c in comps})
    theta, nu = fit_davidson(comps, models)
    lows, highs = _bootstrap(comps, models, n_bootstrap, confidence, seed, progress)
    rows = []
    for k, m in enumerate(models):
        mine = [c for c in comps if m in (c.first, c.second)]
        wins = sum(1 for c in mine if (c.outcome == 1.0) == (c.first == m) and c.outcome != 0.5)
        ties = sum(1 for c in mine if c.outcome == 0.5)
        rows.append(ModelRow(m, float(theta[k]), _elo(theta[k]), _elo(lows[k]), _elo(highs[k]), len(mine),
                             int(wins), int(len(mine) - wins - ties), int(ties), int(sum(c.both_bad for c in mine)),
                             int(sum(c.flagged for c in mine))))
    rows.sort(key=lambda r: -r.theta)
    win_rates, games = win_rate_matrix(comps, [r.model for r in rows])
    voters = voter_report(comps, models, min_votes=min_voter_votes, alpha=alpha)
    return Leaderboard(rows, nu, win_rates, games, voters, len(comps), n_bootstrap, confidence,
                       {"min_voter_votes": min_voter_votes, "alpha": alpha, "seed": seed})


def _elo(theta: float) -> float:
    return round(ELO_BASE + ELO_SCALE * float(theta), 1)


def _bootstrap(comps: Sequence[Comparison], models: list[str], n: int, confidence: float, seed: int,
               progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CIs of theta from resampling votes with replacement."""
    if n <= 0 or not comps:
        nan = np.full(len(models), np.nan)
        return nan, nan
    rng = np.random.default_rng(seed)
    draws = np.empty((n, len(models)))
    for b in range(n):
        weights = rng.multinomial(len(comps), np.full(len(comps), 1.0 / len(comps)))
        draws[b], _ = fit_davidson(comps, models, weights=weights)
        if progress:
            progress(b + 1, n)
    tail = (1.0 - confidence) / 2.0
    return np.quantile(draws, tail, axis=0), np.quantile(draws, 1.0 - tail, axis=0)


def win_rate_matrix(comps: Sequence[Comparison], models: Sequence[str]) -> tuple[dict, dict]:
    points: dict[tuple[str, str], float] = Counter()
    games: dict[tuple[str, str], int] = Counter()
    for c in comps:
        points[(c.first, c.second)] += c.outcome
        points[(c.second, c.first)] += 1.0 - c.outcome
        games[(c.first, c.second)] += 1
        games[(c.second, c.first)] += 1
    rates = {a: {b: (round(points[(a, b)] / games[(a, b)], 4) if games[(a, b)] else None)
                 for b in models if b != a} for a in models}
    counts = {a: {b: games[(a, b)] for b in models if b != a} for a in models}
    return rates, counts


def voter_report(comps: Sequence[Comparison], models: list[str], *, min_votes: int = 10,
                 alpha: float = 0.05, min_ratio: float = 1.5) -> list[VoterRow]:
    from scipy.stats import norm

    by_voter: dict[str, list[Comparison]] = defaultdict(list)
    for c in comps:
        by_voter[c.annotator].append(c)
    eligible = [v for v, cs in by_voter.items() if sum(c.outcome != 0.5 for c in cs) >= min_votes]
    z_crit = float(norm.isf(alpha / max(1, len(eligible))))
    rows = []
    for voter, mine in sorted(by_voter.items()):
        others = [c for c in comps if c.annotator != voter]
        theta, _ = fit_davidson(others, models) if others else (np.zeros(len(models)), 0.0)
        index = {m: k for k, m in enumerate(models)}
        against, expected, var = 0, 0.0, 0.0
        decisive = [c for c in mine if c.outcome != 0.5]
        for c in decisive:
            t1, t2 = theta[index[c.first]], theta[index[c.second]]
            p_first = 1.0 / (1.0 + math.exp(t2 - t1))  # P(first wins | someone wins)
            p_against = min(p_first, 1.0 - p_first)  # chance of picking the consensus-weaker model
            picked_first = c.outcome == 1.0
            if (picked_first and t1 < t2) or (not picked_first and t2 < t1):
                against += 1
            expected += p_against
            var += p_against * (1.0 - p_against)
        z = (against - expected) / math.sqrt(var) if var > 0 else 0.0
        secs = sorted(c.seconds_to_vote for c in mine if c.seconds_to_vote is not None)
        rows.append(VoterRow(voter, len(mine), len(decisive),
                             int(sum(c.outcome == 0.5 and not c.both_bad for c in mine)),
                             int(sum(c.both_bad for c in mine)), int(sum(c.flagged for c in mine)), against,
                             round(expected, 2), round(z, 2),
                             voter in eligible and z > z_crit and against >= min_ratio * expected,
                             secs[len(secs) // 2] if secs else None))
    return rows


# -- plot ----------------------------------------------------------------------------------------
def plot_leaderboard(lb: Leaderboard, path: str | Path | None = None):
    """Ratings with CIs (left) and the win-rate matrix (right); saved as PNG when path is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.model for r in lb.models]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.6 * len(names) + 1.8)),
                                   gridspec_kw={"width_ratios": [1.1, 1]})
    ys = np.arange(len(names))[::-1]
    ratings = np.array([r.rating for r in lb.models])
    lo = np.array([r.ci_low for r in lb.models])
    hi = np.array([r.ci_high for r in lb.models])
    err = np.vstack([np.nan_to_num(ratings - lo), np.nan_to_num(hi - ratings)])
    ax1.errorbar(ratings, ys, xerr=err, fmt="o", color="#1f4e79", ecolor="#7f9cbf", capsize=4, lw=2)
    ax1.set_yticks(ys, names)
    ax1.axvline(ELO_BASE, color="#999", lw=0.8, ls="--")
    ax1.set_xlabel(f"rating (Elo scale), {int(lb.confidence * 100)}% bootstrap CI")
    ax1.set_title(f"Bradley–Terry–Davidson ratings ({lb.n_votes} votes)")
    ax1.grid(axis="x", alpha=0.3)
    mat = np.array([[lb.win_rates[a].get(b) if a != b else np.nan for b in names] for a in names], dtype=float)
    im = ax2.imshow(mat, cmap="RdBu", vmin=0, vmax=1)
    ax2.set_xticks(range(len(names)), names, rotation=40, ha="right")
    ax2.set_yticks(range(len(names)), names)
    for a in range(len(names)):
        for b in range(len(names)):
            if a != b and not np.isnan(mat[a, b]):
                ax2.text(b, a, f"{mat[a, b]:.2f}\n(n={lb.games[names[a]][names[b]]})", ha="center",
                         va="center", fontsize=8)
    ax2.set_title("win rate of row vs column (tie = ½)")
    fig.colorbar(im, ax=ax2, fraction=0.046)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp.png")
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)
    plt.close(fig)  # closed figures can still be saved/rendered; this only frees pyplot's registry
    return fig
