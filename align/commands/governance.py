"""`clinalign phi scan | lineage | card`: the PHI gate on files, lineage checks and the model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from align.cli_groups import app
from clinalign_base.errors import InputError

console = Console(markup=False)  # plain text: file names and labels come from users


phi_app = typer.Typer(help="PHI gate: scan JSONL files for protected health information (block or redact).",
                      no_args_is_help=True)


app.add_typer(phi_app, name="phi")


# Text fields scanned by default when present (pairs, preference rows, prompts, feedback).
DEFAULT_TEXT_FIELDS = ("prompt", "response_a", "response_b", "reference", "chosen", "rejected", "correction",
                       "rationale", "text", "note", "question", "answer", "response", "completion")


ID_KEYS = ("id", "pair_id", "prompt_id", "record_id")


def _load_records(path: Path) -> tuple[list[dict], list[int]]:
    from clinalign_base.jsonl import read_jsonl

    lines, records = [], []
    for line, obj in read_jsonl(path):
        lines.append(line)
        records.append(obj)
    return records, lines


@phi_app.command("scan")
def phi_scan(
    file: Annotated[Path, typer.Argument(help="JSONL file (pairs, preference rows, prompts, notes), or a "
                                         "preference dataset folder (its preferences.jsonl).")],
    mode: Annotated[str, typer.Option(help="block: refuse and list offending records; redact: placeholders; withhold: write only clean records.")]
    = "block",
    fields: Annotated[list[str] | None, typer.Option("--fields", help="Fields to scan (repeatable); default: "
                                                     "the usual text fields present in the file.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the (redacted) records here, atomically.")] = None,
    audit: Annotated[Path, typer.Option(help="Append-only audit log (JSONL, never holds the PHI).")]
    = Path("phi_audit.jsonl"),
    threshold: Annotated[float, typer.Option(help="Presidio score threshold.")] = 0.4,
) -> None:
    """Scan FILE for PHI. Block mode exits non-zero naming records, fields, types and offsets."""
    from annotation.phi import PhiGate
    from clinalign_base.jsonl import write_jsonl_atomic

    if file.is_dir() and (file / "preferences.jsonl").is_file():  # a preference dataset folder
        file = file / "preferences.jsonl"
    records, lines = _load_records(file)
    if not records:
        raise InputError("no records", path=str(file))
    fields = _pick_fields(records, fields, file)
    id_key = next((k for k in ID_KEYS if all(k in r for r in records)), None)
    if id_key is None:  # name records by their line so the error points into the file
        id_key = "_line"
        records = [{**r, "_line": f"line {n}"} for r, n in zip(records, lines, strict=True)]
    gate = PhiGate(mode=mode, audit_path=audit, threshold=threshold, source=f"phi scan {file}")
    with console.status(f"scanning {len(records)} records ({', '.join(fields)})"):
        report = gate.check_records(records, fields=fields, record_id_key=id_key, path=str(file))
    kept = [{k: v for k, v in r.items() if k != "_line"} for r in report.records]
    if out is not None:
        write_jsonl_atomic(out, kept)
    _print_report(report, file, out, audit)


def _pick_fields(records: list[dict], fields: list[str] | None, file: Path) -> list[str]:
    if fields:
        missing = [f for f in fields if not any(f in r for r in records)]
        if missing:
            raise InputError(f"no record has field(s) {', '.join(missing)}", path=str(file))
        return fields
    present = [f for f in DEFAULT_TEXT_FIELDS if any(isinstance(r.get(f), str) for r in records)]
    if not present:
        raise InputError(f"none of the usual text fields ({', '.join(DEFAULT_TEXT_FIELDS)}) is present; "
                         f"name them with --fields", path=str(file))
    return present


def _print_report(report, file: Path, out: Path | None, audit: Path) -> None:
    if report.clean:
        console.print(Text.assemble(("no PHI found", "green"), f" in {report.n_records} records of {file} (audit: {audit})"))
    else:
        table = Table(title=f"PHI redacted in {len(report.flagged_ids)} of {report.n_records} records")
        for col in ("record", "field", "type", "offsets"):
            table.add_column(col)
        for f in report.findings[:50]:
            table.add_row(f.record_id, f.field, f.entity_type, f"{f.start}-{f.end}")
        console.print(table)
        if len(report.findings) > 50:
            console.print(f"... {len(report.findings) - 50} more spans in {audit}")
        console.print("by type: " + ", ".join(f"{k} {v}" for k, v in report.counts_by_type().items()))
    if out is not None:
        console.print(f"records written to {out}")


@app.command("card")
def card_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Round folder (runs/<name>) holding manifest.json.")],
    out: Annotated[Path | None, typer.Option(help="Markdown file (default: RUN_DIR/MODEL_CARD.md).")] = None,
) -> None:
    """Generate the round's Markdown model card from its manifests."""
    from align.evaluation.model_card import write_card

    console.print(f"model card written to {write_card(run_dir, out)}")


@app.command("lineage")
def lineage_cmd(
    path: Annotated[Path, typer.Argument(help="Checkpoint / artefact folder, a round folder, or a manifest.")],
) -> None:
    """Print the chain from an artefact back to the annotations; exit non-zero if an input is missing or altered."""
    from align.evaluation.lineage import check

    check(path, console=console)
