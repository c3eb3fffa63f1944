"""Names and messages with `[`...`/`...`]` reach the terminal as plain text: one-line errors,
a non-zero exit and no traceback (rich would read them as markup and crash or drop them), and a
dataset name that Argilla or its UI would mangle is refused before anything is created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from annotation.argilla_settings import check_name, name_problem
from annotation.records import Feedback
from annotation.sqlite_store import SQLiteStore
from tests.argilla_fixtures import free_port
from tests.conftest import REPO, make_pair

CLI = [str(Path(sys.executable).with_name("clinalign"))]


def run(*args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    full = base | {"OMP_NUM_THREADS": "1", "COLUMNS": "80"} | env
    return subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=REPO, env=full, timeout=300)


def assert_one_line_error(done, *expected: str) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr and "MarkupError" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(make_pair(1).to_dict()) + "\n")
    return path


@pytest.mark.parametrize("name", ["r[/x]", "[red]r1[/]", "../etc", "round 1/cardiology", "a..b", ".hidden",
                                  "x" * 101, "dose[mg]"])
def test_bad_dataset_names_are_refused_before_connecting(name, pairs_file):
    # No server at this URL: the name is refused before anything is looked up or created.
    done = run("annotate", "push", "--dataset", name, "--pairs", str(pairs_file),
               ARGILLA_API_URL=f"http://127.0.0.1:{free_port()}", ARGILLA_API_KEY="k")
    line = assert_one_line_error(done, "dataset name", repr(name)[:60], "letters, digits")
    assert "cannot reach" not in line


def test_bad_workspace_name_is_refused(pairs_file):
    done = run("annotate", "push", "--dataset", "round1", "--pairs", str(pairs_file),
               ARGILLA_API_URL=f"http://127.0.0.1:{free_port()}", ARGILLA_API_KEY="k", ARGILLA_WORKSPACE="ward[/x]")
    assert_one_line_error(done, "workspace (ARGILLA_WORKSPACE) name 'ward[/x]'")


def test_error_text_with_markup_is_printed_verbatim(pairs_file, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/[/x]/[bold]"
    done = run("annotate", "push", "--dataset", "round1", "--pairs", str(pairs_file),
               ARGILLA_API_URL=url, ARGILLA_API_KEY="k")
    assert_one_line_error(done, f"cannot reach an Argilla server at {url}")
    missing = tmp_path / "no[/x]such" / "[red]feedback.sqlite"
    done = run("annotate", "agreement", "--store", str(missing))
    assert_one_line_error(done, f"no feedback store at {missing}")
    done = run("annotate", "push", "--dataset", "round1", "--pairs", str(tmp_path / "[/x].jsonl"),
               ARGILLA_API_URL=url, ARGILLA_API_KEY="k")
    assert_one_line_error(done, f"{tmp_path / '[/x].jsonl'}: file not found")


def test_results_with_markup_are_printed_verbatim(tmp_path):
    folder = tmp_path / "ward[/x]" / "[bold]r1[/]"
    folder.mkdir(parents=True)
    store_path = folder / "feedback.sqlite"
    store = SQLiteStore(store_path)
    pair = make_pair(3, model_a="model[/a]", model_b="[red]model-b[/]")
    store.add_pairs([pair])
    store.add_feedback([Feedback(pair_id=pair.id, annotator_id="dr[/x]", preference="a"),
                        Feedback(pair_id=pair.id, annotator_id="[bold]dr-y[/]", preference="b")])
    store.close()
    done = run("annotate", "agreement", "--store", str(store_path))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert str(store_path) in done.stdout.replace("\n", "")
    assert "dr[/x]" in done.stdout and "[bold]dr-y[/]" in done.stdout


def test_name_rule():
    for good in ("round1", "round1-cardiology", "r1_card.v2", "2026-12-ward7"):
        assert name_problem(good) is None and check_name(good) == good
    for bad in ("", "r[/x]", "round 1", "a/b", "..", "a..b", "-x", "é", "x" * 101):
        assert name_problem(bad), bad
