"""SFT stage: experts' answers and clinicians' corrections become whole-sentence targets."""

import json

import pytest

from align.prompts import Prompt
from align.recipes.sft import build_sft_rows, first_sentences, load_sft_rows
from annotation.records import CandidatePair, Feedback
from clinalign_base.errors import InputError


def test_targets_end_at_a_sentence_boundary():
    text = "Asthma is a chronic disease. It narrows the airways.  Triggers include dust and smoke. More text here."
    assert first_sentences(text, 10) == "Asthma is a chronic disease. It narrows the airways."
    assert first_sentences(text, 2) == "Asthma is a chronic disease."  # at least one whole sentence
    assert first_sentences(text, 100).endswith("More text here.")


def test_rows_from_references_and_human_corrections_only():
    prompts = [Prompt("q1", "What is asthma?", reference="Asthma is a disease. Long detail."),
               Prompt("q2", "No reference here")]
    pair = CandidatePair(prompt="What is gout?", response_a="a", response_b="b", model_a="m", model_b="m",
                         prompt_id="q3")
    human = Feedback(pair_id=pair.id, annotator_id="dr_x", preference="a", strength=2,
                     correction="Gout is an inflammatory arthritis.", correction_of="a")
    scripted = Feedback(pair_id=pair.id, annotator_id="simulated:clinician-v2", preference="a", strength=2,
                        correction="should not be used", correction_of="a", origin="simulated")
    rows = build_sft_rows(prompts, [pair], [human, scripted], max_answer_words=4)
    assert [r["source"] for r in rows] == ["expert_answer", "correction:dr_x"]
    assert rows[0]["completion"] == "Asthma is a disease."
    assert rows[1]["prompt"] == "What is gout?" and rows[1]["prompt_id"] == "q3"


def test_bad_sft_file_names_the_line(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n" + json.dumps({"prompt": "q"}) + "\n")
    with pytest.raises(InputError, match=r"sft.jsonl:2.*completion"):
        load_sft_rows(str(path))
