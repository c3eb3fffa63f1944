"""Would a cross-question normalisation of the bi-encoder's cosine rank answers better? Training data only.

LiveQA's expert grades are ranked over all 565 answers at once, so a reward that is offset per question
(a long consumer message has a lower cosine with every answer) or per answer (a generic "hub" answer
is close to every question) loses global agreement. Retrieval corrects both with CSLS (Conneau et al.
2018): cos(q, a) - r(q) - r(a), r = mean cosine to the k nearest items of the other side in a bank.
This study grades answers of held-out questions from data/ (own expert answer 3, other answers on the
same topic 2, the two nearest other-topic answers and a random one 1; the own answer for every other
question only, so that some questions have no good answer) and compares the untrained MiniLM cosine
with -r(q), -r(a) and both, banks = the training questions/answers. Two splits: by topic (the bank
knows nothing of a held-out topic) and by question (it knows the topic's other questions, as a bank
of MedQuAD answers would for LiveQA), each also with consumer-style questions (a greeting, a sentence
of background from another answer, the question, thanks). Answers overlapping the evaluation sets
(data/reward_eval_overlap.json) are left out. Nothing here reads shared/eval.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/reward_hubness_study.py   # ~2 min on one thread
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from clinalign_base.stats import percentile_interval
from reward_models.backbones import embed_texts
from reward_models.evaluate import zero_shot_scorer
from reward_models.medical_pairs import QA, answer_sha, load_corpus, load_exclusions
from reward_models.metrics import spearman

ROOT = Path(__file__).resolve().parent.parent
KS = (5, 10)
N_BOOT = 1000


def graded_items(corpus: list[QA], held: list[int], sim: np.ndarray, seed: int) -> list[tuple[int, int, int]]:
    """(question, answer, grade) for the held-out questions; answers come from held-out questions too."""
    rng = random.Random(seed)
    out = []
    for n, i in enumerate(held):
        same = [j for j in held if j != i and corpus[j].topic == corpus[i].topic][:3]
        other = [j for j in held if corpus[j].topic != corpus[i].topic]
        near = sorted(other, key=lambda j: -sim[i, j])[:2]
        out += [(i, j, 2) for j in same] + [(i, j, 1) for j in near] + [(i, rng.choice(other), 1)]
        if n % 2 == 0:
            out.append((i, i, 3))
    return out


def consumer_style(corpus: list[QA], bank: list[int], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Hello. {corpus[rng.choice(bank)].answer.split('. ')[0]}. My question: {qa.question} Thank you."
            if n % 2 == 0 else qa.question for n, qa in enumerate(corpus)]


def knn_mean(x: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    return np.sort(x @ bank.T, axis=1)[:, -k:].mean(1)


def paired_delta(base: np.ndarray, other: np.ndarray, grades: np.ndarray, qs: np.ndarray,
                 seed: int) -> tuple[float, float]:
    """95% bootstrap CI over questions of Spearman(other) - Spearman(base)."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(qs)
    rows = {q: np.flatnonzero(qs == q) for q in uniq}
    deltas = []
    for _ in range(N_BOOT):
        idx = np.concatenate([rows[q] for q in rng.choice(uniq, len(uniq))])
        deltas.append(spearman(other[idx], grades[idx]) - spearman(base[idx], grades[idx]))
    return percentile_interval(np.asarray(deltas), 0.05)


def main() -> None:
    excluded = load_exclusions([str(ROOT / "data" / "reward_eval_overlap.json")])
    corpus = [qa for qa in load_corpus(ROOT / "data")
              if qa.source in ("medquad", "kqa") and answer_sha(qa.answer) not in excluded]
    scorer = zero_shot_scorer("builtin:minilm-l6")
    answers = embed_texts(scorer.model, scorer.tokenizer, [qa.answer for qa in corpus])
    topics = sorted({qa.topic for qa in corpus})
    random.Random(0).shuffle(topics)
    ids = list(range(len(corpus)))
    random.Random(0).shuffle(ids)
    held_topics = set(topics[:len(topics) // 5])
    splits = {"by topic": {i for i, qa in enumerate(corpus) if qa.topic in held_topics},
              "by question": set(ids[:len(ids) // 5])}
    print(f"{len(corpus)} questions; Spearman over all graded answers (95% CI of the change, paired over questions)")
    for split, held_set in splits.items():
        held = sorted(held_set)
        bank = [i for i in range(len(corpus)) if i not in held_set]
        for style in ("plain", "consumer-style"):
            texts = [qa.question for qa in corpus] if style == "plain" else consumer_style(corpus, bank, 2)
            questions = embed_texts(scorer.model, scorer.tokenizer, texts)
            items = graded_items(corpus, held, questions @ answers.T, seed=1)
            qi, ai, grades = (np.array(c) for c in zip(*items, strict=True))
            cos = (questions[qi] * answers[ai]).sum(1)
            print(f"\n{split}, {style} questions: {len(held)} questions, {len(items)} graded answers; "
                  f"cosine {spearman(cos, grades):.3f}")
            for k in KS:
                r_q = knn_mean(questions, answers[bank], k)[qi]
                r_a = knn_mean(answers, questions[bank], k)[ai]
                for name, score in (("- r(q)", cos - r_q), ("- r(a)", cos - r_a), ("CSLS", 2 * cos - r_q - r_a)):
                    lo, hi = paired_delta(cos, score, grades, qi, seed=k)
                    print(f"  k={k:<3} cosine {name:<7} {spearman(score, grades):.3f}  change {lo:+.3f} to {hi:+.3f}")


if __name__ == "__main__":
    main()
