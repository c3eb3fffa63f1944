"""PHI gate: build time, recall and precision on the synthetic notes, and what it withholds of generated text.

Run: .venv/bin/python benchmarks/bench_phi.py [--data data/phi_synthetic] [--threshold 0.4] [--misses]
     [--public] [--generated] [--builds 3] [--long]

- build: seconds from a fresh interpreter to an analyzer ready to scan (imports, spaCy model, recognizers,
  vocabulary), median of --builds fresh processes; the 1-minute load average is printed beside it
  (others' jobs on this 2-core machine slow everything down: figures under load are indicative only).
- synthetic: a gold identifier counts as found when a detected span overlaps it, and as covered when
  detected spans cover every character of it (what redaction needs: a partial cover leaks the rest).
- --generated: data/phi_generated/candidates.jsonl (SmolLM2-135M answers to MedQuAD questions from the
  demo rounds) as the round pairs them (best and worst sample of each prompt by the simulated judge):
  the fraction of pairs the gate would withhold (fields prompt, response_a, response_b), and of answers.
- --public: the shipped MedQuAD + K-QA questions and answers (public text, no patient PHI).
- --long: a 1.2-million-character text with identifiers at a chunk boundary and near the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from annotation.phi import analyzer, scan_text  # noqa: E402

BUILD_SNIPPET = ("import time; t = time.perf_counter(); from annotation.phi import analyzer; analyzer(); "
                 "print(time.perf_counter() - t)")


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def covered(gold: dict, spans) -> bool:
    chars = set()
    for s in spans:
        chars.update(range(max(s.start, gold["start"]), min(s.end, gold["end"])))
    return len(chars) == gold["end"] - gold["start"]


def load_avg() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unknown"


def fresh_builds(n: int) -> list[float]:
    """Build the analyzer in n fresh interpreters (what every CLI process pays)."""
    out = []
    for _ in range(n):
        proc = subprocess.run([sys.executable, "-c", BUILD_SNIPPET], cwd=ROOT, capture_output=True, text=True,
                              check=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
        out.append(float(proc.stdout.strip().splitlines()[-1]))
    return out


def synthetic(args) -> None:
    notes, clean = load(Path(args.data) / "notes.jsonl"), load(Path(args.data) / "clean.jsonl")
    found, cover, gold_n, tp_pred, pred_n = Counter(), Counter(), Counter(), 0, 0
    t0 = time.perf_counter()
    for note in notes:
        spans = scan_text(note["text"], threshold=args.threshold)
        pred_n += len(spans)
        for g in note["spans"]:
            gold_n[g["type"]] += 1
            hit = [s for s in spans if overlaps((s.start, s.end), (g["start"], g["end"]))]
            found[g["type"]] += bool(hit)
            cover[g["type"]] += covered(g, hit)
            if args.misses and not covered(g, hit):
                print(f"  MISS {note['id']} {g['type']}: {note['text'][g['start']:g['end']]!r}")
        for s in spans:
            ok = any(overlaps((s.start, s.end), (g["start"], g["end"])) for g in note["spans"])
            tp_pred += ok
            if args.misses and not ok:
                print(f"  SPURIOUS {note['id']} {s.entity_type}: {note['text'][s.start:s.end]!r}")
    note_s = time.perf_counter() - t0
    fp_spans, fp_notes = 0, 0
    t0 = time.perf_counter()
    for note in clean:
        spans = scan_text(note["text"], threshold=args.threshold)
        fp_spans += len(spans)
        fp_notes += bool(spans)
        if args.misses:
            for s in spans:
                print(f"  CLEAN-FP {note['id']} {s.entity_type}: {note['text'][s.start:s.end]!r}")
    clean_s = time.perf_counter() - t0
    total = sum(gold_n.values())
    print(f"synthetic notes ({args.data}, threshold {args.threshold}; written for clinalign)")
    print(f"  recall (overlap):  {sum(found.values())}/{total} = {sum(found.values()) / total:.3f}")
    print(f"  recall (covered):  {sum(cover.values())}/{total} = {sum(cover.values()) / total:.3f}")
    print(f"  precision (span):  {tp_pred}/{pred_n} = {tp_pred / max(pred_n, 1):.3f}")
    print(f"  clean notes: {fp_spans} false-positive spans, {fp_notes}/{len(clean)} notes flagged")
    print(f"  speed: {1000 * note_s / len(notes):.1f} ms/note (PHI set), "
          f"{1000 * clean_s / len(clean):.1f} ms/note (clean set)")
    print("  per type (found / covered / gold):")
    for t in sorted(gold_n):
        print(f"    {t:<11} {found[t]:>3} / {cover[t]:>3} / {gold_n[t]:>3}")


def generated(path: Path, misses: bool) -> None:
    """Pairs as the round builds them: per prompt, the best and the worst distinct sample by the judge, gated
    as pairs (the old order) and with every answer screened before pairing (the round's withhold mode)."""
    rows = load(path)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["run"], r["prompt_id"])].append(r)
    pairs = []
    for group in groups.values():
        ranked = sorted({r["text"]: r for r in group}.values(), key=lambda r: r["judge_score"])
        if len(ranked) >= 2:
            pairs.append({"prompt": ranked[0]["prompt"], "response_a": ranked[-1]["text"],
                          "response_b": ranked[0]["text"]})
    cache: dict[str, list] = {}

    def spans(text: str) -> list:
        if text not in cache:
            cache[text] = scan_text(text)
        return cache[text]

    t0 = time.perf_counter()
    withheld, by_type, shown = 0, Counter(), []
    for p in pairs:
        found = [(f, s) for f in ("prompt", "response_a", "response_b") for s in spans(p[f])]
        withheld += bool(found)
        by_type.update(s.entity_type for _, s in found)
        shown += [f"{s.entity_type} {p[f][s.start:s.end]!r}" for f, s in found]
    answers = {r["text"] for r in rows}
    flagged_answers = sum(bool(spans(t)) for t in answers)
    # the round's order (withhold mode): screen every answer first, then pair the clean ones
    screened = 0
    for group in groups.values():
        clean = {r["text"] for r in group if not spans(r["text"])}
        screened += len(clean) >= 2 and not spans(group[0]["prompt"])
    secs = time.perf_counter() - t0
    print(f"generated text ({path}: {len(answers)} SmolLM2 answers to {len(groups)} prompt groups)")
    print(f"  pairs withheld: {withheld}/{len(pairs)} = {withheld / max(len(pairs), 1):.1%}; "
          f"answers flagged: {flagged_answers}/{len(answers)} = {flagged_answers / max(len(answers), 1):.1%}; "
          f"spans by type {dict(by_type)}; {1000 * secs / max(len(cache), 1):.1f} ms/text")
    lost = len(pairs) - screened
    print(f"  answers screened before pairing (the round): pairs lost {lost}/{len(pairs)} = "
          f"{lost / max(len(pairs), 1):.1%}")
    if misses:
        for line in shown:
            print(f"    FLAGGED {line}")


