"""Loading what `clinalign_base.models` resolves: tokenizers, causal LMs, chat formatting, dtypes, eos ids.

The resolver itself (spec → local folder, builtin names, the model cache) is the base layer's
`clinalign_base.models`; its names are re-exported here because align's code and tests use them as
`align.models.*`.
"""

from __future__ import annotations

from clinalign_base.models import (  # noqa: F401  (re-exported: align's one facade for models)
    BUILTINS,
    MINILM,
    SMOLLM2,
    SMOLLM2_GGUF,
    TINY_LLAMA,
    cache_dir,
    cpu_has_bf16,
    preferred_dtype,
    resolve_model,
)

# Me LLaMA's own evaluation code prompts its chat models this way (BIDS-Xu-Lab/Me-LLaMA,
# src/model_prompt.py); used when a local tokenizer ships without a chat template.
ME_LLAMA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Human: \n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: \n' + message['content'] + eos_token + '\n\n' }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: \n' }}{% endif %}"
)


def load_tokenizer(spec: str, *, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(spec))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(tok, "chat_template", None) is None and tok.eos_token is not None and not spec == MINILM:
        tok.chat_template = ME_LLAMA_CHAT_TEMPLATE
    tok.padding_side = padding_side
    return tok


def load_causal_lm(spec: str, *, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(resolve_model(spec), dtype=torch_dtype)
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.eos_token_id
    return model


def chat_prompt(tokenizer, prompt: str) -> str:
    """Format a user prompt with the model's chat template, ready for the assistant's answer."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def generation_eos(model_spec: str) -> int | list[int] | None:
    """The eos id(s) of a model's generation_config.json (None when it has none)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(resolve_model(model_spec)).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's end-of-turn only
        return None


def eos_token_ids(tokenizer, config_eos: int | list[int] | None) -> set[int]:
    """Every id that ends an answer: the generation config's eos id(s) plus the tokenizer's."""
    ids = set(config_eos if isinstance(config_eos, list) else [config_eos])
    return {i for i in ids | {tokenizer.eos_token_id} if i is not None}
