"""Prompt sets for online RL: read, validate (before any model is trained) and chat-format them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from align.prompts import Prompt, load_prompts
from clinalign_base.errors import ClinalignError, InputError

__all__ = ["Prompt", "context_length", "encode_prompts", "load_prompt_set", "resolve_prompts_path"]


def resolve_prompts_path(path: str) -> Path:
    """The prompt file or dataset folder, which must exist (the repo ships its sets under data/)."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    raise InputError("prompt file or dataset folder not found", path=str(p))


def load_prompt_set(path: str, limit: int | None = None) -> list[Prompt]:
    """Validated prompts (align.prompts: `prompt` or `question` field); an empty set is an error."""
    src = resolve_prompts_path(path)
    return [replace(p, origin=f"{src} (id {p.id})") for p in load_prompts(str(src), limit=limit)]


def context_length(model_config) -> int | None:
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return getattr(text, "max_position_embeddings", None)


def encode_prompts(prompts: list[Prompt], tokenizer, *, max_prompt_length: int | None,
                   response_length: int, context: int | None) -> list[list[int]]:
    """Chat-format and tokenize every prompt; any prompt that leaves no room to answer is an error."""
    from align.models import chat_prompt

    limit = max_prompt_length if max_prompt_length else (context - response_length if context else None)
    if limit is not None and limit < 1:
        raise ClinalignError(f"response_length={response_length} leaves no room for a prompt in the "
                             f"model's context of {context} tokens")
    encoded, too_long = [], []
    for p in prompts:
        ids = tokenizer(chat_prompt(tokenizer, p.text), add_special_tokens=False)["input_ids"]
        if limit is not None and len(ids) > limit:
            too_long.append(f"{p.where} ({len(ids)} tokens)")
        encoded.append(ids)
    if too_long:
        ctx = f"context {context} - response_length {response_length}" if not max_prompt_length else \
            "max_prompt_length"
        raise InputError(f"{len(too_long)} prompt(s) longer than {limit} tokens ({ctx}): "
                         f"{'; '.join(too_long[:5])}" + (" ..." if len(too_long) > 5 else ""))
    return encoded
