"""Where reward-model weights come from: a builtin spec or a local folder, never a download.

Builtin specs (the MiniLM backbone, tiny-llama in tests) go through the base layer's one resolver,
`clinalign_base.models.resolve_model`; local folders are checked here as reward-model folders.
"""

from __future__ import annotations

import json
from pathlib import Path

from annotation.errors import ClinalignError
from clinalign_base.models import MINILM, resolve_model  # noqa: F401  (MINILM: callers import it from here)


def resolve_backbone(spec: str) -> str:
    """A local folder for `spec` (`builtin:minilm-l6`, another builtin, or a path)."""
    if spec.startswith("builtin:"):
        return resolve_model(spec)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ClinalignError(f"reward model '{spec}' is not a local folder (nothing is downloaded at run time)")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise ClinalignError(f"reward model folder '{spec}' has no config.json (not a Hugging Face model)")
    if (path / "config.json").is_file() and any(t in (path / "config.json").read_text() for t in OWN_TYPES):
        register_architectures()  # our own architectures: the Auto classes must know them before loading
    return str(path)


def check_reward_model(path: str) -> None:
    """Refuse a folder that is not a one-output sequence classifier (e.g. a causal LM or an encoder)."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        return  # a PEFT adapter folder: its base config is checked when it loads
    cfg = json.loads(cfg_path.read_text())
    archs = cfg.get("architectures") or []
    n_labels = len(cfg.get("id2label") or {}) or cfg.get("num_labels", 2)
    if not any(a.endswith("ForSequenceClassification") for a in archs) or n_labels != 1:
        raise ClinalignError(
            f"'{path}' is not a reward model (architectures={archs}, labels={n_labels}); expected a "
            f"sequence classifier with one output, as `clinalign reward train` writes. Pass "
            f"allow_untrained=True / --allow-untrained to score with a fresh head on purpose.")


# --- The bi-encoder reward: r = scale * cos(embed(question), embed(answer)) + bias -------------------
#
# A cross-encoder head on MiniLM starts from random and forgets what the sentence encoder knows; the
# untrained cosine between question and answer already agrees with medical experts (Spearman ~0.59 on
# LiveQA). This architecture *is* that cosine at step 0, so training only refines it. It reads the
# same single token sequence as every reward model here (the reward format, with the separator
# " [SEP] "): the first [SEP] after [CLS] splits question from answer, and each side is encoded on
# its own and mean-pooled, as sentence-transformers does.

BIENCODER_TYPE = "clinalign_biencoder"
OWN_TYPES = (BIENCODER_TYPE, "clinalign_probe")  # reward_models/probe.py: PROBE_TYPE
BIENCODER_SEPARATOR = " [SEP] "


def _biencoder_classes():
    """(config class, model class), built once; torch/transformers load only when needed."""
    global _BIENCODER
    if _BIENCODER is not None:
        return _BIENCODER
    import torch
    from transformers import BertConfig, BertModel, BertPreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    class BiEncoderRewardConfig(BertConfig):
        model_type = BIENCODER_TYPE

        def __init__(self, cosine_scale: float = 20.0, segment_max_length: int = 256, **kwargs):
            super().__init__(**kwargs)
            self.cosine_scale = cosine_scale  # initial scale: cos in [-1, 1] → reward in [-scale, scale]
            self.segment_max_length = segment_max_length  # per side, as sentence-transformers' max_seq_length

    class BiEncoderForSequenceClassification(BertPreTrainedModel):
        config_class = BiEncoderRewardConfig

        def __init__(self, config):
            super().__init__(config)
            self.num_labels = 1
            self.bert = BertModel(config, add_pooling_layer=False)
            self.scale = torch.nn.Parameter(torch.tensor(float(config.cosine_scale)))
            self.bias = torch.nn.Parameter(torch.tensor(0.0))
            self.post_init()

        def _init_weights(self, module):
            super()._init_weights(module)
            if module is self:  # post_init / from_pretrained: the head starts as the plain cosine
                with torch.no_grad():
                    self.scale.fill_(float(self.config.cosine_scale))
                    self.bias.zero_()

        def _embed(self, seqs: list[list[int]]):
            width = max(len(s) for s in seqs)
            device = self.scale.device
            ids = torch.full((len(seqs), width), self.config.pad_token_id or 0, dtype=torch.long, device=device)
            mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s, dtype=torch.long, device=device)
                mask[i, :len(s)] = 1
            hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

        def pair_features(self, input_ids=None, attention_mask=None):
            """Question x answer embedding product: the terms whose sum is the cosine."""
            questions, answers = split_segments(input_ids, attention_mask, cls_id=self.config.cls_token_id,
                                                sep_id=self.config.sep_token_id,
                                                max_len=self.config.segment_max_length)
            return self._embed(questions) * self._embed(answers)

        def forward(self, input_ids=None, attention_mask=None, labels=None, **_: object):
            cos = self.pair_features(input_ids, attention_mask).sum(-1)
            logits = (self.scale * cos + self.bias).unsqueeze(-1)
            return SequenceClassifierOutput(logits=logits)

    _BIENCODER = (BiEncoderRewardConfig, BiEncoderForSequenceClassification)
    return _BIENCODER


_BIENCODER = None


def split_segments(input_ids, attention_mask, *, cls_id: int, sep_id: int,
                   max_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """Per row: ([CLS] question [SEP], [CLS] answer [SEP]), each cut from the right to `max_len`.

    A row without a separator (text that did not go through the reward format) is all answer, with
    an empty question: its score is then meaningless, so callers must use `RewardScorer`.
    """
    questions, answers = [], []
    rows = input_ids.tolist()
    masks = attention_mask.tolist() if attention_mask is not None else [[1] * len(r) for r in rows]
    for ids, mask in zip(rows, masks, strict=True):
        ids = [t for t, m in zip(ids, mask, strict=True) if m]
        body = ids[1:] if ids and ids[0] == cls_id else ids
        cut = body.index(sep_id) if sep_id in body[:-1] else -1
        q, a = (body[:cut], body[cut + 1:]) if cut >= 0 else ([], body)
        while a and a[-1] == sep_id:  # the format's eos plus the tokenizer's own [SEP]
            a = a[:-1]
        questions.append([cls_id, *q[:max_len - 2], sep_id])
        answers.append([cls_id, *a[:max_len - 2], sep_id])
    return questions, answers


def register_architectures() -> None:
    """Make `AutoModelForSequenceClassification` load the bi-encoder and probe reward models (idempotent)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from reward_models.probe import PROBE_TYPE, probe_classes

    for model_type, (config_cls, model_cls) in ((BIENCODER_TYPE, _biencoder_classes()),
                                                (PROBE_TYPE, probe_classes())):
        try:
            AutoConfig.register(model_type, config_cls)
            AutoModelForSequenceClassification.register(config_cls, model_cls)
        except ValueError:
            pass  # already registered in this process


def load_biencoder(path: str, tokenizer, *, cosine_scale: float = 20.0, segment_max_length: int = 256,
                   dtype="auto"):
    """A bi-encoder reward model from a BERT sentence encoder's folder (weights as they are)."""
    from transformers import BertConfig

    config_cls, model_cls = _biencoder_classes()
    base = BertConfig.from_pretrained(path).to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path", "id2label", "label2id"):
        base.pop(key, None)
    config = config_cls(cosine_scale=cosine_scale, segment_max_length=segment_max_length, num_labels=1,
                        cls_token_id=tokenizer.cls_token_id,
                        sep_token_id=tokenizer.sep_token_id, **base)
    return model_cls.from_pretrained(path, config=config, dtype=dtype)


def embed_texts(model, tokenizer, texts: list[str], *, batch_size: int = 32):
    """Unit-norm mean-pooled embeddings (numpy) of `texts` with a bi-encoder reward model's encoder."""
    import numpy as np
    import torch

    seg = model.config.segment_max_length
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                ids = [tokenizer(texts[i], truncation=True, max_length=seg)["input_ids"] for i in idx]
                out[idx] = model._embed(ids).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out
