"""The review app's login wall, accounts and privacy rules, checked over real HTTP.

Walks every route the running app serves (read from the app itself, so routes a future Gradio adds
are walked too) without a session: only the login page, the login POST and static assets may answer.
"""

from __future__ import annotations

import re
import socket

import httpx
import pytest

from annotation.review.accounts import MAX_FAILURES, UserBook, add_user, hash_password, verify_password
from annotation.review.security import is_open
from clinalign_base.errors import InputError
from tests.review_support import MODELS, PASSWORD, running_app


def all_routes(app) -> list[tuple[str, str]]:
    """(method, path template) for every route, including those inside included routers."""
    out: list[tuple[str, str]] = []

    def walk(routes, prefix: str = "") -> None:
        for r in routes:
            if hasattr(r, "original_router"):  # fastapi's included router wrapper
                walk(r.original_router.routes, prefix + (r.include_context.prefix or ""))
            elif hasattr(r, "routes") and hasattr(r, "path"):  # a Mount
                walk(r.routes, prefix + r.path)
            elif hasattr(r, "path"):
                for m in sorted(getattr(r, "methods", None) or {"WEBSOCKET"}):
                    out.append((m, prefix + r.path))

    walk(app.routes)
    return out


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def login(client: httpx.Client, user: str, password: str = PASSWORD) -> httpx.Response:
    return client.post("/login", data={"username": user, "password": password})


def test_every_route_refuses_without_login(tmp_path):
    with running_app(tmp_path, n_pairs=2) as app:
        routes = all_routes(app.review.demo.server_app)
        paths = {p for _, p in routes}
        # the routes Gradio itself leaves open with auth on are among those walked
        for needed in ("/gradio_api/reset", "/gradio_api/cancel", "/openapi.json", "/gradio_api/queue/join",
                       "/gradio_api/call/{api_name}", "/config", "/monitoring/{key}"):
            assert needed in paths
        refused, opened = [], []
        with httpx.Client(base_url=app.url, timeout=30) as client:
            for method, template in routes:
                if method == "WEBSOCKET":
                    continue
                path = concrete(template)
                r = client.request(method, path, json={} if method == "POST" else None)
                (opened if r.status_code != 401 else refused).append((method, path, r.status_code))
                if not is_open(method, path):
                    assert r.status_code == 401, f"{method} {path} answered {r.status_code} without a login"
            for method, path in (("POST", "/gradio_api/reset"), ("POST", "/gradio_api/cancel"),
                                 ("GET", "/openapi.json"), ("GET", "/gradio_api/startup-events"),
                                 ("GET", "/no/such/route"), ("POST", "/gradio_api/api/vote")):
                assert client.request(method, path, json={}).status_code == 401, path
            # the login page itself and its assets stay reachable
            assert client.get("/").status_code == 200
            assert client.get("/theme.css").status_code == 200
        assert len(refused) > 40 and all(is_open(m, p) for m, p, _ in opened)


def test_session_opens_the_app_but_never_shows_model_names(tmp_path):
    with running_app(tmp_path, n_pairs=2) as app, httpx.Client(base_url=app.url, timeout=30) as client:
        assert login(client, "dr_ada", "wrong password!").status_code == 400
        assert client.get("/config").status_code == 401
        assert login(client, "dr_ada").status_code == 200
        config = client.get("/config")
        assert config.status_code == 200
        assert not any(m in config.text for m in MODELS)
        info = client.get("/gradio_api/info").json()
        assert set(info["named_endpoints"]) == {"/next_pair", "/vote"}  # UI events are private
        assert client.get("/openapi.json").status_code in (200, 404)  # past the wall, Gradio decides


