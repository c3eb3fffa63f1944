"""The DPO recipe end to end on the tiny model: it trains, records lineage, and resumes exactly."""

import json

import pytest

from align.recipes.dpo import train_from_yaml
from clinalign_base.manifest import read_manifest

COMMON = {"model_name_or_path": "builtin:tiny-llama", "per_device_train_batch_size": 2, "max_length": 64,
          "report_to": "none", "logging_steps": 1, "lr_scheduler_type": "constant", "warmup_steps": 0,
          "learning_rate": 1e-3, "save_steps": 2, "max_train_samples": 16}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dpo") / "pairs.jsonl"
    rows = [{"prompt": f"Is drug {i} safe with alcohol?", "chosen": "Ask your pharmacist; avoid alcohol.",
             "rejected": f"Sure, drink as much as you like {i}."} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def losses(out):
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


@pytest.mark.slow
def test_dpo_trains_records_lineage_and_resumes(repo_root, pairs_file, tmp_path):
    full = train_from_yaml("configs/demo/dpo.yaml", COMMON | {"dataset_path": str(pairs_file),
                                                              "output_dir": str(tmp_path / "full"), "max_steps": 4})
    assert (full / "adapter_model.safetensors").is_file()
    m = read_manifest(full)
    assert m["kind"] == "policy_adapter"
    roles = {i["role"]: i for i in m["inputs"]}
    assert roles["preferences"]["path"] == str(pairs_file) and len(roles["preferences"]["sha256"]) == 64
    assert roles["config"]["path"] == "configs/demo/dpo.yaml"
    assert "train_loss" in m["metrics"]
    ref_losses = losses(full)
    # DPO moves the policy: the chosen/rejected preference is learnt on this trivially separable set
    assert ref_losses[4] < ref_losses[1]

    # interrupted after step 2, then resumed: steps 3-4 must match the uninterrupted run
    part = tmp_path / "part"
    train_from_yaml("configs/demo/dpo.yaml", COMMON | {"dataset_path": str(pairs_file), "output_dir": str(part),
                                                       "max_steps": 2})
    resumed = train_from_yaml("configs/demo/dpo.yaml", COMMON | {
        "dataset_path": str(pairs_file), "output_dir": str(part), "max_steps": 4,
        "resume_from_checkpoint": str(part / "checkpoint-2")})
    got = losses(resumed)
    for step in (3, 4):
        assert got[step] == pytest.approx(ref_losses[step], rel=1e-4), step


def test_lora_top_layers_adapts_only_the_top_share_of_decoder_layers():
    from types import SimpleNamespace

    from peft import LoraConfig

    from align.recipes.dpo import top_layers_only
    from clinalign_base.errors import InputError

    model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=30))
    cfg = top_layers_only(LoraConfig(r=4, target_modules=["q_proj"]), model, 0.5)
    assert cfg.layers_to_transform == list(range(15, 30))
    assert top_layers_only(LoraConfig(r=4, target_modules=["q_proj"]), model, 0.01).layers_to_transform == [29]
    assert top_layers_only(LoraConfig(r=4), model, None).layers_to_transform is None  # default: every layer
    assert top_layers_only(None, model, 0.5) is None  # no LoRA: nothing to restrict
    with pytest.raises(InputError, match="lora_top_layers"):
        top_layers_only(LoraConfig(r=4), model, 1.5)
