"""Review-app logins backed by a real Argilla server's users (`clinalign review --users argilla`)."""

from __future__ import annotations

import httpx
import pytest

from annotation.review.accounts import MAX_FAILURES, ArgillaAccounts
from tests import argilla_fixtures
from tests.review_support import free_port, make_pairs

pytestmark = pytest.mark.argilla
argilla_stack = argilla_fixtures.argilla_stack  # the session fixture (real server stack)

PASSWORD = "review-pass-1234"


def create_user(stack, username: str, role: str) -> None:
    r = httpx.post(f"{stack.url}/api/v1/users", headers={"X-Argilla-Api-Key": stack.api_key}, timeout=30,
                   json={"first_name": username, "username": username, "password": PASSWORD, "role": role})
    assert r.status_code in (200, 201), r.text


def test_argilla_users_log_in_to_the_review_app(argilla_stack, tmp_path):
    from annotation.review.app import build_app
    from annotation.sqlite_store import SQLiteStore

    create_user(argilla_stack, "dr-rev", "annotator")
    create_user(argilla_stack, "lead-rev", "admin")
    accounts = ArgillaAccounts(argilla_stack.url)
    assert accounts.check("dr-rev", PASSWORD) and accounts.role("dr-rev") == "clinician"
    assert accounts.check("lead-rev", PASSWORD) and accounts.role("lead-rev") == "admin"
    assert not accounts.check("dr-rev", "wrong-password-x") and not accounts.check("nobody", PASSWORD)
    for _ in range(MAX_FAILURES):
        accounts.check("lead-rev", "wrong-password-x")
    assert not accounts.check("lead-rev", PASSWORD)  # locked out here, whatever Argilla says
    assert not ArgillaAccounts("http://127.0.0.1:9").check("dr-rev", PASSWORD)  # server down: refused

    store = SQLiteStore(tmp_path / "s.sqlite")
    store.add_pairs(make_pairs(2))
    review = build_app(store, ArgillaAccounts(argilla_stack.url))
    _, url = review.launch(port=free_port())
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/login", data={"username": "dr-rev", "password": "nope-nope"}).status_code == 400
            assert client.post("/login", data={"username": "dr-rev", "password": PASSWORD}).status_code == 200
            assert client.get("/config").status_code == 200
    finally:
        review.close()
        store.close()


def test_review_votes_go_to_the_argilla_store(argilla_stack, monkeypatch):
    from annotation.review.queue import ReviewQueue
    from annotation.store import open_store

    create_user(argilla_stack, "dr-store", "annotator")
    monkeypatch.setenv("ARGILLA_API_URL", argilla_stack.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_stack.api_key)
    store = open_store("argilla:review-votes")
    try:
        store.add_pairs(make_pairs(2))
        queue = ReviewQueue(store)
        ticket = queue.next_ticket("dr-store")
        left, _ = ticket.displayed()
        assert queue.vote("dr-store", ticket.id, "A", comment="clearer dosing").stored
        assert not queue.vote("dr-store", ticket.id, "A").stored  # retried
        (fb,) = [f for f in store.iter_feedback() if f.annotator_id == "dr-store"]
        assert fb.origin == "review" and fb.rationale == "clearer dosing"
        pair = store.get_pair(fb.pair_id)
        assert (pair.response_a if fb.preference == "a" else pair.response_b) == left
        assert fb.meta["shown_left"] == ticket.shown_left
        assert queue.next_ticket("dr-store").pair.id != fb.pair_id
    finally:
        store.close()
