"""PubMedQA scoring on builtin:tiny-llama (random weights: the numbers mean nothing, the mechanics do)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from align.evaluation.pubmedqa import (
    LABELS,
    answer_ids,
    answer_texts,
    build_prompt,
    continuation_logprobs,
    evaluate_pubmedqa,
    evaluate_pubmedqa_cached,
    load_items,
    result_cache_key,
)
from align.evaluation.pubmedqa_paired import paired_alignment_tax, run_alignment_tax
from align.models import TINY_LLAMA, load_causal_lm, load_tokenizer, resolve_model
from clinalign_base.errors import InputError


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


def test_shared_prefix_cache_gives_the_unpadded_scores(tiny, monkeypatch):
    """Prompts sharing a long head (chat header + instruction) run it once from a KV cache; the scores of
    every prompt, of any length and in any batch, are those of its own unpadded forward."""
    import align.evaluation.pubmedqa as me

    model, tok = tiny
    head = tok("Answer the research question with one word: yes, no, or maybe. Question:")["input_ids"]
    tails = ["Is it?", "Does a much longer question about blood pressure in older adults change the answer?",
             "Why not?", "Does drug X work?", "Is the trial randomised and blinded?"]
    prompts = [head + tok(t, add_special_tokens=False)["input_ids"] for t in tails]
    options = [[tok(w, add_special_tokens=False)["input_ids"] for w in LABELS]] * len(prompts)
    built = []
    real_build = me._PrefixCache.build.__func__
    monkeypatch.setattr(me._PrefixCache, "build",
                        classmethod(lambda cls, *a: built.append(real_build(cls, *a)) or built[-1]))
    scores = continuation_logprobs(model, prompts, options, pad_id=tok.pad_token_id, batch_size=2)
    assert built and built[0] is not None and built[0].length == len(head)
    for i, p in enumerate(prompts):
        for j in range(3):
            assert scores[i][j] == pytest.approx(unpadded_logprob(model, p, options[i][j]), abs=1e-4)


def reference_label_scores(model, tok, item, *, chat: bool = True) -> list[float]:
    """Independent reference: per label, log(sum over its case variants of p(variant | prompt))."""
    import align.evaluation.pubmedqa as me  # looked up at call time: a test may patch the variants

    prompt = build_prompt(tok, item, chat=chat)
    ids = tok(prompt)["input_ids"]
    out = []
    for label in LABELS:
        probs = [math.exp(unpadded_logprob(model, ids, answer_ids(tok, prompt, text)))
                 for text in answer_texts(prompt, me.case_variants(label))]
        out.append(math.log(sum(probs)))
    return out


def test_answer_score_is_logsumexp_of_both_cases(tiny, tmp_path):
    model, tok = tiny
    data = write_items(tmp_path / "pq.jsonl", n=5)
    result = evaluate_pubmedqa(TINY_LLAMA, data_path=data, batch_size=2, show_progress=False,
                               model=model, tokenizer=tok)
    assert result["n"] == 5 and not result["official_test_set"]
    assert "single-token" in result["scoring"] and result["answer_variants"]["maybe"] == ["maybe", "Maybe"]
    assert result["dtype"] == "float32" and result["n_truncated"] == 0 and result["cached"] is False
    for item, pred in zip(load_items(data), result["predictions"], strict=True):
        ref = reference_label_scores(model, tok, item)
        assert pred["id"] == item.id and pred["gold"] == item.label
        assert pred["logprobs"] == pytest.approx(ref, abs=1e-3)
        assert pred["pred"] == LABELS[max(range(3), key=lambda j: ref[j])]
    assert result["accuracy"] == sum(p["pred"] == p["gold"] for p in result["predictions"]) / 5
    assert sum(result["predicted"].values()) == 5


def test_multi_token_variants_use_the_full_path(tiny, tmp_path, monkeypatch):
    import align.evaluation.pubmedqa as me

    model, tok = tiny
    monkeypatch.setattr(me, "case_variants", lambda label: (label, f"{label.capitalize()} indeed"))
    data = write_items(tmp_path / "pq.jsonl", n=3)
    result = evaluate_pubmedqa(TINY_LLAMA, data_path=data, batch_size=2, show_progress=False, chat=False,
                               model=model, tokenizer=tok)
    assert "full sequences" in result["scoring"]
    for item, pred in zip(load_items(data), result["predictions"], strict=True):
        assert pred["logprobs"] == pytest.approx(reference_label_scores(model, tok, item, chat=False), abs=1e-3)


def test_long_abstracts_are_cut_and_counted(tiny, tmp_path):
    model, tok = tiny
    data = write_items(tmp_path / "pq.jsonl", n=3, contexts=["A long background sentence. " * 60])
    result = evaluate_pubmedqa(TINY_LLAMA, data_path=data, max_length=200, show_progress=False,
                               model=model, tokenizer=tok)
    assert result["n_truncated"] == 3 and result["truncated_ids"] == ["q0", "q1", "q2"]


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


# -- cache ---------------------------------------------------------------------------------------------
def test_base_result_is_cached_by_weights_and_settings(tmp_path):
    data = write_items(tmp_path / "pq.jsonl", n=3)
    cache = tmp_path / "cache"
    kw = dict(data_path=data, show_progress=False, cache_dir=cache, dtype="float32")
    first = evaluate_pubmedqa_cached(TINY_LLAMA, **kw)
    second = evaluate_pubmedqa_cached(TINY_LLAMA, **kw)
    assert first["cached"] is False and second["cached"] is True
    assert second["predictions"] == first["predictions"] and second["cache_key"] == first["cache_key"]
    assert (cache / f"{first['cache_key']}.json").is_file()
    key = dict(data_path=data, max_length=1024, chat=True, memo_dir=cache)
    base = result_cache_key(TINY_LLAMA, dtype="float32", limit=None, **key)
    assert base == first["cache_key"]
    assert result_cache_key(TINY_LLAMA, dtype="bfloat16", limit=None, **key) != base
    assert result_cache_key(TINY_LLAMA, dtype="float32", limit=2, **key) != base


def test_other_weights_give_another_key(tmp_path):
    import shutil

    data = write_items(tmp_path / "pq.jsonl", n=2)
    copy = tmp_path / "model"
    shutil.copytree(resolve_model(TINY_LLAMA), copy)
    key = dict(data_path=data, dtype="float32", max_length=1024, chat=True, limit=None, memo_dir=tmp_path)
    same = result_cache_key(str(copy), **key)
    assert same == result_cache_key(TINY_LLAMA, **key)  # content, not path
    weights = next(copy.glob("*.safetensors"))
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 1  # one bit in the middle of the file
    weights.write_bytes(bytes(raw))
    assert result_cache_key(str(copy), **key) != same


def test_corrupt_cache_is_recomputed_and_adapters_are_never_cached(tmp_path):
    data = write_items(tmp_path / "pq.jsonl", n=2)
    cache = tmp_path / "cache"
    kw = dict(data_path=data, show_progress=False, cache_dir=cache, dtype="float32")
    first = evaluate_pubmedqa_cached(TINY_LLAMA, **kw)
    file = cache / f"{first['cache_key']}.json"
    for junk in ("{not json", "[1, 2]", json.dumps({"cache_key": "other"})):
        file.write_text(junk)
        again = evaluate_pubmedqa_cached(TINY_LLAMA, **kw)
        assert again["cached"] is False and again["predictions"] == first["predictions"]
    assert evaluate_pubmedqa_cached(TINY_LLAMA, **kw)["cached"] is True
    adapter = save_adapter(tmp_path / "adapter")
    before = set(cache.iterdir())
    for _ in range(2):
        assert evaluate_pubmedqa_cached(TINY_LLAMA, adapter=adapter, **kw)["cached"] is False
    assert set(cache.iterdir()) == before


def save_adapter(path) -> str:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_causal_lm(TINY_LLAMA), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                  init_lora_weights=False))
    model.save_pretrained(path)
    return str(path)


# -- paired alignment tax --------------------------------------------------------------------------------
def fake_result(golds, preds, ids=None):
    ids = ids or [f"q{i}" for i in range(len(golds))]
    # no per-item scores: the paired test can only read the raw predictions
    return {"predictions": [{"id": i, "gold": g, "pred": p, "logprobs": None}
                            for i, g, p in zip(ids, golds, preds, strict=True)], "accuracy_ci95": [0.0, 1.0]}


def test_paired_counts_discordant_items_and_gives_a_verdict():
    golds = ["yes"] * 500
    before = ["yes"] * 400 + ["no"] * 100
    # 3 items right -> wrong, 5 wrong -> right: accuracy 0.800 -> 0.804, lower bound ~ -0.005 > -0.02
    after = ["yes"] * 397 + ["no"] * 3 + ["yes"] * 5 + ["no"] * 95
    out = paired_alignment_tax(fake_result(golds, before), fake_result(golds, after))
    assert (out["b_right_to_wrong"], out["c_wrong_to_right"], out["n"]) == (3, 5, 500)
    assert out["before"]["accuracy"] == 0.80 and out["after"]["accuracy"] == pytest.approx(0.804)
    assert out["after"]["predicted"] == {"yes": 402, "no": 98, "maybe": 0}
    assert out["verdict"] == "non-inferior" and out["non_inferior"]
    # The same 3-vs-5 split on 100 items is too few to rule out a 2-point loss.
    small = paired_alignment_tax(fake_result(golds[:100], ["yes"] * 80 + ["no"] * 20),
                                 fake_result(golds[:100], ["yes"] * 77 + ["no"] * 3 + ["yes"] * 5 + ["no"] * 15))
    assert (small["b_right_to_wrong"], small["c_wrong_to_right"]) == (3, 5)
    assert small["verdict"] == "inferior or inconclusive"
    worse = ["yes"] * 300 + ["no"] * 200  # 100 right -> wrong, none back
    bad = paired_alignment_tax(fake_result(golds, before), fake_result(golds, worse))
    assert (bad["b_right_to_wrong"], bad["c_wrong_to_right"]) == (100, 0)
    assert bad["verdict"] == "inferior or inconclusive" and bad["mcnemar_p"] < 0.001


def scored_result(golds, scores):
    preds = [LABELS[max(range(3), key=lambda j: row[j])] for row in scores]
    return {"predictions": [{"id": f"q{i}", "gold": g, "pred": p, "logprobs": list(row)}
                            for i, (g, p, row) in enumerate(zip(golds, preds, scores, strict=True))]}


def test_a_uniform_prior_shift_is_reported_and_item_losses_still_gate():
    """A policy whose yes/no log-odds all moved by the same amount answers "no" more often (raw: a tax)
    but lost no item-level knowledge (prior-aligned: none); a policy that loses items fails both."""
    import random

    rng = random.Random(0)
    golds = [rng.choice(["yes", "no"]) for _ in range(500)]
    # the base knows something: its yes-no margin leans towards the gold label
    margins = [(0.4 if g == "yes" else -0.4) + rng.gauss(0, 0.5) for g in golds]
    base = [[m, 0.0, -6.0] for m in margins]
    shifted = [[m - 0.3, 0.0, -6.0] for m in margins]  # the default answer moved, nothing else
    raw = paired_alignment_tax(scored_result(golds, base), scored_result(golds, shifted), gate="raw")
    aligned = paired_alignment_tax(scored_result(golds, base), scored_result(golds, shifted))
    assert raw["gate"] == "raw" and raw["b_right_to_wrong"] > 20 and not raw["non_inferior"]
    assert aligned["gate"] == "prior_aligned" and aligned["non_inferior"]
    assert (aligned["b_right_to_wrong"], aligned["c_wrong_to_right"]) == (0, 0)
    assert aligned["prior_aligned"]["prior_shift_nats"]["no"] == pytest.approx(0.3, abs=1e-6)
    assert aligned["raw"]["b_right_to_wrong"] == raw["b_right_to_wrong"]  # the other reading rides along
    # the shift is computed from scores alone: other gold labels give the same shift
    flipped = ["no" if g == "yes" else "yes" for g in golds]
    again = paired_alignment_tax(scored_result(flipped, base), scored_result(flipped, shifted))
    assert again["prior_aligned"]["prior_shift_nats"] == aligned["prior_aligned"]["prior_shift_nats"]
    # item-level loss: 60 items the base got right now lean the wrong way, with no uniform shift to remove
    hurt = [list(r) for r in base]
    right = [i for i, (g, r) in enumerate(zip(golds, base, strict=True)) if (r[0] > r[1]) == (g == "yes")]
    for i in right[:30]:
        hurt[i][0] = -abs(hurt[i][0]) - 0.2 if golds[i] == "yes" else hurt[i][0]
    for i in [i for i in right if golds[i] == "no"][:30]:
        hurt[i][0] = abs(hurt[i][0]) + 0.2
    lost = paired_alignment_tax(scored_result(golds, base), scored_result(golds, hurt))
    assert lost["b_right_to_wrong"] >= 40 and not lost["non_inferior"]


def test_paired_rejects_mismatched_items():
    golds, preds = ["yes", "no", "maybe"], ["yes", "yes", "yes"]
    ref = fake_result(golds, preds)
    with pytest.raises(InputError, match="before has 3 items, after has 2"):
        paired_alignment_tax(ref, fake_result(golds[:2], preds[:2]))
    with pytest.raises(InputError, match=r"position 1: before 'q1', after 'x1'"):
        paired_alignment_tax(ref, fake_result(golds, preds, ids=["q0", "x1", "q2"]))
    with pytest.raises(InputError, match="different order"):
        paired_alignment_tax(ref, fake_result(golds, preds, ids=["q0", "q2", "q1"]))
    with pytest.raises(InputError, match="predictions"):
        paired_alignment_tax(ref, {"accuracy": 0.5})


def test_run_alignment_tax_with_policy_folder_and_adapter(tmp_path):
    import shutil

    data = write_items(tmp_path / "pq.jsonl", n=3)
    policy = tmp_path / "sft_merged"
    shutil.copytree(resolve_model(TINY_LLAMA), policy)
    adapter = save_adapter(tmp_path / "adapter")
    kw = dict(data_path=data, cache_dir=tmp_path / "cache", dtype="float32", show_progress=False)
    out = run_alignment_tax(TINY_LLAMA, policy_spec=str(policy), adapter=adapter, **kw)
    assert out["after"]["model"] == str(policy) and out["after"]["adapter"] == adapter
    assert out["paired"]["n"] == 3 and out["paired"]["verdict"] in ("non-inferior", "inferior or inconclusive")
    again = run_alignment_tax(TINY_LLAMA, adapter=adapter, **kw)
    assert again["before"]["cached"] is True and again["after"]["cached"] is False
    with pytest.raises(InputError, match="nothing to compare"):
        run_alignment_tax(TINY_LLAMA, **kw)
