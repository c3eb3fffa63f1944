"""PHI gate on probe texts written for these tests (none of them is in data/phi_synthetic)."""

from __future__ import annotations

import json

import pytest

from annotation.phi import PhiGate, redact_text, scan_text
from clinalign_base.errors import InputError

# (text, the identifier in it, the type we expect)
PROBES = [
    ("Seen today with her husband Bartholomew Quinlan regarding the biopsy.", "Bartholomew Quinlan", "NAME"),
    ("Mrs. Abernethy-Cole reports nausea after chemotherapy.", "Abernethy-Cole", "NAME"),
    ("Med Rec # 5580341 reviewed before the procedure.", "5580341", "MRN"),
    ("Date of birth: 08/30/1946. Allergic to sulfa.", "08/30/1946", "DATE"),
    ("Admitted on November 3, 2022 for cellulitis of the right leg.", "November 3, 2022", "DATE"),
    ("A 93 yo gentleman with aortic stenosis and syncope.", "93", "AGE"),
    ("Frail woman aged 104, bedbound, on hospice.", "104", "AGE"),
    ("Please page the covering resident at (602) 555-0177 overnight.", "(602) 555-0177", "PHONE"),
    ("Results were sent to g.thornhill@valleymail.com this morning.", "g.thornhill@valleymail.com", "EMAIL"),
    ("She moved to 8842 Juniper Hollow Road, Boise, ID 83702 last year.",
     "8842 Juniper Hollow Road, Boise, ID 83702", "ADDRESS"),
    ("Social security number 512-09-3377 on the intake form.", "512-09-3377", "SSN"),
    ("Transferred from Cedar Falls Medical Center after the CT.", "Cedar Falls Medical Center", "HOSPITAL"),
    ("Encounter number ENC-7781302 closed after discharge.", "ENC-7781302", "RECORD_ID"),
]

CLEAN = [
    "Continue Eliquis 5 mg BID and Lasix 40 mg daily; hold metformin before the contrast study.",
    "A 67-year-old woman with a history of Graves disease and Hodgkin lymphoma in remission.",
    "MRN and DOB verified with two identifiers before the transfusion. Glasgow Coma Scale 14.",
    "Percocet 5/325 one tablet every 6 hours as needed; follow up in 2 weeks with labs.",
    "Wells score 4; start enoxaparin 1 mg/kg twice daily and arrange a duplex ultrasound.",
]


@pytest.mark.parametrize(("text", "phi", "entity"), PROBES, ids=[p[2] + ":" + p[1][:12] for p in PROBES])
def test_probe_identifier_is_found_with_its_type(text, phi, entity):
    start = text.index(phi)
    spans = scan_text(text)
    hit = [s for s in spans if s.start < start + len(phi) and start < s.end]
    assert hit, f"missed {entity} in {text!r}: {spans}"
    assert hit[0].entity_type == entity
    covered = set().union(*(range(s.start, s.end) for s in hit))
    assert covered >= set(range(start, start + len(phi))), "the whole identifier must be covered"


@pytest.mark.parametrize("text", CLEAN)
def test_clinical_text_without_phi_passes(text):
    assert scan_text(text) == []


def test_ages_89_and_under_are_not_phi_but_90_and_over_are():
    assert scan_text("An 89-year-old man with dyspnea.") == []
    assert [s.entity_type for s in scan_text("A 90-year-old man with dyspnea.")] == ["AGE"]


def test_label_stays_and_only_the_value_is_redacted():
    text = "MRN: 66120984, seen by Dr. Oyelaran."
    assert redact_text(text, scan_text(text)) == "MRN: [MRN], seen by Dr. [NAME]."


def records():
    return [
        {"id": "r1", "prompt": "What is the usual dose of amoxicillin for otitis media?", "response_a": "ok",
         "response_b": "ok"},
        {"id": "r2", "prompt": "My father Ignacio Batista (MRN 8830215) has a cough.",
         "response_a": "Call 415-555-0190 to book.", "response_b": "Rest and fluids."},
    ]


