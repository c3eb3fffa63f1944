"""Lineage: a real chain of artefact folders and manifests in tmp_path, then damage it."""

from __future__ import annotations

import json

import pytest

from align.evaluation.lineage import ALTERED, CHANGED, MISSING, OK, check, problems, trace
from clinalign_base.errors import ClinalignError
from clinalign_base.manifest import build_manifest, ref, write_manifest


def build_chain(root):
    """annotations.jsonl → preferences/ → reward_model/ → policy/ (the checkpoint)."""
    ann = root / "annotations.jsonl"
    ann.write_text('{"pair_id": "p1", "annotator_id": "clin-07", "preference": "a"}\n')
    prefs = root / "preferences"
    prefs.mkdir()
    (prefs / "preferences.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    write_manifest(prefs, build_manifest("preference_dataset", "preferences", inputs=[ref("annotations", ann)],
                                         annotations={"feedback_by_annotator": {"clin-07": 1}}))
    rm = root / "reward_model"
    rm.mkdir()
    (rm / "model.safetensors").write_bytes(b"\x00weights-v1")
    write_manifest(rm, build_manifest("reward_model", "reward_model", inputs=[ref("train_data", prefs)],
                                      outputs=[ref("reward_model", rm)]))
    policy = root / "policy"
    policy.mkdir()
    (policy / "adapter_model.safetensors").write_bytes(b"\x01adapter")
    write_manifest(policy, build_manifest("policy_adapter", "policy",
                                          inputs=[ref("preferences", prefs), ref("reward_model", rm)],
                                          outputs=[ref("policy", policy)]))
    return ann, prefs, rm, policy


def test_intact_chain_is_traced_back_to_the_annotations(tmp_path):
    ann, prefs, rm, policy = build_chain(tmp_path)
    root = check(policy)
    roles = [n.role for n in root.walk()]
    assert roles == ["artefact", "preferences", "annotations", "reward_model", "train_data"]
    shared = next(n for n in root.walk() if n.role == "train_data")
    assert "already shown above" in shared.detail and not shared.children  # a shared input is expanded once
    assert {n.status for n in root.walk()} == {OK}
    assert problems(root) == []
    leaf = next(n for n in root.walk() if n.role == "annotations")
    assert leaf.path == str(ann) and leaf.manifest is None


def test_altered_annotations_are_reported(tmp_path, capsys):
    ann, prefs, rm, policy = build_chain(tmp_path)
    ann.write_text('{"pair_id": "p1", "annotator_id": "clin-07", "preference": "b"}\n')
    root = trace(policy)
    bad = problems(root)
    assert bad and all(n.status == ALTERED and n.path == str(ann) for n in bad)
    assert "hash mismatch" in bad[0].detail
    with pytest.raises(ClinalignError, match="annotations.jsonl: altered"):
        check(policy)
    assert "ALTERED" in capsys.readouterr().out


def test_missing_input_and_edited_checkpoint_are_reported(tmp_path):
    ann, prefs, rm, policy = build_chain(tmp_path)
    (rm / "model.safetensors").unlink()
    (rm / "clinalign_manifest.json").unlink()
    rm.rmdir()
    (policy / "adapter_model.safetensors").write_bytes(b"\x01adapter-edited")
    statuses = {(n.role, n.status) for n in problems(trace(policy))}
    assert ("reward_model", MISSING) in statuses
    assert ("output:policy", ALTERED) in statuses


def test_relative_paths_resolve_from_a_moved_run_folder(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    monkeypatch.chdir(run)  # manifests written with paths relative to where the command ran
    (run / "data.jsonl").write_text("{}\n")
    (run / "out").mkdir()
    (run / "out" / "w.bin").write_bytes(b"w")
    write_manifest(run / "out", build_manifest("reward_model", "out", inputs=[ref("train_data", "data.jsonl")]))
    monkeypatch.chdir(tmp_path)  # now run lineage from elsewhere
    assert [n.status for n in trace(run / "out").walk()] == [OK, OK]


def test_live_feedback_store_that_grew_is_a_warning_not_a_failure(tmp_path):
    from align.stages import _store_digest
    from annotation.records import CandidatePair, Feedback
    from annotation.sqlite_store import SQLiteStore

    store_path = tmp_path / "feedback.sqlite"
    store = SQLiteStore(store_path)
    pair = CandidatePair(prompt="q?", response_a="a", response_b="b", model_a="m", model_b="m")
    store.add_pairs([pair])
    store.add_feedback([Feedback(pair_id=pair.id, annotator_id="clin-1", preference="a")])
    digest = _store_digest(list(store.iter_pairs()), list(store.iter_feedback()))
    out = tmp_path / "prefs"
    out.mkdir()
    (out / "preferences.jsonl").write_text("{}\n")
    write_manifest(out, build_manifest("preference_dataset", "prefs", inputs=[
        {"role": "feedback_store", "path": str(store_path), "sha256": digest}]))
    assert [n.status for n in trace(out).walk()] == [OK, OK]
    store.add_feedback([Feedback(pair_id=pair.id, annotator_id="clin-2", preference="b")])
    store.close()
    root = check(out)  # no exception: a grown store is not an altered artefact
    assert [n.status for n in root.walk()] == [OK, CHANGED]


def test_cli_lineage_exit_codes(tmp_path, capsys):
    from align.cli import main

    ann, prefs, rm, policy = build_chain(tmp_path)
    assert main(["lineage", str(policy)]) == 0
    out = capsys.readouterr().out
    assert "clin-07" in out  # annotation counts per clinician id are shown
    assert "✓" in out and "[/]" not in out and "[green]" not in out  # styled, not raw markup
    (prefs / "preferences.jsonl").write_text("tampered\n")
    assert main(["lineage", str(policy)]) == 2
    err = "".join(capsys.readouterr().err.split())  # rich wraps long lines, even inside a path
    assert f"preferences{prefs}:altered" in err
    assert main(["lineage", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "plain").mkdir()
    assert main(["lineage", str(tmp_path / "plain")]) == 2
    assert "noclinalign_manifest.json" in "".join(capsys.readouterr().err.split())


def test_manifest_file_itself_is_accepted(tmp_path):
    *_, policy = build_chain(tmp_path)
    root = trace(policy / "clinalign_manifest.json")
    assert json.loads((policy / "clinalign_manifest.json").read_text())["kind"] == root.manifest["kind"]


def test_round_folder_walks_each_stage_once(tmp_path):
    ann, prefs, rm, policy = build_chain(tmp_path)
    write_manifest(tmp_path / "manifest.json", build_manifest(
        "round", "r", inputs=[ref("prompts", ann)], outputs=[ref("preferences", prefs), ref("policy", policy)]))
    root = trace(tmp_path)
    top = [n.role for n in root.children]
    assert top == ["prompts", "stage:preferences", "stage:policy"]
    assert problems(root) == []
    (policy / "adapter_model.safetensors").write_bytes(b"changed")
    assert [n.role for n in problems(trace(tmp_path))] == ["stage:policy"]
