"""Reference outputs of the transformers path, for the generation engines' tests."""

from __future__ import annotations

import torch

from align.models import chat_prompt, load_causal_lm, load_tokenizer


def hf_greedy(spec: str, prompts: list[str], max_new_tokens: int, adapter: str | None = None) -> list[list[int]]:
    """Greedy answer token ids, float32, one prompt at a time (no padding), adapter merged."""
    tok = load_tokenizer(spec)
    model = load_causal_lm(spec, dtype="float32")
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    out = []
    for p in prompts:  # one at a time: no padding
        ids = tok(chat_prompt(tok, p), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out
