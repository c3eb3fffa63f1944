"""Login wall for the review app: an ASGI middleware in front of every Gradio route.

With `auth=` set, Gradio 6 guards most routes, but `POST /gradio_api/reset`, `/gradio_api/cancel`,
`/openapi.json`, the monitoring and stream routes and a few others still answer without a login.
This middleware refuses every request without a valid session cookie, except the login page itself,
`POST /login` and static assets (scripts, styles, fonts) the login page needs. It reads the same
session tokens Gradio issues at login, so there is one notion of "logged in".
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import HTTPConnection

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

# (method, path) pairs open without a login: the login page and the login form's POST target.
OPEN_ROUTES = frozenset({
    ("GET", "/"), ("HEAD", "/"),
    ("POST", "/login"), ("POST", "/login/"),
    ("GET", "/theme.css"), ("GET", "/gradio_api/theme.css"),
    ("GET", "/favicon.ico"), ("GET", "/robots.txt"),
})
# Static assets (compiled front-end, fonts); they carry no data from the store.
OPEN_PREFIXES = ("/static/", "/assets/", "/svelte/")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def is_open(method: str, path: str) -> bool:
    if (method.upper(), path) in OPEN_ROUTES:
        return True
    return method.upper() in ("GET", "HEAD") and path.startswith(OPEN_PREFIXES) and ".." not in path


def _launch_probe(scope: Scope, method: str) -> bool:
    """Gradio's own `launch()` calls this route once, without a session, to run startup events;
    it is let through only until that has happened (afterwards it refuses like any other route)."""
    app = scope.get("app")
    return (method == "GET" and scope.get("path") == "/gradio_api/startup-events"
            and getattr(app, "startup_events_triggered", True) is False)


def session_user(scope: Scope) -> str | None:
    """The user of a Gradio session cookie, or None. `scope["app"]` is the Gradio App."""
    app = scope.get("app")
    tokens = getattr(app, "tokens", None)
    cookie_id = getattr(app, "cookie_id", None)
    if not tokens or cookie_id is None:
        return None
    cookies = HTTPConnection(scope).cookies
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return tokens.get(token) if token else None


class RequireLogin:
    """Pass logged-in requests and the open routes through; answer 401 to everything else."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        if (is_open(method, scope.get("path", "")) or _launch_probe(scope, method)
                or session_user(scope) is not None):
            await self.app(scope, receive, _with_headers(send))
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": "Not authenticated"}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"), *SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": body})


def _with_headers(send: Callable) -> Callable:
    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            message["headers"] = [*message.get("headers", []),
                                  *[(k, v) for k, v in SECURITY_HEADERS if k not in names]]
        await send(message)

    return wrapped
