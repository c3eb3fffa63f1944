"""Clinician accounts for the review app: a JSON users file holding salted scrypt hashes.

File format (`users.json`; written atomically, mode 0600):
  {"schema": "clinalign.review-users/1",
   "users": {"dr_ada": {"hash": "scrypt$16384$8$1$<salt b64>$<hash b64>", "role": "clinician",
                        "created_at": "..."}}}
Roles: "clinician" (reviews) and "admin" (also sees votes per clinician and outlier voters).
Passwords never travel through argv: the CLI reads them from an environment variable or a prompt.

With the Argilla backend, `ArgillaAccounts` checks logins against the Argilla server's own users
instead (`POST /api/v1/token`), so clinicians keep one account; Argilla owners/admins are admins here.

Failed sign-ins are throttled by `throttle.Throttle` (state `<users>.lockouts.json`, audit log
`<users>.audit.jsonl`, both beside the users file); the Argilla form keeps its throttle in memory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from annotation.records import utc_now
from annotation.review.throttle import DEFAULT_LIMIT, LockedOut, Throttle
from clinalign_base.atomic import write_private_text
from clinalign_base.errors import InputError

SCHEMA = "clinalign.review-users/1"
ROLES = ("clinician", "admin")
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{1,63}$")
MIN_PASSWORD_LEN = 10
# scrypt n=2^15, r=8, p=1: ~32 MiB and ~0.1 s per check here; slow enough to make guessing costly.
DEFAULT_SCRYPT = (2**15, 8, 1)
MAX_FAILURES = DEFAULT_LIMIT  # failed logins per user before the account is locked (see throttle.py)


def hash_password(password: str, *, n: int = DEFAULT_SCRYPT[0], r: int = DEFAULT_SCRYPT[1],
                  p: int = DEFAULT_SCRYPT[2]) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_maxmem(n, r),
                            dklen=32)
    return "$".join(("scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)))


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        n_i, r_i, p_i = int(n), int(r), int(p)
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=n_i, r=r_i, p=p_i,
                             maxmem=_maxmem(n_i, r_i), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def _maxmem(n: int, r: int) -> int:
    return 128 * r * n * 2 + (1 << 20)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Account:
    username: str
    role: str
    password_hash: str


class _ThrottledLogin:
    """`check` for Gradio's auth= callable: False instead of LockedOut (both account kinds share it)."""

    def login(self, username: str, password: str, client: str | None = None) -> bool:
        raise NotImplementedError

    def check(self, username: str, password: str, client: str | None = None) -> bool:
        """True when the password is right and no limit refuses the attempt."""
        try:
            return self.login(username, password, client)
        except LockedOut:
            return False


