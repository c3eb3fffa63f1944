"""Login throttling (issue 12): the limit holds under parallel guesses, survives a restart, can be
cleared by an operator, tells a locked-out clinician why, and is audited without passwords."""

from __future__ import annotations

import ipaddress
import json
import random
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from annotation.review import accounts
from annotation.review.accounts import UserBook
from annotation.review.security import client_address, parse_trusted_proxies
from annotation.review.throttle import DEFAULT_ADDRESS_LIMIT, LockedOut, Throttle, address_key
from tests.conftest import REPO
from tests.review_support import PASSWORD, make_users, running_app

LIMIT = 5
LOCKED_MSG = re.compile(r"too many failed sign-ins for this account; try again after \d\d:\d\d UTC "
                        r"or ask your study lead to unlock it")
ADDRESS_MSG = re.compile(r"too many failed sign-ins from this address; try again after \d\d:\d\d UTC "
                         r"or ask your study lead to unlock it")
CLINALIGN = str(REPO / ".venv/bin/clinalign")


def fresh_book(tmp_path, **limits) -> UserBook:
    users = make_users(tmp_path / "users.json", ["dr_ada"])
    return UserBook.load(users, throttle=Throttle.beside(users, **({"limit": LIMIT} | limits)))


def race(book: UserBook, guesses: list[str], monkeypatch) -> tuple[list[str], dict[str, bool]]:
    """Fire all guesses at dr_ada at once (see `race_attempts`)."""
    evaluated, outcomes = race_attempts(book, [("dr_ada", g, None) for g in guesses], monkeypatch)
    return evaluated, {g: ok is True for (_, g, _), ok in outcomes.items()}


def race_attempts(book: UserBook, attempts: list[tuple[str, str, str | None]], monkeypatch
                  ) -> tuple[list[str], dict[tuple, bool | LockedOut]]:
    """Fire all (user, password, client) attempts at once. Evaluated attempts wait inside the
    password check until every thread has been either refused or let in, so a check-then-record
    design shows all of them. Outcome per attempt: True/False, or the LockedOut raised."""
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
            cond.wait_for(lambda: len(decided) == len(attempts), timeout=10)
        return real(password, encoded)

    monkeypatch.setattr(accounts, "verify_password", waiting_verify)
    results: dict[tuple, bool | LockedOut] = {}
    start = threading.Barrier(len(attempts))

    def attempt(item: tuple[str, str, str | None]) -> None:
        start.wait()
        try:
            results[item] = book.login(*item)
        except LockedOut as exc:
            results[item] = exc
        mark_decided()

    threads = [threading.Thread(target=attempt, args=(g,)) for g in attempts]
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