def public_text(misses: bool) -> None:
    """Public consumer-health text holds no patient PHI; what the gate flags there would block a push
    or an export (researcher names, brand names and places spaCy tags are the usual causes)."""
    texts = []
    for path, keys in (("data/medquad/medquad_prompts_500.jsonl", ("question", "reference_answer")),
                       ("data/kqa/kqa_physician_answers_201.jsonl", ("question", "physician_answer"))):
        for row in load(ROOT / path):
            texts += [(k, row[k]) for k in keys if isinstance(row.get(k), str)]
    flagged, by_type = 0, Counter()
    t0 = time.perf_counter()
    for _, text in texts:
        spans = scan_text(text)
        flagged += bool(spans)
        by_type.update(s.entity_type for s in spans)
        if misses:
            for s in spans:
                print(f"    PUBLIC {s.entity_type} {text[s.start:s.end]!r}")
    secs = time.perf_counter() - t0
    print(f"public MedQuAD + K-QA text: {flagged}/{len(texts)} texts flagged ({flagged / len(texts):.1%}); "
          f"spans by type {dict(by_type)}; {1000 * secs / len(texts):.1f} ms/text")


def long_text() -> None:
    from annotation.phi import CHUNK_CHARS, CHUNK_OVERLAP, _windows

    filler = "The patient tolerated metformin and lisinopril well; follow-up in two weeks. "
    text = filler * (1_200_000 // len(filler))
    boundary = next(iter(_windows(text)))[3]  # the first window's core ends here, after a space
    cut = text.rfind(" ", 0, boundary - 6) + 1  # the name starts just before it and ends after it
    text = text[:cut] + "Bartholomew Quinlan " + text[cut:] + " Call (602) 555-0177 today."
    t0 = time.perf_counter()
    spans = scan_text(text)
    secs = time.perf_counter() - t0
    print(f"long text: {len(text):,} characters in windows of {CHUNK_CHARS:,} (overlap {CHUNK_OVERLAP:,}): "
          f"{len(spans)} spans {[(s.entity_type, text[s.start:s.end]) for s in spans]} in {secs:.1f} s "
          f"({len(text) / secs / 1e3:.0f} k chars/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data/phi_synthetic"))
    ap.add_argument("--threshold", type=float, default=0.4)
    ap.add_argument("--misses", action="store_true", help="print missed, spurious and flagged spans")
    ap.add_argument("--public", action="store_true", help="also scan the shipped MedQuAD and K-QA text")
    ap.add_argument("--generated", nargs="?", const=str(ROOT / "data/phi_generated/candidates.jsonl"),
                    help="generated answers (JSONL: run, prompt_id, prompt, text, judge_score)")
    ap.add_argument("--builds", type=int, default=3, help="fresh processes for the build time (0: skip)")
    ap.add_argument("--long", action="store_true", help="scan a 1.2-million-character text")
    args = ap.parse_args()

    print(f"PHI gate benchmark; {load_avg()}")
    if args.builds:
        times = fresh_builds(args.builds)
        print(f"  build (fresh process, imports included): median {statistics.median(times):.2f} s "
              f"of {', '.join(f'{t:.2f}' for t in times)}; {load_avg()}")
    t0 = time.perf_counter()
    analyzer()
    print(f"  build in this process: {time.perf_counter() - t0:.2f} s")
    synthetic(args)
    if args.generated:
        generated(Path(args.generated), args.misses)
    if args.public:
        public_text(args.misses)
    if args.long:
        long_text()
    print(f"done; {load_avg()}")


if __name__ == "__main__":
    main()
