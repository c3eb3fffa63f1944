"""The review queue behind the app: which pair a clinician sees next, and recording a vote once.

Kept free of Gradio so it can be reasoned about (and tested) on its own. Every pair shown gets a
server-side *ticket* holding who sees it and which side is on the left; the client only ever holds
the ticket id, so model names and the side mapping never reach the browser before the vote.
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from annotation.errors import ClinalignError
from annotation.records import CandidatePair, Feedback, utc_now
from annotation.store import FeedbackStore, store_priorities

log = logging.getLogger(__name__)

# Displayed choices (what the clinician clicks) -> stored preference, given which side was left.
DISPLAY_CHOICES = ("A", "B", "tie", "both_unsafe")
REFRESH_S = 30.0  # how often new pairs / other processes' votes are picked up from the store
PRIORITY_VOTES = 2  # a prioritised pair is served first until it has this many votes (agreement overlap)
MAX_TEXT_CHARS = 8000  # per comment / correction: bounds the store and the PHI gate at export


class ReviewError(ClinalignError):
    """A vote that cannot be accepted (unknown ticket, bad choice): shown to the clinician."""


@dataclass
class Ticket:
    id: str
    user: str
    pair: CandidatePair
    shown_left: str  # "a" or "b": which of the pair's responses is displayed as answer A
    shown_at: float = field(default_factory=time.time)
    result: VoteResult | None = None

    def displayed(self) -> tuple[str, str]:
        p = self.pair
        return (p.response_a, p.response_b) if self.shown_left == "a" else (p.response_b, p.response_a)

    def models_displayed(self) -> tuple[str, str]:
        p = self.pair
        return (p.model_a, p.model_b) if self.shown_left == "a" else (p.model_b, p.model_a)


@dataclass(frozen=True)
class VoteResult:
    pair_id: str
    preference: str  # in the pair's own a/b terms
    stored: bool  # False when this (clinician, pair) already had a vote: nothing new written
    model_shown_a: str
    model_shown_b: str

    def to_dict(self) -> dict[str, Any]:
        return {"pair_id": self.pair_id, "preference": self.preference, "stored": self.stored,
                "answer_a_model": self.model_shown_a, "answer_b_model": self.model_shown_b}


def to_pair_terms(choice: str, shown_left: str) -> str:
    """Un-swap a displayed choice ("A"/"B"/"tie"/"both_unsafe") into the pair's a/b terms."""
    if choice == "tie":
        return "tie"
    if choice == "both_unsafe":
        return "both_bad"
    if choice not in ("A", "B"):
        raise ReviewError(f"unknown choice {choice!r} (expected one of {', '.join(DISPLAY_CHOICES)})")
    other = "b" if shown_left == "a" else "a"
    return shown_left if choice == "A" else other


