from pathlib import Path

import pytest

from align.models import MINILM, SMOLLM2, TINY_LLAMA, chat_prompt, load_tokenizer, resolve_model
from clinalign_base.errors import ClinalignError


def test_builtins_resolve_to_local_folders():
    for spec in (SMOLLM2, MINILM, TINY_LLAMA):
        path = Path(resolve_model(spec))
        assert (path / "config.json").is_file(), spec
    smol = Path(resolve_model(SMOLLM2))
    assert list(smol.glob("*.safetensors")), "SmolLM2 is cached as safetensors after the first build"
    assert "quantization_config" not in (smol / "config.json").read_text()


def test_smollm2_chat_template_is_applied():
    text = chat_prompt(load_tokenizer(SMOLLM2), "What is metformin?")
    assert "<|im_start|>user\nWhat is metformin?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_me_llama_template_when_tokenizer_has_none(tmp_path):
    tok = load_tokenizer(TINY_LLAMA)
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(Path(resolve_model(TINY_LLAMA), "config.json").read_text())
    text = chat_prompt(load_tokenizer(str(tmp_path)), "Is ibuprofen safe in pregnancy?")
    assert text == "Human: \nIs ibuprofen safe in pregnancy?\n\nAssistant: \n"


@pytest.mark.parametrize("spec, message", [
    ("builtin:gpt-9", "unknown builtin model"),
    ("meta-llama/Llama-2-13b-chat-hf", "never downloads weights"),
    ("./no/such/dir", "not a local folder"),
])
def test_unresolvable_models_fail_clearly(spec, message):
    with pytest.raises(ClinalignError, match=message):
        resolve_model(spec)


def test_folder_without_config(tmp_path):
    with pytest.raises(ClinalignError, match="no config.json"):
        resolve_model(str(tmp_path))
