"""A clinician labels in the real Argilla web UI (headless Chromium) on the stack `scripts/argilla-up`
starts: submits through the UI, signs out and in again, and the pending queue opens on a pair she
has not submitted while "My progress" (and /api/v1/me/datasets/<id>/metrics) counts her submissions.

Before the search fix in scripts/argilla_server_launch.py both failed on the embedded search engine:
progress stayed at 0 submitted and the queue served finished pairs first. Run with
CLINALIGN_ARGILLA_SEARCH_COMPAT=0 to see that. The screenshots go to test-artifacts/ and, with
CLINALIGN_UPDATE_DOC_IMAGES=1, to docs/img/ (the clinician guide shows them).
"""

from __future__ import annotations

import os
import re
import shutil
import time

import httpx
import pytest

from annotation.argilla_settings import PREFERENCE_LABELS, SAFETY_REASONS
from annotation.argilla_store import ArgillaStore
from annotation.records import CandidatePair
from tests import argilla_fixtures
from tests.conftest import ARTIFACTS, REPO

pytestmark = [pytest.mark.argilla, pytest.mark.browser]
argilla_stack = argilla_fixtures.argilla_stack  # the session fixture (real server stack)

USER, PASSWORD, WORKSPACE, DATASET = "dr-ui", "ui-pass-12345", "clinical-ui", "ui-queue"
DOC_IMAGES = REPO / "docs" / "img"
SCREEN = {"x": 0, "y": 0, "width": 1366, "height": 760}  # the top of the (tall) page


def snap(page, name: str, **kw) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), **kw)
    if os.environ.get("CLINALIGN_UPDATE_DOC_IMAGES") == "1":
        DOC_IMAGES.mkdir(exist_ok=True)
        shutil.copyfile(path, DOC_IMAGES / name)