class ReviewQueue:
    """Thread-safe queue shared by all sessions of one app process."""

    def __init__(self, store: FeedbackStore, *, include_same_model: bool = False, seed: int | None = None,
                 max_text_chars: int = MAX_TEXT_CHARS, priority_votes: int = PRIORITY_VOTES):
        self.store = store
        self.priority_votes = priority_votes
        self.max_text_chars = max_text_chars
        self.include_same_model = include_same_model
        self._rng = secrets.SystemRandom() if seed is None else random.Random(seed)
        self._lock = threading.Lock()
        # One write at a time from this process: SQLite serializes anyway, and it keeps backends that
        # read-modify-write a record (Argilla metadata) from losing a concurrent vote.
        self._write_lock = threading.Lock()
        self._pairs: dict[str, CandidatePair] = {}
        self._done: dict[str, set[str]] = {}  # user -> pair ids with any feedback from them
        self._votes = Counter()  # pair id -> number of feedback records (any origin)
        self._priority: dict[str, int] = {}  # pair id -> rank from `annotate select` (1 = first)
        self._inflight: set[tuple[str, str]] = set()
        self._tickets: dict[str, Ticket] = {}
        self._open: dict[str, str] = {}  # user -> ticket id currently shown to them
        self._order: dict[str, dict[str, str]] = {}  # user -> pair id -> that user's hash order (cached)
        self._loaded_at = 0.0
        self.skipped_same_model = 0
        self.refresh()

    # -- loading -------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read pairs and feedback, so pairs added or votes cast elsewhere are taken into account."""
        pairs, skipped = {}, 0
        for pair in self.store.iter_pairs():
            if pair.model_a == pair.model_b and not self.include_same_model:
                skipped += 1
                continue
            pairs[pair.id] = pair
        done: dict[str, set[str]] = {}
        votes: Counter = Counter()
        for fb in self.store.iter_feedback():
            done.setdefault(fb.annotator_id, set()).add(fb.pair_id)
            votes[fb.pair_id] += 1
        priority = store_priorities(self.store)
        with self._lock:
            self._pairs, self.skipped_same_model = pairs, skipped
            self._priority = priority
            for user, ids in self._done.items():  # keep votes this process recorded meanwhile
                done.setdefault(user, set()).update(ids)
            self._done, self._votes = done, votes
            self._loaded_at = time.monotonic()

    def _maybe_refresh(self) -> None:
        """Re-read the store in the background when due: no clinician's request waits for a
        reload of every row, and the others keep serving from the current view meanwhile."""
        with self._lock:
            due = time.monotonic() - self._loaded_at > REFRESH_S
            if due:
                self._loaded_at = time.monotonic()
        if due:
            threading.Thread(target=self._refresh_quietly, name="review-refresh", daemon=True).start()

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # a store hiccup must not kill the app; the next refresh retries
            log.warning("review queue: could not re-read the store (%s); serving the current view", exc)

    # -- what a clinician sees -----------------------------------------------------------------
    def progress(self, user: str) -> tuple[int, int]:
        """(pairs this clinician has judged, pairs in the review set)."""
        with self._lock:
            done = len(self._done.get(user, set()) & self._pairs.keys())
            return done, len(self._pairs)

    def next_ticket(self, user: str) -> Ticket | None:
        """The pair to show next (the one already open for this user, if any), or None when done."""
        self._maybe_refresh()
        with self._lock:
            open_id = self._open.get(user)
            if open_id and self._tickets[open_id].result is None:
                return self._tickets[open_id]
            done = self._done.get(user, set())
            todo = [pid for pid in self._pairs if pid not in done and (user, pid) not in self._inflight]
            if not todo:
                return None
            pid = min(todo, key=lambda p: self._serve_key(user, p))
            ticket = Ticket(secrets.token_urlsafe(16), user, self._pairs[pid], self._rng.choice("ab"))
            self._tickets[ticket.id] = ticket
            self._open[user] = ticket.id
            self._forget_old_tickets(user)
            return ticket

    def _serve_key(self, user: str, pid: str) -> tuple:
        """Sort key of the next pair (smallest first), called under the lock.

        Pairs `annotate select` prioritised come first until each has `priority_votes` votes (their
        label teaches the reward model most; the cap keeps 50 clinicians from all voting on the same
        few). Then fewest votes first spreads overlap across clinicians (needed for agreement),
        priority rank next, and the per-user hash order means two clinicians do not walk the pairs
        in the same order."""
        votes = self._votes[pid]
        rank = self._priority.get(pid)
        first = rank is not None and votes < self.priority_votes
        order = self._order.setdefault(user, {})
        return (not first, votes, rank if rank is not None else float("inf"),
                order.get(pid) or order.setdefault(pid, _user_order(user, pid)))

    def ticket(self, user: str, ticket_id: str) -> Ticket:
        with self._lock:
            ticket = self._tickets.get(ticket_id)
        if ticket is None or ticket.user != user:  # someone else's ticket reads as unknown
            raise ReviewError("this pair is no longer open for you; reload to get the next one")
        return ticket

    # -- voting --------------------------------------------------------------------------------
    def vote(self, user: str, ticket_id: str, choice: str, *, strength: int = 2, comment: str = "",
             correction: str = "", correction_side: str = "", flagged: bool = False) -> VoteResult:
        """Record one vote; a retry of the same ticket (or a second vote on the pair) stores nothing.
        Inputs come from the network: anything of the wrong type or size is a ReviewError."""
        check_vote_inputs(ticket_id, choice, strength, comment, correction, correction_side, flagged,
                          max_chars=self.max_text_chars)
        ticket = self.ticket(user, ticket_id)
        if ticket.result is not None:  # retried request: answer as before, store nothing
            return _replay(ticket.result)
        feedback = self._feedback(ticket, choice, strength, comment, correction, correction_side, flagged)
        key = (user, ticket.pair.id)
        duplicate = self._claim(key)
        stored = False
        if not duplicate:
            try:
                with self._write_lock:
                    stored = self.store.add_feedback([feedback]) == 1
            except BaseException:
                with self._lock:
                    self._inflight.discard(key)
                raise
            with self._lock:  # mark done before releasing the claim, so a waiting retry sees it
                self._done.setdefault(user, set()).add(ticket.pair.id)
                self._votes[ticket.pair.id] += 1
                self._inflight.discard(key)
        left, right = ticket.models_displayed()
        result = VoteResult(ticket.pair.id, feedback.preference, stored, left, right)
        with self._lock:
            ticket.result = result
            if self._open.get(user) == ticket.id:
                del self._open[user]
        return result

    def _claim(self, key: tuple[str, str], wait_s: float = 30.0) -> bool:
        """Claim the right to store (user, pair); True when it is already stored (a duplicate).
        A concurrent retry waits for the first attempt, so it never reports "already recorded"
        for a write that then failed."""
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                if key[1] in self._done.get(key[0], set()):
                    return True
                if key not in self._inflight:
                    self._inflight.add(key)
                    return False
            if time.monotonic() > deadline:
                raise ReviewError("the store is busy; try the vote again")
            time.sleep(0.01)

    def _feedback(self, ticket: Ticket, choice: str, strength: int, comment: str, correction: str,
                  correction_side: str, flagged: bool) -> Feedback:
        preference = to_pair_terms(choice, ticket.shown_left)
        correction = (correction or "").strip()
        correction_of = None
        if correction:
            if correction_side not in ("A", "B"):
                raise ReviewError("say which answer your correction rewrites (A or B)")
            correction_of = to_pair_terms(correction_side, ticket.shown_left)
        if not isinstance(strength, int) or not 1 <= strength <= 3:
            raise ReviewError("strength must be 1 (slight), 2 (clear) or 3 (strong)")
        pair = ticket.pair
        meta = {"shown_left": ticket.shown_left, "model_a": pair.model_a, "model_b": pair.model_b,
                "displayed_choice": choice, "shown_at": _iso(ticket.shown_at),
                "seconds_to_vote": round(time.time() - ticket.shown_at, 2), "ticket": ticket.id,
                "app": "clinalign-review"}
        try:
            return Feedback(pair_id=pair.id, annotator_id=ticket.user, preference=preference,
                            strength=strength, correction=correction or None, correction_of=correction_of,
                            rationale=(comment or "").strip() or None, origin="review",
                            flagged=bool(flagged), meta=meta, submitted_at=utc_now())
        except ValueError as exc:
            raise ReviewError(str(exc)) from None

    def _forget_old_tickets(self, user: str, keep: int = 50) -> None:
        """Bound memory: keep only the user's most recent tickets (retries come within seconds)."""
        mine = [t for t in self._tickets.values() if t.user == user]
        for old in sorted(mine, key=lambda t: t.shown_at)[:-keep]:
            self._tickets.pop(old.id, None)


