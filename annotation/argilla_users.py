"""Workspaces and clinician accounts on an Argilla server, from a YAML or JSON file.

    workspaces: [cardiology]
    users:
      - username: dr-ada
        first_name: Ada
        last_name: Byron          # optional
        role: annotator           # annotator (default) | admin
        workspaces: [cardiology]  # default: every workspace in the file
        password_env: ADA_PW      # optional; default env var CLINALIGN_PASSWORD_DR_ADA

Passwords come from the environment; a user without one gets a generated password. Generated
passwords and the server-issued API keys are returned once (the CLI prints them) and never stored
by clinalign. Running the file again creates only what is missing and adds existing users to
their workspaces; it never changes an existing user's password.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotation.errors import ClinalignError, InputError

ROLES = ("annotator", "admin")
_USERNAME = re.compile(r"^(?!-|_)[a-z0-9-_]+$")  # the pattern Argilla's UI accepts


@dataclass
class UserSpec:
    username: str
    first_name: str
    last_name: str | None
    role: str
    workspaces: list[str]
    password_env: str


@dataclass
class UserResult:
    username: str
    role: str
    workspaces: list[str]
    created: bool
    password: str | None = None  # set only when generated now (print once)
    api_key: str | None = None  # set only when the user was created now


def password_env_name(username: str) -> str:
    return "CLINALIGN_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", username).upper()


def load_users_file(path: str | os.PathLike) -> tuple[list[str], list[UserSpec]]:
    """Parse and check the whole file first: bad input never leaves half the users created."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml and json raise different types; both mean "not parseable"
        raise InputError(f"cannot parse: {exc}", path=str(path)) from None
    if not isinstance(data, dict) or not isinstance(data.get("users"), list) or not data["users"]:
        raise InputError("expected an object with a non-empty 'users' list", path=str(path))
    workspaces = data.get("workspaces") or []
    if not isinstance(workspaces, list) or not all(isinstance(w, str) and w.strip() for w in workspaces):
        raise InputError("'workspaces' must be a list of names", path=str(path))
    specs = [_user_spec(u, i, workspaces, str(path)) for i, u in enumerate(data["users"], start=1)]
    names = [s.username for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"duplicate usernames: {', '.join(dupes)}", path=str(path))
    all_ws = list(dict.fromkeys([*workspaces, *(w for s in specs for w in s.workspaces)]))
    return all_ws, specs


def _user_spec(raw: Any, index: int, workspaces: list[str], path: str) -> UserSpec:
    where = f"user #{index}"
    if not isinstance(raw, dict):
        raise InputError("each user must be an object", path=path, record=where)
    username = str(raw.get("username") or "").strip()
    if not _USERNAME.match(username):
        raise InputError(f"username {username!r} must be lower-case letters, digits, '-' or '_'",
                         path=path, record=where)
    role = str(raw.get("role") or "annotator")
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)} (owners are made by argilla-up), got {role!r}",
                         path=path, record=username)
    ws = raw.get("workspaces", workspaces)
    if isinstance(ws, str):
        ws = [ws]
    if not ws:
        raise InputError("no workspace for this user (give 'workspaces')", path=path, record=username)
    return UserSpec(username=username, first_name=str(raw.get("first_name") or username),
                    last_name=raw.get("last_name"), role=role, workspaces=[str(w) for w in ws],
                    password_env=str(raw.get("password_env") or password_env_name(username)))


def apply_users(client: Any, workspaces: list[str], specs: list[UserSpec]) -> list[UserResult]:
    """Create what is missing (owner key needed); returns what happened to each user."""
    import argilla as rg
    from argilla._exceptions import ArgillaAPIError

    results: list[UserResult] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the SDK warns on every "not found"
            ws_objs = {name: client.workspaces(name) or rg.Workspace(name=name, client=client).create()
                       for name in workspaces}
            for spec in specs:
                results.append(_apply_user(client, rg, spec, ws_objs))
    except ArgillaAPIError as exc:
        raise ClinalignError(f"Argilla refused to create users/workspaces: {exc} (an owner API key is needed)") from None
    return results


def _apply_user(client: Any, rg: Any, spec: UserSpec, ws_objs: dict[str, Any]) -> UserResult:
    user = client.users(spec.username)
    created, generated = False, None
    if user is None:
        password = os.environ.get(spec.password_env)
        if not password:
            password = generated = secrets.token_urlsafe(12)
        if len(password) < 8:
            raise InputError(f"the password in ${spec.password_env} is shorter than 8 characters",
                             record=spec.username)
        user = rg.User(username=spec.username, first_name=spec.first_name, last_name=spec.last_name,
                       role=spec.role, password=password, client=client).create()
        created = True
    http = client.api.http_client
    member_of = {w["name"] for w in http.get(f"/api/v1/users/{user.id}/workspaces").json().get("items", [])}
    for name in spec.workspaces:
        if name not in member_of:
            user.add_to_workspace(ws_objs[name])
    api_key = http.get(f"/api/v1/users/{user.id}").json().get("api_key") if created else None
    return UserResult(username=spec.username, role=str(getattr(user.role, "value", user.role)),
                      workspaces=spec.workspaces, created=created, password=generated, api_key=api_key)