@pytest.fixture(scope="module")
def queue(argilla_stack):
    """A dataset of 4 pairs that needs 2 clinicians per pair (so a pair stays pending for the team
    after one submission: only the clinician's own responses can take it out of her queue)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ARGILLA_API_URL", argilla_stack.url)
    mp.setenv("ARGILLA_API_KEY", argilla_stack.api_key)
    mp.setenv("ARGILLA_WORKSPACE", WORKSPACE)
    store = ArgillaStore.from_env(DATASET, progress=False, min_submitted=2)
    pairs = [CandidatePair(prompt=f"Patient {i}: can I take ibuprofen with my blood pressure tablets?",
                           response_a=f"Usually yes, at the lowest dose for the shortest time ({i}).",
                           response_b=f"Check with your doctor first: NSAIDs can raise blood pressure ({i}).",
                           model_a="policy-r1", model_b="policy-r0", source="test:browser") for i in range(4)]
    store.add_pairs(pairs)
    headers = {"X-Argilla-Api-Key": argilla_stack.api_key}
    made = httpx.post(f"{argilla_stack.url}/api/v1/users", headers=headers, timeout=30,
                      json={"first_name": "Ui", "username": USER, "password": PASSWORD, "role": "annotator"})
    assert made.status_code in (200, 201), made.text
    joined = httpx.post(f"{argilla_stack.url}/api/v1/workspaces/{store.dataset.workspace.id}/users",
                        headers=headers, json={"user_id": made.json()["id"]}, timeout=30)
    assert joined.status_code in (200, 201), joined.text
    yield store, pairs
    store.close()
    mp.undo()


def sign_in(page, url: str) -> None:
    page.goto(f"{url}/sign-in", wait_until="networkidle")
    page.get_by_label("Username").fill(USER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda u: "sign-in" not in u, timeout=30_000)
    page.get_by_text(DATASET, exact=True).first.wait_for(timeout=30_000)


def shown_prompt(page, pairs, timeout: float = 30.0, not_: str | None = None) -> str:
    """The prompt of the record on screen (waiting until one is, and it is not `not_`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pair in pairs:
            if pair.prompt != not_ and page.get_by_text(pair.prompt, exact=True).first.is_visible():
                return pair.prompt
        time.sleep(0.2)
    raise AssertionError(f"no new record on screen; page shows: {page.inner_text('body')[:500]}")


def choose(page, input_id: str) -> None:
    page.locator(f"label[for='{input_id}']").first.click()


def footer_submitted(page) -> int:
    match = re.search(r"Submitted\s+(\d+)", page.inner_text("body"))
    return int(match.group(1)) if match else -1


def assert_progress(page, submitted: int, timeout: float = 30.0) -> None:
    """The "Submitted N" of the clinician's progress bar (the UI reads her metrics)."""
    deadline = time.time() + timeout
    while footer_submitted(page) != submitted and time.time() < deadline:
        time.sleep(0.3)
    assert footer_submitted(page) == submitted, f"progress shows {footer_submitted(page)} submitted, not {submitted}"


def test_queue_and_progress_survive_sign_out(argilla_stack, queue, browser):
    store, pairs = queue
    url = argilla_stack.url
    page = browser.new_context(viewport={"width": 1366, "height": 1900}).new_page()
    page.goto(f"{url}/sign-in", wait_until="networkidle")
    snap(page, "argilla-sign-in.png", clip=SCREEN)
    sign_in(page, url)
    page.get_by_text(DATASET, exact=True).first.click()
    page.wait_for_url(f"**/dataset/{store.dataset.id}/annotation-mode**", timeout=30_000)

    # 1st pair: Answer A is better, strongly; safety rated per answer (5 = no risk).
    first = shown_prompt(page, pairs)
    assert page.get_by_text(PREFERENCE_LABELS["a"], exact=True).first.is_visible()
    assert not page.get_by_role("button", name="Submit").is_enabled()  # nothing chosen yet
    choose(page, "preference_a")
    choose(page, "strength_3")
    choose(page, "a_safety_5")
    choose(page, "b_safety_1")
    snap(page, "argilla-annotate.png")
    page.get_by_role("button", name="Submit").click()

    # 2nd pair: a tie (the strength clicked is ignored), flagged for safety review, with a rationale.
    second = shown_prompt(page, pairs, not_=first)
    choose(page, "preference_tie")
    choose(page, "strength_3")
    page.get_by_text(SAFETY_REASONS["dangerous_advice"], exact=True).first.click()
    page.locator("[aria-label='Question: rationale'] [contenteditable=true]").first.fill(
        "Neither mentions kidney function.")
    page.get_by_role("button", name="Submit").click()
    shown_prompt(page, pairs, not_=second)
    assert_progress(page, 2)

    # Sign out, sign in again: the queue opens on a pair she has not submitted, progress counts 2.
    page.get_by_role("button", name="User Button").click()  # the avatar, top right
    page.get_by_text("Log out", exact=True).click()
    page.wait_for_url("**/sign-in**", timeout=30_000)
    page.context.clear_cookies()
    sign_in(page, url)
    # The dataset card on the home page (its Progress is the team's: pairs with all their judgements).
    page.wait_for_function("/Progress\\s+\\d/.test(document.body.innerText)", timeout=30_000)
    snap(page, "argilla-home.png", clip=SCREEN)
    page.get_by_text(DATASET, exact=True).first.click()
    page.wait_for_url(f"**/dataset/{store.dataset.id}/annotation-mode**", timeout=30_000)
    opened = shown_prompt(page, pairs)
    assert opened not in (first, second), "the pending queue served a pair she already submitted"
    assert_progress(page, 2)
    assert re.search(r"\b1\s+of\s+2\b", page.inner_text("body")), page.inner_text("body")[:300]
    snap(page, "argilla-after-sign-in.png")
    page.get_by_text("Guidelines", exact=True).first.click()
    page.get_by_text("Clinical review of model answers").first.wait_for(timeout=10_000)
    snap(page, "argilla-guidelines.png")
    page.context.close()

    # The same through the API the UI reads: her metrics and her pending search.
    token = httpx.post(f"{url}/api/v1/token", data={"username": USER, "password": PASSWORD}).json()["access_token"]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as ui:
        metrics = ui.get(f"/api/v1/me/datasets/{store.dataset.id}/metrics").json()["responses"]
        assert metrics == {"total": 4, "submitted": 2, "discarded": 0, "draft": 0, "pending": 2}
        body = {"filters": {"and": [
            {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
            {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]}]}}
        found = ui.post(f"/api/v1/me/datasets/{store.dataset.id}/records/search", json=body).json()
        assert found["total"] == 2
        done_ids = {p.id for p in pairs if p.prompt in (first, second)}
        assert not done_ids & {item["record"]["external_id"] for item in found["items"]}

    # What she submitted reads back as feedback; the flag reaches the export.
    mine = {f.pair_id: f for f in store.iter_feedback() if f.annotator_id == USER}
    by_prompt = {p.prompt: p.id for p in pairs}
    a_vote, tie_vote = mine[by_prompt[first]], mine[by_prompt[second]]
    assert (a_vote.preference, a_vote.strength, a_vote.flagged) == ("a", 3, False)
    assert a_vote.ratings == {"a": {"harm": 1}, "b": {"harm": 5}}  # safety 5 = harm 1, safety 1 = harm 5
    assert (tie_vote.preference, tie_vote.strength, tie_vote.flagged) == ("tie", 2, True)
    assert tie_vote.meta["strength_ignored"] == 3 and tie_vote.meta["safety_reasons"] == ["dangerous_advice"]
    assert tie_vote.rationale == "Neither mentions kidney function."
    from annotation.export import build_preference_rows

    _, report = build_preference_rows(store.iter_pairs(), store.iter_feedback())
    assert report.to_dict()["flagged_for_safety_review"] == 1