def check_vote_inputs(ticket_id: object, choice: object, strength: object, comment: object,
                      correction: object, correction_side: object, flagged: object, *, max_chars: int) -> None:
    """Refuse wrong types and sizes with a short message for the clinician (never Python's text).
    Strength is a real int (not a bool, float or digit string); the flag a real bool."""
    if not isinstance(ticket_id, str) or not ticket_id:
        raise ReviewError("there is no pair open; reload to get the next one")
    if not isinstance(choice, str) or choice not in DISPLAY_CHOICES:
        raise ReviewError(f"choice must be one of {', '.join(DISPLAY_CHOICES)}")
    if type(strength) is not int or not 1 <= strength <= 3:
        raise ReviewError("strength must be 1 (slight), 2 (clear) or 3 (strong)")
    if type(flagged) is not bool:
        raise ReviewError("the safety flag must be true or false")
    if correction_side is not None and correction_side not in ("", "A", "B"):
        raise ReviewError("the corrected answer must be A or B")
    for name, text in (("comment", comment), ("correction", correction)):
        if text is not None and not isinstance(text, str):
            raise ReviewError(f"{name} must be text")
        if text and len(text) > max_chars:
            raise ReviewError(f"{name} is longer than {max_chars} characters")


def _replay(result: VoteResult) -> VoteResult:
    return VoteResult(result.pair_id, result.preference, False, result.model_shown_a, result.model_shown_b)


def _user_order(user: str, pair_id: str) -> str:
    return hashlib.sha256(f"{user}\x1f{pair_id}".encode()).hexdigest()


def _iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
