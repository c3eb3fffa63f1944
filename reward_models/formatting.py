"""The one text format a reward model reads, shared by training and scoring.

TRL 1.16's RewardTrainer, given a standard (plain text) prompt/chosen pair, builds
`prompt + chosen`, appends `eos_token` when missing and tokenizes that string with the tokenizer's
own special tokens (`trainer/reward_trainer.py::_prepare_dataset`). We do the same here, with a
separator between prompt and response (plain clinical questions would otherwise run into the
answer), and we tokenize *before* TRL sees the data: TRL then skips its own tokenization, so the
ids it trains on are exactly the ids `RewardScorer` later scores.

The one deliberate difference: TRL *drops* every pair longer than `max_length`; we cut the prompt
from the left (keeping the leading special tokens, e.g. [CLS]) so the response and the most recent
part of the conversation survive. A pair whose response alone does not fit with at least
`min_prompt_tokens` of prompt is dropped at training time and counted; at scoring time its response
is cut from the right instead (a score must be returned for every input).

The format is saved next to the model (`reward_format.json`) and read back by the scorer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

FORMAT_FILE = "reward_format.json"


@dataclass(frozen=True)
class RewardFormat:
    separator: str = "\n\n"
    eos_token: str | None = None  # None: the tokenizer's eos, else its sep token (BERT)
    max_length: int = 512
    min_prompt_tokens: int = 16

    def save(self, model_dir: str | Path) -> None:
        (Path(model_dir) / FORMAT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: str | Path) -> RewardFormat | None:
        path = Path(model_dir) / FORMAT_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


def prepare_tokenizer(tokenizer, fmt: RewardFormat):
    """Set eos (BERT tokenizers have none: use [SEP]) and pad tokens the way training did."""
    eos = fmt.eos_token or tokenizer.eos_token or tokenizer.sep_token
    if eos is None:
        raise ValueError("the reward tokenizer has neither an eos nor a sep token; set eos_token in the config")
    if eos not in tokenizer.get_vocab():
        raise ValueError(f"eos_token {eos!r} is not in the reward tokenizer's vocabulary")
    tokenizer.eos_token = eos
    if tokenizer.pad_token is None:
        tokenizer.pad_token = eos
    return tokenizer


def format_text(tokenizer, prompt: str, response: str, fmt: RewardFormat) -> tuple[str, int]:
    """The string TRL would tokenize, and the character offset where the response part begins."""
    head = prompt + fmt.separator
    text = head + response
    if not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    return text, len(prompt)


@dataclass
class Encoded:
    input_ids: list[int]
    prompt_cut: bool = False  # some prompt tokens were removed from the left
    response_cut: bool = False  # the response itself had to be cut (scoring only)
    too_long: bool = False  # response does not fit with min_prompt_tokens of prompt


def encode(tokenizer, prompt: str, response: str, fmt: RewardFormat) -> Encoded:
    """Token ids of one (prompt, response), cut to `fmt.max_length` from the prompt's left."""
    text, boundary = format_text(tokenizer, prompt, response, fmt)
    enc = tokenizer(text, return_offsets_mapping=True, verbose=False)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if len(ids) <= fmt.max_length:
        return Encoded(ids)
    # Leading special tokens ([CLS], <s>) have an empty span before the first real token.
    lead = 0
    while lead < len(ids) and offsets[lead][1] == 0:
        lead += 1
    resp = lead
    while resp < len(ids) and not (offsets[resp][0] >= boundary or offsets[resp] == (0, 0)):
        resp += 1
    prompt_ids, rest = ids[lead:resp], ids[resp:]
    room = fmt.max_length - lead - len(rest)
    if room >= min(fmt.min_prompt_tokens, len(prompt_ids)):
        return Encoded(ids[:lead] + (prompt_ids[-room:] if room > 0 else []) + rest, prompt_cut=True)
    # The response alone is too long: keep min_prompt_tokens of prompt, the head of the response,
    # and the trailing special/eos tokens.
    keep_prompt = prompt_ids[-fmt.min_prompt_tokens:] if fmt.min_prompt_tokens > 0 else []
    tail = _trailing_specials(ids, offsets, tokenizer)
    body = rest[: len(rest) - len(tail)]
    room = fmt.max_length - lead - len(keep_prompt) - len(tail)
    return Encoded(ids[:lead] + keep_prompt + body[:max(room, 0)] + tail, prompt_cut=True, response_cut=True,
                   too_long=True)


def _trailing_specials(ids: list[int], offsets: list, tokenizer) -> list[int]:
    """The eos we appended plus any special tokens the tokenizer added after it."""
    eos_id = tokenizer.eos_token_id
    n = 0
    for i in range(len(ids) - 1, -1, -1):
        if offsets[i] == (0, 0) or ids[i] == eos_id:
            n += 1
            if ids[i] == eos_id:
                break
        else:
            break
    return ids[len(ids) - n:]
