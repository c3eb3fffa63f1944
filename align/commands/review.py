"""`clinalign review ...`: the blind side-by-side review app by clinicians, its users and pairs."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from align.cli_groups import Store, app
from align.progress import console
from clinalign_base.errors import ClinalignError, InputError

review_app = typer.Typer(help="Blind side-by-side review by clinicians (Gradio app), its users and pairs.",
                         invoke_without_command=True)

stdout = Console(markup=False)  # results on stdout; progress and logs on stderr (align.progress)


app.add_typer(review_app, name="review")


PASSWORD_ENV = "CLINALIGN_REVIEW_PASSWORD"


PUBLIC_URL_ENV = "CLINALIGN_PUBLIC_URL"


TRUSTED_PROXIES_ENV = "CLINALIGN_TRUSTED_PROXIES"




Users = Annotated[str | None, typer.Option("--users", help="Users file (create with `clinalign review add-user`), or 'argilla' to log in with the Argilla server's users (ARGILLA_API_URL).")]


@review_app.callback()
def review_cmd(
    ctx: typer.Context,
    store: Annotated[str | None, typer.Option("--store", help="Embedded store (SQLite path) or argilla:<dataset>.")] = None,
    users: Users = None,
    host: Annotated[str, typer.Option(help="Interface to listen on (put TLS in front for anything but localhost).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    include_same_model: Annotated[bool, typer.Option(help="Also review pairs whose two answers come from the same model.")] = False,
    public_url: Annotated[str | None, typer.Option("--public-url", envvar=PUBLIC_URL_ENV, help="Address clinicians use, e.g. https://review.hospital.example behind a reverse proxy; requests from any other origin are refused, and with https only the Secure session cookie counts.")] = None,
    session_idle_minutes: Annotated[float, typer.Option(help="Sign a clinician out after this many minutes without a request.")] = 30.0,
    session_max_hours: Annotated[float, typer.Option(help="Sign a clinician out this many hours after login, active or not.")] = 12.0,
    trusted_proxy: Annotated[list[str] | None, typer.Option("--trusted-proxy", envvar=TRUSTED_PROXIES_ENV, help="Address or network of a reverse proxy in front (repeatable, or comma-separated in the env var), e.g. 127.0.0.1: only requests from it have their X-Forwarded-For believed when sign-ins are counted per client address.")] = None,
) -> None:
    """Serve the blind review app: `clinalign review --store PATH --users FILE [--port 7860]`."""
    if ctx.invoked_subcommand is not None:
        return
    if not store or not users:
        raise ClinalignError("clinalign review needs --store and --users (or a subcommand: add-user, pairs)")
    from annotation.review.accounts import ArgillaAccounts, UserBook
    from annotation.review.app import build_app
    from annotation.review.security import origin_of, parse_trusted_proxies
    from annotation.store import open_store

    if public_url is not None and origin_of(public_url) is None:
        raise ClinalignError(f"--public-url must be an http(s) URL such as https://review.hospital.example, got {public_url!r}")
    if session_idle_minutes <= 0 or session_max_hours <= 0:
        raise ClinalignError("--session-idle-minutes and --session-max-hours must be positive")
    proxies = [item for value in trusted_proxy or [] for item in value.replace(",", " ").split()]
    try:
        parse_trusted_proxies(proxies)
    except ValueError as exc:
        raise ClinalignError(f"--trusted-proxy: {exc}") from None
    if users == "argilla":
        book = ArgillaAccounts.from_env()
    else:
        book = UserBook.load(users)
        if not book.accounts:
            raise InputError("users file has no accounts; add one with `clinalign review add-user`", path=users)
    feedback_store = open_store(store)
    review = build_app(feedback_store, book, include_same_model=include_same_model)
    _, total = review.queue.progress("")
    if total == 0:
        console.print(Text.assemble(("warning:", "yellow"), f" no pairs to review in {store} "
                                    f"({review.queue.skipped_same_model} skipped: same model on both sides); "
                                    "load some with `clinalign review pairs`."))
    _, url = review.launch(host=host, port=port, public_url=public_url, session_idle_s=session_idle_minutes * 60,
                           session_max_age_s=session_max_hours * 3600, trusted_proxies=proxies)
    who = "Argilla users" if users == "argilla" else f"{len(book.accounts)} accounts"
    public = f" (public: {public_url})" if public_url else ""
    public += f" (trusted proxies: {', '.join(proxies)})" if proxies else ""
    console.print(Text.assemble(("review app", "bold green"), f" at {url}{public} · {total} pairs · {who} · Ctrl+C stops"))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        review.close()
        feedback_store.close()


@review_app.command("add-user")
def add_user_cmd(
    name: Annotated[str, typer.Argument(help="Login name (shown as annotator id in the store).")],
    users: Annotated[str, typer.Option("--users", help="Users file (created if missing).")] = "review-users.json",
    role: Annotated[str, typer.Option(help="clinician | admin (admins also see votes per clinician).")] = "clinician",
    replace: Annotated[bool, typer.Option(help="Reset the password of an existing user.")] = False,
) -> None:
    """Add a clinician account. The password comes from $CLINALIGN_REVIEW_PASSWORD or a hidden prompt."""
    from annotation.review.accounts import add_user

    password = os.environ.get(PASSWORD_ENV)
    if not password:
        password = typer.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
    new = add_user(users, name, password, role=role, replace=replace)
    stdout.print(Text.assemble(f"{'added' if new else 'reset password of'} ", (name, "bold"), f" ({role}) in {users}"))


@review_app.command("unlock")
def unlock_cmd(
    name: Annotated[str | None, typer.Argument(help="Login name to unlock.")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Client address to unlock (IPv6: its /64), as shown in the audit log.")] = None,
    users: Annotated[str, typer.Option("--users", help="Users file whose lockout state (<users>.lockouts.json) to edit.")] = "review-users.json",
) -> None:
    """Clear an account's (or with --address, a client address's) failed sign-ins and lockout; takes
    effect on a running app at its next login."""
    from annotation.review.throttle import Throttle, hhmm_utc

    if not name and not address:
        raise ClinalignError("name a user to unlock, or pass --address")
    if not Path(users).exists():
        raise InputError("users file not found", path=users)
    throttle = Throttle.beside(users)
    done = ([(name, throttle.unlock(name))] if name else []) + \
        ([(f"address {address}", throttle.unlock_address(address))] if address else [])
    for what, cleared in done:
        until = cleared["locked_until"]
        state = f"locked until {hhmm_utc(until)}" if until else "not locked"
        shown = f"address {cleared['address']}" if "address" in cleared else what
        stdout.print(Text.assemble("unlocked ", (shown, "bold"),
                                    f": was {state}, {cleared['failures']} recent failed sign-in(s) cleared"))


@review_app.command("pairs")
def pairs_cmd(
    pairs_file: Annotated[str, typer.Argument(help="JSONL of candidate pairs (prompt, response_a, response_b, model_a, model_b, ...).")],
    store: Store = "runs/default/feedback.sqlite",
) -> None:
    """Load candidate pairs from a JSONL file into the store for review (already stored pairs are skipped)."""
    from annotation.records import CandidatePair
    from annotation.store import open_store
    from clinalign_base.jsonl import read_jsonl

    pairs = []
    for line, obj in read_jsonl(pairs_file):
        missing = [k for k in ("prompt", "response_a", "response_b", "model_a", "model_b") if not obj.get(k)]
        if missing:
            raise InputError(f"missing field(s): {', '.join(missing)}", path=pairs_file, line=line)
        try:
            pair = CandidatePair.from_dict(obj)
        except (TypeError, ValueError) as exc:
            raise InputError(str(exc), path=pairs_file, line=line) from None
        if obj.get("id") and obj["id"] != pair.id:
            raise InputError(f"id {obj['id']} does not match the pair's content hash {pair.id}",
                             path=pairs_file, line=line)
        pairs.append(pair)
    s = open_store(store)
    try:
        new = s.add_pairs(pairs)
    finally:
        s.close()
    same = sum(p.model_a == p.model_b for p in pairs)
    stdout.print(f"{new} new pairs stored ({len(pairs) - new} already there) in {store}"
                  + (f"; {same} have the same model on both sides and are skipped by the review queue" if same else ""))
