"""The review app behind a reverse proxy (issue 12): origin policy, cookies, POST logout, session
expiry, checked over real HTTP against running apps. Requests set `Host` to the public name, as a
proxy with `proxy_set_header Host $host` does."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from annotation.review.accounts import UserBook
from annotation.review.app import build_app
from annotation.review.security import allowed_origins, origin_of
from annotation.sqlite_store import SQLiteStore
from tests.review_support import PASSWORD, Running, free_port, make_pairs, make_users

PUBLIC = "https://review.hospital.example"
HOST = {"Host": "review.hospital.example"}
SAME = {**HOST, "Origin": PUBLIC}
EVIL = {**HOST, "Origin": "https://evil.example"}
REFUSED = {"detail": "cross-origin request refused"}


@contextlib.contextmanager
def served(tmp_path: Path, **launch) -> Iterator[Running]:
    store = SQLiteStore(tmp_path / "store.sqlite")
    pairs = make_pairs(2)
    store.add_pairs(pairs)
    users = tmp_path / "users.json"
    if not users.exists():
        make_users(users, ["dr_ada"])
    review = build_app(store, UserBook.load(users), leaderboard_bootstrap=20)
    _, url = review.launch(port=free_port(), **launch)
    try:
        yield Running(url.rstrip("/"), store, review, pairs)
    finally:
        review.close()
        store.close()


def login(client: httpx.Client, headers: dict | None = None) -> httpx.Response:
    return client.post("/login", data={"username": "dr_ada", "password": PASSWORD}, headers=headers or SAME)


def session_header(response: httpx.Response, prefix: str = "access-token-") -> dict[str, str]:
    """A Cookie header with the session cookies a login set (sent by hand: the test talks plain
    http to the app, and a cookie jar would withhold the Secure cookie)."""
    pairs = [c.split(";", 1)[0] for c in response.headers.get_list("set-cookie")]
    return {"Cookie": "; ".join(p for p in pairs if p.startswith(prefix))}


def call(client: httpx.Client, api: str, data: list, headers: dict) -> httpx.Response | dict:
    """Gradio's two-step HTTP API: POST the call, then read its result stream."""
    r = client.post(f"/gradio_api/call/{api}", json={"data": data}, headers=headers)
    if r.status_code != 200:
        return r
    stream = client.get(f"/gradio_api/call/{api}/{r.json()['event_id']}", headers=headers)
    lines = [ln for ln in stream.text.splitlines() if ln.startswith("data:")]
    return json.loads(lines[-1][5:])[0]


def test_origins_normalised():
    assert origin_of("HTTPS://Review.Hospital.Example:443/app/") == PUBLIC
    assert origin_of("null") is None and origin_of("javascript:alert(1)") is None
    allowed = allowed_origins(PUBLIC, 7860)
    assert allowed == {PUBLIC, "http://localhost:7860", "http://127.0.0.1:7860"}


