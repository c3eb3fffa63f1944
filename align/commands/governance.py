"""Clinical governance commands: `phi scan`, `eval`, `promote`, `card`, `lineage`."""

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


@app.command("eval")
def eval_cmd(
    model: Annotated[str | None, typer.Option(help="Base model spec (builtin:..., local folder); default: the "
                                              "adapter's base.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder on top of --model.")] = None,
    limit: Annotated[int | None, typer.Option(help="First N of the 500 test items (quick runs).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the evaluation JSON (a clinalign manifest) here.")] = None,
    data: Annotated[Path | None, typer.Option(help="PubMedQA PQA-L JSONL (default: the shipped copy).")] = None,
    batch_size: int = 16,
    max_length: Annotated[int, typer.Option(help="Prompt + answer tokens; long abstracts are cut.")] = 1024,
    abstract: Annotated[bool, typer.Option(help="Give the abstract (--no-abstract: the question alone, the "
                                           "paper's reasoning-required setting).")] = True,
    winrate: Annotated[Path | None, typer.Option(help="A `clinalign winrate --out` JSON to record beside the "
                                                 "accuracy (the promotion gate needs both).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (CPU).")] = None,
    dtype: Annotated[str, typer.Option(help="auto (bfloat16 on GPUs and AVX512-BF16/AMX CPUs, else float32) | "
                                       "float32 | bfloat16 | float16.")] = "auto",
) -> None:
    """PubMedQA yes/no/maybe accuracy (official test split) by answer log-likelihood."""
    from align.medical_eval import evaluate_pubmedqa
    from align.recipe_utils import set_threads

    set_threads(threads)
    wr = _read_winrate(winrate) if winrate else None
    result = evaluate_pubmedqa(model, adapter=str(adapter) if adapter else None, limit=limit, data_path=data,
                               batch_size=batch_size, max_length=max_length, dtype=_dtype(dtype),
                               with_abstract=abstract)
    _print_eval(result, wr)
    if out is not None:
        _write_eval(out, result, wr, adapter, winrate)
        console.print(f"evaluation written to {out}")


def _dtype(name: str) -> str | None:
    if name == "auto":
        return None
    if name not in ("float32", "bfloat16", "float16"):
        raise InputError(f"--dtype must be float32, bfloat16 or float16, got {name!r}")
    return name


def _read_winrate(path: Path) -> dict:
    """The win-rate block of a `clinalign winrate --out` file (the evaluation record, or its older flat shape)."""
    from align.evaluation.record import read_record

    rec = read_record(path)
    value = rec.win_rate
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InputError(f"no win_rate in [0, 1] (got {value!r})", path=str(path))
    return rec.to_dict()["win_rate"]


def _print_eval(result: dict, wr: dict | None) -> None:
    table = Table(title=f"PubMedQA test ({result['n']} items{'' if result['official_test_set'] else ', subset'})")
    table.add_column("model")
    table.add_column("accuracy", justify="right")
    lo, hi = result["accuracy_ci95"]
    name = result["model"] + (f" + {result['adapter']}" if result["adapter"] else "")
    table.add_row(Text(name, style="bold"), Text.assemble((f"{result['accuracy']:.3f}", "bold"), f" ({lo:.3f}-{hi:.3f})"))
    table.add_row("majority class (always the most frequent answer)", f"{result['majority_class_accuracy']:.3f}")
    for anchor, value in result["anchors"].items():
        table.add_row(f"{anchor} (published, zero-shot)", f"{value:.3f}")
    console.print(table)
    console.print("per class: " + ", ".join(f"{k} {v['correct']}/{v['n']}" for k, v in result["per_class"].items())
                  + "; predicted: " + ", ".join(f"{k} {v}" for k, v in result["predicted"].items()))
    if wr:
        console.print(f"reward-model win-rate (from file): {wr['win_rate']:.3f}")


