"""Medical preference pairs built from the data the project may train on (data/ only).

A clinician's first question about an answer is whether it answers *this* question. Expert answers
exist for MedQuAD (NIH), K-QA (physicians) and PubMedQA (the abstracts' conclusions, train split
only: its test split is evaluation). From them, per question:

- `related`:   its answer vs the answer to another question on the same topic (MedQuAD focus, e.g.
               the treatment of X when the symptoms of X were asked) — the expert's "related, but
               does not answer" grade;
- `similar`:   vs the answer to the most similar question on another topic (TF-IDF over the
               questions: hard negatives that share words, not meaning);
- `mined`:     vs the other answers the backbone itself puts closest to the question (n_mined);
- `random`:    vs an answer to an unrelated question;
- `truncated`: vs its own first sentence(s) — an incomplete draft.

Every pair carries `prompt_id` and `group` (the topic), so a validation split by prompt keeps every
answer about one topic on one side. Any pair whose answer text overlaps an evaluation set's answers
is dropped (`dedupe_against`): LiveQA's judged answers are MedQuAD texts, so without this the model
would be trained on the very answers it is graded on. Evaluation files are read for that only.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotation.errors import InputError
from annotation.jsonl import read_jsonl

SHINGLE = 8  # words; long enough that common phrases ("talk to your doctor") do not match
ANSWER_FIELDS = ("answer", "llm_answer", "response", "chosen", "rejected", "reference_answer")
KINDS = ("related", "similar", "mined", "random", "truncated")


@dataclass(frozen=True)
class QA:
    """One question with its expert answer."""

    id: str
    question: str
    answer: str
    topic: str  # questions on one topic share a group (MedQuAD focus; else the question itself)
    kind: str  # MedQuAD qtype, or the source's name
    source: str


def _require(obj: dict, key: str, path: Path, line: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"field '{key}' missing or empty", path=str(path), line=line)
    return value.strip()


def source_files(data_dir: str | Path) -> dict[str, Path]:
    root = Path(data_dir)
    return {"medquad": root / "medquad" / "medquad_prompts_500.jsonl",
            "kqa": root / "kqa" / "kqa_physician_answers_201.jsonl",
            "pubmedqa": root / "pubmedqa" / "pubmedqa_pqal_1000.jsonl"}


def load_corpus(data_dir: str | Path) -> list[QA]:
    """MedQuAD, K-QA and PubMedQA (not its test split) from the shipped data folder."""
    root = Path(data_dir)
    files = source_files(root)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise InputError(f"medical pair sources not found: {', '.join(missing)}", path=str(root))
    out: list[QA] = []
    for line, obj in read_jsonl(str(files["medquad"])):
        p = files["medquad"]
        focus = _require(obj, "focus", p, line)
        out.append(QA(f"medquad:{obj.get('id', line)}", _require(obj, "question", p, line),
                      _require(obj, "reference_answer", p, line), f"medquad:{focus.lower()}",
                      str(obj.get("qtype") or "medquad"), "medquad"))
    for line, obj in read_jsonl(str(files["kqa"])):
        p, qid = files["kqa"], f"kqa:{obj.get('id', line)}"
        out.append(QA(qid, _require(obj, "question", p, line), _require(obj, "physician_answer", p, line),
                      qid, "kqa", "kqa"))
    for line, obj in read_jsonl(str(files["pubmedqa"])):
        if obj.get("split") == "test":
            continue  # the official test set: PubMedQA evaluation only
        p, qid = files["pubmedqa"], f"pubmedqa:{obj.get('id', line)}"
        out.append(QA(qid, _require(obj, "question", p, line), _require(obj, "long_answer", p, line),
                      qid, "pubmedqa", "pubmedqa"))
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def shingles(text: str, k: int = SHINGLE) -> set[int]:
    """Hashes of the k-word windows of `text` (the whole text when shorter than k)."""
    w = _words(text)
    grams = [" ".join(w[i:i + k]) for i in range(max(1, len(w) - k + 1))]
    return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "big") for g in grams}


def answer_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_exclusion_list(path: str | Path) -> bool:
    return str(path).endswith(".json")


def load_exclusions(paths: Iterable[str]) -> set[str]:
    """sha256 of our own answers that overlap evaluation answers, from shipped exclusion lists
    (`write_exclusions`): the repo carries which of its rows to leave out, never evaluation text."""
    import json

    out: set[str] = set()
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            out |= set(data["answers_sha256"])
        except FileNotFoundError:
            raise InputError("dedupe_against file not found", path=str(path)) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"not an exclusion list (answers_sha256): {exc}", path=str(path)) from None
    return out


def write_exclusions(data_dir: str | Path, eval_paths: list[str], out: str | Path, *, threshold: float = 0.3) -> dict:
    """Which answers of data_dir overlap the evaluation files' answers, as a shippable list."""
    from clinalign_base.atomic import write_json_atomic
    from clinalign_base.manifest import file_sha256

    banned = eval_shingles(eval_paths)
    dirty = sorted({answer_sha(qa.answer) for qa in load_corpus(data_dir) if overlaps(qa.answer, banned, threshold)})
    record = {"answers_sha256": dirty, "n": len(dirty), "threshold": threshold, "shingle_words": SHINGLE,
              "computed_against": [{"name": Path(p).name, "sha256": file_sha256(p)} for p in eval_paths],
              "why": "answers of data/ whose 8-word shingles overlap evaluation answers by >= threshold: "
                     "left out of reward training (the evaluation files are not in the repo)"}
    write_json_atomic(out, record)
    return record


