"""A hostile web page against a signed-in clinician, in a real Chromium (issue 12).

The app runs as deployed: behind a TLS reverse proxy that passes the public Host header and
X-Forwarded-For/-Proto (`review_support.ReverseProxy`, what nginx does), with `--public-url` set to the
proxy's https origin, so only the Secure, SameSite=Lax session cookie exists. A clinician signs in
through the proxy; then, in the same browser context (her cookies), pages from other origins run the
attacks: read the session token, call next_pair and vote (the script API, the queue route and the
direct /run route the UI uses for votes), a form POST to /login (login CSRF) and to /logout, and an <img> GET /logout.

Three hostile origins, all served over https by a second local server (host names mapped to 127.0.0.1
in Chromium): another site (cross-site: SameSite=Lax alone keeps the cookie out), and two same-site but
cross-origin pages, another port on the app's own host name and a sibling subdomain. Chromium sends
Lax cookies to same-site requests, so for these the origin policy is what refuses them; the proxy log
shows that the cookie did arrive. The identical script then runs on the app's own origin and must
succeed (the positive control: a broken attack script would otherwise pass for a secure app).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.review_support import (
    PASSWORD,
    ReverseProxy,
    Running,
    free_port,
    running_app,
    self_signed_cert,
    serve_asgi,
    static_site,
)

pytestmark = pytest.mark.browser

APP_HOST = "review.hospital.example"
SIBLING_HOST = "files.hospital.example"  # same site as the app (hospital.example), another origin
EVIL_HOST = "evil.example"  # another site

# The attacks, as a hostile page would carry them. `base` is the app's public origin, `known` what an
# attacker can know without the session: the function numbers of the public front-end and a ticket
# (passed in so that a refused vote is refused for the right reason, not for lack of a ticket).
ATTACK_JS = r"""
window.attack = async (base, known) => {
  const out = {};
  const json = {"content-type": "application/json"};
  const grab = async (name, run) => {
    try { out[name] = await run(); } catch (e) { out[name] = {error: String(e)}; }
  };
  const events = async (response, done) => {  // read a server-sent event stream until done(msg)
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done: end} = await reader.read();
      if (end) return {status: response.status, ended: true, tail: buffer.slice(-500)};
      buffer += decoder.decode(value, {stream: true});
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data:")) continue;
        const msg = JSON.parse(line.slice(5));
        if (done(msg)) { reader.cancel(); return msg; }
      }
    }
  };
  // the script API (/gradio_api/call/<name>): POST the call, then read its result stream
  const call = async (api, data) => {
    const r = await fetch(`${base}/gradio_api/call/${api}`,
      {method: "POST", credentials: "include", headers: json, body: JSON.stringify({data})});
    if (!r.ok) return {status: r.status, body: await r.text()};
    const {event_id} = await r.json();
    const s = await fetch(`${base}/gradio_api/call/${api}/${event_id}`, {credentials: "include"});
    const text = await s.text();
    const data_lines = text.split("\n").filter((l) => l.startsWith("data:"));
    return {status: s.status, error: text.includes("event: error"),
            data: JSON.parse(data_lines[data_lines.length - 1].slice(5))};
  };
  // the route the UI uses: join the queue with a function number, read the session's event stream
  const session_hash = Math.random().toString(36).slice(2, 12);
  const join = async (fn_index, data) => {
    const r = await fetch(`${base}/gradio_api/queue/join`, {method: "POST", credentials: "include",
      headers: json, body: JSON.stringify({data, fn_index, session_hash, event_data: null, trigger_id: null})});
    if (!r.ok) return {status: r.status, body: await r.text()};
    const {event_id} = await r.json();
    const s = await fetch(`${base}/gradio_api/queue/data?session_hash=${session_hash}`, {credentials: "include"});
    if (!s.ok) return {status: s.status, body: await s.text()};
    return await events(s, (m) => m.msg === "process_completed" && m.event_id === event_id);
  };
  // votes skip Gradio's queue: the UI posts them straight to /run/predict, answered in the response
  const direct = async (fn_index, data) => {
    const r = await fetch(`${base}/gradio_api/run/predict`, {method: "POST", credentials: "include",
      headers: json, body: JSON.stringify({data, fn_index, session_hash, event_data: null, trigger_id: null})});
    return {status: r.status, body: await r.text()};
  };
  await grab("token", async () => {
    const r = await fetch(`${base}/gradio_api/token`, {credentials: "include"});
    return {status: r.status, body: await r.text()};
  });
  await grab("next_pair", () => call("next_pair", []));
  await grab("api_vote", () => call("vote", [known.ticket, "A", 2, "", "", "", false]));
  await grab("ui_load", () => join(known.load, []));
  await grab("ui_vote", () => join(known.vote, [null, 2, "", "", null, false]));
  await grab("ui_vote_direct", () => direct(known.vote, [null, 2, "", "", null, false]));
  return out;
};
window.image = (src) => new Promise((done) => {
  const img = new Image();
  img.onload = () => done("load");
  img.onerror = () => done("error");
  img.src = src;
});
window.submit = (action, fields) => {  // a plain HTML form POST, top-level, as in a login-CSRF page
  const form = document.createElement("form");
  form.method = "POST";
  form.action = action;
  for (const [name, value] of Object.entries(fields)) {
    const input = document.createElement("input");
    input.name = name;
    input.value = value;
    form.appendChild(input);
  }
  document.body.appendChild(form);
  form.submit();
};
"""
HOSTILE_PAGE = f"<!doctype html><html><head><title>free CME credits</title><script>{ATTACK_JS}</script></head>" \
               "<body><h1>Claim your CME credits</h1></body></html>"


@pytest.fixture(scope="module")
def chromium():
    import shutil

    if not shutil.which(CHROMIUM):
        pytest.skip("Debian chromium is not installed (run scripts/setup-system.sh)")
    from playwright.sync_api import sync_playwright

    rules = ", ".join(f"MAP {h} 127.0.0.1" for h in (APP_HOST, SIBLING_HOST, EVIL_HOST))
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, f"--host-resolver-rules={rules}"])
        yield b
        b.close()


@pytest.fixture
def context(chromium):
    """A fresh browser profile that accepts the test certificate."""
    ctx = chromium.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


@contextlib.contextmanager
def behind_tls_proxy(tmp_path: Path) -> Iterator[tuple[Running, str, ReverseProxy, int]]:
    """The app (public URL = the proxy's https origin, the proxy trusted), the proxy, and the port
    of the second https server that serves the hostile page under any of the host names."""
    tls = self_signed_cert(tmp_path / "tls", [APP_HOST, SIBLING_HOST, EVIL_HOST])
    proxy_port, other_port = free_port(), free_port()
    public = f"https://{APP_HOST}:{proxy_port}"
    with running_app(tmp_path, n_pairs=4, users=["dr_ada", "mallory"], public_url=public,
                     trusted_proxies=["127.0.0.1"]) as app:
        proxy = ReverseProxy(app.url)
        with serve_asgi(proxy, proxy_port, tls), serve_asgi(static_site(HOSTILE_PAGE), other_port, tls):
            yield app, public, proxy, other_port


def session_cookies(context) -> list[dict]:
    return [c for c in context.cookies() if c["name"].startswith("access-token-")]


def function_numbers(app: Running) -> dict[str, int]:
    config = app.review.demo.config
    elem = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    deps = config["dependencies"]
    load = next(d["id"] for d in deps if d["targets"] and d["targets"][0][1] == "load")
    vote = next(d["id"] for d in deps if any(elem.get(t[0]) == "vote-a" for t in d["targets"]))
    return {"load": load, "vote": vote}


def post_form(page, action: str, fields: dict) -> int:
    """Submit a top-level form POST from `page`; the HTTP status of the page it lands on."""
    with page.expect_navigation(timeout=20_000) as nav:
        page.evaluate("([a, f]) => window.submit(a, f)", [action, fields])
    return nav.value.status


def test_pages_on_other_origins_cannot_act_as_the_signed_in_clinician(context, tmp_path):
    with behind_tls_proxy(tmp_path) as (app, public, proxy, other_port):
        tokens = app.review.demo.server_app.tokens
        page = context.new_page()
        page.goto(public + "/")
        page.fill("input[type=text]", "dr_ada")
        page.fill("input[type=password]", PASSWORD)
        page.get_by_role("button", name="Login").click()
        page.wait_for_function("document.querySelector('#answer-a')?.innerText.trim().length > 0", timeout=30_000)
        (cookie,) = session_cookies(context)  # https public URL: only the Secure cookie
        assert cookie["secure"] and cookie["sameSite"] == "Lax" and "unsecure" not in cookie["name"]
        session = cookie["value"]
        assert tokens == {session: "dr_ada"}
        known = {**function_numbers(app), "ticket": app.review.queue.next_ticket("dr_ada").id}
        assert any(h.path == "/login" and h.status == 200 for h in proxy.hits)  # she did come through the proxy

        hostile_origins = [(f"https://{EVIL_HOST}:{other_port}", "cross-site"),
                           (f"https://{APP_HOST}:{other_port}", "same-site"),  # same host name, other port
                           (f"https://{SIBLING_HOST}:{other_port}", "same-site")]  # sibling subdomain
        for origin, relation in hostile_origins:
            seen = len(proxy.hits)
            hostile = context.new_page()
            hostile.goto(origin + "/")
            out = hostile.evaluate("([base, known]) => window.attack(base, known)", [public, known])
            # every cross-origin read fails in the browser: no CORS grant, preflights refused
            assert set(out) == {"token", "next_pair", "api_vote", "ui_load", "ui_vote", "ui_vote_direct"}
            assert all("error" in r and "Failed to fetch" in r["error"] for r in out.values()), (origin, out)
            assert session not in json.dumps(out)
            assert hostile.evaluate("src => window.image(src)", public + "/logout") == "error"
            assert post_form(hostile, public + "/logout", {}) == 403
            hostile.goto(origin + "/")
            assert post_form(hostile, public + "/login", {"username": "mallory", "password": PASSWORD}) == 403
            hostile.close()

            # nothing happened on the server: no vote, no new session, hers not ended, cookie unchanged
            assert list(app.store.iter_feedback()) == [], origin
            assert tokens == {session: "dr_ada"}, origin
            assert [c["value"] for c in session_cookies(context)] == [session]
            assert page.evaluate("async () => (await fetch('config')).status") == 200  # still signed in
            # what reached the app (through the proxy), and why it was refused
            hits = [h for h in proxy.hits[seen:] if h.fetch_site != "same-origin"]
            assert {(h.method, h.path) for h in hits} >= {("OPTIONS", "/gradio_api/call/next_pair"),
                                                          ("OPTIONS", "/gradio_api/queue/join"),
                                                          ("OPTIONS", "/gradio_api/run/predict"),
                                                          ("GET", "/gradio_api/token"), ("GET", "/logout"),
                                                          ("POST", "/logout"), ("POST", "/login")}
            assert all(h.status == 403 for h in hits), [(h.method, h.path, h.status) for h in hits]
            carried = {(h.method, h.path) for h in hits if h.session_cookie}
            if relation == "same-site":  # SameSite=Lax let the cookie through: the origin check stopped them
                assert {("GET", "/gradio_api/token"), ("GET", "/logout"), ("POST", "/logout")} <= carried
            else:
                assert not carried

        # positive control: the same script on the app's own origin does everything it tried above
        page.add_script_tag(content=ATTACK_JS)
        own = page.evaluate("([base, known]) => window.attack(base, known)", [public, known])
        assert own["token"]["status"] == 200 and json.loads(own["token"]["body"])["token"] == session
        assert not own["next_pair"]["error"] and own["next_pair"]["data"][0]["ticket"] == known["ticket"]
        assert not own["api_vote"]["error"] and own["api_vote"]["data"][0]["stored"] is True
        assert own["ui_load"]["success"] and own["ui_vote"]["success"], own
        assert own["ui_vote_direct"]["status"] == 200, own["ui_vote_direct"]
        votes = list(app.store.iter_feedback())
        assert len(votes) == 3 and {f.annotator_id for f in votes} == {"dr_ada"}
        assert page.evaluate("src => window.image(src)", public + "/logout") == "error"  # GET never logs out
        assert tokens == {session: "dr_ada"}
        assert post_form(page, public + "/login", {"username": "mallory", "password": PASSWORD}) == 200
        (mallory,) = [t for t, user in tokens.items() if user == "mallory"]
        assert [c["value"] for c in session_cookies(context)] == [mallory]
        page.goto(public + "/")  # the app, now as mallory; its own sign-out form is a POST as above
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_selector("input[type=password]", timeout=20_000)
        assert mallory not in tokens and not session_cookies(context)
        page.close()  # before the servers stop: no open connections left