def test_block_mode_names_record_field_types_offsets_but_not_the_phi(tmp_path):
    audit = tmp_path / "audit.jsonl"
    gate = PhiGate(mode="block", audit_path=audit)
    with pytest.raises(InputError) as err:
        gate.check_records(records(), fields=["prompt", "response_a", "response_b"], record_id_key="id")
    msg = str(err.value)
    assert "record r2" in msg and "prompt NAME@" in msg and "prompt MRN@" in msg and "response_a PHONE@" in msg
    assert "r1" not in msg.replace("records", "")
    for secret in ("Ignacio", "Batista", "8830215", "415-555-0190"):
        assert secret not in msg
    rows = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {r["decision"] for r in rows} == {"blocked", "passed"}
    assert {r["record_id"] for r in rows if r["decision"] == "passed"} == {"r1"}
    raw = audit.read_text()
    for secret in ("Ignacio", "Batista", "8830215", "415-555-0190"):
        assert secret not in raw
    assert all({"timestamp", "record_id", "field", "entity_type", "start", "end", "decision"} <= r.keys() for r in rows)


def test_redact_mode_returns_placeholders_and_leaves_input_untouched(tmp_path):
    audit = tmp_path / "audit.jsonl"
    original = records()
    report = PhiGate(mode="redact", audit_path=audit).check_records(
        original, fields=["prompt", "response_a", "response_b"], record_id_key="id")
    r2 = report.records[1]
    assert r2["prompt"] == "My father [NAME] (MRN [MRN]) has a cough."
    assert r2["response_a"] == "Call [PHONE] to book."
    assert report.records[0] == original[0]
    assert original[1]["prompt"].startswith("My father Ignacio")  # the caller's records are not mutated
    assert report.flagged_ids == ["r2"]
    finding = next(f for f in report.findings if f.entity_type == "NAME")
    assert original[1]["prompt"][finding.start:finding.end] == "Ignacio Batista"  # offsets into the original
    assert sum(1 for _ in audit.open()) == len(report.findings) + 1


def test_unknown_mode_is_rejected():
    with pytest.raises(InputError, match="unknown PHI mode"):
        PhiGate(mode="warn")


def test_cli_scan_blocks_then_redacts(tmp_path, capsys):
    from align.cli import main

    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records()))
    out = tmp_path / "clean.jsonl"
    audit = tmp_path / "audit.jsonl"
    assert main(["phi", "scan", str(src), "--out", str(out), "--audit", str(audit)]) == 2
    assert not out.exists()  # blocked: nothing written
    assert "recordr2:" in "".join(capsys.readouterr().err.split())  # rich may wrap the line
    assert main(["phi", "scan", str(src), "--mode", "redact", "--out", str(out), "--audit", str(audit)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "[NAME]" in rows[1]["prompt"] and "Batista" not in out.read_text()


def test_cli_scan_rejects_unknown_field(tmp_path, capsys):
    from align.cli import main

    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"id": "x", "prompt": "hello"}) + "\n")
    assert main(["phi", "scan", str(src), "--fields", "nope", "--audit", str(tmp_path / "a.jsonl")]) == 2
    assert "nope" in capsys.readouterr().err


def test_withhold_mode_passes_only_clean_records(tmp_path):
    """Generated pairs: a flagged record is withheld (and audited), the clean ones go on."""
    import json as _json

    from annotation.phi import PhiGate

    records = [{"id": "clean", "text": "Metformin is a first-line treatment for type 2 diabetes."},
               {"id": "dirty", "text": "Patient John Smitherson, MRN 4482913, was seen on 03/14/2024."}]
    audit = tmp_path / "audit.jsonl"
    report = PhiGate(mode="withhold", audit_path=audit).check_records(records, fields=["text"])
    assert [r["id"] for r in report.records] == ["clean"]
    assert report.flagged_ids == ["dirty"]
    logged = [_json.loads(x) for x in audit.read_text().splitlines()]
    assert {e["decision"] for e in logged if e["record_id"] == "dirty"} == {"withheld"}
    assert "Smitherson" not in audit.read_text() and "4482913" not in audit.read_text()


# --- vocabulary: drug names, eponyms and Title-Case headings of generated answers are not PHI ----------

