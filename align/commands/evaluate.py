"""`clinalign winrate | eval | promote | leaderboard`: evaluation of a policy and the promotion gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from align.cli_groups import Store, app
from align.progress import progress_bar
from clinalign_base.atomic import write_json_atomic
from clinalign_base.errors import ClinalignError, InputError

console = Console(markup=False)  # plain text: file names and labels come from users


@app.command("winrate")
def winrate_cmd(
    prompts: Annotated[str, typer.Option(help="Held-out prompts JSONL.")],
    reward_model: Annotated[str, typer.Option(help="Reward model folder.")],
    model: str = "builtin:smollm2-135m-instruct",
    adapter: Annotated[str | None, typer.Option(help="Candidate policy's LoRA adapter.")] = None,
    baseline_adapter: Annotated[str | None, typer.Option(help="Baseline's adapter (default: base model).")] = None,
    limit: int = 32,
    offset: int = 0,
    max_new_tokens: int = 128,
    out: str | None = None,
) -> None:
    """Reward-model win-rate of a policy (base + adapter) against a baseline on held-out prompts."""
    from align.evaluation.rm_winrate import win_rate
    from align.generate import SamplingSetting
    from align.prompts import load_prompts
    from reward_models.scoring import RewardScorer

    items = load_prompts(prompts, limit=limit, offset=offset)
    cand = SamplingSetting(model, 0.0, max_new_tokens=max_new_tokens, adapter=adapter)
    base = SamplingSetting(model, 0.0, max_new_tokens=max_new_tokens, adapter=baseline_adapter)
    with progress_bar("answering", total=2 * len(items)) as advance:
        result = win_rate(cand, base, items, RewardScorer(reward_model), progress=advance)
    if out:  # the one evaluation record (align/evaluation/record.py): `eval --winrate` and `promote` read it
        from align.evaluation.record import EvaluationRecord
        from clinalign_base.atomic import write_json_atomic

        write_json_atomic(out, EvaluationRecord.from_blocks(result, model=cand.label).to_dict())
    console.print(f"win-rate {result['win_rate']:.3f} (95% CI {result['win_rate_ci95'][0]:.3f}-"
                  f"{result['win_rate_ci95'][1]:.3f}) over {result['n_prompts']} prompts")


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
    from align.evaluation.pubmedqa import evaluate_pubmedqa
    from align.recipes.recipe_utils import set_threads

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
    from align.evaluation.promote import decide, default_promotion_path, read_eval, write_promotion

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


@app.command("leaderboard")
def leaderboard_cmd(
    store: Store = "runs/default/feedback.sqlite",
    out: Annotated[str | None, typer.Option(help="Folder for leaderboard.json, leaderboard.png and a manifest.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the confidence intervals.")] = 1000,
    seed: int = 0,
    both_unsafe: Annotated[str, typer.Option(help="'Both unsafe' votes: tie | skip.")] = "tie",
    all_origins: Annotated[bool, typer.Option(help="Count annotation feedback too, not only blind review votes.")] = False,
    min_voter_votes: Annotated[int, typer.Option(help="Decisive votes a clinician needs before outlier testing.")] = 10,
) -> None:
    """Bradley–Terry (with ties) ratings, bootstrap CIs, win rates, votes per clinician, outlier voters."""
    from annotation.leaderboard import build_leaderboard, comparisons_from_feedback, plot_leaderboard
    from annotation.store import open_store
    from clinalign_base.manifest import build_manifest, ref, write_manifest

    if both_unsafe not in ("tie", "skip"):
        raise ClinalignError("--both-unsafe must be 'tie' or 'skip'")
    s = open_store(store, create=False)
    try:
        pairs = {p.id: p for p in s.iter_pairs()}
        comps = comparisons_from_feedback(s.iter_feedback(), pairs, origins=() if all_origins else ("review",),
                                          both_bad=both_unsafe)
    finally:
        s.close()
    if not comps:
        raise ClinalignError(f"no votes between two different models in {store} (review votes only unless --all-origins)")
    with progress_bar("bootstrap", bootstrap) as advance:
        lb = build_leaderboard(comps, n_bootstrap=bootstrap, seed=seed, min_voter_votes=min_voter_votes,
                               progress=lambda b, n: advance(1))
    lb.config.update({"both_unsafe": both_unsafe, "all_origins": all_origins})
    _print_leaderboard(lb)
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "leaderboard.json.tmp"
        tmp.write_text(json.dumps(lb.to_dict(), indent=2) + "\n")
        tmp.replace(folder / "leaderboard.json")
        plot_leaderboard(lb, folder / "leaderboard.png")
        inputs = [ref("store", store)] if Path(store).exists() else []
        manifest = build_manifest("leaderboard", folder.name, inputs=inputs,
                                  outputs=[ref("leaderboard", folder / "leaderboard.json"),
                                           ref("plot", folder / "leaderboard.png")],
                                  config=lb.config | {"n_bootstrap": bootstrap},
                                  metrics={"n_votes": lb.n_votes, "nu": lb.nu,
                                           "ratings": {r.model: r.rating for r in lb.models}})
        write_manifest(folder, manifest)
        console.print(f"wrote {folder / 'leaderboard.json'}, {folder / 'leaderboard.png'}")


def _print_leaderboard(lb) -> None:
    table = Table(title=f"Leaderboard · {lb.n_votes} votes · tie parameter ν={lb.nu:.2f}")
    for col in ("#", "model", "rating", f"{int(lb.confidence * 100)}% CI", "votes", "W", "L", "T",
                "both unsafe", "flagged"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for k, r in enumerate(lb.models, 1):
        table.add_row(str(k), r.model, f"{r.rating:.0f}", f"{r.ci_low:.0f}–{r.ci_high:.0f}", str(r.votes),
                      str(r.wins), str(r.losses), str(r.ties), str(r.both_unsafe), str(r.flagged))
    console.print(table)
    names = [r.model for r in lb.models]
    wins = Table(title="Win rate of row vs column (tie = ½)")
    wins.add_column("")
    for n in names:
        wins.add_column(n, justify="right")
    for a in names:
        wins.add_row(a, *["—" if a == b else ("" if lb.win_rates[a].get(b) is None
                                             else f"{lb.win_rates[a][b]:.2f} ({lb.games[a][b]})") for b in names])
    console.print(wins)
    voters = Table(title="Votes per clinician")
    for col in ("clinician", "votes", "ties", "both unsafe", "flagged", "against consensus", "expected", "z",
                "outlier", "median s/vote"):
        voters.add_column(col, justify="left" if col == "clinician" else "right")
    for v in lb.voters:
        voters.add_row(v.annotator, str(v.votes), str(v.ties), str(v.both_unsafe), str(v.flagged),
                       str(v.against_consensus), f"{v.expected_against:.1f}", f"{v.z:.2f}",
                       Text("YES", style="bold red") if v.outlier else "",
                       "" if v.median_seconds is None else f"{v.median_seconds:.1f}")
    console.print(voters)