class UserBook(_ThrottledLogin):
    """The accounts in one users file; failed logins go through a persisted `Throttle`."""

    def __init__(self, path: str | os.PathLike, accounts: dict[str, Account], throttle: Throttle | None = None):
        self.path = Path(path)
        self.accounts = accounts
        self.throttle = throttle if throttle is not None else Throttle.beside(self.path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, must_exist: bool = True, throttle: Throttle | None = None) -> UserBook:
        path = Path(path)
        if not path.exists():
            if must_exist:
                raise InputError("users file not found (create one with `clinalign review add-user`)",
                                 path=str(path))
            return cls(path, {}, throttle)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"not a valid users file: {exc}", path=str(path)) from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("users"), dict):
            raise InputError(f"not a users file (expected schema {SCHEMA!r})", path=str(path))
        accounts = {}
        for name, entry in data["users"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
                raise InputError("user entry has no password hash", path=str(path), record=name)
            role = entry.get("role", "clinician")
            if role not in ROLES:
                raise InputError(f"role must be one of {', '.join(ROLES)}, got {role!r}", path=str(path),
                                 record=name)
            accounts[name] = Account(name, role, entry["hash"])
        return cls(path, accounts, throttle)

    def role(self, username: str | None) -> str | None:
        account = self.accounts.get(username or "")
        return account.role if account else None


    def login(self, username: str, password: str, client: str | None = None) -> bool:
        """Like `check`, but a throttled attempt raises LockedOut (with a message for the user)."""
        return guarded(self.throttle, username, client, lambda: self._verify(username, password))

    def _verify(self, username: str, password: str) -> bool:
        account = self.accounts.get(username)
        # Hash even for unknown users so that response time does not reveal which names exist.
        ok = verify_password(password, account.password_hash if account else _DUMMY_HASH)
        return ok and account is not None

    def locked(self, username: str) -> bool:
        return self.throttle.locked_until(username) is not None

    async def acheck(self, username: str, password: str) -> bool:
        """Async form for Gradio: scrypt runs in a worker thread, never on the event loop."""
        return await _gradio_auth(self.login, username, password)


def guarded(throttle: Throttle, username: str, client: str | None,
            verify: Callable[[], bool | None]) -> bool:
    """Reserve an attempt slot (raises LockedOut), verify, record the outcome.
    `verify` returns None for "no verdict" (backend down): refused, not counted as a failure."""
    keys = throttle.reserve(username, client)
    ok: bool | None = False
    try:
        ok = verify()
    finally:
        throttle.finish(keys, ok, username, client)  # an exception inside verify counts as a failure
    return bool(ok)


async def _gradio_auth(login: Callable[[str, str, str | None], bool], username: str, password: str) -> bool:
    """Gradio's `auth=` hook has no request; the client address comes from `security.ClientAddress`,
    which sets it for the request being served. A lockout is raised as HTTP 429 with the reason: API
    clients see it, but Gradio's own login page still shows only its fixed "Incorrect credentials"
    text (it ignores the response body), so the login page's own message explains the limits."""
    import asyncio

    from fastapi import HTTPException

    from annotation.review.security import REQUEST_CLIENT

    try:
        return await asyncio.to_thread(login, username, password, REQUEST_CLIENT.get())
    except LockedOut as exc:
        raise HTTPException(status_code=429, detail=exc.message) from None


_DUMMY_HASH = "scrypt$32768$8$1$" + _b64(b"\0" * 16) + "$" + _b64(b"\0" * 32)


def add_user(path: str | os.PathLike, username: str, password: str, *, role: str = "clinician",
             replace: bool = False, scrypt_n: int = DEFAULT_SCRYPT[0]) -> bool:
    """Add (or with replace=True, reset) a user; returns True when the user is new."""
    if not USERNAME_RE.match(username or ""):
        raise InputError("user name must be 2-64 characters: letters, digits, _ . @ - (not first)",
                         record=repr(username))
    if username.startswith("simulated"):
        raise InputError("user names starting with 'simulated' are reserved", record=username)
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}", record=username)
    if len(password) < MIN_PASSWORD_LEN:
        raise InputError(f"password must be at least {MIN_PASSWORD_LEN} characters", record=username)
    path = Path(path)
    data = {"schema": SCHEMA, "users": {}}
    if path.exists():
        UserBook.load(path)  # validates the existing file before we rewrite it
        data = json.loads(path.read_text(encoding="utf-8"))
    is_new = username not in data["users"]
    if not is_new and not replace:
        raise InputError("user already exists (pass --replace to reset the password)", path=str(path),
                         record=username)
    data["users"][username] = {"hash": hash_password(password, n=scrypt_n), "role": role,
                               "created_at": utc_now()}
    _write_private(path, data)
    return is_new


def _write_private(path: Path, data: dict) -> None:
    write_private_text(path, json.dumps(data, indent=2) + "\n")


class ArgillaAccounts(_ThrottledLogin):
    """Logins checked against an Argilla server's users (same interface as UserBook)."""

    def __init__(self, api_url: str, *, timeout: float = 15.0, throttle: Throttle | None = None):
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._roles: dict[str, str] = {}
        self.throttle = throttle if throttle is not None else Throttle()  # in memory: no local file here

    @classmethod
    def from_env(cls) -> ArgillaAccounts:
        url = os.environ.get("ARGILLA_API_URL", "").strip()
        if not url:
            raise InputError("ARGILLA_API_URL is not set (needed for --users argilla)")
        return cls(url)

    @property
    def accounts(self) -> dict[str, str]:
        return dict(self._roles)  # users seen so far (the server holds the full list)

    def role(self, username: str | None) -> str | None:
        return self._roles.get(username or "")

    def login(self, username: str, password: str, client: str | None = None) -> bool:
        return bool(guarded(self.throttle, username, client, lambda: self._verify(username, password)))

    def _verify(self, username: str, password: str) -> bool | None:
        import httpx

        try:
            with httpx.Client(base_url=self.api_url, timeout=self.timeout) as http:
                r = http.post("/api/v1/token", data={"username": username, "password": password})
                if r.status_code not in (200, 201):
                    return False
                me = http.get("/api/v1/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
                me.raise_for_status()
        except (httpx.HTTPError, KeyError, ValueError):
            return None  # server down or odd answer: refuse, but do not count it against the user
        server_role = me.json().get("role", "annotator")
        self._roles[username] = "admin" if server_role in ("owner", "admin") else "clinician"
        return True

    async def acheck(self, username: str, password: str) -> bool:
        return await _gradio_auth(self.login, username, password)
