import pytest

from annotation.preferences import load_preference_rows
from clinalign_base.errors import InputError


def write(tmp_path, text, binary=False):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(text) if binary else path.write_text(text)
    return path


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"\n', r"prefs.jsonl:2: invalid JSON"),
    ('{"prompt": "q", "chosen": "a"}\n', r"prefs.jsonl:1: missing field 'rejected'"),
    ('{"prompt": "q", "chosen": 3, "rejected": "b"}\n', r":1: field 'chosen' must be a string, got int"),
    ('{"prompt": "q", "chosen": " ", "rejected": "b"}\n', r":1: field 'chosen' is empty"),
    ('\n{"prompt": "q", "chosen": "same", "rejected": "same"}\n', r":2: chosen and rejected are identical"),
    ('[1, 2]\n', r":1: expected a JSON object"),
    ('', r"no preference pairs"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": -1}\n', r"margin must be >= 0"),
])
def test_bad_preference_files_name_file_and_line(tmp_path, content, message):
    with pytest.raises(InputError, match=message):
        load_preference_rows(write(tmp_path, content))


def test_non_utf8_is_reported_with_line(tmp_path):
    path = write(tmp_path, b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "\xff\xfe"}\n', binary=True)
    with pytest.raises(InputError, match=r":2: not valid UTF-8"):
        load_preference_rows(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_preference_rows(tmp_path / "nope.jsonl")


def test_hh_rlhf_file_loads_with_defaults(repo_root):
    rows = load_preference_rows("data/hh_rlhf/hh_rlhf_harmless_test_1000.jsonl")
    assert len(rows) == 1000
    assert rows[0]["margin"] == 0.0 and rows[0]["source"] == "file"
