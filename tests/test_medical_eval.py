"""PubMedQA scoring on builtin:tiny-llama (random weights: the numbers mean nothing, the mechanics do)."""

from __future__ import annotations

import json

import pytest
import torch

from align.medical_eval import (
    LABELS,
    answer_texts,
    build_prompt,
    continuation_logprobs,
    evaluate_pubmedqa,
    load_items,
)
from align.models import TINY_LLAMA, load_causal_lm, load_tokenizer, resolve_model
from annotation.errors import InputError


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm(TINY_LLAMA).eval(), load_tokenizer(TINY_LLAMA)


def write_items(path, n=5, **override):
    rows = []
    for i in range(n):
        row = {"id": f"q{i}", "split": "test", "question": f"Does drug {i} lower blood pressure in trial {i}?",
               "contexts": ["Background sentence." * (1 + i), f"We randomised {10 * (i + 1)} patients."],
               "final_decision": LABELS[i % 3]}
        rows.append(row | override)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def unpadded_logprob(model, prompt_ids, option_ids) -> float:
    """Independent reference: one unpadded sequence, summed log-probs of the option tokens."""
    ids = torch.tensor([prompt_ids + option_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(logp[len(prompt_ids) - 1 + t, tok].item() for t, tok in enumerate(option_ids))


def test_batched_padded_scores_match_unpadded_reference(tiny):
    model, tok = tiny
    prompts = [tok("short prompt")["input_ids"], tok("a much longer prompt " * 5)["input_ids"],
               tok("middle length prompt here")["input_ids"]]
    single = [[tok(w, add_special_tokens=False)["input_ids"] for w in LABELS]] * 3
    multi = [[tok(w, add_special_tokens=False)["input_ids"] for w in ("yes", "no", "maybe not quite")]] * 3
    assert any(len(o) > 1 for o in multi[0])
    shared = continuation_logprobs(model, prompts, single, pad_id=tok.pad_token_id, batch_size=2)
    full = continuation_logprobs(model, prompts, single, pad_id=tok.pad_token_id, batch_size=2, shared_prompt=False)
    longer = continuation_logprobs(model, prompts, multi, pad_id=tok.pad_token_id, batch_size=3)
    for i, p in enumerate(prompts):
        for j in range(3):
            assert shared[i][j] == pytest.approx(unpadded_logprob(model, p, single[i][j]), abs=1e-4)
            assert full[i][j] == pytest.approx(shared[i][j], abs=1e-4)
            assert longer[i][j] == pytest.approx(unpadded_logprob(model, p, multi[i][j]), abs=1e-4)


def test_prediction_is_the_highest_likelihood_answer(tiny, tmp_path):
    model, tok = tiny
    data = write_items(tmp_path / "pq.jsonl", n=5)
    result = evaluate_pubmedqa(TINY_LLAMA, data_path=data, batch_size=2, show_progress=False,
                               model=model, tokenizer=tok)
    items = load_items(data)
    assert result["n"] == 5 and not result["official_test_set"]
    for item, pred in zip(items, result["predictions"], strict=True):
        prompt = build_prompt(tok, item)
        ids = tok(prompt)["input_ids"]
        ref = [unpadded_logprob(model, ids, tok(a, add_special_tokens=False)["input_ids"]) for a in answer_texts(prompt)]
        assert pred["pred"] == LABELS[max(range(3), key=lambda j: ref[j])]
        assert pred["logprobs"] == pytest.approx(ref, abs=1e-3)
    assert result["accuracy"] == sum(p["pred"] == p["gold"] for p in result["predictions"]) / 5
    assert sum(result["predicted"].values()) == 5


def test_limit_and_official_split(tiny):
    model, tok = tiny
    result = evaluate_pubmedqa(TINY_LLAMA, limit=3, show_progress=False, model=model, tokenizer=tok)
    assert result["n"] == 3 and result["anchors"]["Me LLaMA 13B-chat"] == 0.700
    items = load_items()
    assert len(items) == 500  # the official test split of the shipped PQA-L file


def test_adapter_changes_scores_and_names_its_base(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    data = write_items(tmp_path / "pq.jsonl", n=3)
    peft_model = get_peft_model(load_causal_lm(TINY_LLAMA), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                        init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    base = evaluate_pubmedqa(TINY_LLAMA, data_path=data, show_progress=False, model=model, tokenizer=tok)
    adapted = evaluate_pubmedqa(None, adapter=str(tmp_path / "adapter"), data_path=data, show_progress=False)
    assert adapted["model"] == resolve_model(TINY_LLAMA)  # the base named in adapter_config.json
    diffs = [abs(a - b) for pa, pb in zip(adapted["predictions"], base["predictions"], strict=True)
             for a, b in zip(pa["logprobs"], pb["logprobs"], strict=True)]
    assert max(diffs) > 1e-3


def test_bad_inputs_are_reported(tmp_path):
    bad = write_items(tmp_path / "bad.jsonl", n=2, final_decision="probably")
    with pytest.raises(InputError, match=r"bad.jsonl:1.*final_decision"):
        load_items(bad)
    with pytest.raises(InputError, match="contexts"):
        load_items(write_items(tmp_path / "ctx.jsonl", n=1, contexts="not a list"))
    with pytest.raises(InputError, match="split='test'"):
        load_items(write_items(tmp_path / "train.jsonl", n=2, split="train_dev"))
    with pytest.raises(InputError, match="file not found"):
        load_items(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="limit"):
        load_items(write_items(tmp_path / "ok.jsonl", n=2), limit=0)
    (tmp_path / "not_adapter").mkdir()
    with pytest.raises(InputError, match="adapter_config.json"):
        evaluate_pubmedqa(TINY_LLAMA, adapter=str(tmp_path / "not_adapter"), data_path=tmp_path / "ok.jsonl")


def test_cli_eval_writes_a_manifest(tmp_path, capsys):
    from align.cli import main

    data = write_items(tmp_path / "pq.jsonl", n=3)
    out = tmp_path / "eval.json"
    wr = tmp_path / "winrate.json"
    wr.write_text(json.dumps({"win_rate": 0.625, "win_rate_ci95": [0.4, 0.8], "n_prompts": 8}))
    assert main(["eval", "--model", TINY_LLAMA, "--data", str(data), "--out", str(out), "--winrate", str(wr)]) == 0
    printed = capsys.readouterr().out
    assert "Me LLaMA 13B-chat" in printed and "0.700" in printed and "0.768" in printed
    manifest = json.loads(out.read_text())
    assert manifest["kind"] == "evaluation" and manifest["metrics"]["pubmedqa_n"] == 3
    assert manifest["metrics"]["win_rate"] == 0.625
    assert [i["role"] for i in manifest["inputs"]] == ["pubmedqa", "winrate"]
    wr.write_text(json.dumps({"win_rate": 1.5}))
    assert main(["eval", "--model", TINY_LLAMA, "--data", str(data), "--winrate", str(wr)]) == 2