# -- per client address ---------------------------------------------------------------------------
def scope(peer: str, *forwarded: str) -> dict:
    return {"type": "http", "client": (peer, 5000), "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


def test_client_address_believes_forwarded_for_only_from_trusted_proxies():
    nginx = parse_trusted_proxies(["127.0.0.1"])
    chain = parse_trusted_proxies(["127.0.0.1, 10.0.0.0/8", "::1"])
    assert client_address(scope("127.0.0.1", "203.0.113.9")) == "127.0.0.1"  # no trusted proxy: the peer
    assert client_address(scope("198.51.100.7", "203.0.113.9"), nginx) == "198.51.100.7"  # peer not a proxy
    assert client_address(scope("127.0.0.1", "203.0.113.9"), nginx) == "203.0.113.9"
    # what the client wrote itself sits left of what the proxy appended: ignored
    assert client_address(scope("127.0.0.1", "1.1.1.1, 203.0.113.9"), nginx) == "203.0.113.9"
    assert client_address(scope("127.0.0.1", "1.1.1.1", "203.0.113.9"), nginx) == "203.0.113.9"  # two headers
    assert client_address(scope("127.0.0.1", "1.1.1.1, 203.0.113.9, 10.2.3.4"), chain) == "203.0.113.9"
    assert client_address(scope("127.0.0.1", "1.1.1.1, 203.0.113.9, 10.2.3.4"), nginx) == "10.2.3.4"
    assert client_address(scope("127.0.0.1", "10.9.9.9, 10.2.3.4"), chain) == "10.9.9.9"  # all trusted
    assert client_address(scope("127.0.0.1", "unknown"), nginx) == "127.0.0.1"  # garbage: stop at the proxy
    assert client_address(scope("127.0.0.1", "[2001:db8::7]:443"), nginx) == "2001:db8::7"
    assert client_address(scope("::1", "203.0.113.9:8080"), chain) == "203.0.113.9"
    assert client_address({"type": "http", "headers": []}) is None
    with pytest.raises(ValueError, match="'\\*'"):
        parse_trusted_proxies(["*"])
    assert address_key("2001:db8::7") == address_key("2001:db8::1:2:3") == "2001:db8::/64"
    assert address_key("::ffff:203.0.113.9") == "203.0.113.9" and address_key("203.0.113.9") == "203.0.113.9"


def test_parallel_guesses_from_one_address_across_accounts_stop_at_the_address_limit(tmp_path, monkeypatch):
    names = [f"dr_{i:02d}" for i in range(8)]
    users = make_users(tmp_path / "users.json", names)
    book = UserBook.load(users)  # default limits: 5 per account, 20 per address
    # 4 wrong guesses per account (under the account limit), 32 in all, from one address
    attempts = [(n, f"wrong guess {k}", "203.0.113.9") for n in names for k in range(4)]
    random.Random(0).shuffle(attempts)
    evaluated, outcomes = race_attempts(book, attempts, monkeypatch)
    assert len(outcomes) == 32
    assert len(evaluated) == DEFAULT_ADDRESS_LIMIT  # no more than the limit reached the password hash
    refused = [o for o in outcomes.values() if isinstance(o, LockedOut)]
    assert len(refused) == 32 - DEFAULT_ADDRESS_LIMIT and {o.scope for o in refused} == {"addr"}
    assert not any(o is True for o in outcomes.values())
    monkeypatch.undo()
    with pytest.raises(LockedOut) as exc:  # the right password, from the locked address
        book.login("dr_00", PASSWORD, "203.0.113.9")
    assert exc.value.scope == "addr" and ADDRESS_MSG.fullmatch(exc.value.message)
    assert not any(book.locked(n) for n in names)  # no account got locked
    assert book.login("dr_00", PASSWORD, "198.51.100.4")  # another address is unaffected
    lines = [json.loads(x) for x in (tmp_path / "users.json.audit.jsonl").read_text().splitlines()]
    assert any(x["outcome"] == "lockout" and x["scope"] == "addr" and x["client"] == "203.0.113.9" for x in lines)


def login_as(client: httpx.Client, user: str, password: str, forwarded: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return client.post("/login", data={"username": user, "password": password}, headers=headers)


def test_address_limit_over_http_behind_a_trusted_proxy_survives_restart_and_unlock(tmp_path, monkeypatch):
    names = [f"dr_{i:02d}" for i in range(10)]
    hashed: list[str] = []
    real = accounts.verify_password

    def counting_verify(password: str, encoded: str) -> bool:
        hashed.append(password)
        time.sleep(0.05)  # keep attempts in flight together
        return real(password, encoded)

    monkeypatch.setattr(accounts, "verify_password", counting_verify)
    with running_app(tmp_path, n_pairs=1, users=names, trusted_proxies=["127.0.0.1"]) as app, \
            httpx.Client(base_url=app.url, timeout=60) as client:
        # 30 wrong guesses at once, 3 per account, all from 203.0.113.9 as the proxy reports it
        attempts = [(n, f"wrong guess {k}") for n in names for k in range(3)]
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda a: login_as(client, *a, "203.0.113.9").status_code, attempts))
        assert sorted(codes) == [400] * DEFAULT_ADDRESS_LIMIT + [429] * (30 - DEFAULT_ADDRESS_LIMIT)
        assert len(hashed) == DEFAULT_ADDRESS_LIMIT
        r = login_as(client, "dr_00", PASSWORD, "203.0.113.9")
        assert r.status_code == 429 and ADDRESS_MSG.fullmatch(r.json()["detail"])
        # a client that writes its own X-Forwarded-For: the proxy appends the real address, which counts
        assert login_as(client, "dr_00", PASSWORD, "198.51.100.4, 203.0.113.9").status_code == 429
        assert login_as(client, "dr_00", PASSWORD, "198.51.100.4").status_code == 200  # other addresses fine
    monkeypatch.undo()
    state = json.loads((tmp_path / "users.json.lockouts.json").read_text())
    assert state["entries"]["addr:203.0.113.9"]["locked_until"] > time.time()
    with running_app(tmp_path, n_pairs=1, users=names, trusted_proxies=["127.0.0.1"]) as app, \
            httpx.Client(base_url=app.url, timeout=60) as client:  # a restart
        assert login_as(client, "dr_01", PASSWORD, "203.0.113.9").status_code == 429
        assert login_as(client, "dr_01", PASSWORD, "198.51.100.4").status_code == 200
        done = subprocess.run([CLINALIGN, "review", "unlock", "--address", "203.0.113.9", "--users",
                               str(tmp_path / "users.json")], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        out = done.stdout + done.stderr
        assert "unlocked address 203.0.113.9" in out and "locked until" in out
        assert f"{DEFAULT_ADDRESS_LIMIT} recent" in out
        assert login_as(client, "dr_01", PASSWORD, "203.0.113.9").status_code == 200  # the running app sees it
    lines = [json.loads(x) for x in (tmp_path / "users.json.audit.jsonl").read_text().splitlines()]
    assert {"203.0.113.9", "198.51.100.4"} <= {x["client"] for x in lines}
    assert any(x["outcome"] == "unlock" and x["client"] == "203.0.113.9" for x in lines)
    assert all(ipaddress.ip_address(x["client"]) for x in lines)


def test_forwarded_for_is_ignored_without_a_trusted_proxy(tmp_path, caplog):
    names = [f"dr_{i:02d}" for i in range(5)]
    with running_app(tmp_path, n_pairs=1, users=names) as app, httpx.Client(base_url=app.url, timeout=60) as client:
        # each guess claims another address; all count against the real peer, 127.0.0.1
        for k in range(DEFAULT_ADDRESS_LIMIT):
            r = login_as(client, names[k % 5], "wrong guess", f"198.51.100.{k + 1}")
            assert r.status_code == 400
        r = login_as(client, "dr_00", PASSWORD, "203.0.113.77")
        assert r.status_code == 429 and ADDRESS_MSG.fullmatch(r.json()["detail"])
    lines = [json.loads(x) for x in (tmp_path / "users.json.audit.jsonl").read_text().splitlines()]
    assert {x["client"] for x in lines} == {"127.0.0.1"}
    warned = [r for r in caplog.records if "X-Forwarded-For from 127.0.0.1 ignored" in r.getMessage()]
    assert len(warned) == 1  # the operator is told once that a proxy in front is not declared


def test_cli_trusted_proxies_from_option_or_env(tmp_path, monkeypatch):
    from align.cli import main
    from tests.review_support import review_cli_launches

    seen, args = review_cli_launches(tmp_path, monkeypatch)
    assert main(args) == 0 and seen["trusted_proxies"] == []
    assert main([*args, "--trusted-proxy", "127.0.0.1", "--trusted-proxy", "10.0.0.0/8"]) == 0
    assert seen["trusted_proxies"] == ["127.0.0.1", "10.0.0.0/8"]
    monkeypatch.setenv("CLINALIGN_TRUSTED_PROXIES", "127.0.0.1, ::1")
    assert main(args) == 0 and seen["trusted_proxies"] == ["127.0.0.1", "::1"]
    monkeypatch.setenv("CLINALIGN_TRUSTED_PROXIES", "*")
    assert main(args) == 2
