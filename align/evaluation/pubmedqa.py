"""PubMedQA (PQA-L, the official 500-item test split) yes/no/maybe accuracy by answer log-likelihood.

Each item is put to the policy as a chat turn (abstract + question, "answer yes, no, or maybe"); each
answer is scored by the log-probability of its tokens after the assistant prompt, summed over its case
variants (logsumexp of "yes" and "Yes": a chat model that capitalises its first word must not lose the
item for it), and the most likely answer is the prediction. No sampling, no parsing of free text: the
same number for a base model and for base + LoRA adapter, comparable across rounds (the alignment tax).

When every variant is one token (the case for Llama/SmolLM2 tokenizers), one forward pass per item
gives all scores; otherwise each (prompt, variant) sequence is scored. Both paths are exact.

`evaluate_pubmedqa_cached` keeps a plain model's result on disk, keyed by the contents of its weights,
so the base model is scored once, not every round.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinalign_base.errors import ClinalignError, InputError

LABELS = ("yes", "no", "maybe")
# Bump when anything that changes the scores changes: cached results of older versions are then ignored.
SCORING_VERSION = "pubmedqa-loglik-lse-cases-v3"  # v3: shared-prefix KV cache
# CPU, bf16, 2 threads, 64 items: batch 16 took 77 s, batch 8 82 s (lengths are sorted, so little padding).
DEFAULT_BATCH_SIZE = 16
# The longest official test prompt is 731 SmolLM2 tokens: 1024 keeps every abstract whole.
DEFAULT_MAX_LENGTH = 1024
_RESERVE = 8  # room left after the prompt for the answer tokens
DATA_NAME = "pubmedqa_pqal_1000.jsonl"
OFFICIAL_TEST_SIZE = 500
# Me LLaMA zero-shot PubMedQA accuracy (npj Digit. Med. 2025, Table 3), printed beside our results.
ANCHORS = {"Me LLaMA 13B-chat": 0.700, "Me LLaMA 70B-chat": 0.768}
INSTRUCTION_NO_ABSTRACT = "Answer the research question with one word: yes, no, or maybe."
INSTRUCTION = ("Read the abstract and answer the research question with one word: yes, no, or maybe.")


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    context: str
    label: str


def default_data_path() -> Path:
    """The copy shipped in the repo (data/pubmedqa), found from the package or the working folder."""
    repo = Path(__file__).resolve().parents[2] / "data" / "pubmedqa" / DATA_NAME
    for candidate in (repo, Path("data/pubmedqa") / DATA_NAME):
        if candidate.is_file():
            return candidate
    raise ClinalignError(f"PubMedQA data not found (looked for {repo}); pass --data PATH")


def load_items(path: str | Path | None = None, *, split: str = "test", limit: int | None = None) -> list[Item]:
    """Read PQA-L rows, check each one, keep `split` (test = the official 500), first `limit` of them."""
    from clinalign_base.jsonl import read_jsonl

    path = Path(path) if path else default_data_path()
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    items: list[Item] = []
    for line, row in read_jsonl(path):
        label = row.get("final_decision")
        if label not in LABELS:
            raise InputError(f"final_decision must be one of {', '.join(LABELS)}, got {label!r}", path=str(path),
                             line=line)
        contexts = row.get("contexts")
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise InputError("missing or empty 'question'", path=str(path), line=line)
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise InputError("'contexts' must be a list of strings", path=str(path), line=line)
        if row.get("split", split) != split:
            continue
        items.append(Item(str(row.get("id", line)), row["question"].strip(), " ".join(contexts).strip(), label))
    if not items:
        raise InputError(f"no items with split={split!r}", path=str(path))
    return items[:limit] if limit else items


def build_prompt(tokenizer, item: Item, context: str | None = None, *, chat: bool = True) -> str:
    context = item.context if context is None else context
    if context:
        body = f"{INSTRUCTION}\n\nAbstract: {context}\n\nQuestion: {item.question}"
    else:  # the "reasoning-required" setting of the PubMedQA paper: the question alone
        body = f"{INSTRUCTION_NO_ABSTRACT}\n\nQuestion: {item.question}"
    if chat:
        from align.models import chat_prompt

        return chat_prompt(tokenizer, body)
    return body + "\nAnswer:"


def answer_texts(prompt: str, labels: Sequence[str] = LABELS) -> list[str]:
    """A chat prompt ends with the assistant header (a newline): the answer follows directly; a plain
    prompt ends with "Answer:", so the answer word comes with its leading space."""
    return [label if prompt[-1:].isspace() else f" {label}" for label in labels]


def case_variants(label: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((label, label.capitalize())))


def answer_ids(tokenizer, prompt: str, text: str) -> list[int]:
    """Token ids of `text` as they follow `prompt`: tokenizing it alone can differ (SentencePiece adds a
    word-start marker), so take the tail of the joint encoding when the prompt's tokens are its prefix."""
    pre, full = _encode(tokenizer, prompt), _encode(tokenizer, prompt + text)
    if full[:len(pre)] == pre and len(full) > len(pre):
        return full[len(pre):]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def variant_ids(tokenizer, prompt: str) -> list[list[list[int]]]:
    """Per label, the distinct token sequences of its case variants (an uncased tokenizer gives one)."""
    out = []
    for label in LABELS:
        seqs = [answer_ids(tokenizer, prompt, t) for t in answer_texts(prompt, case_variants(label))]
        out.append([list(s) for s in dict.fromkeys(tuple(s) for s in seqs)])
    return out


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def encode_prompt(tokenizer, item: Item, *, max_length: int, reserve: int, chat: bool = True) -> list[int]:
    """Token ids of the prompt, the abstract cut from its end when the whole would not fit."""
    return encode_prompt_checked(tokenizer, item, max_length=max_length, reserve=reserve, chat=chat)[0]


