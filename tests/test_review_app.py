"""The review app in a real headless Chromium: two clinicians log in, vote (mouse and keyboard),
see the next pair, and every stored row is checked against what the browser showed."""

from __future__ import annotations

import re

import pytest

from tests.review_support import MODELS, PASSWORD, running_app

pytestmark = pytest.mark.browser

from tests.conftest import ARTIFACTS  # noqa: E402


def login(browser, url: str, user: str):
    page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
    page.goto(url)
    page.fill("input[type=text]", user)
    page.fill("input[type=password]", PASSWORD)
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#vote-a", timeout=20_000)
    # Gradio may mount #answer-a after #vote-a; a predicate that throws fails the wait, so it must allow null.
    page.wait_for_function("(document.querySelector('#answer-a')?.innerText ?? '').trim().length > 0", timeout=20_000)
    return page


def shown(page) -> tuple[str, str, str]:
    return (page.inner_text("#question"), page.inner_text("#answer-a").strip(), page.inner_text("#answer-b").strip())


def wait_progress(page, done: int) -> None:
    page.wait_for_function(f"document.querySelector('#progress')?.innerText.includes('Reviewed {done} of')",
                           timeout=20_000)


def stored_for(store, user: str) -> list:
    return [f for f in store.iter_feedback() if f.annotator_id == user]


def side_text(pair, side: str) -> str:
    return pair.response_a if side == "a" else pair.response_b


def test_two_clinicians_vote_in_a_real_browser(browser, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with running_app(tmp_path, n_pairs=3, users=["dr_ada", "dr_ben", "lead"], admins=("lead",)) as app:
        pairs = {p.id: p for p in app.pairs}
        page = login(browser, app.url, "dr_ada")
        wait_progress(page, 0)
        html = page.content()
        assert not any(m in html for m in MODELS), "a model name reached the browser before the vote"
        q1, a1, b1 = shown(page)
        page.screenshot(path=str(ARTIFACTS / "review-before-vote.png"), full_page=True)

        # vote 1 with the mouse: "A is better"
        page.click("#vote-a")
        wait_progress(page, 1)
        page.wait_for_selector("#reveal :text('Vote recorded')")
        (fb1,) = stored_for(app.store, "dr_ada")
        pair1 = pairs[fb1.pair_id]
        assert a1 == side_text(pair1, fb1.meta["shown_left"]).strip()  # the left answer is what was stored as chosen
        assert side_text(pair1, fb1.preference).strip() == a1
        assert fb1.origin == "review" and fb1.meta["displayed_choice"] == "A" and fb1.strength == 2
        revealed = page.inner_text("#reveal")
        left_model = pair1.model_a if fb1.meta["shown_left"] == "a" else pair1.model_b
        assert re.search(rf"Answer A\s+came from\s+{left_model}", revealed)
        q2, a2, b2 = shown(page)
        assert (a2, b2) != (a1, b1), "the next pair did not appear"
        page.screenshot(path=str(ARTIFACTS / "review-after-vote.png"), full_page=True)

        # vote 2 with the keyboard: strength 3, flag, then "B is better"
        page.keyboard.press("3")
        page.keyboard.press("f")
        page.keyboard.press("b")
        wait_progress(page, 2)
        fb2 = next(f for f in stored_for(app.store, "dr_ada") if f.pair_id != fb1.pair_id)
        assert fb2.flagged and fb2.strength == 3 and fb2.meta["displayed_choice"] == "B"
        assert side_text(pairs[fb2.pair_id], fb2.preference).strip() == b2
        assert not page.is_checked("#flag input[type=checkbox]"), "the form was not reset for the next pair"

        # vote 3: comment and a correction of answer B, then "Tie"
        _, a3, b3 = shown(page)
        page.get_by_text("Comment and correction (optional)").click()
        page.fill("#comment textarea", "Both miss the renal dosing caveat.")
        page.fill("#correction textarea", "Corrected answer text written by the clinician.")
        page.locator("#correction-side label", has_text="B").click()
        assert page.input_value("#comment textarea") == "Both miss the renal dosing caveat."
        page.click("#vote-tie")
        wait_progress(page, 3)
        fb3 = next(f for f in stored_for(app.store, "dr_ada") if f.pair_id not in (fb1.pair_id, fb2.pair_id))
        assert fb3.preference == "tie" and fb3.rationale == "Both miss the renal dosing caveat."
        assert fb3.correction == "Corrected answer text written by the clinician."
        assert side_text(pairs[fb3.pair_id], fb3.correction_of).strip() == b3  # un-swapped to the pair's terms

        # queue finished; a reload does not bring back a pair already voted on
        page.wait_for_selector("#question :text('All pairs reviewed')")
        assert page.is_disabled("#vote-a")
        page.reload()
        page.wait_for_selector("#question :text('All pairs reviewed')", timeout=20_000)
        page.screenshot(path=str(ARTIFACTS / "review-finished.png"), full_page=True)

        # a second clinician: own queue, no trace of the first one's votes or of model names
        page2 = login(browser, app.url, "dr_ben")
        wait_progress(page2, 0)
        assert "dr_ada" not in page2.content()
        assert not any(m in page2.content() for m in MODELS)
        page2.keyboard.press("u")
        wait_progress(page2, 1)
        (ben,) = stored_for(app.store, "dr_ben")
        assert ben.preference == "both_bad"
        # with 4 votes a clinician gets no leaderboard yet (totals could be traced back to a colleague)
        page2.get_by_role("tab", name="Leaderboard").click()
        page2.wait_for_function("document.querySelector('#lb-models')?.innerText.includes('opens to clinicians')",
                                timeout=60_000)
        assert "policy-round" not in page2.inner_text("#lb-models") and not page2.is_visible("#lb-voters")

        # the study lead (admin) sees ratings, win rates and the per-clinician table
        lead = login(browser, app.url, "lead")
        lead.get_by_role("tab", name="Leaderboard").click()
        lead.wait_for_function("document.querySelector('#lb-voters')?.innerText.includes('dr_ada')", timeout=60_000)
        assert "policy-round" in lead.inner_text("#lb-models")
        lead.screenshot(path=str(ARTIFACTS / "review-leaderboard.png"), full_page=True)

        assert len(list(app.store.iter_feedback())) == 4
