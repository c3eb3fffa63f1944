"""PHI gate on the shipped synthetic notes: recall, precision, false positives on clean text, ms/note.

Run: .venv/bin/python benchmarks/bench_phi.py [--data data/phi_synthetic] [--threshold 0.4] [--misses]
A gold identifier counts as found when a detected span overlaps it, and as covered when detected spans
cover every character of it (what redaction needs: a partial cover leaks the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from annotation.phi import analyzer, scan_text  # noqa: E402


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def covered(gold: dict, spans) -> bool:
    chars = set()
    for s in spans:
        chars.update(range(max(s.start, gold["start"]), min(s.end, gold["end"])))
    return len(chars) == gold["end"] - gold["start"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/phi_synthetic")
    ap.add_argument("--threshold", type=float, default=0.4)
    ap.add_argument("--misses", action="store_true", help="print missed and spurious spans (synthetic text)")
    ap.add_argument("--public", action="store_true",
                    help="also scan the shipped MedQuAD and K-QA questions/answers (public text, no patient PHI) "
                         "and report how many would be blocked")
    args = ap.parse_args()
    notes, clean = load(Path(args.data) / "notes.jsonl"), load(Path(args.data) / "clean.jsonl")

    t0 = time.perf_counter()
    analyzer()
    load_s = time.perf_counter() - t0
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
    print(f"PHI gate benchmark ({args.data}, threshold {args.threshold}; synthetic notes written for clinalign)")
    print(f"  analyzer load: {load_s:.1f} s")
    print(f"  recall (overlap):  {sum(found.values())}/{total} = {sum(found.values()) / total:.3f}")
    print(f"  recall (covered):  {sum(cover.values())}/{total} = {sum(cover.values()) / total:.3f}")
    print(f"  precision (span):  {tp_pred}/{pred_n} = {tp_pred / max(pred_n, 1):.3f}")
    print(f"  clean notes: {fp_spans} false-positive spans, {fp_notes}/{len(clean)} notes flagged")
    print(f"  speed: {1000 * note_s / len(notes):.1f} ms/note (PHI set), "
          f"{1000 * clean_s / len(clean):.1f} ms/note (clean set)")
    print("  per type (found / covered / gold):")
    for t in sorted(gold_n):
        print(f"    {t:<11} {found[t]:>3} / {cover[t]:>3} / {gold_n[t]:>3}")
    if args.public:
        public_text()


def public_text() -> None:
    """Public consumer-health text holds no patient PHI; what the gate flags there would block a push
    or an export (researcher names, brand names and places spaCy tags are the usual causes)."""
    texts = []
    for path, keys in (("data/medquad/medquad_prompts_500.jsonl", ("question", "reference_answer")),
                       ("data/kqa/kqa_physician_answers_201.jsonl", ("question", "physician_answer"))):
        for row in load(Path(path)):
            texts += [(k, row[k]) for k in keys if isinstance(row.get(k), str)]
    flagged, by_type = 0, Counter()
    t0 = time.perf_counter()
    for _, text in texts:
        spans = scan_text(text)
        flagged += bool(spans)
        by_type.update(s.entity_type for s in spans)
    secs = time.perf_counter() - t0
    print(f"  public MedQuAD + K-QA text: {flagged}/{len(texts)} texts flagged ({flagged / len(texts):.1%}); "
          f"spans by type {dict(by_type)}; {1000 * secs / len(texts):.1f} ms/text")


if __name__ == "__main__":
    main()