VOCABULARY_TEXTS = [
    "Metformin is usually the first medicine. Lisinopril lowers blood pressure.",
    "Treatment Options\n\n1. Lifestyle Changes: diet and exercise.\n2. Medications: Metformin, Lisinopril.",
    "**Pathogen Screening**: the first step of the work-up. **Selective Muscle Relaxation** may help.",
    # brand names from the drug dictionary (DrugBank / MeSH), not in the hand-kept allow-list
    "Methotrexate (Rasuvo) and thalidomide (Thalomid) should not be used in pregnancy.",
    "Topical glycopyrronium (Qbrexza) or methocarbamol (Robaxin) were discussed.",
    # eponyms from MedQuAD focus names, written without "syndrome" or "disease" after them
    "Lenz Majewski hyperostosis is a rare bone disorder.",
    "Doyne Honeycomb is a rare genetic disorder of the retina.",
    # Title-Case headings whose first word is also a census first name
    "Many Treatments Are Available for myeloma. See Eating Well as You Get Older.",
    "Beta Thalassemias need two faulty genes. In Vitro fertilisation was offered.",
    # gene and protein symbols in mixed case
    "De novo mutations in aromatase (AleA) and the SiRNA pathway were reported.",
]


@pytest.mark.parametrize("text", VOCABULARY_TEXTS)
def test_medical_vocabulary_and_headings_are_not_flagged(text):
    assert scan_text(text) == [], [text[s.start:s.end] for s in scan_text(text)]


NAME_PROBES = [
    # Allegra is a brand of fexofenadine and a census first name: a person, whole
    ("Her daughter Allegra Whitfield will bring the inhaler.", "Allegra Whitfield", "NAME"),
    ("Mrs. Allegra Stone called about the Lasix refill.", "Allegra Stone", "NAME"),
    # a heading right before real identifiers does not hide them
    ("Treatment Options\nSeen with her son Ignatius Feldmann; MRN: 77120493.", "Ignatius Feldmann", "NAME"),
    ("Treatment Options\nSeen with her son Ignatius Feldmann; MRN: 77120493.", "77120493", "MRN"),
    ("Metformin was started on 04/12/2023 after the visit.", "04/12/2023", "DATE"),
    ("Lisinopril refills: call (415) 555-0190 or write to 12 Elm Street, Springfield, IL 62704.",
     "(415) 555-0190", "PHONE"),
    ("Lisinopril refills: call (415) 555-0190 or write to 12 Elm Street, Springfield, IL 62704.",
     "12 Elm Street, Springfield, IL 62704", "ADDRESS"),
    ("Lenz Majewski hyperostosis was diagnosed; her husband Kenji Watanabe was told.", "Kenji Watanabe", "NAME"),
]


@pytest.mark.parametrize(("text", "phi", "entity"), NAME_PROBES, ids=[p[2] + ":" + p[1][:14] for p in NAME_PROBES])
def test_phi_next_to_vocabulary_is_still_found_whole(text, phi, entity):
    test_probe_identifier_is_found_with_its_type(text, phi, entity)


def test_vocabulary_never_overrides_a_title_or_a_label():
    # "Doyne" and "Lenz" are eponyms in the vocabulary; after a title or a label they are names
    assert [s.entity_type for s in scan_text("Seen by Dr. Doyne today.")] == ["NAME"]
    assert [s.entity_type for s in scan_text("Patient Name: Lenz Majewski")] == ["NAME"]


# --- long text: scanned in overlapping windows, never refused (spaCy E088), never skipped -----------------