def test_foreign_origin_refused_same_origin_works(tmp_path):
    with served(tmp_path, public_url=PUBLIC) as app, httpx.Client(base_url=app.url, timeout=60) as client:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        r = client.options("/gradio_api/queue/join", headers={**EVIL, **preflight})
        assert r.status_code == 403 and r.json() == REFUSED
        assert "access-control-allow-origin" not in r.headers
        ok = client.options("/gradio_api/queue/join", headers={**SAME, **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == PUBLIC

        session = session_header(login(client))
        r = client.get("/gradio_api/token", headers={**EVIL, **session})
        token = session["Cookie"].split("=", 1)[1].split(";")[0]
        assert r.status_code == 403 and token not in r.text
        assert "access-control-allow-origin" not in r.headers
        r = client.get("/gradio_api/token", headers={**SAME, **session})
        assert r.status_code == 200 and r.json()["token"] == token

        item = call(client, "next_pair", [], {**SAME, **session})
        assert item["ticket"]
        vote = [item["ticket"], "A", 2, "", "", "", False]
        refused = call(client, "vote", vote, {**EVIL, **session})
        assert refused.status_code == 403 and refused.json() == REFUSED
        referer = {**HOST, **session, "Referer": "https://evil.example/page"}  # Origin stripped
        assert call(client, "vote", vote, referer).status_code == 403
        assert list(app.store.iter_feedback()) == []
        result = call(client, "vote", vote, {**SAME, **session})
        assert result["stored"]
        (fb,) = list(app.store.iter_feedback())
        assert fb.annotator_id == "dr_ada"


def test_login_csrf_refused(tmp_path):
    with served(tmp_path, public_url=PUBLIC) as app, httpx.Client(base_url=app.url, timeout=60) as client:
        r = login(client, EVIL)
        assert r.status_code == 403 and "set-cookie" not in r.headers
        r = login(client, {**HOST, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
        assert r.status_code == 403 and "set-cookie" not in r.headers
        r = login(client, {**HOST, "Sec-Fetch-Site": "same-site"})  # a sibling subdomain
        assert r.status_code == 403
        assert login(client, {**HOST, "Sec-Fetch-Site": "same-origin"}).status_code == 200
        # a cross-site link to the app itself still opens the login page
        page = client.get("/", headers={**HOST, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
        assert page.status_code == 200


def test_logout_is_a_same_origin_post(tmp_path):
    with served(tmp_path, public_url=PUBLIC) as app, httpx.Client(base_url=app.url, timeout=60) as client:
        session = session_header(login(client))
        assert client.get("/config", headers={**HOST, **session}).status_code == 200
        assert client.get("/logout", headers={**HOST, **session}).status_code == 405
        cross = client.post("/logout", headers={**HOST, **session, "Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403
        assert client.post("/logout", headers={**EVIL, **session}).status_code == 403
        assert client.get("/config", headers={**HOST, **session}).status_code == 200  # still signed in
        r = client.post("/logout", headers={**SAME, **session})
        assert r.status_code == 303 and r.headers["location"] == "./"
        expired = r.headers.get_list("set-cookie")
        assert len(expired) == 2 and all("Max-Age=0" in c for c in expired)
        assert client.get("/config", headers={**HOST, **session}).status_code == 401
        assert app.review.demo.server_app.tokens == {}


def test_cookies_lax_and_secure_only_over_https(tmp_path):
    with served(tmp_path / "plain") as plain, httpx.Client(base_url=plain.url, timeout=60) as client:
        r = login(client, {"Origin": plain.url})
        cookies = r.headers.get_list("set-cookie")
        assert len(cookies) == 2 and all("SameSite=Lax" in c for c in cookies)
        assert not any("samesite=none" in c.lower() for c in cookies)
        unsecure = session_header(r, "access-token-unsecure-")
        assert client.get("/config", headers=unsecure).status_code == 200  # counts without https
        cookie_id = plain.review.demo.server_app.cookie_id
        token = unsecure["Cookie"].split("=", 1)[1]
    (tmp_path / "tls").mkdir()
    with served(tmp_path / "tls", public_url=PUBLIC) as tls, httpx.Client(base_url=tls.url, timeout=60) as client:
        r = login(client)
        (cookie,) = r.headers.get_list("set-cookie")
        assert "Secure" in cookie and "SameSite=Lax" in cookie and "unsecure" not in cookie
        secure_token = session_header(r)["Cookie"].split("=", 1)[1]
        tls_id = tls.review.demo.server_app.cookie_id
        # a live token in the non-Secure cookie's name does not count
        forged = {"Cookie": f"access-token-unsecure-{tls_id}={secure_token}"}
        assert client.get("/config", headers={**HOST, **forged}).status_code == 401
        # the non-Secure cookie copied from the plain-http app, its token made valid here too
        tls.review.demo.server_app.tokens[token] = "dr_ada"
        copied = {"Cookie": f"access-token-unsecure-{tls_id}={token}"}
        assert client.get("/config", headers={**HOST, **copied}).status_code == 401
        assert client.get("/config", headers={**HOST, **session_header(r)}).status_code == 200
    assert cookie_id != tls_id


@pytest.mark.parametrize("limits", [{"session_idle_s": 1.0}, {"session_max_age_s": 2.5}])
def test_session_expires(tmp_path, limits):
    with served(tmp_path, **limits) as app, httpx.Client(base_url=app.url, timeout=60) as client:
        session = session_header(login(client, {"Origin": app.url}))
        for _ in range(3):  # activity keeps an idle-limited session alive
            time.sleep(0.5)
            assert client.get("/config", headers=session).status_code == 200
        time.sleep(1.5)
        assert client.get("/config", headers=session).status_code == 401
        assert app.review.demo.server_app.tokens == {}


def test_cli_passes_public_url_and_limits(tmp_path, monkeypatch):
    from align.cli import main
    from tests.review_support import review_cli_launches

    seen, args = review_cli_launches(tmp_path, monkeypatch)
    monkeypatch.setenv("CLINALIGN_PUBLIC_URL", PUBLIC)
    assert main([*args, "--session-idle-minutes", "5", "--session-max-hours", "2"]) == 0
    assert seen["public_url"] == PUBLIC and seen["session_idle_s"] == 300 and seen["session_max_age_s"] == 7200
    monkeypatch.setenv("CLINALIGN_PUBLIC_URL", "review.hospital.example")  # no scheme: refused
    assert main(args) == 2


@pytest.mark.browser
def test_sign_out_button_in_a_real_browser(browser, tmp_path):
    from tests.test_review_app import login as browser_login

    with served(tmp_path) as app:
        page = browser_login(browser, app.url, "dr_ada")
        cookies = [c for c in page.context.cookies() if c["name"].startswith("access-token-")]
        assert len(cookies) == 2 and all(c["sameSite"] == "Lax" for c in cookies)
        assert len(app.review.demo.server_app.tokens) == 1
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_selector("input[type=password]", timeout=20_000)  # back on the login page
        assert app.review.demo.server_app.tokens == {}
        assert not [c for c in page.context.cookies() if c["name"].startswith("access-token-")]
        assert page.request.get(app.url + "/config").status == 401
