"""PHI gate on probe texts written for these tests (none of them is in data/phi_synthetic)."""

from __future__ import annotations

import json

import pytest

from annotation.errors import InputError
from annotation.phi import PhiGate, redact_text, scan_text

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