def test_votes_bound_to_the_clinician_and_stored_once(tmp_path):
    from gradio_client import Client

    with running_app(tmp_path, n_pairs=2) as app:
        ada = Client(app.url, auth=("dr_ada", PASSWORD), verbose=False)
        ben = Client(app.url, auth=("dr_ben", PASSWORD), verbose=False)
        item = ada.predict(api_name="/next_pair")
        assert item["ticket"] and not any(m in str(item) for m in MODELS)
        with pytest.raises(Exception, match="no longer open"):
            ben.predict(item["ticket"], "A", api_name="/vote")  # someone else's ticket
        assert list(app.store.iter_feedback()) == []
        first = ada.predict(item["ticket"], "A", api_name="/vote")
        retry = ada.predict(item["ticket"], "B", api_name="/vote")  # a retried / replayed request
        assert first["stored"] and not retry["stored"]
        assert first["answer_a_model"] in MODELS
        (fb,) = list(app.store.iter_feedback())
        assert fb.annotator_id == "dr_ada" and fb.meta["displayed_choice"] == "A"
        assert ada.predict(api_name="/next_pair")["ticket"] != item["ticket"]


def test_no_outbound_connections(tmp_path, monkeypatch):
    """Launch, log in and vote while recording every socket connect: only loopback is allowed."""
    seen: list = []
    real_connect = socket.socket.connect

    def spy(self, address):
        seen.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    with running_app(tmp_path, n_pairs=1) as app, httpx.Client(base_url=app.url, timeout=30) as client:
        assert login(client, "dr_ada").status_code == 200
        assert client.get("/config").status_code == 200
        assert app.review.demo.analytics_enabled is False
    hosts = {a[0] for a in seen if isinstance(a, tuple)}
    assert hosts and hosts <= {"127.0.0.1", "::1", "localhost"}, hosts


def test_password_hashing_and_lockout(tmp_path):
    encoded = hash_password("a long passphrase", n=2**10)
    assert encoded.startswith("scrypt$1024$") and "a long passphrase" not in encoded
    assert verify_password("a long passphrase", encoded) and not verify_password("a long passphrasE", encoded)
    assert hash_password("a long passphrase", n=2**10) != encoded  # salted
    users = tmp_path / "users.json"
    add_user(users, "dr_ada", PASSWORD, scrypt_n=2**10)
    assert (users.stat().st_mode & 0o777) == 0o600
    with pytest.raises(InputError, match="already exists"):
        add_user(users, "dr_ada", PASSWORD, scrypt_n=2**10)
    with pytest.raises(InputError, match="at least"):
        add_user(users, "dr_bob", "short", scrypt_n=2**10)
    book = UserBook.load(users)
    assert book.check("dr_ada", PASSWORD) and not book.check("nobody", PASSWORD)
    for _ in range(MAX_FAILURES):
        assert not book.check("dr_ada", "wrong password")
    assert not book.check("dr_ada", PASSWORD)  # locked out after repeated failures


def test_add_user_cli_reads_password_from_env(tmp_path, monkeypatch):
    from align.cli import main

    users = tmp_path / "u.json"
    monkeypatch.setenv("CLINALIGN_REVIEW_PASSWORD", PASSWORD)
    assert main(["review", "add-user", "dr_cy", "--users", str(users), "--role", "admin"]) == 0
    book = UserBook.load(users)
    assert book.role("dr_cy") == "admin" and book.check("dr_cy", PASSWORD)
    assert PASSWORD not in users.read_text()
    assert main(["review", "add-user", "dr_cy", "--users", str(users)]) == 2  # exists: clear error
    users.write_text("{not json")
    assert main(["review", "--store", str(tmp_path / "s.sqlite"), "--users", str(users)]) == 2


def test_cli_serves_the_app_behind_the_wall(tmp_path):
    import subprocess
    import time

    from annotation.sqlite_store import SQLiteStore
    from tests.conftest import REPO
    from tests.review_support import free_port, make_pairs, make_users

    with SQLiteStore(tmp_path / "s.sqlite") as store:
        store.add_pairs(make_pairs(2))
    make_users(tmp_path / "users.json", ["dr_ada"])
    port = free_port()
    proc = subprocess.Popen([str(REPO / ".venv/bin/clinalign"), "review", "--store", str(tmp_path / "s.sqlite"),
                             "--users", str(tmp_path / "users.json"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, "clinalign review did not start"
            time.sleep(0.5)
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/gradio_api/reset", json={}).status_code == 401
            assert login(client, "dr_ada").status_code == 200
            assert client.get("/config").status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "review app" in out and "2 pairs" in out