def test_text_over_a_million_characters_is_scanned_to_the_end_and_across_window_edges(tmp_path):
    from annotation.phi import CHUNK_CHARS, CHUNK_OVERLAP, _windows

    filler = "Hydrochlorothiazide-lisinopril combination therapy continued unchanged overall. "
    # The first window's core ends at the last space before CHUNK_CHARS - 2 * CHUNK_OVERLAP: put
    # "Bartholomew " just before that point and "Quinlan" across it.
    edge = CHUNK_CHARS - 2 * CHUNK_OVERLAP - 4
    head = (filler * (edge // len(filler) + 1))[:edge - len("Bartholomew ") - len(" Seen with ")] + " Seen with "
    text = head + "Bartholomew Quinlan today. " + filler * (1_050_000 // len(filler))
    text += "Discharged home. MRN: 66120984. Call (602) 555-0177 with questions."
    assert len(text) > 1_000_000
    name = text.index("Bartholomew Quinlan")
    cores = [w[3] for w in _windows(text)]
    assert any(name < c < name + len("Bartholomew Quinlan") for c in cores), "the name must straddle a window edge"

    report = PhiGate(mode="redact", audit_path=tmp_path / "audit.jsonl").check_records(
        [{"id": "long", "correction": text}], fields=["correction"])
    found = {(f.entity_type, text[f.start:f.end]) for f in report.findings}
    assert ("NAME", "Bartholomew Quinlan") in found
    assert ("MRN", "66120984") in found and ("PHONE", "(602) 555-0177") in found
    assert len(report.findings) == 3  # nothing counted twice where windows overlap
    redacted = report.records[0]["correction"]
    assert "Quinlan" not in redacted and "66120984" not in redacted and redacted.endswith("Call [PHONE] with questions.")


def test_windows_cover_the_text_and_cut_at_whitespace():
    from annotation.phi import _windows

    text = ("word " * 30_000) + ("x" * 70_000)  # the tail has no whitespace: hard cuts there
    windows = list(_windows(text, size=20_000, overlap=500))
    assert windows[0][2] == 0 and windows[-1][3] == len(text)
    for (s, e, cs, ce), nxt in zip(windows, windows[1:] + [None], strict=True):
        assert s <= cs < ce <= e and e - s <= 20_000 + 1_200
        if nxt:
            assert nxt[2] == ce  # cores partition the text
        if ce < 150_000 and nxt:
            assert text[ce - 1] == " "  # cut after a space where there is one


# --- build: once per process, only what the gate needs ---------------------------------------------------

def test_analyzer_is_built_once_with_only_the_entity_recognizer():
    from annotation.phi import analyzer

    engine = analyzer()
    assert engine is analyzer()
    assert engine.nlp_engine.nlp["en"].pipe_names == ["ner"]
    names = {type(r).__name__ for r in engine.registry.recognizers}
    assert {"SpacyRecognizer", "EmailRecognizer", "UrlRecognizer", "IpRecognizer"} <= names
    assert not names & {"PhoneRecognizer", "UsSsnRecognizer", "CreditCardRecognizer", "DateRecognizer"}


def test_a_fresh_process_builds_the_gate_without_torch_or_transformers():
    import subprocess
    import sys

    code = ("import sys; from annotation.phi import scan_text; "
            "assert [s.entity_type for s in scan_text('Seen by Dr. Oyelaran.')] == ['NAME']; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules)); "
            "import torch; print(torch.tensor([1.0]).sum().item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "1.0"]  # not imported by the gate, and still importable


def test_round_screens_answers_so_one_flagged_answer_does_not_cost_the_pair(tmp_path):
    from align.generate import Sample, SamplingSetting, pairs_from_samples
    from align.prompts import Prompt
    from align.stages import screen_answers

    prompts = [Prompt("q1", "What helps a migraine?", reference="rest"), Prompt("q2", "What is gout?")]
    dirty = "Patient John Smitherson, MRN 4482913, was seen on 03/14/2024 for this."
    samples = [[Sample("Rest in a dark room helps.", True, 6), Sample(dirty, True, 14),
                Sample("Ibuprofen can help a migraine.", True, 5)],
               [Sample(dirty, True, 14), Sample("Gout is a form of arthritis.", True, 6)]]
    kept, withheld = screen_answers(prompts, samples, audit_dir=tmp_path)
    assert withheld == 2
    assert [[s.text for s in g] for g in kept] == [["Rest in a dark room helps.", "Ibuprofen can help a migraine."],
                                                   ["Gout is a form of arthritis."]]
    pairs, stats = pairs_from_samples(prompts, kept, SamplingSetting("m", 0.8))
    assert len(pairs) == 1 and dirty not in (pairs[0].response_a, pairs[0].response_b)
    assert stats.skipped_empty == 1  # q2 kept a single answer: no pair, and nothing flagged was stored
    audit = (tmp_path / "phi_audit.jsonl").read_text()
    assert '"record_id": "q1#1"' in audit and '"record_id": "q2#0"' in audit and "Smitherson" not in audit
