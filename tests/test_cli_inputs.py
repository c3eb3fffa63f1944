"""The real `clinalign` command fed malformed files: a clear error naming file and line, a
non-zero exit, no traceback, and nothing written or lost."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from annotation.records import Feedback
from annotation.sqlite_store import SQLiteStore
from tests.conftest import REPO, make_pair

CLI = [str(Path(sys.executable).with_name("clinalign"))]


def run(*args, cwd=REPO):
    env = os.environ | {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_help_for_every_command():
    top = run("--help")
    assert top.returncode == 0
    for cmd in ("generate", "annotate", "reward", "dpo", "demo", "winrate"):
        assert cmd in top.stdout
    for sub in (["generate"], ["annotate", "import"], ["annotate", "export"], ["dpo"], ["demo"],
                ["reward", "train"], ["reward", "eval"]):
        res = run(*sub, "--help")
        assert res.returncode == 0, (sub, res.stderr)
        assert "Usage" in res.stdout


BAD_PROMPTS = [
    (b'{"prompt": "fine"}\n{"prompt": "broken"\n', "prompts.jsonl:2: invalid JSON"),
    (b'{"prompt": "fine"}\n{"prompt": ""}\n', "prompts.jsonl:2: field 'prompt' is empty"),
    (b'{"prompt": ["a list"]}\n', "prompts.jsonl:1: field 'prompt' must be a string"),
    (b'{"prompt": "caf\xe9"}\n', "prompts.jsonl:1: not valid UTF-8"),
]


@pytest.mark.parametrize("content, message", BAD_PROMPTS)
def test_generate_rejects_bad_prompts_before_loading_a_model(tmp_path, content, message):
    (tmp_path / "prompts.jsonl").write_bytes(content)
    store = tmp_path / "store" / "fb.sqlite"
    res = run("generate", "--prompts", str(tmp_path / "prompts.jsonl"), "--store", str(store),
              "--model", "builtin:tiny-llama")
    assert res.returncode != 0
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not store.exists()


@pytest.mark.parametrize("line, message", [
    ('{"pair_id": "P", "annotator_id": "dr-b", "preference": "A"}', "fb.jsonl:2: preference must be one of"),
    ('{"pair_id": "P", "annotator_id": "dr-b", "preference": "a", "ratings": {"a": {"harm": 9}}}',
     "fb.jsonl:2: rating a.harm must be an integer 1-5"),
    ('{"pair_id": "P", "annotator_id": 5, "preference": "a"}', "fb.jsonl:2: annotator_id is empty"),
    ('{oops', "fb.jsonl:2: invalid JSON"),
])
def test_annotate_import_rejects_bad_feedback_and_keeps_the_store(tmp_path, line, message):
    db = tmp_path / "fb.sqlite"
    pair = make_pair()
    with SQLiteStore(db) as s:
        s.add_pairs([pair])
        s.add_feedback([Feedback(pair_id=pair.id, annotator_id="dr-z", preference="b")])
    good = json.dumps({"pair_id": pair.id, "annotator_id": "dr-a", "preference": "a"})
    (tmp_path / "fb.jsonl").write_text(good + "\n" + line.replace('"P"', json.dumps(pair.id)) + "\n")
    res = run("annotate", "import", str(tmp_path / "fb.jsonl"), "--store", str(db))
    assert res.returncode != 0 and message in res.stderr, res.stderr
    with SQLiteStore(db) as s:
        assert [(f.annotator_id, f.preference) for f in s.iter_feedback()] == [("dr-z", "b")]


def test_annotate_import_then_export(tmp_path):
    db = tmp_path / "fb.sqlite"
    pairs = [make_pair(i) for i in range(3)]
    with SQLiteStore(db) as s:
        s.add_pairs(pairs)
    lines = [{"pair_id": pairs[0].id, "annotator_id": "dr-a", "preference": "b", "strength": 3},
             {"pair_id": pairs[1].id, "annotator_id": "dr-a", "preference": "tie"}]
    (tmp_path / "fb.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert run("annotate", "import", str(tmp_path / "fb.jsonl"), "--store", str(db)).returncode == 0
    res = run("annotate", "export", "--store", str(db), "--out", str(tmp_path / "prefs"))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in (tmp_path / "prefs" / "preferences.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["chosen"] == pairs[0].response_b and rows[0]["margin"] == 3.0
    manifest = json.loads((tmp_path / "prefs" / "clinalign_manifest.json").read_text())
    assert manifest["kind"] == "preference_dataset" and manifest["annotations"]["feedback_by_annotator"] == {"dr-a": 2}
    again = run("annotate", "export", "--store", str(db), "--out", str(tmp_path / "prefs"))
    assert again.returncode != 0 and "already exists" in again.stderr


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "x", "rejected": "x"}\n',
     "pairs.jsonl:2: chosen and rejected are identical"),
    ('{"prompt": "q", "chosen": "a"}\n', "pairs.jsonl:1: missing field 'rejected'"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a", "rejected": ""}\n',
     "pairs.jsonl:2: field 'rejected' is empty"),
])
def test_reward_train_rejects_bad_preferences(tmp_path, content, message):
    (tmp_path / "pairs.jsonl").write_text(content)
    out = tmp_path / "rm"
    res = run("reward", "train", "--config", "configs/demo/reward.yaml", "--dataset_path",
              str(tmp_path / "pairs.jsonl"), "--output_dir", str(out))
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()


@pytest.mark.parametrize("command", [["annotate", "export", "--out", "prefs.jsonl"], ["annotate", "status"],
                                     ["annotate", "agreement"]])
def test_reading_commands_refuse_a_store_that_does_not_exist(tmp_path, command):
    """A mistyped store path is an error, not a new empty store (which export would read as 0 rows)."""
    missing = tmp_path / "feedbak.sqlite"
    res = run(*command, "--store", str(missing), cwd=tmp_path)
    assert res.returncode != 0, res.stdout
    assert ("feedback store not found" in res.stderr or "no feedback store" in res.stderr), res.stderr
    assert "feedbak.sqlite" in res.stderr
    assert "Traceback" not in res.stderr
    assert not missing.exists() and not (tmp_path / "prefs.jsonl").exists()
