"""Environment defaults that keep every library offline and quiet (no telemetry, no hub lookups)."""

import os

_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "1",
    "DISABLE_MLFLOW_INTEGRATION": "",
    "WANDB_DISABLED": "true",
    "TRACKIO_TELEMETRY": "0",
    "ARGILLA_ENABLE_TELEMETRY": "0",
    "TOKENIZERS_PARALLELISM": "false",
    # presidio's email recognizer would fetch the public-suffix list once without this.
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
}


def ensure_offline_defaults() -> None:
    """Set offline/telemetry-off defaults unless the user set them explicitly."""
    for key, value in _DEFAULTS.items():
        if key == "DISABLE_MLFLOW_INTEGRATION":
            continue
        os.environ.setdefault(key, value)
