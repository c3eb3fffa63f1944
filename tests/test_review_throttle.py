"""Login throttling (issue 12): the limit holds under parallel guesses, survives a restart, can be
cleared by an operator, tells a locked-out clinician why, and is audited without passwords."""

from __future__ import annotations

import json
import random
import re
import subprocess
import threading

import httpx
import pytest

from annotation.review import accounts
from annotation.review.accounts import UserBook
from annotation.review.throttle import LockedOut, Throttle
from tests.conftest import REPO
from tests.review_support import PASSWORD, make_users, running_app

LIMIT = 5
LOCKED_MSG = re.compile(r"too many failed sign-ins for this account; try again after \d\d:\d\d UTC "
                        r"or ask your study lead to unlock it")


def fresh_book(tmp_path, **limits) -> UserBook:
    users = make_users(tmp_path / "users.json", ["dr_ada"])
    return UserBook.load(users, throttle=Throttle.beside(users, **({"limit": LIMIT} | limits)))


def race(book: UserBook, guesses: list[str], monkeypatch) -> tuple[list[str], dict[str, bool]]:
    """Fire all guesses at once. Evaluated attempts wait inside the password check until every
    thread has been either refused or let in, so a check-then-record design shows all of them."""
    evaluated: list[str] = []
    decided: set[int] = set()
    cond = threading.Condition()
    real = accounts.verify_password

    def mark_decided() -> None:
        with cond:
            decided.add(threading.get_ident())
            cond.notify_all()

    def waiting_verify(password: str, encoded: str) -> bool:
        with cond:
            evaluated.append(password)
        mark_decided()
        with cond:
            cond.wait_for(lambda: len(decided) == len(guesses), timeout=10)
        return real(password, encoded)

    monkeypatch.setattr(accounts, "verify_password", waiting_verify)
    results: dict[str, bool] = {}
    start = threading.Barrier(len(guesses))

    def attempt(password: str) -> None:
        start.wait()
        results[password] = book.check("dr_ada", password)
        mark_decided()

    threads = [threading.Thread(target=attempt, args=(g,)) for g in guesses]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return evaluated, results


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_parallel_guesses_cannot_outrun_the_limit(tmp_path, monkeypatch, seed):
    book = fresh_book(tmp_path)
    guesses = [f"wrong guess {i:02d}" for i in range(11)] + [PASSWORD]
    random.Random(seed).shuffle(guesses)
    evaluated, results = race(book, guesses, monkeypatch)
    assert len(results) == 12
    assert len(evaluated) == LIMIT  # the other 7 were refused before any hashing
    granted = [g for g, ok in results.items() if ok]
    assert granted == ([PASSWORD] if PASSWORD in evaluated else [])
    if PASSWORD not in evaluated:  # five wrong guesses used the quota: the right one is refused too
        assert book.locked("dr_ada") and not book.check("dr_ada", PASSWORD)


def test_right_password_after_the_limit_is_refused(tmp_path, monkeypatch):
    book = fresh_book(tmp_path)
    evaluated, results = race(book, [f"wrong guess {i:02d}" for i in range(11)], monkeypatch)
    assert len(evaluated) == LIMIT and not any(results.values())
    monkeypatch.undo()
    assert book.locked("dr_ada") and not book.check("dr_ada", PASSWORD)
    with pytest.raises(LockedOut) as exc:
        book.login("dr_ada", PASSWORD)
    assert LOCKED_MSG.fullmatch(exc.value.message)


def test_lock_survives_a_restart_and_the_unlock_command_clears_it(tmp_path):
    book = fresh_book(tmp_path)
    for _ in range(LIMIT):
        assert not book.check("dr_ada", "wrong password")
    users = tmp_path / "users.json"
    state = tmp_path / "users.json.lockouts.json"
    assert (state.stat().st_mode & 0o777) == 0o600
    again = UserBook.load(users)  # a restart: new objects from the same files
    assert again.locked("dr_ada") and not again.check("dr_ada", PASSWORD)
    done = subprocess.run([str(REPO / ".venv/bin/clinalign"), "review", "unlock", "dr_ada", "--users", str(users)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr  # the project console writes to stderr
    assert "unlocked dr_ada" in out and "locked until" in out and f"{LIMIT} recent" in out
    assert again.check("dr_ada", PASSWORD)  # the running book re-reads the state file
    assert UserBook.load(users).check("dr_ada", PASSWORD)


def test_lock_expires_and_address_limit_trips_first(tmp_path):
    now = [1_000_000.0]
    users = make_users(tmp_path / "users.json", ["dr_ada"])
    book = UserBook.load(users, throttle=Throttle.beside(users, limit=LIMIT, address_limit=3,
                                                         lockout_s=600, window_s=600, clock=lambda: now[0]))
    for _ in range(3):
        assert not book.check("dr_ada", "wrong password", client="203.0.113.9")
    with pytest.raises(LockedOut, match="from this address"):
        book.login("dr_ada", PASSWORD, client="203.0.113.9")
    assert not book.locked("dr_ada") and book.check("dr_ada", PASSWORD, client="198.51.100.4")
    for _ in range(2):
        book.check("dr_ada", "wrong password", client="198.51.100.4")
    assert book.locked("dr_ada")
    now[0] += 601
    assert not book.locked("dr_ada") and book.check("dr_ada", PASSWORD, client="198.51.100.4")


def test_audit_log_has_outcomes_but_no_passwords(tmp_path):
    book = fresh_book(tmp_path)
    assert book.check("dr_ada", PASSWORD)
    for i in range(LIMIT + 1):
        book.check("dr_ada", f"wrong guess {i:02d}")
    log = tmp_path / "users.json.audit.jsonl"
    assert (log.stat().st_mode & 0o777) == 0o600
    text = log.read_text()
    assert PASSWORD not in text and "wrong guess" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert {"time", "user", "outcome", "client"} <= set(lines[0])
    assert [x["outcome"] for x in lines].count("failure") == LIMIT
    assert {"success", "lockout", "refused"} <= {x["outcome"] for x in lines}
    assert all(x["user"] == "dr_ada" for x in lines)


def test_locked_out_login_over_http_says_why(tmp_path):
    with running_app(tmp_path, n_pairs=1) as app, httpx.Client(base_url=app.url, timeout=30) as client:
        for _ in range(LIMIT):
            assert client.post("/login", data={"username": "dr_ada", "password": "wrong pw"}).status_code == 400
        r = client.post("/login", data={"username": "dr_ada", "password": PASSWORD})
        assert r.status_code == 429 and LOCKED_MSG.fullmatch(r.json()["detail"])
        assert client.post("/login", data={"username": "dr_ben", "password": PASSWORD}).status_code == 200
