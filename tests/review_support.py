"""Shared set-up for the review-app tests: a store with pairs from several models, a users file,
the real app launched on a free port."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from annotation.records import CandidatePair
from annotation.review.accounts import UserBook, add_user
from annotation.review.app import ReviewApp, build_app
from annotation.sqlite_store import SQLiteStore

PASSWORD = "correct-horse-battery"
MODELS = ("policy-round1", "policy-round2", "reference-sft")
QUESTIONS = [
    "What is the first-line treatment for uncomplicated hypertension in adults?",
    "When should a patient with a sore throat be tested for group A streptococcus?",
    "How is iron-deficiency anaemia usually investigated?",
    "What are red-flag symptoms in a patient presenting with low back pain?",
    "How should metformin be adjusted in chronic kidney disease?",
    "What is the recommended management of a first uncomplicated urinary tract infection in women?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pairs(n: int, models: tuple[str, ...] = MODELS) -> list[CandidatePair]:
    pairs = []
    for k in range(n):
        m1, m2 = models[k % len(models)], models[(k + 1) % len(models)]
        q = QUESTIONS[k % len(QUESTIONS)] + ("" if k < len(QUESTIONS) else f" (case {k})")
        pairs.append(CandidatePair(
            prompt=q, model_a=m1, model_b=m2, source="test",
            response_a=f"[{k}] Answer drafted by the first model. Start with a thiazide-like diuretic, "
                       "an ACE inhibitor or a calcium-channel blocker, and recheck in four weeks.",
            response_b=f"[{k}] Answer drafted by the second model. Lifestyle advice alone is enough; "
                       "medication is rarely needed."))
    return pairs


def make_users(path: Path, names: list[str], admins: tuple[str, ...] = ()) -> Path:
    for name in names:
        # cheap scrypt cost for tests only (the cost is stored with each hash)
        add_user(path, name, PASSWORD, role="admin" if name in admins else "clinician", scrypt_n=2**10)
    return path


@dataclass
class Running:
    url: str
    store: SQLiteStore
    review: ReviewApp
    pairs: list[CandidatePair]


@contextlib.contextmanager
def running_app(tmp_path: Path, *, n_pairs: int = 4, users: list[str] | None = None,
                admins: tuple[str, ...] = ()) -> Iterator[Running]:
    users = users or ["dr_ada", "dr_ben"]
    store = SQLiteStore(tmp_path / "store.sqlite")
    pairs = make_pairs(n_pairs)
    store.add_pairs(pairs)
    book = UserBook.load(make_users(tmp_path / "users.json", users, admins))
    review = build_app(store, book, leaderboard_bootstrap=50)
    _, url = review.launch(port=free_port())
    try:
        yield Running(url.rstrip("/"), store, review, pairs)
    finally:
        review.close()
        store.close()
