"""Shared set-up for the review-app tests: a store with pairs from several models, a users file,
the real app launched on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from annotation.records import CandidatePair
from annotation.review.accounts import UserBook, add_user
from annotation.review.app import ReviewApp, build_app
from annotation.sqlite_store import SQLiteStore

PASSWORD = "correct-horse-battery"
MODELS = ("policy-round1", "policy-round2", "reference-sft")
QUESTIONS = [
    "What is the first-line treatment for uncomplicated hypertension in adults?",
    "When should a patient with a sore throat be tested for group A streptococcus?",
    "How is iron-deficiency anaemia usually investigated?",
    "What are red-flag symptoms in a patient presenting with low back pain?",
    "How should metformin be adjusted in chronic kidney disease?",
    "What is the recommended management of a first uncomplicated urinary tract infection in women?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pairs(n: int, models: tuple[str, ...] = MODELS) -> list[CandidatePair]:
    pairs = []
    for k in range(n):
        m1, m2 = models[k % len(models)], models[(k + 1) % len(models)]
        q = QUESTIONS[k % len(QUESTIONS)] + ("" if k < len(QUESTIONS) else f" (case {k})")
        pairs.append(CandidatePair(
            prompt=q, model_a=m1, model_b=m2, source="test",
            response_a=f"[{k}] Answer drafted by the first model. Start with a thiazide-like diuretic, "
                       "an ACE inhibitor or a calcium-channel blocker, and recheck in four weeks.",
            response_b=f"[{k}] Answer drafted by the second model. Lifestyle advice alone is enough; "
                       "medication is rarely needed."))
    return pairs


def make_users(path: Path, names: list[str], admins: tuple[str, ...] = ()) -> Path:
    for name in names:
        # cheap scrypt cost for tests only (the cost is stored with each hash)
        add_user(path, name, PASSWORD, role="admin" if name in admins else "clinician", scrypt_n=2**10)
    return path


@dataclass
class Running:
    url: str
    store: SQLiteStore
    review: ReviewApp
    pairs: list[CandidatePair]


@contextlib.contextmanager
def running_app(tmp_path: Path, *, n_pairs: int = 4, users: list[str] | None = None,
                admins: tuple[str, ...] = (), port: int | None = None, **launch) -> Iterator[Running]:
    """`launch`: passed on to `ReviewApp.launch` (public_url, trusted_proxies, ...). An existing
    users file (and store) in tmp_path is reused, as after a restart."""
    users = users or ["dr_ada", "dr_ben"]
    fresh = not (tmp_path / "store.sqlite").exists()
    store = SQLiteStore(tmp_path / "store.sqlite")
    pairs = make_pairs(n_pairs)
    if fresh:
        store.add_pairs(pairs)
    users_path = tmp_path / "users.json"
    book = UserBook.load(users_path if users_path.exists() else make_users(users_path, users, admins))
    review = build_app(store, book, leaderboard_bootstrap=50)
    _, url = review.launch(port=port or free_port(), **launch)
    try:
        yield Running(url.rstrip("/"), store, review, pairs)
    finally:
        review.close()
        store.close()


# -- a TLS reverse proxy and a second site, for browser tests of the app behind a proxy ------------
def self_signed_cert(folder: Path, names: list[str]) -> tuple[Path, Path]:
    """A throwaway certificate (and key) for `names`; browsers are told to ignore that it is untrusted."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


@contextlib.contextmanager
def serve_asgi(app, port: int, tls: tuple[Path, Path] | None = None) -> Iterator[None]:
    """Run an ASGI app with uvicorn in a thread on 127.0.0.1:port (https with `tls`)."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            proxy_headers=False, timeout_graceful_shutdown=2,
                            ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"test server on port {port} did not start")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(15)


HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                        b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"content-length"})


@dataclass
class ProxyHit:
    method: str
    path: str
    origin: str | None
    fetch_site: str | None
    session_cookie: bool  # the request carried a Gradio session cookie
    status: int = 0


@dataclass
class ReverseProxy:
    """What nginx does with `proxy_pass http://127.0.0.1:PORT; proxy_set_header Host $host;
    X-Forwarded-Proto $scheme; X-Forwarded-For $proxy_add_x_forwarded_for; proxy_buffering off`:
    the browser's Host goes upstream unchanged, the peer is appended to X-Forwarded-For, responses
    (server-sent events included) are streamed. Every request is logged in `hits`."""

    upstream: str
    hits: list[ProxyHit] = field(default_factory=list)

    async def __call__(self, scope, receive, send) -> None:
        import httpx

        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        raw = dict(scope["headers"])
        peer = scope["client"][0]
        forwarded = raw.get(b"x-forwarded-for", b"").decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"]
                   if k.lower() not in HOP_BY_HOP and k.lower() not in (b"x-forwarded-for", b"x-forwarded-proto")]
        headers += [(b"x-forwarded-for", (f"{forwarded}, {peer}" if forwarded else peer).encode()),
                    (b"x-forwarded-proto", scope["scheme"].encode()), (b"x-real-ip", peer.encode())]
        hit = ProxyHit(scope["method"], scope["path"], raw.get(b"origin", b"").decode() or None,
                       raw.get(b"sec-fetch-site", b"").decode() or None, b"access-token-" in raw.get(b"cookie", b""))
        self.hits.append(hit)
        target = self.upstream + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=None)) as client:
            response = await client.send(client.build_request(scope["method"], target, headers=headers, content=body),
                                         stream=True)
            hit.status = response.status_code
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]})

            async def pump() -> None:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})

            async def gone() -> None:  # the browser hung up (e.g. it stopped reading an event stream)
                while (await receive())["type"] != "http.disconnect":
                    pass

            tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(gone())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await response.aclose()


def static_site(html: str):
    """An ASGI app answering every GET with `html` (a page on some other origin)."""
    body = html.encode()

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def review_cli_launches(tmp_path: Path, monkeypatch) -> tuple[dict, list[str]]:
    """`clinalign review` arguments on a one-pair store, with `ReviewApp.launch` recording its keyword
    arguments into the returned dict instead of serving (the CLI's wait loop ends at once): what the
    command line and environment turn into, without a server."""
    import time

    from annotation.review.app import ReviewApp

    with SQLiteStore(tmp_path / "s.sqlite") as store:
        store.add_pairs(make_pairs(1))
    make_users(tmp_path / "users.json", ["dr_ada"])
    seen: dict = {}
    monkeypatch.setattr(ReviewApp, "launch", lambda self, **kw: (seen.update(kw), "http://127.0.0.1:1/"))
    monkeypatch.setattr(time, "sleep", lambda s: (_ for _ in ()).throw(KeyboardInterrupt))
    return seen, ["review", "--store", str(tmp_path / "s.sqlite"), "--users", str(tmp_path / "users.json")]