def encode_prompt_checked(tokenizer, item: Item, *, max_length: int, reserve: int,
                          chat: bool = True) -> tuple[list[int], bool]:
    """(token ids, whether the abstract was cut)."""
    ids = _encode(tokenizer, build_prompt(tokenizer, item, chat=chat))
    context = item.context
    for attempt in range(4):  # re-tokenizing decoded text can shift a few tokens: retry with the new excess
        excess = len(ids) + reserve - max_length
        if excess <= 0:
            return ids, attempt > 0
        ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        keep = len(ctx_ids) - excess - 2
        if keep < 16:
            raise InputError(f"item {item.id}: max_length {max_length} leaves no room for the abstract")
        context = tokenizer.decode(ctx_ids[:keep]) + " ..."
        ids = _encode(tokenizer, build_prompt(tokenizer, item, context, chat=chat))
    return ids[-(max_length - reserve):], True


def _encode(tokenizer, text: str) -> list[int]:
    bos = tokenizer.bos_token
    # Chat templates that already start with BOS must not get a second one.
    add = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add)["input_ids"]


def _left_pad(seqs: Sequence[list[int]], pad_id: int, device) -> dict[str, Any]:
    from align.batching import left_pad

    ids, mask = left_pad(seqs, pad_id)
    # Positions count real tokens only, so left padding does not shift them.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def continuation_logprobs(model, prompts: Sequence[list[int]], options: Sequence[Sequence[list[int]]], *,
                          pad_id: int, batch_size: int = 8, shared_prompt: bool | None = None,
                          progress: Callable[[int], None] | None = None) -> list[list[float]]:
    """Summed log-probability of each option's tokens after its prompt: out[i][j] for prompt i, option j.

    shared_prompt=None picks the one-pass path when every option is a single token.
    """
    import torch

    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    if any(not o for opts in options for o in opts):
        raise ValueError("an option encodes to no tokens")
    single = all(len(o) == 1 for opts in options for o in opts)
    if shared_prompt is None:
        shared_prompt = single
    if shared_prompt and not single:
        raise ValueError("shared_prompt needs single-token options")
    device = next(model.parameters()).device
    out: list[list[float]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # little padding per batch
    model.eval()
    with torch.no_grad():
        prefix = _PrefixCache.build(model, prompts, device) if shared_prompt else None
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if prefix is not None:
                logp = prefix.last_logprobs(model, [prompts[i] for i in idx], pad_id)
            elif shared_prompt:
                batch = _left_pad([prompts[i] for i in idx], pad_id, device)
                logp = model(**batch, logits_to_keep=1).logits[:, -1].float().log_softmax(-1)
            if shared_prompt:
                for row, i in enumerate(idx):
                    out[i] = [logp[row, o[0]].item() for o in options[i]]
            else:
                out_batch = _score_full(model, [prompts[i] for i in idx], [options[i] for i in idx], pad_id, device)
                for row, i in enumerate(idx):
                    out[i] = out_batch[row]
            if progress:
                progress(len(idx))
    return out


class _PrefixCache:
    """The key/value cache of the token prefix every prompt shares (chat header, instruction), computed
    once: each batch then runs only the prompts' own tokens. For SmolLM2 on PubMedQA without abstracts
    that is 43 of 67 tokens an item, so the alignment tax costs ~40% of the full forwards."""

    MIN_TOKENS = 8  # below this, building and copying the cache costs more than it saves

    def __init__(self, cache, length: int, device):
        self.cache, self.length, self.device = cache, length, device

    @classmethod
    def build(cls, model, prompts: Sequence[list[int]], device) -> _PrefixCache | None:
        import os

        import torch

        # at least one own token per prompt: its last position gives the answer's logits
        length = min(len(os.path.commonprefix(list(prompts))), min(len(p) for p in prompts) - 1)
        if length < cls.MIN_TOKENS:
            return None
        ids = torch.tensor([prompts[0][:length]], device=device)
        cache = model(input_ids=ids, use_cache=True).past_key_values
        return cls(cache, length, device)

    def last_logprobs(self, model, prompts: Sequence[list[int]], pad_id: int):
        """Next-token log-probabilities after each full prompt (prefix from the cache, the rest left-padded
        after it: padding sits between prefix and suffix, masked out, with positions counting real tokens)."""
        import copy

        import torch

        batch = _left_pad([p[self.length:] for p in prompts], pad_id, self.device)
        n = batch["input_ids"].shape[0]
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(n)
        mask = torch.cat([torch.ones(n, self.length, dtype=batch["attention_mask"].dtype, device=self.device),
                          batch["attention_mask"]], dim=1)
        out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"] + self.length,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float().log_softmax(-1)


def _score_full(model, prompts, options, pad_id: int, device) -> list[list[float]]:
    seqs, owners = [], []
    for i, (p, opts) in enumerate(zip(prompts, options, strict=True)):
        for j, o in enumerate(opts):
            seqs.append(p + o)
            owners.append((i, j, len(o)))
    tail = max(k for _, _, k in owners) + 1
    logits = model(**_left_pad(seqs, pad_id, device), logits_to_keep=tail).logits.float()
    logp = logits.log_softmax(-1)
    scores = [[0.0] * len(opts) for opts in options]
    for row, (i, j, k) in enumerate(owners):
        targets = seqs[row][-k:]
        # logits at position t predict token t+1: the k option tokens are predicted by the k
        # positions just before the last one in the kept tail.
        preds = logp[row, tail - k - 1:tail - 1]
        scores[i][j] = sum(preds[t, tok].item() for t, tok in enumerate(targets))
    return scores


def load_policy(model_spec: str | None, adapter: str | None = None, *, dtype: str = "float32"):
    """Base model (any resolve_model spec), optionally with a LoRA adapter folder merged into it (merged:
    scoring then runs at the plain model's speed)."""
    from align.models import load_causal_lm, load_tokenizer

    if adapter:
        cfg = Path(adapter) / "adapter_config.json"
        if not cfg.is_file():
            raise InputError("not a PEFT adapter folder (no adapter_config.json)", path=str(adapter))
        if not model_spec:
            model_spec = json.loads(cfg.read_text()).get("base_model_name_or_path")
            if not model_spec:
                raise InputError("adapter_config.json names no base model; pass --model", path=str(cfg))
    if not model_spec:
        raise InputError("no model given (--model SPEC, or --adapter DIR whose config names its base)")
    tokenizer = load_tokenizer(model_spec)
    model = load_causal_lm(model_spec, dtype=dtype)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer, model_spec


def evaluate_pubmedqa(model_spec: str | None, *, adapter: str | None = None, limit: int | None = None,
                      data_path: str | Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                      max_length: int = DEFAULT_MAX_LENGTH, chat: bool = True, dtype: str | None = None,
                      show_progress: bool = True, model=None, tokenizer=None,
                      with_abstract: bool = True) -> dict[str, Any]:
    """Accuracy on the PubMedQA test split (or its first `limit` items); a JSON-ready result.

    dtype None = align.models.preferred_dtype() (bf16 on AVX512-BF16/AMX CPUs and GPUs).
    """
    t0 = time.perf_counter()
    path = Path(data_path) if data_path else default_data_path()
    items = load_items(path, limit=limit)
    if not with_abstract:
        from dataclasses import replace

        items = [replace(it, context="") for it in items]
    if model is None or tokenizer is None:
        from align.models import preferred_dtype

        model, tokenizer, model_spec = load_policy(model_spec, adapter, dtype=dtype or preferred_dtype())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_prompt_checked(tokenizer, it, max_length=max_length, reserve=_RESERVE, chat=chat)
               for it in items]
    prompts = [ids for ids, _ in encoded]
    # Every prompt ends the same way (the assistant header or "Answer:"), so the answers encode alike.
    variants = variant_ids(tokenizer, build_prompt(tokenizer, items[0], chat=chat))
    flat = [seq for group in variants for seq in group]
    raw = _run(model, prompts, [flat] * len(prompts), pad_id, batch_size, show_progress)
    scores = [_label_scores(r, [len(g) for g in variants]) for r in raw]
    preds = [LABELS[max(range(len(LABELS)), key=lambda j: s[j])] for s in scores]
    result = summarise(items, preds, scores)
    single = all(len(seq) == 1 for seq in flat)
    result.update({
        "model": model_spec, "adapter": adapter, "limit": limit, "max_length": max_length, "chat_prompt": chat,
        "with_abstract": with_abstract,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "batch_size": batch_size,
        "scoring": "logsumexp over case variants of answer-token log-probabilities ("
                   + ("single-token: one forward per item)" if single else "full sequences)"),
        "scoring_version": SCORING_VERSION,
        "answer_variants": {label: list(case_variants(label)) for label in LABELS},
        "n_truncated": sum(cut for _, cut in encoded),
        "truncated_ids": [it.id for it, (_, cut) in zip(items, encoded, strict=True) if cut],
        "data": {"path": str(path), "sha256": _file_sha(path)},
        "seconds": round(time.perf_counter() - t0, 1), "cached": False})
    return result


