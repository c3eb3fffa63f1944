"""Stages of a round shared by the CLI commands and the demo: PHI gates (answers, pairs), export with lineage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotation.records import CandidatePair
from clinalign_base.manifest import build_manifest, write_manifest

if TYPE_CHECKING:  # align.generate imports torch; the CLI's PHI commands should not pay for it
    from align.generate import Sample
    from align.prompts import Prompt

PAIR_TEXT_FIELDS = ["prompt", "response_a", "response_b", "reference"]
ROW_TEXT_FIELDS = ["prompt", "chosen", "rejected"]


def gate_pairs(pairs: list[CandidatePair], *, mode: str, audit_dir: str | Path,
               fields: list[str] | None = None) -> list[CandidatePair]:
    """PHI gate before pairs enter a store: block (error naming records), redact or withhold."""
    from annotation.phi import PhiGate

    records = [{k: v for k, v in p.to_dict().items() if k != "id"} | {"pair_key": p.id} for p in pairs]
    gate = PhiGate(mode=mode, audit_path=Path(audit_dir) / "phi_audit.jsonl")
    cleaned = gate.check_records(records, fields=fields or PAIR_TEXT_FIELDS, record_id_key="pair_key").records
    return [CandidatePair.from_dict({k: v for k, v in r.items() if k != "pair_key"}) for r in cleaned]


def screen_answers(prompts: list[Prompt], samples: list[list[Sample]], *, audit_dir: str | Path
                   ) -> tuple[list[list[Sample]], int]:
    """Withhold flagged answers before pairing (audited, never stored): the pair is then made from the
    question's other answers instead of being lost whole. Returns the kept answers and how many went."""
    from annotation.phi import PhiGate

    ids = [[f"{p.id}#{j}" for j in range(len(g))] for p, g in zip(prompts, samples, strict=True)]
    records = [{"answer_id": i, "text": s.text} for row, g in zip(ids, samples, strict=True)
               for i, s in zip(row, g, strict=True)]
    gate = PhiGate(mode="withhold", audit_path=Path(audit_dir) / "phi_audit.jsonl", source="candidate answers")
    clean = {r["answer_id"] for r in gate.check_records(records, fields=["text"], record_id_key="answer_id").records}
    kept = [[s for i, s in zip(row, g, strict=True) if i in clean] for row, g in zip(ids, samples, strict=True)]
    return kept, len(records) - len(clean)


def export_preferences(store_spec: str, out: str | Path, *, include_simulated: bool, include_seeds: bool,
                       phi_mode: str = "block", overwrite: bool = False) -> dict[str, Any]:
    """Store → preference dataset folder with report, agreement and manifest; returns the report."""
    from annotation.agreement import agreement_report
    from annotation.export import build_preference_rows
    from annotation.phi import PhiGate
    from annotation.preferences import save_preference_dataset
    from annotation.store import open_store

    store = open_store(store_spec, create=False)
    try:
        pairs, feedback = list(store.iter_pairs()), list(store.iter_feedback())
    finally:
        store.close()
    rows, report = build_preference_rows(pairs, feedback, include_simulated=include_simulated,
                                         include_seeds=include_seeds)
    gate = PhiGate(mode=phi_mode, audit_path=Path(out).parent / "phi_audit.jsonl")
    rows = gate.check_records(rows, fields=ROW_TEXT_FIELDS, record_id_key="pair_id").records
    used = [f for f in feedback if include_simulated or not f.simulated]
    agreement = agreement_report(used)
    summary = report.to_dict() | {"rows": len(rows)}
    out = save_preference_dataset(rows, out, extra_files={"export_report.json": summary,
                                                          "agreement.json": agreement}, overwrite=overwrite)
    store_path = Path(store_spec)
    inputs = [{"role": "feedback_store", "path": store_spec,
               "sha256": _store_digest(pairs, feedback)}]
    write_manifest(out, build_manifest(
        "preference_dataset", out.name, inputs=inputs,
        config={"include_simulated": include_simulated, "include_seeds": include_seeds, "phi_mode": phi_mode,
                "store_backend": "argilla" if store_spec.startswith("argilla:") else "sqlite"},
        metrics={"rows": len(rows), **{f"rows_{k}": v for k, v in report.rows_by_source.items()}},
        annotations={"feedback_by_annotator": dict(report.feedback_by_annotator),
                     "agreement": agreement, "store": str(store_path)}))
    return summary


def _store_digest(pairs, feedback) -> str:
    """A content hash of what was exported (a live store changes; this pins what was read)."""
    import hashlib
    import json

    h = hashlib.sha256()
    for p in sorted(pairs, key=lambda p: p.id):
        h.update(p.id.encode())
    for f in sorted(feedback, key=lambda f: (f.pair_id, f.annotator_id)):
        h.update(json.dumps(f.to_dict(), sort_keys=True).encode())
    return h.hexdigest()
