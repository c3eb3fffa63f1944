"""Promotion gate: win-rate threshold and PubMedQA alignment tax, on evaluation files of every shape."""

from __future__ import annotations

import json

import pytest

from align.evaluation.promote import decide, read_eval
from clinalign_base.errors import ClinalignError, InputError
from clinalign_base.manifest import build_manifest


def eval_file(path, *, accuracy=None, win_rate=None, n=500, items="abc"):
    metrics = {}
    if accuracy is not None:
        metrics |= {"pubmedqa_accuracy": accuracy, "pubmedqa_n": n, "pubmedqa_items_sha256": items}
    if win_rate is not None:
        metrics |= {"win_rate": win_rate, "n_prompts": 64}
    path.write_text(json.dumps(build_manifest("evaluation", path.stem, metrics=metrics)))
    return path


def test_passes_when_both_gates_clear(tmp_path):
    d = decide(read_eval(eval_file(tmp_path / "c.json", accuracy=0.61, win_rate=0.58)),
               read_eval(eval_file(tmp_path / "b.json", accuracy=0.62)), min_win_rate=0.55, max_accuracy_drop=0.02)
    assert d.promoted and d.reasons == []
    assert d.accuracy_drop == pytest.approx(0.01)


@pytest.mark.parametrize(("acc", "wr", "reason"), [
    (0.62, 0.40, "win-rate 0.400 is below the threshold 0.500"),
    (0.55, 0.70, "fell 0.070"),
    (0.62, None, "no reward-model win-rate"),
])
def test_refuses_with_the_numbers(tmp_path, acc, wr, reason):
    d = decide(read_eval(eval_file(tmp_path / "c.json", accuracy=acc, win_rate=wr)),
               read_eval(eval_file(tmp_path / "b.json", accuracy=0.62)))
    assert not d.promoted
    assert any(reason in r for r in d.reasons)


def test_accuracy_on_different_items_is_not_compared(tmp_path):
    cand = read_eval(eval_file(tmp_path / "c.json", accuracy=0.7, win_rate=0.6, n=50))
    with pytest.raises(ClinalignError, match="50 items for the candidate but 500"):
        decide(cand, read_eval(eval_file(tmp_path / "b.json", accuracy=0.6)))
    cand = read_eval(eval_file(tmp_path / "c2.json", accuracy=0.7, win_rate=0.6, items="other"))
    with pytest.raises(ClinalignError, match="different PubMedQA items"):
        decide(cand, read_eval(eval_file(tmp_path / "b.json", accuracy=0.6)))


def test_round_evaluation_shapes_are_read(tmp_path):
    # the round's evaluation manifest (flat before/after metrics) needs no separate baseline
    m = build_manifest("evaluation", "evaluation", metrics={
        "win_rate": 0.56, "win_rate_ci95": [0.52, 0.7], "n_prompts": 16, "pubmedqa_accuracy_before": 0.50,
        "pubmedqa_accuracy_after": 0.49, "pubmedqa_n": 50})
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "clinalign_manifest.json").write_text(json.dumps(m))
    s = read_eval(tmp_path / "evaluation")
    assert (s.win_rate, s.accuracy, s.accuracy_before, s.n) == (0.56, 0.49, 0.50, 50)
    assert decide(s, None).promoted
    # the round's evaluation.json
    nested = {"win_rate": {"win_rate": 0.3, "win_rate_ci95": [0.1, 0.5], "n_prompts": 16},
              "pubmedqa": {"before": {"accuracy": 0.5, "n": 50}, "after": {"accuracy": 0.5, "n": 50}}}
    (tmp_path / "evaluation.json").write_text(json.dumps(nested))
    d = decide(read_eval(tmp_path / "evaluation.json"), None)
    assert not d.promoted and "0.300" in d.reasons[0]


def test_the_ci_lower_bound_and_the_paired_test_decide(tmp_path):
    # a round's evaluation.json: win-rate 0.6 whose CI reaches below 0.5 is not evidence enough
    paired = {"accuracy_before": 0.55, "accuracy_after": 0.54, "n": 500, "non_inferior": True,
              "lower_bound_one_sided": -0.015, "margin": 0.02}
    doc = {"win_rate": {"win_rate": 0.6, "ci95": [0.48, 0.71], "n_prompts": 64}, "pubmedqa": paired}
    (tmp_path / "e.json").write_text(json.dumps(doc))
    d = decide(read_eval(tmp_path / "e.json"), None)
    assert not d.promoted and "CI lower bound is not above" in d.reasons[0]
    doc["win_rate"]["ci95"] = [0.53, 0.71]
    (tmp_path / "e.json").write_text(json.dumps(doc))
    assert decide(read_eval(tmp_path / "e.json"), None).promoted
    # a 1-point drop passes the old rule but fails the paired test when the test says so
    doc["pubmedqa"] = paired | {"non_inferior": False, "lower_bound_one_sided": -0.031}
    (tmp_path / "e.json").write_text(json.dumps(doc))
    d = decide(read_eval(tmp_path / "e.json"), None)
    assert not d.promoted and "not shown non-inferior" in d.reasons[0]


def test_bad_files_and_thresholds(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_eval(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        read_eval(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(InputError, match="no win_rate"):
        read_eval(tmp_path / "other.json")
    (tmp_path / "range.json").write_text(json.dumps({"metrics": {"win_rate": 1.7}}))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        read_eval(tmp_path / "range.json")
    cand = read_eval(eval_file(tmp_path / "c.json", accuracy=0.6, win_rate=0.6))
    with pytest.raises(InputError, match="min-win-rate"):
        decide(cand, None, min_win_rate=2.0)
    with pytest.raises(InputError, match="before"):
        decide(cand, None)


def test_cli_promotes_and_refuses(tmp_path, capsys):
    from align.cli import main

    cand = eval_file(tmp_path / "cand.json", accuracy=0.60, win_rate=0.62)
    base = eval_file(tmp_path / "base.json", accuracy=0.61)
    record = tmp_path / "promotion.json"
    assert main(["promote", "--candidate", str(cand), "--baseline", str(base)]) == 0
    data = json.loads(record.read_text())
    assert data["kind"] == "promotion" and data["metrics"]["promoted"] is True
    assert [i["role"] for i in data["inputs"]] == ["candidate_eval", "baseline_eval"]
    record.unlink()
    assert main(["promote", "--candidate", str(cand), "--baseline", str(base), "--min-win-rate", "0.7"]) == 2
    err = "".join(capsys.readouterr().err.split())  # rich may wrap the line
    assert "NOTPROMOTED" in err and "win-rate0.620isbelowthethreshold0.700" in err
    assert not record.exists()


def test_promotion_record_never_lands_inside_an_artefact_folder(tmp_path):
    from align.cli import main

    ev = tmp_path / "runs" / "r1" / "evaluation"
    ev.mkdir(parents=True)
    (ev / "evaluation.json").write_text("{}\n")
    from clinalign_base.manifest import path_sha256

    before = path_sha256(ev)
    (ev / "clinalign_manifest.json").write_text(json.dumps(build_manifest("evaluation", "evaluation", metrics={
        "win_rate": 0.6, "pubmedqa_accuracy_before": 0.5, "pubmedqa_accuracy_after": 0.5, "pubmedqa_n": 10})))
    assert main(["promote", "--candidate", str(ev)]) == 0
    assert (tmp_path / "runs" / "r1" / "promotion.json").is_file()
    assert path_sha256(ev) == before  # the evaluation artefact's hash (its lineage) is untouched
