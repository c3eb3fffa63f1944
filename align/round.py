"""One full round of the loop, as `clinalign demo` runs it on embedded defaults.

split prompts → SFT on experts' answers → on-policy candidates → (simulated) clinicians' feedback →
preference export → reward model (a proxy) → DPO or PPO → judged evaluation on held-out prompts →
PubMedQA alignment tax → manifest and promotion verdict. docs/experimental-design.md explains why.
Every stage writes its artefact under the round's folder with its own manifest; the round manifest
lists them all with their hashes and metrics.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from align.engines.vllm_server import stop_servers
from align.evaluation.splits import disambiguate_ids, split_prompts, take
from align.generate import Generator, Sample, SamplingSetting, pairs_from_samples
from align.progress import console, progress_bar
from align.prompts import Prompt, load_prompts
from align.round_config import RoundConfig
from align.stages import export_preferences, gate_pairs, screen_answers
from annotation.atomic import write_json_atomic
from annotation.errors import ClinalignError
from annotation.jsonl import write_jsonl_atomic as write_jsonl
from annotation.manifest import build_manifest, read_manifest, ref, write_manifest
from annotation.simulated import ANNOTATOR_ID, clinician_score, judge
from annotation.sqlite_store import SQLiteStore

MARKER = ".clinalign-round"
JUDGE_NAME = f"{ANNOTATOR_ID} (simulated clinician: reference-answer terms, penalties for repetition, "
JUDGE_NAME += "unfinished, verbose and word-salad answers)"


def _prepare_dir(out: Path) -> None:
    """A round folder is recreated only if clinalign made it; anything else is never deleted."""
    if out.exists():
        if not (out / MARKER).exists():
            raise ClinalignError(f"{out} exists and is not a clinalign round folder; choose another output_dir")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by clinalign; safe to delete\n")


def judge_score(prompt: Prompt, sample: Sample) -> float:
    """The simulated clinician's score of one answer (the demo's labeller and judge)."""
    return clinician_score(sample.text, prompt.reference or "", question=prompt.text, finished=sample.finished).score


class Round:
    def __init__(self, cfg: RoundConfig, config_path: str | None = None):
        self.cfg, self.config_path = cfg, config_path
        self.out = Path(cfg.output_dir)
        self.stages: dict[str, dict[str, Any]] = {}
        self.inputs: list[dict[str, str]] = []
        self.current = cfg.policy  # the policy candidates are sampled from (the SFT model once it exists)
        self.prompts: dict[str, list[Prompt]] = {}
        self.split_overlap = -1

    def _stage(self, name: str, fn):
        console.rule(Text(name, style="bold cyan"))
        t0 = time.perf_counter()
        result = fn()
        self.stages[name] = {"seconds": round(time.perf_counter() - t0, 1), **(result or {})}
        return result

    # -- stages --------------------------------------------------------------------------------
    def split(self) -> dict[str, Any]:
        c = self.cfg
        sets = []
        for spec in c.prompt_sets:
            self.inputs.append(ref(f"prompts:{spec['name']}", spec["path"]))
            sets.append((spec["name"], load_prompts(spec["path"])))
        flat = disambiguate_ids([p for _, ps in sets for p in ps])
        it = iter(flat)
        sets = [(name, [next(it) for _ in ps]) for name, ps in sets]
        split = split_prompts(sets, fractions=c.split_fractions, seed=c.split_seed)
        self.split_overlap = split.overlap()
        if self.split_overlap:
            raise ClinalignError(f"prompt split leaks: {self.split_overlap} near-duplicate pairs straddle splits")
        evaluated = split.test if c.eval_split == "test" else split.rm_val
        self.prompts = {"train": take(split.train, c.train_prompts, seed=c.seed),
                        "rm_val": take(split.rm_val, c.rm_val_prompts, seed=c.seed),
                        "eval": take(evaluated, c.test_prompts, seed=c.seed)}
        used = {k: [p.id for p in v] for k, v in self.prompts.items()}
        write_json_atomic(self.out / "split.json", split.summary() | {"used_this_round": used,
                                                                       "eval_split": c.eval_split})
        for name, prompts in self.prompts.items():
            write_jsonl(self.out / "prompts" / f"{name}.jsonl",
                        [{"id": p.id, "prompt": p.text, "reference": p.reference, "source": p.source,
                          "group": p.group} for p in prompts])
        sizes = {k: len(v) for k, v in (("train", split.train), ("rm_val", split.rm_val), ("test", split.test))}
        return {"split_sizes": sizes, "used": {k: len(v) for k, v in used.items()}, "overlap": self.split_overlap,
                "eval_split": c.eval_split}

    def sft(self) -> dict[str, Any]:
        from align.recipes.sft import build_sft_rows, train_from_yaml

        c = self.cfg
        rows = build_sft_rows(self.prompts["train"], max_answer_words=c.sft_max_answer_words)
        data = self.out / "sft_data"
        write_jsonl(data / "sft.jsonl", rows)
        write_manifest(data, build_manifest("sft_dataset", "sft_data", inputs=[ref("prompts:train",
                                            self.out / "prompts" / "train.jsonl")],
                                            metrics={"rows": len(rows)}, annotations={"sources": ["expert_answer"]}))
        out = train_from_yaml(c.sft_config, {"dataset_path": str(data / "sft.jsonl"),
                                             "output_dir": str(self.out / "sft"), "model_name_or_path": c.policy,
                                             "merge_into": str(self.out / "sft_model"), **c.sft_overrides})
        self.inputs.append(ref("config:sft", c.sft_config))
        self.current = str(self.out / "sft_model")
        metrics = read_manifest(out).get("metrics", {})
        return {"path": str(out), "rows": len(rows), **{k: v for k, v in metrics.items() if k == "train_loss"}}

    def generate(self) -> dict[str, Any]:
        c = self.cfg
        setting = SamplingSetting(self.current, c.temperature, c.top_p, c.max_new_tokens, c.seed,
                                  dtype=c.generation_dtype, backend=c.generation_backend)
        gen = Generator(setting, batch_size=c.generation_batch_size)
        result: dict[str, Any] = {"samples_per_prompt": c.samples_per_prompt, "temperature": c.temperature}
        sets = [("train", "feedback.sqlite"), ("rm_val", "feedback_rm_val.sqlite")]
        total = sum(len(self.prompts[s]) for s, _ in sets) * c.samples_per_prompt
        everything = [p for split, _ in sets for p in self.prompts[split]]
        with progress_bar("sampling candidates", total=total) as advance:  # one call: full batches
            drawn = iter(gen.sample([p.text for p in everything], c.samples_per_prompt, advance))
        stop_servers()  # a vLLM server would hold the GPU the training stages need
        result["backend"] = setting.backend  # the backend that ran (a fallback shows here)
        for split, store_name in sets:
            prompts = self.prompts[split]
            drawn_here = [next(drawn) for _ in prompts]
            samples, n_withheld = self._screen_answers(prompts, drawn_here)
            self._write_samples(split, prompts, samples)
            make = {"setting": setting, "score": judge_score, "min_gap": c.min_gap, "source": f"generated:{split}",
                    "seed": c.seed}
            pairs, stats = pairs_from_samples(prompts, samples, **make)
            kept = gate_pairs(pairs, mode=c.phi_mode, audit_dir=self.out, fields=self._phi_fields())
            store = SQLiteStore(self.out / store_name)
            store.add_pairs(kept)
            store.close()
            # pairs the gate cost: those the unscreened answers would have made, minus those stored
            unscreened = pairs_from_samples(prompts, drawn_here, **make)[1].made if n_withheld else len(pairs)
            flat = [s for g in drawn_here for s in g]
            result[split] = {"prompts": len(prompts), "pairs": len(kept),
                             "answers_withheld_by_phi_gate": n_withheld,
                             "pairs_lost_to_phi_gate": unscreened - len(kept),
                             "withheld_by_phi_gate": len(pairs) - len(kept), "skipped_small_gap": stats.skipped_small_gap,
                             "skipped_identical_or_empty": stats.skipped_identical + stats.skipped_empty,
                             "eos_rate": round(sum(s.finished for s in flat) / len(flat), 3)}
        return result

    def _screen_answers(self, prompts: list[Prompt], samples: list[list[Sample]]
                        ) -> tuple[list[list[Sample]], int]:
        if self.cfg.phi_mode != "withhold":
            return samples, 0  # block / redact act on the pairs (gate_pairs), as before
        return screen_answers(prompts, samples, audit_dir=self.out)

    def _phi_fields(self) -> list[str]:
        # public reference answers (NIH, K-QA) are full of eponyms ("Hodgkin", "Addison") that read as names;
        # in withhold mode every answer was already screened (_screen_answers): no second scan
        fields = ["prompt"] if self.cfg.phi_mode == "withhold" else ["prompt", "response_a", "response_b"]
        return fields + ["reference"] if self.cfg.phi_scan_references else fields

    def _write_samples(self, split: str, prompts: list[Prompt], samples: list[list[Sample]]) -> None:
        rows = [{"prompt_id": p.id, "sample": j, "text": s.text, "finished": s.finished, "n_tokens": s.n_tokens,
                 "judge_score": round(judge_score(p, s), 4)} for p, g in zip(prompts, samples, strict=True)
                for j, s in enumerate(g)]
        write_jsonl(self.out / "candidates" / f"{split}.jsonl", rows)

    def annotate(self) -> dict[str, Any]:
        result: dict[str, Any] = {"annotator": ANNOTATOR_ID}
        for store_name in ("feedback.sqlite", "feedback_rm_val.sqlite"):
            store = SQLiteStore(self.out / store_name)
            feedback = []
            for p in store.iter_pairs():
                done = p.generation.get("finished", {})
                fb = judge(p, finished=(done.get("a"), done.get("b")))
                if fb is not None:
                    feedback.append(fb)
            store.add_feedback(feedback)
            store.close()
            result[store_name] = {k: sum(f.preference == k for f in feedback) for k in ("a", "b", "tie")}
        console.print(Text.assemble("simulated clinician ", (ANNOTATOR_ID, "bold"), f" judged {result}"))
        return result

    def export(self) -> dict[str, Any]:
        c = self.cfg
        train = export_preferences(str(self.out / "feedback.sqlite"), self.out / "preferences", include_simulated=True,
                                   include_seeds=False, phi_mode=c.phi_mode_export)
        val = export_preferences(str(self.out / "feedback_rm_val.sqlite"), self.out / "preferences_rm_val",
                                 include_simulated=True, include_seeds=False, phi_mode=c.phi_mode_export)
        return {"path": str(self.out / "preferences"), "rows": train["rows"], "rm_val_rows": val["rows"]}

    def reward(self) -> dict[str, Any]:
        from reward_models.train import train_from_yaml

        overrides = {"dataset_path": str(self.out / "preferences"), "output_dir": str(self.out / "reward_model"),
                     "eval_dataset_path": str(self.out / "preferences_rm_val"), **self.cfg.reward_overrides}
        out = train_from_yaml(self.cfg.reward_config, overrides)
        self.inputs.append(ref("config:reward", self.cfg.reward_config))
        metrics = read_manifest(out).get("metrics", {})
        result = {"path": str(out), **{k: v for k, v in metrics.items() if "accuracy" in k or k == "train_loss"}}
        if self.cfg.reward_rated:  # experts' grades: read for evaluation only, never trained on
            from reward_models.evaluate import evaluate_rated
            from reward_models.scoring import load_scorer

            rated = evaluate_rated(load_scorer(str(out)), self.cfg.reward_rated)
            self.inputs.append(ref("rated:reward_eval", self.cfg.reward_rated))
            result |= {"rated_spearman": rated.get("spearman"), "rated_spearman_ci95": rated.get("spearman_ci95"),
                       "rated_n": rated.get("n"), "rated_path": self.cfg.reward_rated}
        return result

    def policy(self) -> dict[str, Any]:
        c = self.cfg
        common = {"output_dir": str(self.out / "policy"), "model_name_or_path": self.current}
        if c.policy_stage == "dpo":
            from align.recipes.dpo import train_from_yaml

            out = train_from_yaml(c.dpo_config, {**common, "dataset_path": str(self.out / "preferences"),
                                                 **c.dpo_overrides})
            self.inputs.append(ref("config:dpo", c.dpo_config))
        else:
            out = self._ppo(common)
        metrics = read_manifest(out).get("metrics", {})
        keep = ("train_loss", "rewards/accuracies", "rewards/margins", "objective/kl", "objective/scores",
                "reward_mean")
        result = {"path": str(out), "stage": c.policy_stage, **{k: v for k, v in metrics.items() if k in keep}}
        guard = read_manifest(out).get("annotations", {}).get("guard")
        if guard:
            result["guard_flags"] = guard.get("flags", {})
            result["guard_stopped_early"] = guard.get("stopped_early", False)
        return result

    def _ppo(self, common: dict[str, Any]) -> Path:
        from align.recipes.ppo.ppo_config import parse_ppo_config
        from align.recipes.ppo.ppo_trainer import PPOTrainer

        c = self.cfg
        refs = {p.text: p for p in (*self.prompts["train"], *self.prompts["rm_val"])}

        def simulated_clinician(prompts: list[str], responses: list[str]) -> list[float]:
            # PPO sees text only: a response counts as unfinished when it reads unfinished
            return [clinician_score(r, refs[p].reference or "", question=p).score for p, r in
                    zip(prompts, responses, strict=True)]

        overrides = {**common, "prompts_path": str(self.out / "prompts" / "train.jsonl"), "max_train_samples": None,
                     **c.ppo_overrides}
        # the simulated clinician as reward: no reward model is an input of this policy (lineage)
        overrides["reward_model_path"] = str(self.out / "reward_model") if c.ppo_reward == "reward_model" else ""
        args = parse_ppo_config(c.ppo_config, overrides)
        self.inputs.append(ref("config:ppo", c.ppo_config))
        held_out = [p.text for p in self.prompts["rm_val"]]  # the guard's judge never sees test prompts
        trainer = PPOTrainer(args, config_path=c.ppo_config,
                             reward_fn=simulated_clinician if c.ppo_reward == "simulated" else None,
                             judge_fn=simulated_clinician, judge_prompts=held_out)
        return trainer.train()

    def evaluate(self) -> dict[str, Any]:
        from align.evaluation.winrate import judged_win_rate
        from reward_models.scoring import RewardScorer

        c = self.cfg
        prompts = self.prompts["eval"]
        texts = [p.text for p in prompts]
        base = SamplingSetting(c.policy, c.eval_temperature, c.top_p, c.max_new_tokens, c.seed + 1000,
                               dtype=c.generation_dtype, backend=c.generation_backend)
        cand = SamplingSetting(self.current, c.eval_temperature, c.top_p, c.max_new_tokens, c.seed + 1000,
                               adapter=str(self.out / "policy"), dtype=c.generation_dtype,
                               backend=c.generation_backend)
        from align.evaluation.base_samples import cached_samples

        with progress_bar("held-out answers: policy and base", total=2 * len(texts) * c.eval_samples) as advance:
            policy_samples = Generator(cand, batch_size=c.generation_batch_size).sample(texts, c.eval_samples, advance)
            # the base's answers (and so the A/A control) are the same every round: sampled once, kept by weights
            base_samples, base_cached = cached_samples(
                base, texts, c.eval_samples, on_hit=advance,
                sample=lambda: Generator(base, batch_size=c.generation_batch_size).sample(texts, c.eval_samples,
                                                                                          advance))
        stop_servers()
        scorer = RewardScorer(str(self.out / "reward_model"))
        result = judged_win_rate(prompts, policy_samples, base_samples, judge_score, judge_name=JUDGE_NAME,
                                 max_new_tokens=c.max_new_tokens, tie_eps=c.tie_eps,
                                 train_prompt_overlap=self.split_overlap, seed=c.seed, proxy=scorer.score,
                                 proxy_name=f"reward model {self.out / 'reward_model'}")
        result |= {"policy": cand.label, "base": base.label, "eval_split": c.eval_split,
                   "sampling": {"temperature": c.eval_temperature, "top_p": c.top_p,
                                "max_new_tokens": c.max_new_tokens, "backend": cand.backend,
                                "base_answers_cached": base_cached}}
        eval_dir = self.out / "evaluation"
        eval_dir.mkdir(exist_ok=True)
        write_json_atomic(eval_dir / "winrate.json", result)
        write_jsonl(eval_dir / "answers.jsonl", _answers(prompts, policy_samples, base_samples))
        evaluation: dict[str, Any] = {"win_rate": result}
        if c.pubmedqa_limit != 0:
            evaluation["pubmedqa"] = self._pubmedqa(eval_dir)
        verdict = promotion_verdict(evaluation, min_win_rate=c.min_win_rate)
        evaluation["promotion"] = verdict
        from align.evaluation.record import EvaluationRecord  # the one record: promote, card read it

        write_json_atomic(eval_dir / "evaluation.json", EvaluationRecord.from_blocks(**evaluation).to_dict())
        write_manifest(eval_dir, build_manifest(
            "evaluation", "evaluation", inputs=[ref("policy", self.out / "policy"),
                                                ref("reward_model", self.out / "reward_model"),
                                                ref("prompts:eval", self.out / "prompts" / "eval.jsonl")],
            metrics=_flat_eval(evaluation)))
        return _flat_eval(evaluation)

    def _pubmedqa(self, eval_dir: Path) -> dict[str, Any]:
        from align.evaluation.pubmedqa_paired import run_alignment_tax

        c = self.cfg
        dtype = None if c.pubmedqa_dtype == "auto" else c.pubmedqa_dtype
        tax = run_alignment_tax(c.policy, policy_spec=self.current, adapter=str(self.out / "policy"),
                                limit=c.pubmedqa_limit, margin=c.pubmedqa_margin,
                                with_abstract=c.pubmedqa_with_abstract, dtype=dtype, gate=c.pubmedqa_gate)
        write_json_atomic(eval_dir / "pubmedqa.json", tax)
        return tax["paired"]

    # -- the whole round -----------------------------------------------------------------------
    def run(self) -> Path:
        from align.recipes.recipe_utils import set_threads

        set_threads(self.cfg.num_threads)
        _prepare_dir(self.out)
        if self.config_path:
            self.inputs.append(ref("config:round", self.config_path))
        t0 = time.perf_counter()
        self._stage("1 split prompts (train / rm_val / test)", self.split)
        if self.cfg.sft:
            self._stage("2 SFT on experts' answers", self.sft)
        self._stage("3 on-policy candidates", self.generate)
        self._stage("4 feedback (simulated clinician)", self.annotate)
        self._stage("5 export preference datasets", self.export)
        self._stage("6 reward model (proxy)", self.reward)
        self._stage(f"7 policy ({self.cfg.policy_stage})", self.policy)
        self._stage("8 evaluation on held-out prompts", self.evaluate)
        return self.write_manifest(time.perf_counter() - t0)

    def write_manifest(self, seconds: float) -> Path:
        names = ("split.json", "prompts", "sft_data", "sft", "sft_model", "candidates", "feedback.sqlite",
                 "feedback_rm_val.sqlite", "preferences", "preferences_rm_val", "reward_model", "policy", "evaluation")
        outputs = [ref(name, self.out / name) for name in names if (self.out / name).exists()]
        store = SQLiteStore(self.out / "feedback.sqlite")
        by_annotator: dict[str, int] = {}
        for fb in store.iter_feedback():
            by_annotator[fb.annotator_id] = by_annotator.get(fb.annotator_id, 0) + 1
        store.close()
        agreement = json.loads((self.out / "preferences" / "agreement.json").read_text())
        metrics = {name: {k: v for k, v in s.items() if k not in ("path",)} for name, s in self.stages.items()}
        manifest = build_manifest("round", self.cfg.name, inputs=self.inputs, outputs=outputs,
                                  config=asdict(self.cfg), metrics=metrics | {"total_seconds": round(seconds, 1)},
                                  annotations={"feedback_by_annotator": by_annotator, "agreement": agreement,
                                               "split": {"overlap": self.split_overlap, "file": "split.json"},
                                               "simulated": any(a.startswith("simulated:") for a in by_annotator)})
        return write_manifest(self.out / "manifest.json", manifest)


def _answers(prompts, policy, base) -> list[dict[str, Any]]:
    return [{"prompt_id": p.id, "side": side, "sample": j, "text": s.text, "finished": s.finished,
             "n_tokens": s.n_tokens, "judge_score": round(judge_score(p, s), 4)}
            for p, pol, b in zip(prompts, policy, base, strict=True)
            for side, group in (("policy", pol), ("base", b)) for j, s in enumerate(group)]


def promotion_verdict(evaluation: dict[str, Any], *, min_win_rate: float) -> dict[str, Any]:
    """Promote only if the win-rate's CI lower bound clears the threshold and PubMedQA is non-inferior."""
    wr = evaluation["win_rate"]
    reasons, passed = [], []
    lo = wr["ci95"][0]
    (passed if lo > min_win_rate else reasons).append(
        f"win-rate {wr['win_rate']:.3f} (95% CI {lo:.3f}-{wr['ci95'][1]:.3f}, n={wr['n_prompts']} prompts): "
        f"CI lower bound {'above' if lo > min_win_rate else 'not above'} {min_win_rate:.2f}")
    ctl = wr["control"]
    if not ctl["ci95"][0] <= 0.5 <= ctl["ci95"][1]:
        reasons.append(f"A/A control CI {ctl['ci95']} excludes 0.5: the comparison itself is biased")
    pq = evaluation.get("pubmedqa")
    if pq is None:
        reasons.append("PubMedQA alignment tax not measured")
    else:
        msg = (f"PubMedQA {pq['accuracy_before']:.3f} -> {pq['accuracy_after']:.3f} on {pq['n']} items, paired "
               f"diff lower bound {pq['lower_bound_one_sided']:+.3f} vs margin -{pq['margin']:.2f} "
               f"(McNemar p={pq['mcnemar_p']:.3f}{_other_reading(pq)})")
        (passed if pq["non_inferior"] else reasons).append(msg + (": non-inferior" if pq["non_inferior"]
                                                                    else ": not shown non-inferior"))
    return {"promoted": not reasons, "reasons_against": reasons, "reasons_for": passed,
            "min_win_rate": min_win_rate}


