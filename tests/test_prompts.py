import pytest

from align.prompts import load_prompts
from clinalign_base.errors import InputError


def test_shipped_prompt_sets_load_with_references(repo_root):
    medquad = load_prompts("data/medquad/medquad_prompts_500.jsonl", limit=3)
    assert len(medquad) == 3 and all(p.reference for p in medquad)
    kqa = load_prompts("data/kqa/kqa_physician_answers_201.jsonl", offset=200)
    assert len(kqa) == 1 and kqa[0].id.startswith("kqa-") and kqa[0].reference


def test_saved_dataset_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"question": "Is aspirin an NSAID?", "id": 7}]).save_to_disk(str(tmp_path / "ds"))
    (p,) = load_prompts(str(tmp_path / "ds"))
    assert p.text == "Is aspirin an NSAID?" and p.id == "7" and p.reference is None


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "ok"}\n{"text": "no prompt key"}\n', r"p.jsonl:2: no prompt field"),
    ('{"prompt": ""}\n', r"p.jsonl:1: field 'prompt' is empty"),
    ('{"question": 12}\n', r"p.jsonl:1: field 'question' must be a string"),
    ('{"prompt": "ok"}\nnot json\n', r"p.jsonl:2: invalid JSON"),
    ('\n\n', r"no prompts in file"),
])
def test_bad_prompt_files(tmp_path, content, message):
    (tmp_path / "p.jsonl").write_text(content)
    with pytest.raises(InputError, match=message):
        load_prompts(str(tmp_path / "p.jsonl"))