def _label_scores(raw: Sequence[float], sizes: Sequence[int]) -> list[float]:
    """Fold the flat per-variant log-probs back into one logsumexp score per label."""
    out, start = [], 0
    for size in sizes:
        out.append(logsumexp(raw[start:start + size]))
        start += size
    return out


def _run(model, prompts, options, pad_id, batch_size, show_progress) -> list[list[float]]:
    if not show_progress:
        return continuation_logprobs(model, prompts, options, pad_id=pad_id, batch_size=batch_size)
    from align.progress import progress_bar

    with progress_bar("PubMedQA", total=len(prompts)) as advance:
        return continuation_logprobs(model, prompts, options, pad_id=pad_id, batch_size=batch_size,
                                     progress=advance)


def summarise(items: Sequence[Item], preds: Sequence[str], scores: Sequence[Sequence[float]]) -> dict[str, Any]:
    n = len(items)
    correct = [p == it.label for p, it in zip(preds, items, strict=True)]
    acc = sum(correct) / n
    half = 1.96 * math.sqrt(acc * (1 - acc) / n)  # normal approximation; fine at n=500
    per_class = {}
    for label in LABELS:
        idx = [i for i, it in enumerate(items) if it.label == label]
        per_class[label] = {"n": len(idx), "correct": sum(correct[i] for i in idx),
                            "accuracy": (sum(correct[i] for i in idx) / len(idx)) if idx else None}
    confusion = {gold: {p: sum(1 for it, pr in zip(items, preds, strict=True) if it.label == gold and pr == p)
                        for p in LABELS} for gold in LABELS}
    ids = ",".join(it.id for it in items)
    majority = max(LABELS, key=lambda lab: sum(it.label == lab for it in items))
    return {"task": "pubmedqa", "split": "test", "n": n, "official_test_set": n == OFFICIAL_TEST_SIZE,
            "accuracy": acc, "accuracy_ci95": [max(0.0, acc - half), min(1.0, acc + half)],
            "per_class": per_class, "predicted": {lab: preds.count(lab) for lab in LABELS},
            "confusion": confusion, "majority_class_accuracy": sum(it.label == majority for it in items) / n,
            "items_sha256": hashlib.sha256(ids.encode()).hexdigest(), "anchors": dict(ANCHORS),
            "predictions": [{"id": it.id, "gold": it.label, "pred": p, "logprobs": [round(x, 4) for x in s]}
                            for it, p, s in zip(items, preds, scores, strict=True)]}


