"""Two review-app processes storing votes in one Argilla dataset at the same time lose nothing.

Each vote is a response of its own clinician, and its details (origin, side mapping, timing) are in
that response, not in record metadata shared by everyone (which was updated read-then-write and so
let one process overwrite the other's votes' details: with the listing slowed down as below, the
old way kept the details of only 8 of these 16 votes).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from annotation.argilla_store import ArgillaStore
from annotation.records import CandidatePair
from tests import argilla_fixtures
from tests.conftest import REPO

pytestmark = pytest.mark.argilla
argilla_stack = argilla_fixtures.argilla_stack  # the session fixture (real server stack)

WORKSPACE, DATASET, N_PAIRS = "clinical-concurrency", "two-writers", 8
WORKER = textwrap.dedent("""
    import sys, time
    from annotation.argilla_store import ArgillaStore
    from annotation.records import Feedback

    user, start_at = sys.argv[1], float(sys.argv[2])
    listing = ArgillaStore._iter_records

    def slow_listing(self, with_responses):  # a slower network: reads and writes of the two interleave
        items = list(listing(self, with_responses))
        time.sleep(0.3)
        yield from items

    ArgillaStore._iter_records = slow_listing
    store = ArgillaStore.from_env("two-writers", progress=False)
    pairs = sorted(store.iter_pairs(), key=lambda p: p.id)
    while time.time() < start_at:  # both processes start writing at the same moment
        time.sleep(0.005)
    for i, pair in enumerate(pairs):  # one vote per call, as the review app stores them
        side = "a" if i % 2 else "b"
        fb = Feedback(pair_id=pair.id, annotator_id=user, preference=side, strength=1 + i % 3,
                      origin="review", flagged=i == 3,
                      meta={"shown_left": side, "seconds_to_vote": float(i), "writer": user})
        assert store.add_feedback([fb]) == 1
    store.close()
""")


def test_two_processes_store_votes_on_the_same_pairs_without_losses(argilla_stack, monkeypatch):
    monkeypatch.setenv("ARGILLA_API_URL", argilla_stack.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_stack.api_key)
    monkeypatch.setenv("ARGILLA_WORKSPACE", WORKSPACE)
    store = ArgillaStore.from_env(DATASET, progress=False)
    store.add_pairs([CandidatePair(prompt=f"Question {i}: is this dose safe in pregnancy?", response_a=f"Yes ({i}).",
                                   response_b=f"Ask your midwife ({i}).", model_a="m-new", model_b="m-old")
                     for i in range(N_PAIRS)])
    users = ["dr-left", "dr-right"]
    headers = {"X-Argilla-Api-Key": argilla_stack.api_key}
    for name in users:
        made = httpx.post(f"{argilla_stack.url}/api/v1/users", headers=headers, timeout=30,
                          json={"first_name": name, "username": name, "password": "concurrent-1234",
                                "role": "annotator"})
        assert made.status_code in (200, 201), made.text
        httpx.post(f"{argilla_stack.url}/api/v1/workspaces/{store.dataset.workspace.id}/users", headers=headers,
                   json={"user_id": made.json()["id"]}, timeout=30).raise_for_status()

    start_at = time.time() + 8  # time enough for both interpreters to import and connect
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, user, str(start_at)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for user in users]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]

    feedback = [f for f in store.iter_feedback() if f.annotator_id in users]
    assert len(feedback) == 2 * N_PAIRS
    for fb in feedback:
        assert fb.origin == "review", fb  # its details were not overwritten by the other process
        assert fb.meta["writer"] == fb.annotator_id and fb.meta["shown_left"] == fb.preference
        assert (fb.meta["model_a"], fb.meta["model_b"]) == ("m-new", "m-old")  # from the hidden record
    assert sum(f.flagged for f in feedback) == 2
    assert {(f.annotator_id, f.pair_id) for f in feedback} == {(u, p.id) for u in users for p in store.iter_pairs()}
    store.close()