def eval_shingles(paths: Iterable[str]) -> set[int]:
    """Every answer-like field's shingles in the evaluation files (read for deduplication only)."""
    out: set[int] = set()
    for path in paths:
        if not Path(path).is_file():
            raise InputError("dedupe_against file not found", path=str(path))
        for _, obj in read_jsonl(str(path)):
            for key in ANSWER_FIELDS:
                if isinstance(obj.get(key), str):
                    out |= shingles(obj[key])
    return out


def overlaps(text: str, banned: set[int], threshold: float) -> bool:
    """True when at least `threshold` of the text's shingles occur in an evaluation answer."""
    s = shingles(text)
    return bool(banned) and len(s & banned) >= threshold * len(s)


def _tfidf(texts: list[str]) -> np.ndarray:
    """Row-normalised TF-IDF vectors (no model: the negatives must not depend on the backbone)."""
    vocab: dict[str, int] = {}
    docs = [[vocab.setdefault(w, len(vocab)) for w in _words(t)] for t in texts]
    df = np.zeros(len(vocab))
    for d in docs:
        df[list(set(d))] += 1
    idf = np.log((1 + len(docs)) / (1 + df)) + 1
    mat = np.zeros((len(docs), len(vocab)), dtype=np.float32)
    for i, d in enumerate(docs):
        np.add.at(mat[i], d, 1.0)
    mat *= idf
    return mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-9)


