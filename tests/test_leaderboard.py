"""Leaderboard: Bradley–Terry–Davidson fit against closed-form and simulated truths, bootstrap CIs,
win-rate matrix, outlier voters, and the `clinalign leaderboard` command on a real store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from annotation.leaderboard import (
    ELO_BASE,
    ELO_SCALE,
    Comparison,
    build_leaderboard,
    comparisons_from_feedback,
    davidson_probs,
    fit_davidson,
)
from annotation.records import CandidatePair, Feedback
from annotation.sqlite_store import SQLiteStore

TRUTH = {"model-strong": 0.9, "model-good": 0.3, "model-fair": -0.3, "model-weak": -0.9}  # mean 0
NU = 0.6


def simulate(n_votes: int, voters: list[str], seed: int, invert: set[str] = frozenset()) -> list[Comparison]:
    """Votes drawn from the Davidson model with known strengths; `invert` voters swap winners."""
    rng = np.random.default_rng(seed)
    names = list(TRUTH)
    comps = []
    for k in range(n_votes):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        outcome = float(rng.choice([1.0, 0.0, 0.5], p=davidson_probs(TRUTH[a], TRUTH[b], NU)))
        voter = voters[k % len(voters)]
        if voter in invert and outcome != 0.5:
            outcome = 1.0 - outcome
        comps.append(Comparison(a, b, outcome, voter, f"pair-{k}"))
    return comps


def test_two_model_fit_matches_closed_form():
    # 20 wins, 10 losses, 10 ties: the saturated Davidson MLE is exp(Δ)=20/10 and nu=p_tie/sqrt(p_w p_l)
    comps = ([Comparison("x", "y", 1.0, "u", "p")] * 20 + [Comparison("x", "y", 0.0, "u", "p")] * 10
             + [Comparison("y", "x", 0.5, "u", "p")] * 10)
    theta, nu = fit_davidson(comps, ["x", "y"], ridge=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(2.0), abs=1e-4)
    assert nu == pytest.approx(0.25 / math.sqrt(0.5 * 0.25), abs=1e-4)
    assert theta.sum() == pytest.approx(0.0, abs=1e-9)


def test_known_ordering_values_and_bootstrap_cis_contain_truth():
    comps = simulate(3000, [f"dr_{k}" for k in range(6)], seed=7)
    lb = build_leaderboard(comps, n_bootstrap=200, seed=1)
    assert [r.model for r in lb.models] == list(TRUTH)  # sorted by fitted strength
    assert lb.nu == pytest.approx(NU, abs=0.1)
    for row in lb.models:
        true_rating = ELO_BASE + ELO_SCALE * TRUTH[row.model]
        assert row.ci_low < true_rating < row.ci_high, (row, true_rating)
        assert row.ci_high - row.ci_low < 60  # 3000 votes give tight intervals
        assert row.theta == pytest.approx(TRUTH[row.model], abs=0.12)
    # win-rate matrix agrees with the model's predictions and is antisymmetric
    rate = lb.win_rates["model-strong"]["model-weak"]
    p_w, p_l, p_t = davidson_probs(TRUTH["model-strong"], TRUTH["model-weak"], NU)
    assert rate == pytest.approx(p_w + 0.5 * p_t, abs=0.06)
    assert rate + lb.win_rates["model-weak"]["model-strong"] == pytest.approx(1.0)
    assert not any(v.outlier for v in lb.voters)


def test_outlier_voter_is_found():
    voters = [f"dr_{k}" for k in range(6)] + ["dr_contrarian"]
    comps = simulate(1400, voters, seed=3, invert={"dr_contrarian"})
    lb = build_leaderboard(comps, n_bootstrap=0)
    flagged = {v.annotator for v in lb.voters if v.outlier}
    assert flagged == {"dr_contrarian"}
    contrarian = next(v for v in lb.voters if v.annotator == "dr_contrarian")
    assert contrarian.against_consensus > 2 * contrarian.expected_against


def test_feedback_from_the_store_is_unswapped_and_filtered(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    p1 = CandidatePair("q1", "answer one", "answer two", "m-new", "m-old")
    p2 = CandidatePair("q2", "answer three", "answer four", "m-old", "m-new")
    same = CandidatePair("q3", "answer five", "answer six", "m-new", "m-new")
    store.add_pairs([p1, p2, same])
    store.add_feedback([
        Feedback(p1.id, "dr_a", "a", origin="review"),  # m-new wins
        Feedback(p2.id, "dr_a", "b", origin="review"),  # m-new wins (it is model_b here)
        Feedback(p1.id, "dr_b", "both_bad", origin="review", flagged=True),
        Feedback(p2.id, "dr_b", "a", origin="annotation"),  # not a review vote
        Feedback(same.id, "dr_a", "a", origin="review"),  # same model on both sides
    ])
    comps = comparisons_from_feedback(store.iter_feedback(), {p.id: p for p in store.iter_pairs()})
    assert len(comps) == 3
    lb = build_leaderboard(comps, n_bootstrap=20)
    new = next(r for r in lb.models if r.model == "m-new")
    assert (new.wins, new.losses, new.ties, new.both_unsafe, new.flagged) == (2, 0, 1, 1, 1)
    assert lb.models[0].model == "m-new"
    pairs = {p.id: p for p in store.iter_pairs()}
    assert len(comparisons_from_feedback(store.iter_feedback(), pairs, both_bad="skip")) == 2
    assert comparisons_from_feedback(store.iter_feedback(), {}) == []  # no pair, no model names in meta
    store.close()


def test_leaderboard_command_writes_table_json_png(tmp_path):
    from align.cli import main
    from clinalign_base.manifest import read_manifest

    store = SQLiteStore(tmp_path / "s.sqlite")
    comps = simulate(300, ["dr_x", "dr_y", "dr_z"], seed=11)
    pairs, feedback = [], []
    for k, c in enumerate(comps):
        pair = CandidatePair(f"question {k}", f"first {k}", f"second {k}", c.first, c.second)
        pairs.append(pair)
        pref = {1.0: "a", 0.0: "b", 0.5: "tie"}[c.outcome]
        feedback.append(Feedback(pair.id, c.annotator, pref, origin="review",
                                 meta={"shown_left": "a", "seconds_to_vote": 12.5}))
    store.add_pairs(pairs)
    store.add_feedback(feedback)
    store.close()
    out = tmp_path / "lb"
    assert main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--out", str(out), "--bootstrap", "50"]) == 0
    data = json.loads((out / "leaderboard.json").read_text())
    assert data["n_votes"] == 300 and data["models"][0]["model"] == "model-strong"
    assert {v["annotator"] for v in data["voters"]} == {"dr_x", "dr_y", "dr_z"}
    assert data["voters"][0]["median_seconds"] == 12.5
    png = (out / "leaderboard.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert read_manifest(out)["metrics"]["n_votes"] == 300
    assert main(["leaderboard", "--store", str(tmp_path / "empty.sqlite")]) == 2  # no votes: clear error
