"""A Hugging Face Llama policy (LoRA adapter merged) as a GGUF file for llama.cpp, cached by content hash.

The round's policies are LlamaForCausalLM models (SmolLM2, its SFT merge, a DPO/PPO LoRA adapter on
either; Me LLaMA is the same architecture). We write the GGUF ourselves with the `gguf` package rather
than through llama.cpp's `convert_hf_to_gguf.py` (not in the llama-cpp-python wheel):

- tensors under llama.cpp's names, q/k projections permuted from Hugging Face's rotate-half layout to
  GGML's interleaved rope layout (what the converter does), norms in float32;
- the tokenizer as a byte-level BPE vocabulary (tokens, merges, special ids) so that llama.cpp loads it;
  clinalign itself never uses llama.cpp's tokenizer: prompts are tokenized and answers decoded by the
  Hugging Face tokenizer, so both backends see the same token ids;
- weight type: `bf16` (default), `f16`, `f32` or `q8_0`. The shipped SmolLM2 GGUF is Q4_1: re-quantizing
  a merged LoRA delta to 4 bits would erase most of what DPO learned, so adapters always go through a
  16/32-bit (or q8_0) file.

The cache key is the sha256 of the model folder's config/weight files, the adapter's files, the weight
type and this converter's version: a retrained adapter (same path, new weights) gets a new file. The
folder (~/.cache/clinalign/gguf) keeps the 8 most recently used files (CLINALIGN_GGUF_KEEP).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from clinalign_base.errors import ClinalignError
from clinalign_base.models import build_lock, cache_dir, resolve_model

CONVERTER_VERSION = "1"
WEIGHT_TYPES = ("bf16", "f16", "f32", "q8_0")
KEEP_FILES = int(os.environ.get("CLINALIGN_GGUF_KEEP", "8"))  # cached GGUFs kept (least recently used go)
_HASHED = (".json", ".safetensors", ".bin", ".model", ".txt")


class UnsupportedModel(ClinalignError):
    """The model cannot be written as a GGUF by clinalign (architecture, rope scaling, tokenizer)."""


_FILE_HASHES: dict[tuple[str, int, int], bytes] = {}  # (path, size, mtime_ns) -> sha256, per process


def _file_digest(path: Path) -> bytes:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _FILE_HASHES[key] = h.digest()
    return _FILE_HASHES[key]


def _hash_files(h, folder: Path) -> None:
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in _HASHED and not path.name.startswith("clinalign_manifest"):
            h.update(path.name.encode() + b"\0" + _file_digest(path))


def content_key(model_dir: str, adapter: str | None, weight_type: str) -> str:
    h = hashlib.sha256(f"clinalign-gguf:{CONVERTER_VERSION}:{weight_type}\0".encode())
    _hash_files(h, Path(model_dir))
    if adapter:
        h.update(b"adapter\0")
        _hash_files(h, Path(adapter))
    return h.hexdigest()[:24]


def gguf_for(model: str, adapter: str | None = None, weight_type: str = "bf16") -> Path:
    """The cached GGUF of `model` (+ merged `adapter`) in `weight_type`; written on first use."""
    if weight_type not in WEIGHT_TYPES:
        raise ClinalignError(f"unknown GGUF weight type {weight_type!r}; known: {', '.join(WEIGHT_TYPES)}")
    model_dir = resolve_model(model)
    if not Path(model_dir).is_dir():
        raise UnsupportedModel(f"the llama.cpp backend needs a local model folder, got {model!r}")
    if adapter and not Path(adapter).is_dir():
        raise ClinalignError(f"adapter folder not found: {adapter}")
    check_convertible(model_dir)
    key = content_key(model_dir, adapter, weight_type)
    folder = cache_dir().parent / "gguf"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key}.{weight_type}.gguf"
    if target.is_file():
        os.utime(target)  # recently used: kept by _prune
        return target
    with build_lock(f"gguf-{key}"):
        if not target.is_file():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".gguf")
            os.close(fd)
            try:
                write_gguf(model_dir, adapter, weight_type, Path(tmp))
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            (folder / f"{key}.json").write_text(json.dumps(
                {"model": model, "model_dir": model_dir, "adapter": adapter, "weight_type": weight_type,
                 "converter_version": CONVERTER_VERSION}, indent=1))
            _prune(folder, keep=target)
    return target


def _prune(folder: Path, keep: Path) -> None:
    """Every round's adapter gets a file of its own: keep the KEEP_FILES most recently used ones."""
    files = sorted(folder.glob("*.gguf"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP_FILES:]:
        if old != keep:
            old.unlink(missing_ok=True)
            (folder / (old.name.split(".")[0] + ".json")).unlink(missing_ok=True)


def check_convertible(model_dir: str) -> None:
    """Raise UnsupportedModel early (before loading weights) for what the writer cannot convert."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise UnsupportedModel(f"the llama.cpp backend converts Llama models only, not {cfg.get('model_type')!r}")
    tok = Path(model_dir) / "tokenizer.json"
    if not tok.is_file():
        raise UnsupportedModel(f"{model_dir} has no tokenizer.json: the llama.cpp backend needs a fast BPE tokenizer")


def _permute(w, n_head: int):
    """HF rotate-half q/k rows → GGML interleaved pairs (llama.cpp's convert_hf_to_gguf LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_dir: str, adapter: str | None, weight_type: str, out: Path) -> None:
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    check_convertible(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ("default", None):
        raise UnsupportedModel(f"rope scaling {rope_type!r} is not supported by clinalign's GGUF writer")
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))

    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[weight_type]
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[weight_type]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(str(getattr(cfg, "name_or_path", "") or Path(model_dir).name))
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(ftype)
    _add_tokenizer(w, model_dir, cfg)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    state = model.state_dict()
    for name, tensor in state.items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.endswith("rotary_emb.inv_freq"):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ClinalignError(f"no llama.cpp name for tensor {name!r}")
        data = tensor.detach().to(torch.float32).numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(new, np.ascontiguousarray(data, dtype=np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(new, data.astype(np.float16))
        else:
            q = gguf.quants.quantize(np.ascontiguousarray(data), qtype)
            w.add_tensor(new, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _add_tokenizer(w, model_dir: str, cfg) -> None:
    """Byte-level BPE vocabulary from tokenizer.json (enough for llama.cpp to load the model)."""
    import gguf

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise UnsupportedModel(f"{model_dir} has no tokenizer.json: the llama.cpp backend needs a fast BPE tokenizer")
    tj = json.loads(path.read_text())
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise UnsupportedModel(f"tokenizer type {model.get('type')!r} is not BPE: use generation_backend transformers")
    vocab: dict[str, int] = dict(model["vocab"])
    special = {}
    for tok in tj.get("added_tokens", []):
        vocab[tok["content"]] = tok["id"]
        special[tok["id"]] = bool(tok.get("special"))
    size = max(cfg.vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = (gguf.TokenType.CONTROL if special[i] else gguf.TokenType.USER_DEFINED) if i in special \
            else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    # only llama.cpp's own tokenizer uses the pre-tokenizer, and clinalign never calls it
    w.add_tokenizer_pre("smollm" if size == 49152 and tokens[2] == "<|im_end|>" else "default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, setter in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                        ("pad_token_id", w.add_pad_token_id)):
        value = getattr(cfg, key, None)
        if isinstance(value, list):
            value = value[0]
        if value is not None:
            setter(int(value))
    w.add_add_bos_token(False)