def _other_reading(pq: dict[str, Any]) -> str:
    """The reading of the PubMedQA answers that did not gate, printed beside the one that did."""
    gate = pq.get("gate")
    if gate == "prior_aligned" and "raw" in pq:
        raw, shift = pq["raw"], pq.get("prior_aligned", {}).get("prior_shift_nats", {})
        return (f"; prior-aligned: the policy's yes->no log-odds moved {shift.get('no', 0):+.3f} nats, raw "
                f"{raw['accuracy_after']:.3f}, lower bound {raw['lower_bound_one_sided']:+.3f}, "
                f"{'non-inferior' if raw['non_inferior'] else 'not non-inferior'}")
    return ""


def _flat_eval(evaluation: dict[str, Any]) -> dict[str, Any]:
    wr = evaluation["win_rate"]
    flat = {"judge": wr["judge"].split(" ")[0], "win_rate": wr["win_rate"], "win_rate_ci95": wr["ci95"],
            "p_value": wr["p_value"], "n_prompts": wr["n_prompts"], "n_comparisons": wr["n_comparisons"],
            "ties": wr["ties"], "control_win_rate": wr["control"]["win_rate"], "control_ci95": wr["control"]["ci95"],
            "train_prompt_overlap": wr["train_prompt_overlap"],
            "mean_score_policy": wr["mean_score"]["policy"], "mean_score_base": wr["mean_score"]["base"],
            "base_best_of_k": wr["mean_score"]["base_best_of_k"],
            "eos_rate_policy": wr["lengths"]["policy"]["eos_rate"], "eos_rate_base": wr["lengths"]["base"]["eos_rate"],
            "mean_words_policy": wr["lengths"]["policy"]["mean_words"],
            "mean_words_base": wr["lengths"]["base"]["mean_words"]}
    if "proxy" in wr:
        flat["proxy_win_rate"] = wr["proxy"]["win_rate"]
        flat["proxy_agreement_with_judge"] = wr["proxy"]["agreement_with_judge"]
    if "pubmedqa" in evaluation:
        pq = evaluation["pubmedqa"]
        flat |= {"pubmedqa_accuracy_before": pq["accuracy_before"], "pubmedqa_accuracy_after": pq["accuracy_after"],
                 "pubmedqa_n": pq["n"], "pubmedqa_non_inferior": pq["non_inferior"],
                 **({"pubmedqa_gate": pq["gate"]} if "gate" in pq else {}),
                 **({"pubmedqa_raw_accuracy_after": pq["raw"]["accuracy_after"],
                     "pubmedqa_raw_non_inferior": pq["raw"]["non_inferior"]} if "raw" in pq else {}),
                 "pubmedqa_mcnemar_p": pq["mcnemar_p"]}
    flat["promoted"] = evaluation["promotion"]["promoted"]
    return flat


def summary_table(manifest_path: Path) -> Table:
    m = json.loads(Path(manifest_path).read_text())
    table = Table(title=f"clinalign round '{m['name']}' — {manifest_path}", show_lines=True)
    table.add_column("stage", style="bold")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    for name, stage in m["metrics"].items():
        if not isinstance(stage, dict):
            continue
        shown = {k: v for k, v in stage.items() if k != "seconds"}
        text = "\n".join(f"{k} = {_fmt(v)}" for k, v in shown.items())
        table.add_row(name, text, str(stage.get("seconds", "")))
    for out in m["outputs"]:
        table.add_row(f"→ {out['role']}", out["path"], "")
    simulated = [a for a in m["annotations"].get("feedback_by_annotator", {}) if a.startswith("simulated:")]
    table.caption = (f"feedback and judge here are SIMULATED ({', '.join(simulated)}), not clinicians'"
                     if simulated else None)
    return table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)
