"""Login throttling for the review app: failed sign-ins per account (and per client address when
known, and server-wide), persisted next to the users file, plus a JSONL audit log.

Why a reservation: checking "is it locked?" before a ~0.1 s scrypt and recording the failure after
let parallel guesses all pass the check (issue 12). `reserve` counts an attempt as in flight under
one lock *before* hashing, so failures + in-flight attempts never exceed the limit; `finish` then
records the outcome. State is a small JSON file (0600, atomic replace) so a restart does not reset
counters; it is meant for one server process per users file.

Gradio 6.31 calls `auth(username, password)` without the request; the app's `security.ClientAddress`
middleware works out the client address where the login request arrives (the socket peer, or behind
a trusted proxy the last untrusted X-Forwarded-For hop) and the auth hook passes it here, so attempts
count per account, per client address (IPv6 by /64) and server-wide. Anyone who knows a user name can
still keep that account locked (one burst per lockout period); the lock is bounded (`lockout_s`),
audited, and `clinalign review unlock` clears it (`--address` for an address).
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from clinalign_base.atomic import write_private_text

DEFAULT_LIMIT = 5  # failed sign-ins per account within window_s before the account is locked
DEFAULT_WINDOW_S = 15 * 60.0
DEFAULT_LOCKOUT_S = 15 * 60.0
DEFAULT_ADDRESS_LIMIT = 20  # per client address (only when an address is known)
DEFAULT_GLOBAL_LIMIT = 200  # failures server-wide within window_s: caps spraying many names


def address_key(address: str) -> str:
    """How a client address is counted: IPv4 as written canonically, IPv4-mapped IPv6 as IPv4, other
    IPv6 by its /64 (one host or household usually holds a whole /64, so counting single IPv6
    addresses would give an attacker billions of fresh quotas); anything else verbatim."""
    text = address.strip()
    try:
        ip = ipaddress.ip_address(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
    except ValueError:
        return text
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip.exploded.split('%')[0]}/64", strict=False))
    return str(ip)


def hhmm_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M UTC")


class LockedOut(Exception):
    """Sign-in refused before any password check; `message` is safe to show the user."""

    def __init__(self, scope: str, until: float):
        self.scope, self.until = scope, until
        if scope == "user":
            msg = (f"too many failed sign-ins for this account; try again after {hhmm_utc(until)} "
                   "or ask your study lead to unlock it")
        elif scope == "addr":
            msg = (f"too many failed sign-ins from this address; try again after {hhmm_utc(until)} "
                   "or ask your study lead to unlock it")
        else:
            msg = f"too many failed sign-ins on this server; try again after {hhmm_utc(until)}"
        super().__init__(msg)
        self.message = msg


@dataclass
class _Entry:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0
    pending: int = 0  # in flight; memory only


class Throttle:
    def __init__(self, path: str | os.PathLike | None = None, *, limit: int = DEFAULT_LIMIT,
                 window_s: float = DEFAULT_WINDOW_S, lockout_s: float = DEFAULT_LOCKOUT_S,
                 address_limit: int = DEFAULT_ADDRESS_LIMIT, global_limit: int = DEFAULT_GLOBAL_LIMIT,
                 audit_path: str | os.PathLike | None = None, clock: Callable[[], float] = time.time):
        self.path = Path(path) if path else None
        self.audit_path = Path(audit_path) if audit_path else None
        self.limits = {"user": limit, "addr": address_limit, "global": global_limit}
        self.window_s, self.lockout_s, self.clock = window_s, lockout_s, clock
        self._lock = threading.Lock()
        self._state: dict[str, _Entry] = self._read()

    @classmethod
    def beside(cls, users_path: str | os.PathLike, **kwargs) -> Throttle:
        """The throttle state and audit log that go with a users file."""
        p = Path(users_path)
        return cls(p.with_name(p.name + ".lockouts.json"), audit_path=p.with_name(p.name + ".audit.jsonl"),
                   **kwargs)

    # -- the two halves of one attempt -------------------------------------------------------
    def reserve(self, user: str, client: str | None = None) -> list[str]:
        """Count an attempt as in flight, or raise LockedOut without touching the password."""
        keys = self._keys(user, client)
        now = self.clock()
        with self._lock:
            self._reload()  # the file is authoritative: `clinalign review unlock` edits it from outside
            for key in keys:
                until = self._blocked_until(key, now)
                if until:
                    self.audit("refused", user, client, scope=key.split(":", 1)[0], until=until)
                    raise LockedOut(key.split(":", 1)[0], until)
            for key in keys:
                self._state.setdefault(key, _Entry()).pending += 1
        return keys

    def finish(self, keys: list[str], ok: bool | None, user: str, client: str | None = None) -> None:
        """Release the slots; ok=False counts a failure, None (no verdict) only releases."""
        now = self.clock()
        with self._lock:
            for key in keys:
                entry = self._state.setdefault(key, _Entry())
                entry.pending = max(0, entry.pending - 1)
                if ok is not False:
                    continue
                entry.failures.append(now)
                limit = self.limits[key.split(":", 1)[0]]
                if len(self._recent(entry, now)) >= limit and entry.locked_until <= now:
                    entry.locked_until = now + self.lockout_s
                    self.audit("lockout", user, client, scope=key.split(":", 1)[0], until=entry.locked_until)
            self._save(now)
        self.audit({True: "success", False: "failure", None: "unavailable"}[ok], user, client)

    # -- operator side -----------------------------------------------------------------------
    def unlock(self, user: str) -> dict:
        """Clear an account's failures and lock; returns what was cleared."""
        return self._clear(f"user:{user}", {"user": user}, user, None)

    def unlock_address(self, address: str) -> dict:
        """Clear a client address's failures and lock (IPv6: its /64); returns what was cleared."""
        key = address_key(address)
        return self._clear(f"addr:{key}", {"address": key}, None, key)

    def _clear(self, state_key: str, who: dict, user: str | None, client: str | None) -> dict:
        with self._lock:
            self._reload()
            entry = self._state.pop(state_key, None)
            self._save(self.clock())
        cleared = {**who, "failures": len(entry.failures) if entry else 0,
                   "locked_until": entry.locked_until if entry and entry.locked_until > self.clock() else None}
        self.audit("unlock", user, client, failures_cleared=cleared["failures"])
        return cleared

    def locked_until(self, user: str) -> float | None:
        with self._lock:
            return self._blocked_until(f"user:{user}", self.clock()) or None

    def address_locked_until(self, address: str) -> float | None:
        with self._lock:
            self._reload()
            return self._blocked_until(f"addr:{address_key(address)}", self.clock()) or None

    # -- internals ---------------------------------------------------------------------------
    def _keys(self, user: str, client: str | None) -> list[str]:
        # per-address first: it trips before the account limit only if address_limit < limit
        return ([f"addr:{address_key(client)}"] if client else []) + [f"user:{user}", "global:*"]

    def _recent(self, entry: _Entry, now: float) -> list[float]:
        entry.failures = [t for t in entry.failures if now - t < self.window_s]
        return entry.failures

    def _blocked_until(self, key: str, now: float) -> float:
        entry = self._state.get(key)
        if entry is None:
            return 0.0
        if entry.locked_until > now:
            return entry.locked_until
        if len(self._recent(entry, now)) + entry.pending >= self.limits[key.split(":", 1)[0]]:
            # in-flight attempts could still fill the quota: refuse until they settle
            return now + 1.0 if entry.pending else now + self.lockout_s
        return 0.0

    def _reload(self) -> None:
        if not self.path:
            return
        fresh = self._read()
        for key, entry in self._state.items():
            if entry.pending:
                fresh.setdefault(key, _Entry()).pending = entry.pending
        self._state = fresh

    def _read(self) -> dict[str, _Entry]:
        if not self.path or not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return {k: _Entry(list(map(float, v["failures"])), float(v["locked_until"]))
                    for k, v in raw.get("entries", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            # a damaged file must not silently reset protection: refuse to start
            raise RuntimeError(f"unreadable login throttle file {self.path}; fix or remove it") from None

    def _save(self, now: float) -> None:
        if not self.path:
            return
        entries = {k: {"failures": self._recent(e, now), "locked_until": e.locked_until}
                   for k, e in self._state.items() if e.locked_until > now or self._recent(e, now)}
        _write_private(self.path, json.dumps({"schema": "clinalign.review-lockouts/1", "entries": entries}))

    def audit(self, outcome: str, user: str | None, client: str | None, **extra) -> None:
        """One JSONL line per event; never the password (it is never passed here)."""
        if not self.audit_path:
            return
        line = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "user": user,
                "outcome": outcome, "client": client} | extra
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (json.dumps(line) + "\n").encode("utf-8"))
        finally:
            os.close(fd)


def _write_private(path: Path, text: str) -> None:
    write_private_text(path, text + "\n")