def _file_sha(path: Path) -> str:
    from clinalign_base.manifest import file_sha256

    return file_sha256(path)


# -- cached base-model results -------------------------------------------------------------------------
# The key hashes the full contents of the weight files: a model with the same shapes but other weights
# (an SFT-merged LoRA touches only mid-file q/v tensors) must never hit another model's result, so a
# sizes + first/last-MB shortcut is not safe. Hashing runs at ~0.7 GB/s (SmolLM2: 0.8 s), and each
# file's digest is remembered by (path, size, mtime_ns), so a 140 GB model is read once, not every round.
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin")
# Prompt-shaping files (config, tokenizer, chat template) change the scores as much as the weights do.
_MODEL_SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                     "special_tokens_map.json", "chat_template.jinja")


def results_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """<clinalign cache>/pubmedqa: beside align.models.cache_dir() (= <clinalign cache>/models)."""
    if cache_dir is not None:
        return Path(cache_dir)
    from align.models import cache_dir as models_cache_dir

    return models_cache_dir().parent / "pubmedqa"


def model_fingerprint(folder: str | Path, *, memo_dir: Path | None = None) -> str:
    """sha256 over the names and content digests of a model folder's weight and prompt-shaping files."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file()
                   and (p.name.endswith(_MODEL_FILE_SUFFIXES) or p.name in _MODEL_SIDE_FILES))
    if not any(p.name.endswith(_MODEL_FILE_SUFFIXES) for p in files):
        raise InputError("no .safetensors/.bin weight files", path=str(folder))
    memo_path = (memo_dir or results_cache_dir()) / "file_sha256.json"
    memo = _read_json_dict(memo_path) or {}
    known = len(memo)
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{_memo_sha(p, memo)}\n".encode())
    if len(memo) != known:
        _write_quietly(memo_path, memo)
    return h.hexdigest()


def _memo_sha(path: Path, memo: dict[str, Any]) -> str:
    st = path.stat()
    tag = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if not isinstance(memo.get(tag), str):
        memo[tag] = _file_sha(path)
    return memo[tag]


def result_cache_key(model_spec: str, *, data_path: str | Path, dtype: str, max_length: int, chat: bool,
                     limit: int | None, memo_dir: Path | None = None, with_abstract: bool = True) -> str | None:
    """The cache key of a plain model's result; None when the model is not a local folder (a hub id)."""
    from align.models import resolve_model

    folder = Path(resolve_model(model_spec))
    if not folder.is_dir():
        return None
    parts = {"model": model_fingerprint(folder, memo_dir=memo_dir), "data": _file_sha(Path(data_path)),
             "dtype": dtype, "max_length": max_length, "chat": chat, "scoring": SCORING_VERSION, "limit": limit,
             **({} if with_abstract else {"with_abstract": False})}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def evaluate_pubmedqa_cached(model_spec: str, *, adapter: str | None = None, limit: int | None = None,
                             data_path: str | Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                             max_length: int = DEFAULT_MAX_LENGTH, chat: bool = True, dtype: str | None = None,
                             show_progress: bool = True, cache_dir: str | Path | None = None,
                             with_abstract: bool = True) -> dict[str, Any]:
    """evaluate_pubmedqa, with a plain model's result kept under results_cache_dir(cache_dir)/<key>.json.

    Adapters are never cached: the policy changes every round. A returned cached result has cached=True.
    """
    from align.models import preferred_dtype

    dtype = dtype or preferred_dtype()
    path = Path(data_path) if data_path else default_data_path()
    run = dict(limit=limit, data_path=path, batch_size=batch_size, max_length=max_length, chat=chat,
               dtype=dtype, show_progress=show_progress, with_abstract=with_abstract)
    if adapter:
        return evaluate_pubmedqa(model_spec, adapter=adapter, **run)
    root = results_cache_dir(cache_dir)
    key = result_cache_key(model_spec, data_path=path, dtype=dtype, max_length=max_length, chat=chat,
                           limit=limit, memo_dir=root, with_abstract=with_abstract)
    if key is None:
        return evaluate_pubmedqa(model_spec, **run)
    file = root / f"{key}.json"
    hit = _read_json_dict(file)
    if hit is not None and hit.get("cache_key") == key and isinstance(hit.get("predictions"), list):
        return hit | {"cached": True}
    result = evaluate_pubmedqa(model_spec, **run) | {"cache_key": key}
    _write_quietly(file, result)
    return result


def _read_json_dict(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is missing or unreadable (a corrupt cache is recomputed)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_quietly(path: Path, obj: Any) -> None:
    """Cache writes are an optimisation: a read-only or full disk must not fail the evaluation."""
    import warnings

    from clinalign_base.atomic import write_json_atomic

    try:
        write_json_atomic(path, obj)
    except OSError as exc:
        warnings.warn(f"could not write cache file {path}: {exc}", stacklevel=2)
