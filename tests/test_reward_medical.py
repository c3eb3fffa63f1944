"""The medical reward recipe: pairs from data/ (hard negatives, dedupe against evaluation answers),
the bi-encoder reward that starts as the backbone's cosine, and the zero-shot baseline in `reward eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from annotation.errors import InputError
from reward_models.medical_pairs import (
    QA,
    build_pairs,
    load_corpus,
    medical_pairs,
    overlaps,
    shingles,
    truncate,
)

torch.set_num_threads(1)

def _qa(i: int, topic: str, kind: str, organ: str) -> QA:
    # distinct wording per answer: a shared template would itself count as overlapping text
    answer = (f"{topic.title()} {kind} concerns the {organ}. Number {i} {topic} {organ} {kind} clinic note. "
              f"Specialists in {organ} care see {topic} often. Ask about {kind} of {topic} at visit {i}. "
              f"Follow-up for {topic} {kind} {i} is yearly.")
    return QA(f"q{i}", f"What is the {kind} of {topic}?", answer, f"medquad:{topic}", kind, "medquad")


CORPUS = [_qa(0, "gout", "treatment", "foot"), _qa(1, "gout", "symptoms", "foot"),
          _qa(2, "asthma", "treatment", "lung"), _qa(3, "anemia", "cause", "blood"),
          _qa(4, "migraine", "outlook", "head"), _qa(5, "eczema", "treatment", "skin")]


def test_pairs_have_every_kind_of_negative_and_the_expert_answer_wins():
    pairs, counts = build_pairs(CORPUS, seed=0, n_similar=1)
    by_kind = {p["source"].split(":")[1]: p for p in pairs if p["prompt"] == CORPUS[0].question}
    assert set(by_kind) == {"related", "similar", "random", "truncated"}
    assert all(p["chosen"] == CORPUS[0].answer for p in by_kind.values())
    assert by_kind["related"]["rejected"] == CORPUS[1].answer  # same topic (focus), other question type
    # the most similar other-topic question shares "What is the treatment of": asthma or eczema
    assert by_kind["similar"]["rejected"] in {CORPUS[2].answer, CORPUS[5].answer}
    assert CORPUS[0].answer.startswith(by_kind["truncated"]["rejected"])
    assert len(by_kind["truncated"]["rejected"]) < len(CORPUS[0].answer)
    assert {p["group"] for p in pairs if p["prompt_id"] in ("q0", "q1")} == {"medquad:gout"}
    assert counts["n_pairs"] == len(pairs) and counts["medquad:related"] == 2  # only gout has two questions


def test_pairs_touching_an_evaluation_answer_are_dropped_both_sides():
    banned = shingles(CORPUS[2].answer)  # asthma's answer is "in the evaluation set"
    pairs, counts = build_pairs(CORPUS, seed=0, n_similar=5, banned=banned)
    texts = {t for p in pairs for t in (p["chosen"], p["rejected"])}
    assert CORPUS[2].answer not in texts
    assert not any(overlaps(t, banned, 0.3) for t in texts)
    assert counts["n_questions_dropped"] == 1 and counts["dropped_overlapping_eval"] > 0
    clean, _ = build_pairs(CORPUS, seed=0, n_similar=5)
    assert len(clean) == len(pairs) + counts["dropped_overlapping_eval"]


def test_overlap_is_by_shared_text_not_by_topic():
    ev = shingles("Gout is treated with colchicine and rest; drink water and avoid alcohol and red meat.")
    assert overlaps("Gout is treated with colchicine and rest; drink water and avoid alcohol and red meat.", ev, 0.3)
    assert not overlaps("Gout is a painful arthritis of the big toe that comes and goes in attacks.", ev, 0.3)
    assert truncate("One. Two.") is None


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _write(root / "medquad" / "medquad_prompts_500.jsonl",
           [{"id": qa.id, "focus": qa.topic.split(":")[1], "qtype": qa.kind, "question": qa.question,
             "reference_answer": qa.answer, "source": "GHR"} for qa in CORPUS])
    _write(root / "kqa" / "kqa_physician_answers_201.jsonl",
           [{"id": "k1", "question": "Can I take ibuprofen for a headache?", "physician_answer":
             "Yes, ibuprofen is fine for most adults with a headache. Take it with food. Do not exceed the dose."}])
    _write(root / "pubmedqa" / "pubmedqa_pqal_1000.jsonl",
           [{"id": "p1", "split": "train", "question": "Does aspirin prevent stroke?", "long_answer": "It may."},
            {"id": "p2", "split": "test", "question": "Secret test question?", "long_answer": "Never trained on."}])
    return root


def test_corpus_skips_pubmedqa_test_split_and_bad_lines_name_file_and_line(tmp_path):
    root = _data_dir(tmp_path)
    corpus = load_corpus(root)
    assert {qa.source for qa in corpus} == {"medquad", "kqa", "pubmedqa"}
    assert "Secret test question?" not in {qa.question for qa in corpus}
    with open(root / "kqa" / "kqa_physician_answers_201.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "k2", "question": "Why?"}) + "\n")
    with pytest.raises(InputError, match="physician_answer") as err:
        load_corpus(root)
    assert "kqa_physician_answers_201.jsonl" in str(err.value) and "2" in str(err.value)
    with pytest.raises(InputError, match="sources must be among"):
        medical_pairs(root, sources=["wikipedia"])
    with pytest.raises(InputError, match="not found"):
        medical_pairs(root, dedupe_against=[str(tmp_path / "missing.jsonl")])


def test_biencoder_starts_as_the_backbones_cosine_and_survives_save_and_load(tmp_path):
    from transformers import AutoTokenizer, BertModel

    from reward_models.backbones import BIENCODER_SEPARATOR, MINILM, load_biencoder, resolve_backbone
    from reward_models.formatting import RewardFormat
    from reward_models.scoring import RewardScorer

    path = resolve_backbone(MINILM)
    tok = AutoTokenizer.from_pretrained(path)
    model = load_biencoder(path, tok, cosine_scale=10.0, dtype="float32")
    plain = BertModel.from_pretrained(path).eval()

    def embed(text: str) -> torch.Tensor:  # sentence-transformers' recipe: mean pooling, unit norm
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            return torch.nn.functional.normalize(plain(**enc).last_hidden_state.mean(1), dim=-1)[0]

    q, answers = "How is gout treated?", ["Gout is treated with colchicine.", "Paris is in France."]
    expected = [10.0 * float(embed(q) @ embed(a)) for a in answers]
    fmt = RewardFormat(separator=BIENCODER_SEPARATOR, eos_token="[SEP]", max_length=4096)
    scores = RewardScorer("mem", model=model, tokenizer=tok, fmt=fmt).score([q, q], answers)
    assert scores == pytest.approx(expected, abs=1e-4)
    assert scores[0] > scores[1]

    model.save_pretrained(tmp_path / "bi")
    tok.save_pretrained(tmp_path / "bi")
    fmt.save(tmp_path / "bi")
    assert RewardScorer(str(tmp_path / "bi")).score([q, q], answers) == pytest.approx(scores, abs=1e-5)


def test_medical_recipe_trains_writes_heldout_pairs_and_eval_reports_the_zero_shot_baseline(tmp_path):
    from align.cli import main
    from reward_models.train import HELDOUT_FILE, train_from_yaml

    root = _data_dir(tmp_path)
    rated = tmp_path / "rated.jsonl"
    _write(rated, [{"question_message": "How do you treat gout?", "answer": CORPUS[0].answer, "rating": 4},
                   {"question_message": "How do you treat gout?", "answer": CORPUS[4].answer, "rating": 1},
                   {"question_message": "What is asthma treatment?", "answer": CORPUS[2].answer, "rating": 4},
                   {"question_message": "What is asthma treatment?", "answer": CORPUS[3].answer, "rating": 2}])
    cfg = {"pairs_recipe": "medical", "data_dir": str(root), "dedupe_against": [str(rated)],
           "reward_architecture": "biencoder", "model_name_or_path": "builtin:minilm-l6", "segment_max_length": 64,
           "eval_fraction": 0.3, "output_dir": str(tmp_path / "rm"), "max_steps": 3, "learning_rate": 1e-5,
           "per_device_train_batch_size": 4, "eos_token": "[SEP]", "bf16": False, "report_to": "none",
           "save_strategy": "no", "disable_tqdm": True, "num_threads": 1, "seed": 0}
    (tmp_path / "med.yaml").write_text(yaml.safe_dump(cfg))
    out = train_from_yaml(str(tmp_path / "med.yaml"))
    metrics = json.loads((out / "clinalign_manifest.json").read_text())["metrics"]
    assert metrics["pairs_n_questions_dropped"] == 4  # the four rated answers are "evaluation" text
    heldout = [json.loads(line) for line in (out / HELDOUT_FILE).read_text().splitlines()]
    assert heldout and metrics["eval_n"] == len(heldout)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BiEncoderForSequenceClassification"]

    for args in (["--model", str(out)], ["--model", "builtin:minilm-l6", "--zero-shot-cosine"]):
        code = main(["reward", "eval", *args, "--data", str(out / HELDOUT_FILE), "--rated", str(rated),
                     "--out", str(tmp_path / "e.json")])
        assert code == 0
        result = json.loads((tmp_path / "e.json").read_text())
        assert result["ratings"]["n"] == 4 and result["ratings"]["spearman"] is not None
    assert result["scorer"].startswith("zero-shot cosine")


def test_mined_negatives_are_the_answers_the_embedding_puts_nearest():
    import numpy as np

    def embed(texts: list[str]) -> np.ndarray:  # every question and answer about the foot sits together
        return np.array([[1.0, 0.0] if "foot" in t or "gout" in t else [0.0, 1.0] for t in texts])

    pairs, counts = build_pairs(CORPUS, seed=0, n_similar=0, embed=embed, n_mined=1)
    mined = [p for p in pairs if p["source"] == "medquad:mined" and p["prompt_id"] == "q0"]
    # gout symptoms is already the "related" negative, so nothing else near: one other-topic answer
    assert len(mined) == 1 and mined[0]["rejected"] not in (CORPUS[0].answer, CORPUS[1].answer)
    assert counts["medquad:mined"] == len(CORPUS)


def test_validation_split_keeps_a_topic_on_one_side():
    from reward_models.train import RewardScriptArguments, split_rows

    pairs, _ = build_pairs(CORPUS, seed=0, n_similar=1)
    train, val = split_rows(pairs, RewardScriptArguments(eval_fraction=0.4), seed=1)
    assert train and val and len(train) + len(val) == len(pairs)
    assert not {p["group"] for p in train} & {p["group"] for p in val}


def test_a_shipped_exclusion_list_drops_what_the_evaluation_text_drops(tmp_path):
    from reward_models.medical_pairs import answer_sha, load_exclusions

    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text(json.dumps({"answer": CORPUS[2].answer}) + "\n")
    banned_pairs, banned_counts = build_pairs(CORPUS, seed=0, n_similar=5, banned=shingles(CORPUS[2].answer))
    listed = {answer_sha(CORPUS[2].answer)}
    listed_pairs, listed_counts = build_pairs(CORPUS, seed=0, n_similar=5, excluded=listed)
    assert listed_pairs == banned_pairs and listed_counts["n_questions_dropped"] == 1
    with pytest.raises(InputError, match="not an exclusion list"):
        (tmp_path / "bad.json").write_text("[]")
        load_exclusions([str(tmp_path / "bad.json")])


REPO = Path(__file__).resolve().parents[1]
EVAL = [REPO.parent / "shared" / "eval" / "liveqa_medquad_judged_answers.jsonl",
        REPO.parent / "shared" / "eval" / "kqa_physician_nli_399.jsonl"]


@pytest.mark.skipif(not all(p.is_file() for p in EVAL), reason="the evaluation files are not on this machine")
def test_the_shipped_exclusion_list_is_current_with_the_evaluation_files(tmp_path):
    """data/reward_eval_overlap.json must list exactly what the evaluation files would drop today."""
    from reward_models.medical_pairs import write_exclusions

    shipped = json.loads((REPO / "data" / "reward_eval_overlap.json").read_text())
    fresh = write_exclusions(REPO / "data", [str(p) for p in EVAL], tmp_path / "x.json",
                             threshold=shipped["threshold"])
    assert fresh["answers_sha256"] == shipped["answers_sha256"] and fresh["n"] > 100
    assert [c["sha256"] for c in fresh["computed_against"]] == [c["sha256"] for c in shipped["computed_against"]]
