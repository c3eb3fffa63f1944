"""Model card generated from a round folder laid out the way `clinalign demo` writes it."""

from __future__ import annotations

import json

import pytest

from align.evaluation.model_card import ME_LLAMA_NOTE, render_card
from clinalign_base.errors import InputError
from clinalign_base.manifest import build_manifest, ref, write_manifest


def make_round(root, *, policy="builtin:smollm2-135m-instruct", annotators=None, pubmedqa=(0.52, 0.50)):
    run = root / "runs" / "r1"
    annotators = annotators or {"clin-03": 40, "clin-11": 38}
    agreement = {"counts": {"pairs_with_2plus": 30}, "preference": {"alpha": 0.41, "pairwise_agreement": 0.7},
                 "ratings": {"accuracy": {"alpha": 0.55, "n_units_multi": 60}}}
    for name, kind, metrics in [
        ("preferences", "preference_dataset", {"rows": 78, "rows_clinician": 60, "rows_seed:kqa-physician": 18}),
        ("reward_model", "reward_model", {"eval_accuracy": 0.64, "train_loss": 0.61}),
        ("policy", "policy_adapter", {"train_loss": 0.66}),
        ("evaluation", "evaluation", {"win_rate": 0.5625, "win_rate_ci95": [0.31, 0.81], "n_prompts": 16,
                                      "pubmedqa_accuracy_before": pubmedqa[0],
                                      "pubmedqa_accuracy_after": pubmedqa[1], "pubmedqa_n": 50,
                                      "mean_reward_policy": 0.2, "mean_reward_base": 0.1}),
    ]:
        (run / name).mkdir(parents=True)
        (run / name / "data.bin").write_bytes(name.encode())
        write_manifest(run / name, build_manifest(
            kind, name, metrics=metrics, config={"phi_mode": "block"},
            annotations={"base_model": "builtin:minilm-l6", "trainer": "trl.RewardTrainer"}
            if name == "reward_model" else {}))
    config = {"policy": policy, "policy_stage": "dpo", "prompt_sets": [
        {"name": "medquad", "path": "data/medquad/medquad_prompts_500.jsonl", "limit": 48}]}
    manifest = build_manifest("round", "r1", outputs=[ref(n, run / n) for n in
                                                      ("preferences", "reward_model", "policy", "evaluation")],
                              config=config, annotations={"feedback_by_annotator": annotators,
                                                          "agreement": agreement})
    write_manifest(run / "manifest.json", manifest)
    return run


def test_card_has_every_section_with_the_recorded_numbers(tmp_path):
    card = render_card(make_round(tmp_path))
    for heading in ("## Intended use", "## Training data and licences", "## Clinicians and agreement",
                    "## Reward-model report", "## Evaluation before / after", "## Known limits", "## Licence notes"):
        assert heading in card
    assert "| `clin-03` | 40 |" in card and "| `clin-11` | 38 |" in card
    assert "alpha 0.410" in card and "eval_accuracy: 0.640" in card
    assert "| 0.520 | 0.500 |" in card  # PubMedQA before / after
    assert "0.562" in card and "Me LLaMA 13B-chat 0.700" in card
    assert "MedQuAD, CC BY 4.0" in card
    assert "fell by 0.020" in card  # the alignment tax is called out
    assert "Only 2 human annotator(s)" in card
    assert "outputs (including this model's generations" in card


def test_simulated_feedback_and_me_llama_are_called_out(tmp_path):
    run = make_round(tmp_path, policy="/models/me-llama-13b-chat",
                     annotators={"simulated:reference-overlap": 64}, pubmedqa=(0.70, 0.71))
    card = render_card(run)
    assert "SIMULATED" in card
    assert ME_LLAMA_NOTE in card and "This round did not use Me LLaMA" not in card
    assert "PhysioNet" in card
    assert "fell by" not in card


def test_missing_pieces_read_not_recorded(tmp_path):
    run = make_round(tmp_path)
    for name in ("reward_model",):
        (run / name / "clinalign_manifest.json").unlink()
    card = render_card(run)
    section = card.split("## Reward-model report")[1].split("##")[0]
    assert "not recorded" in section


def test_bad_round_folder(tmp_path):
    with pytest.raises(InputError, match="no round manifest"):
        render_card(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"hello": "world"}))
    with pytest.raises(InputError, match="not a clinalign manifest"):
        render_card(tmp_path)


def test_cli_card_writes_markdown(tmp_path):
    from align.cli import main

    run = make_round(tmp_path)
    assert main(["card", str(run)]) == 0
    text = (run / "MODEL_CARD.md").read_text()
    assert text.startswith("# Model card: clinalign round `r1`")