def truncate(answer: str) -> str | None:
    """The first quarter of the answer's sentences (at least one); None when too short to cut."""
    sentences = re.split(r"(?<=[.!?])\s+", answer.strip())
    if len(sentences) < 3:
        return None
    return " ".join(sentences[:max(1, len(sentences) // 4)])


def _pair(qa: QA, rejected: str, kind: str) -> dict:
    return {"prompt": qa.question, "chosen": qa.answer, "rejected": rejected, "source": f"{qa.source}:{kind}",
            "prompt_id": qa.id, "group": qa.topic}


def _negatives(i: int, corpus: list[QA], sim: np.ndarray, by_topic: dict, rng: random.Random,
               n_similar: int, mined: np.ndarray | None, n_mined: int) -> list[tuple[str, str]]:
    qa = corpus[i]
    out = [(corpus[j].answer, "related") for j in by_topic[qa.topic] if j != i][:2]
    same_source = [j for j in np.argsort(-sim[i]) if corpus[j].source == qa.source and corpus[j].topic != qa.topic]
    out += [(corpus[j].answer, "similar") for j in same_source[:n_similar]]
    if mined is not None and n_mined > 0:  # the answers the backbone itself confuses with the right one
        taken = {a for a, _ in out} | {qa.answer}
        ranked = [j for j in np.argsort(-mined[i]) if corpus[j].answer not in taken]
        out += [(corpus[j].answer, "mined") for j in ranked[:n_mined]]
    j = rng.randrange(len(corpus))
    while corpus[j].topic == qa.topic:
        j = rng.randrange(len(corpus))
    out.append((corpus[j].answer, "random"))
    short = truncate(qa.answer)
    if short:
        out.append((short, "truncated"))
    return out


def build_pairs(corpus: list[QA], *, seed: int = 0, n_similar: int = 2, banned: set[int] | None = None,
                threshold: float = 0.3, embed: Callable[[list[str]], np.ndarray] | None = None,
                n_mined: int = 0, excluded: set[str] | None = None) -> tuple[list[dict], dict]:
    """(pairs, counts) for every question of `corpus`; pairs touching `banned` text are dropped.

    With `embed` (texts → unit vectors, the backbone's own), `n_mined` more negatives per question
    are the other answers nearest to the question in that space: hard negatives mined as dense
    retrievers mine them, which are what a retrieval system (and so an expert grader) sees.
    """
    if not corpus:
        raise InputError("no questions to build medical pairs from")
    rng = random.Random(seed)
    sim = _tfidf([f"{qa.question} {qa.topic.split(':', 1)[-1]}" for qa in corpus])
    sim = sim @ sim.T
    by_topic: dict[str, list[int]] = defaultdict(list)
    for i, qa in enumerate(corpus):
        by_topic[qa.topic].append(i)
    banned = banned or set()
    excluded = excluded or set()
    dirty = {qa.answer for qa in corpus if overlaps(qa.answer, banned, threshold) or answer_sha(qa.answer) in excluded}
    mined = None
    if embed is not None and n_mined > 0:
        mined = embed([qa.question for qa in corpus]) @ embed([qa.answer for qa in corpus]).T
    pairs: list[dict] = []
    counts: dict[str, int] = defaultdict(int)
    for i, qa in enumerate(corpus):
        for rejected, kind in _negatives(i, corpus, sim, by_topic, rng, n_similar, mined, n_mined):
            if qa.answer in dirty or rejected in dirty or (kind == "truncated" and overlaps(rejected, banned, threshold)):
                counts["dropped_overlapping_eval"] += 1
                continue
            pairs.append(_pair(qa, rejected, kind))
            counts[f"{qa.source}:{kind}"] += 1
    counts["n_questions"] = len(corpus)
    counts["n_questions_dropped"] = sum(qa.answer in dirty for qa in corpus)
    counts["n_pairs"] = len(pairs)
    return pairs, dict(counts)


SOURCES = ("medquad", "kqa", "pubmedqa")


def medical_pairs(data_dir: str | Path, *, dedupe_against: Iterable[str] = (), seed: int = 0,
                  n_similar: int = 2, threshold: float = 0.3,
                  sources: Iterable[str] = SOURCES, embed: Callable[[list[str]], np.ndarray] | None = None,
                  n_mined: int = 0) -> tuple[list[dict], dict]:
    """The medical recipe's training pairs from `data_dir`, deduplicated against evaluation answers."""
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"dedupe_threshold must be in (0, 1], got {threshold}")
    wanted = set(sources)
    if not wanted or wanted - set(SOURCES):
        raise InputError(f"medical pair sources must be among {', '.join(SOURCES)}, got {sorted(wanted)}")
    # first: a wrong path fails before any work. Evaluation JSONL is compared by shingles; a shipped
    # exclusion list (.json, `clinalign reward exclusions`) names our own overlapping answers.
    paths = list(dedupe_against)
    banned = eval_shingles([p for p in paths if not is_exclusion_list(p)])
    excluded = load_exclusions([p for p in paths if is_exclusion_list(p)])
    corpus = [qa for qa in load_corpus(data_dir) if qa.source in wanted]
    return build_pairs(corpus, seed=seed, n_similar=n_similar, banned=banned, threshold=threshold, embed=embed,
                       n_mined=n_mined, excluded=excluded)
