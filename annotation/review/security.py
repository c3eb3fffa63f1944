"""Login wall and origin policy for the review app: ASGI middleware in front of every Gradio route.

With `auth=` set, Gradio 6 guards most routes, but `POST /gradio_api/reset`, `/gradio_api/cancel`,
`/openapi.json`, the monitoring and stream routes and a few others still answer without a login.
This middleware refuses every request without a valid session cookie, except the login page itself,
`POST /login` and static assets (scripts, styles, fonts) the login page needs. It reads the same
session tokens Gradio issues at login, so there is one notion of "logged in". It also ends sessions
(absolute and idle limits), answers `POST /logout` itself, and rewrites Gradio's session cookies
(SameSite=Lax; with an https public URL only the Secure cookie).

`OriginPolicy` sits in front of everything, Gradio's CORS layer included: behind a proxy that passes
the public Host header, Gradio grants any Origin with credentials, so foreign origins are refused here.

`ClientAddress` works out each request's client address for the login throttle (Gradio's auth
callback gets no request): the socket peer, or, only when that peer is a trusted proxy
(`--trusted-proxy`), the last X-Forwarded-For hop that is not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]
log = logging.getLogger(__name__)

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
    # not "no-referrer": under it browsers send `Origin: null` on the app's own form POSTs (sign-out),
    # which the origin policy must refuse; "same-origin" still sends nothing to other sites
    (b"referrer-policy", b"same-origin"),
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


COOKIE_PREFIX = "access-token-"
UNSECURE_PREFIX = "access-token-unsecure-"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOGOUT_PATHS = ("/logout", "/logout/")


def session_token(scope: Scope, *, secure_only: bool = False) -> str | None:
    """The Gradio session token a request carries; with `secure_only`, only the Secure cookie counts
    (the non-Secure copy could have been set or read over plain http)."""
    cookie_id = getattr(scope.get("app"), "cookie_id", None)
    if cookie_id is None:
        return None
    cookies = HTTPConnection(scope).cookies
    token = cookies.get(f"{COOKIE_PREFIX}{cookie_id}")
    if not token and not secure_only:
        token = cookies.get(f"{UNSECURE_PREFIX}{cookie_id}")
    return token or None


def session_user(scope: Scope, *, secure_only: bool = False) -> str | None:
    """The user of a Gradio session cookie, or None. `scope["app"]` is the Gradio App."""
    tokens = getattr(scope.get("app"), "tokens", None)
    token = session_token(scope, secure_only=secure_only)
    return tokens.get(token) if tokens and token else None


@dataclass
class Sessions:
    """When each session token was first seen and last used; ends sessions past either limit."""

    idle_s: float = 30 * 60
    max_age_s: float = 12 * 3600
    seen: dict[str, list[float]] = field(default_factory=dict)  # token -> [first seen, last used]

    def record(self, token: str) -> None:
        now = time.monotonic()
        self.seen.setdefault(token, [now, now])

    def touch(self, token: str, tokens: MutableMapping[str, str]) -> bool:
        """True if the session is still valid (and mark it used); else end it in both places."""
        now = time.monotonic()
        self.seen.setdefault(token, [now, now])
        if self._expired(token, now):
            self.end(token, tokens)
            return False
        self.seen[token][1] = now
        return True

    def end(self, token: str, tokens: MutableMapping[str, str]) -> None:
        self.seen.pop(token, None)
        tokens.pop(token, None)

    def sweep(self, tokens: MutableMapping[str, str]) -> None:
        """End sessions that are gone or expired, so that the registry does not grow without bound."""
        now = time.monotonic()
        for token in list(self.seen):
            if token not in tokens or self._expired(token, now):
                self.end(token, tokens)

    def _expired(self, token: str, now: float) -> bool:
        first, last = self.seen[token]
        return now - first > self.max_age_s or now - last > self.idle_s


class RequireLogin:
    """Pass logged-in requests and the open routes through; answer 401 to everything else.

    `secure_only`: only the Secure session cookie counts and the non-Secure one is never set
    (for an https public URL). `sessions`: the expiry limits."""

    def __init__(self, app: ASGIApp, *, secure_only: bool = False, sessions: Sessions | None = None):
        self.app = app
        self.secure_only = secure_only
        self.sessions = sessions or Sessions()

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        path = scope.get("path", "")
        user = self._live_user(scope)
        if path in LOGOUT_PATHS and scope["type"] == "http" and (method == "POST" or user is not None):
            await self._logout(scope, method, send)  # without a session, other methods meet the wall
            return
        if is_open(method, path) or _launch_probe(scope, method) or user is not None:
            await self.app(scope, receive, _with_headers(self._cookie_send(scope, send)))
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _json_response(send, 401, "Not authenticated")

    def _live_user(self, scope: Scope) -> str | None:
        """The session's user if the session exists and has not expired (an expired one is ended)."""
        tokens = getattr(scope.get("app"), "tokens", None)
        token = session_token(scope, secure_only=self.secure_only)
        if tokens is None or not token or token not in tokens:
            return None
        return tokens.get(token) if self.sessions.touch(token, tokens) else None

    async def _logout(self, scope: Scope, method: str, send: Callable) -> None:
        """POST only: a GET logout can be triggered by any `<img>` on any site."""
        if method != "POST":
            await _json_response(send, 405, "Method Not Allowed", [(b"allow", b"POST")])
            return
        app = scope.get("app")
        token = session_token(scope, secure_only=self.secure_only)
        if token and getattr(app, "tokens", None) is not None:
            self.sessions.end(token, app.tokens)
        cookie_id = getattr(app, "cookie_id", "")
        expired = [(b"set-cookie", f"{name}{cookie_id}=; Max-Age=0; Path=/; HttpOnly; Secure; SameSite=Lax"
                    .encode()) for name in (COOKIE_PREFIX, UNSECURE_PREFIX)]
        # relative, so that it also lands on the app's root when a proxy serves it under a sub-path
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", b"./"), (b"content-length", b"0"), (b"cache-control", b"no-store"),
            *expired, *SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": b""})

    def _cookie_send(self, scope: Scope, send: Callable) -> Callable:
        """Rewrite Gradio's session cookies and record new sessions as they are issued."""
        app = scope.get("app")

        async def wrapped(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = []
                for name, value in message.get("headers", []):
                    if name.lower() == b"set-cookie":
                        value = self._rewrite_cookie(value.decode("latin-1"), app)
                        if value is None:
                            continue
                        value = value.encode("latin-1")
                    headers.append((name, value))
                message["headers"] = headers
            await send(message)

        return wrapped

    def _rewrite_cookie(self, cookie: str, app: Any) -> str | None:
        name, _, rest = cookie.partition("=")
        name = name.strip()
        if not name.startswith(COOKIE_PREFIX):
            return cookie
        if name.startswith(UNSECURE_PREFIX) and self.secure_only:
            return None
        value = rest.split(";", 1)[0].strip()
        tokens = getattr(app, "tokens", None)
        if value and tokens is not None and value in tokens:
            self.sessions.sweep(tokens)
            self.sessions.record(value)
        parts = [p for p in cookie.split(";") if not p.strip().lower().startswith("samesite")]
        return "; ".join(p.strip() for p in parts) + "; SameSite=Lax"


# -- origin policy ---------------------------------------------------------------------------------
def origin_of(url: str) -> str | None:
    """scheme://host[:port], lowercased, default ports dropped; None for anything else ("null")."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def allowed_origins(public_url: str | None, port: int, host: str | None = None) -> frozenset[str]:
    """The public URL's origin plus the local development origins of the bound port (and of the bound
    address itself, so that a browser on the server's own address is same-origin)."""
    names = ["localhost", "127.0.0.1"]
    if host and host not in ("0.0.0.0", "::", ""):
        names.append(host)
    out = {origin_of(f"http://{n}:{port}") for n in names}
    if public_url:
        out.add(origin_of(public_url))
    return frozenset(o for o in out if o)


def refusal(scope: Scope, allowed: frozenset[str]) -> bool:
    """True if the request comes (or may come) from another site's page."""
    headers = Headers(scope=scope)
    method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
    origin = headers.get("origin")
    if origin is not None:
        return origin_of(origin) not in allowed
    referer = headers.get("referer")
    if method in STATE_CHANGING and referer and origin_of(referer) not in allowed:
        return True
    site = (headers.get("sec-fetch-site") or "").lower()
    if site in ("cross-site", "same-site"):  # a sibling subdomain is another site for us
        navigation = (method == "GET" and scope.get("path") == "/"
                      and (headers.get("sec-fetch-mode") or "").lower() == "navigate")
        return not navigation
    return False  # no browser headers: a script, which carries no ambient cookies


class OriginPolicy:
    """Refuse (403) requests from foreign origins before Gradio (and its CORS layer) sees them, and
    strip any CORS grant for an origin that is not allowed from responses."""

    def __init__(self, app: ASGIApp, *, allowed: frozenset[str]):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if refusal(scope, self.allowed):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _json_response(send, 403, "cross-origin request refused")
            return
        origin = Headers(scope=scope).get("origin")
        ok = origin is not None and origin_of(origin) in self.allowed
        await self.app(scope, receive, send if ok else _without_cors(send))


def _without_cors(send: Callable) -> Callable:
    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [(k, v) for k, v in message.get("headers", [])
                                  if not k.lower().startswith(b"access-control-")]
        await send(message)

    return wrapped


async def _json_response(send: Callable, status: int, detail: str,
                         extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), *(extra or []), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


def _with_headers(send: Callable) -> Callable:
    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            message["headers"] = [*message.get("headers", []),
                                  *[(k, v) for k, v in SECURITY_HEADERS if k not in names]]
        await send(message)

    return wrapped


# -- client address (for the per-address login throttle) ------------------------------------------
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The client address of the request being served; read by the login check (accounts._gradio_auth).
REQUEST_CLIENT: ContextVar[str | None] = ContextVar("clinalign_request_client", default=None)


def parse_trusted_proxies(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Proxy addresses or networks ("127.0.0.1", "10.0.0.0/8", "::1"); each value may hold several,
    separated by commas or spaces. Raises ValueError naming a bad entry ("*" is refused: trusting
    everyone would let any client pick its own address)."""
    out: list[IPNetwork] = []
    for value in values:
        for item in value.replace(",", " ").split():
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"not an IP address or network: {item!r}") from None
    return tuple(out)


def _parse_ip(text: str) -> IPAddress | None:
    """An address as a proxy writes it into X-Forwarded-For: "1.2.3.4", "1.2.3.4:5678", "::1",
    "[::1]:443"; None for anything else ("unknown", obfuscated names, garbage)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


def _trusted(ip: IPAddress | None, trusted: tuple[IPNetwork, ...]) -> bool:
    return ip is not None and any(ip.version == net.version and ip in net for net in trusted)


def client_address(scope: Scope, trusted: tuple[IPNetwork, ...] = ()) -> str | None:
    """The socket peer; if (and only if) the peer is a trusted proxy, the last X-Forwarded-For hop
    that is not a trusted proxy (each proxy appends the address it got the request from, so hops to
    the left of the first untrusted one are whatever the client wrote). If every hop is trusted, the
    leftmost; an unparseable hop stops the walk at the trusted hop to its right."""
    peer = (scope.get("client") or (None,))[0]
    if not peer:
        return None
    peer_ip = _parse_ip(peer)
    if not _trusted(peer_ip, trusted):
        return str(peer_ip) if peer_ip is not None else peer
    hops = [h for value in Headers(scope=scope).getlist("x-forwarded-for") for h in value.split(",") if h.strip()]
    address = peer_ip
    for hop in reversed(hops):
        ip = _parse_ip(hop)
        if ip is None:
            break
        address = ip
        if not _trusted(ip, trusted):
            break
    return str(address)


class ClientAddress:
    """Set `REQUEST_CLIENT` for each request. Uvicorn must not rewrite the peer from X-Forwarded-For
    itself (`app.launch` turns that off), or a client could name its own address."""

    def __init__(self, app: ASGIApp, *, trusted: Iterable[str] = ()):
        self.app = app
        self.trusted = parse_trusted_proxies(trusted)
        self._warned = False

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        address = client_address(scope, self.trusted)
        peer = (scope.get("client") or (None,))[0]
        if not self._warned and peer and "x-forwarded-for" in Headers(scope=scope) \
                and not _trusted(_parse_ip(peer), self.trusted):
            self._warned = True  # once: behind an undeclared proxy every sign-in counts as the proxy's
            log.warning("X-Forwarded-For from %s ignored: not a trusted proxy. Behind a reverse proxy, pass "
                        "--trusted-proxy with its address, or per-address sign-in limits count every "
                        "clinician as the proxy.", peer)
        token = REQUEST_CLIENT.set(address)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_CLIENT.reset(token)
