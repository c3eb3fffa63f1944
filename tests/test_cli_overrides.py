"""One override syntax for every recipe: a trailing `--key value`, as TRL's parser reads it."""

from __future__ import annotations

import pytest

from align.recipes.recipe_utils import key_value_args
from clinalign_base.errors import InputError


def test_pairs_are_read_as_strings_or_typed():
    extra = ["--learning_rate", "1e-4", "--num-train-epochs", "3", "--dataset_path", "runs/x"]
    assert key_value_args(extra) == {"learning_rate": "1e-4", "num_train_epochs": "3", "dataset_path": "runs/x"}
    typed = key_value_args(["--test_prompts", "48", "--sft", "true", "--dpo_overrides", "{beta: 0.3}"], typed=True)
    assert typed == {"test_prompts": 48, "sft": True, "dpo_overrides": {"beta": 0.3}}


@pytest.mark.parametrize("extra, message", [(["lr", "1"], "unexpected argument 'lr'"),
                                            (["--lr"], "override --lr has no value"),
                                            (["--lr", "--seed", "1"], "override --lr has no value")])
def test_malformed_overrides_are_named(extra, message):
    with pytest.raises(InputError, match=message):
        key_value_args(extra)


def test_demo_refuses_an_unknown_key_before_doing_anything(tmp_path, capsys):
    from align.cli import main

    assert main(["demo", "--output-dir", str(tmp_path / "round"), "--test_promptz", "3"]) == 2
    assert "unknown keys ['test_promptz']" in capsys.readouterr().err
    assert not (tmp_path / "round").exists()


def test_demo_rated_file_is_checked_before_doing_anything(tmp_path, capsys):
    from align.cli import main

    missing = tmp_path / "grades.jsonl"
    assert main(["demo", "--output-dir", str(tmp_path / "round"), "--rated", str(missing)]) == 2
    assert f"graded answers file not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "round").exists()