def _write_eval(out: Path, result: dict, wr: dict | None, adapter: Path | None, winrate: Path | None) -> None:
    """A lineage manifest (`kind: evaluation`) whose metrics and blocks are the one evaluation record."""
    from align.evaluation.record import EvaluationRecord
    from clinalign_base.atomic import write_json_atomic
    from clinalign_base.manifest import build_manifest, ref

    inputs = [{"role": "pubmedqa", "path": result["data"]["path"], "sha256": result["data"]["sha256"]}]
    if adapter:
        inputs.append(ref("policy", adapter))
    if winrate:
        inputs.append(ref("winrate", winrate))
    record = EvaluationRecord.from_blocks(wr, result, model=result["model"])
    manifest = build_manifest("evaluation", out.stem, inputs=inputs, metrics=record.metrics(),
                              config={"model": result["model"], "adapter": result["adapter"],
                                      "limit": result["limit"], "max_length": result["max_length"],
                                      "scoring": result["scoring"]})
    manifest |= {k: v for k, v in record.to_dict().items() if k != "schema"}  # the blocks: win_rate, pubmedqa
    write_json_atomic(out, manifest)


@app.command("promote")
def promote_cmd(
    candidate: Annotated[Path, typer.Option(help="Candidate's evaluation (clinalign eval --out JSON, or a "
                                            "round's evaluation folder/manifest).")],
    baseline: Annotated[Path | None, typer.Option(help="Previous policy's evaluation (default: the candidate "
                                                  "file's 'before' accuracy).")] = None,
    min_win_rate: Annotated[float, typer.Option(help="Its 95% CI lower bound must lie above this.")] = 0.5,
    max_accuracy_drop: Annotated[float, typer.Option(help="Largest PubMedQA accuracy drop allowed.")] = 0.02,
    out: Annotated[Path | None, typer.Option(help="Promotion record (default: promotion.json beside the "
                                             "candidate).")] = None,
) -> None:
    """Promote a policy only if its win-rate clears the threshold and PubMedQA accuracy held up."""
    from align.promote import decide, default_promotion_path, read_eval, write_promotion

    cand = read_eval(candidate)
    base = read_eval(baseline) if baseline else None
    d = decide(cand, base, min_win_rate=min_win_rate, max_accuracy_drop=max_accuracy_drop)
    table = Table(title="promotion gate")
    for col in ("gate", "value", "threshold", "result"):
        table.add_column(col)
    ci = cand.win_rate_ci95
    wr_ok = d.win_rate is not None and not any(r.startswith("win-rate") for r in d.reasons)
    shown = _f(d.win_rate) + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
    table.add_row("judged win-rate", shown, f"CI low > {d.min_win_rate:.3f}" if ci else f">= {d.min_win_rate:.3f}",
                  _pf(wr_ok))
    acc_ok = d.accuracy_drop is not None and not any(r.startswith("PubMedQA") for r in d.reasons)
    table.add_row(f"PubMedQA accuracy drop (n={d.n_items})",
                  f"{_f(d.accuracy_drop)} ({_f(d.accuracy_baseline)} -> {_f(d.accuracy_candidate)})",
                  f"<= {d.max_accuracy_drop:.3f}", _pf(acc_ok))
    console.print(table)
    if not d.promoted:
        from clinalign_base.errors import ClinalignError

        raise ClinalignError("NOT PROMOTED: " + "; ".join(d.reasons))
    target = out or default_promotion_path(Path(cand.path))
    write_promotion(target, d, cand, base)
    console.print(Text.assemble(("PROMOTED", "bold green"), f": promotion record written to {target}"))


def _f(v: float | None) -> str:
    return "missing" if v is None else f"{v:.3f}"


def _pf(ok: bool) -> str:
    return Text("pass", style="green") if ok else Text("FAIL", style="bold red")


@app.command("card")
def card_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Round folder (runs/<name>) holding manifest.json.")],
    out: Annotated[Path | None, typer.Option(help="Markdown file (default: RUN_DIR/MODEL_CARD.md).")] = None,
) -> None:
    """Generate the round's Markdown model card from its manifests."""
    from align.model_card import write_card

    console.print(f"model card written to {write_card(run_dir, out)}")


@app.command("lineage")
def lineage_cmd(
    path: Annotated[Path, typer.Argument(help="Checkpoint / artefact folder, a round folder, or a manifest.")],
) -> None:
    """Print the chain from an artefact back to the annotations; exit non-zero if an input is missing or altered."""
    from align.lineage import check

    check(path, console=console)
