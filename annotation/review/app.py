"""The blind side-by-side review app (Gradio): clinicians log in, compare two answers, vote.

What the browser gets: the question and two answers labelled A and B. Which model wrote which, and
which side of the stored pair is on the left, stay on the server (see `queue.Ticket`) until the vote
is in; then the app reveals the two models and shows the next pair. Votes go to the feedback store
as `Feedback(origin="review")` in the pair's own a/b terms, with the side mapping in `meta`.

Two script endpoints (`/next_pair`, `/vote`) serve `gradio_client` users (load tests, tools); the UI
events themselves are private. Every route sits behind `security.RequireLogin`, and everything
(Gradio's CORS layer included) behind `security.OriginPolicy`.
"""


import html
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from annotation.leaderboard import build_leaderboard, comparisons_from_feedback, plot_leaderboard
from annotation.review.accounts import ArgillaAccounts, UserBook
from annotation.review.queue import MAX_TEXT_CHARS, ReviewError, ReviewQueue, Ticket, VoteResult
from annotation.review.security import (
    ClientAddress,
    OriginPolicy,
    RequireLogin,
    Sessions,
    allowed_origins,
    origin_of,
    parse_trusted_proxies,
)
from annotation.store import FeedbackStore

TITLE = "clinalign · blind clinical review"
STRENGTHS = [("Slight", 1), ("Clear", 2), ("Strong", 3)]
CHOICE_WORDS = {"A": "Answer A is better", "B": "Answer B is better", "tie": "Tie (equally good)",
                "both_unsafe": "Both answers unsafe"}

CSS = """
.gradio-container {max-width: 1280px !important; margin: auto;}
#cr-header {display:flex; justify-content:space-between; align-items:center; padding:10px 16px;
  background:#0f2d4a; color:#fff; border-radius:8px;}
#cr-header, #cr-header * {color:#fff !important;}
#cr-header .brand {font-size:1.15rem; font-weight:600; letter-spacing:.2px;}
#cr-header .brand small {font-weight:400; opacity:.75; margin-left:10px; font-size:.9rem;}
#cr-header .who {font-size:.92rem;}
#cr-header .cr-signout {display:inline; margin:0 0 0 14px;}
#cr-header .cr-signout button {background:none; border:0; padding:0; cursor:pointer; color:#cfe3f7 !important;
  text-decoration:underline; font:inherit;}
.cr-progress {font-size:.92rem; color:#334155;}
.cr-bar {height:6px; background:#e2e8f0; border-radius:3px; margin-top:4px; overflow:hidden;}
.cr-bar > div {height:6px; background:#2563eb;}
#question {border-left:4px solid #0f2d4a; background:#f8fafc; padding:10px 16px; border-radius:4px;}
.answer {background:#fff; line-height:1.55;}
.side-label {font-weight:700; font-size:1rem; color:#0f2d4a; margin-bottom:2px;}
#vote-row button {font-size:1rem; min-height:48px;}
#reveal {min-height:1.5em;}
#reveal p {background:#f0fdf4; border:1px solid #bbf7d0; border-radius:6px; padding:6px 12px; margin:0;}
.side-label {margin-bottom:-6px !important;}
.cr-blind {font-size:.82rem; color:#64748b; margin-left:10px;}
.cr-hint {font-size:.85rem; color:#475569;}
.cr-hint kbd {border:1px solid #94a3b8; border-bottom-width:2px; border-radius:3px; padding:0 5px;
  font-family:ui-monospace,monospace; font-size:.8rem; background:#f8fafc;}
footer {display:none !important;}
"""

# Keyboard shortcuts; ignored while typing in a text box (Esc leaves the box).
SHORTCUTS_JS = """
<script>
(() => {
  const buttons = {a: "vote-a", b: "vote-b", t: "vote-tie", u: "vote-unsafe"};
  const typing = (el) => el && (el.tagName === "TEXTAREA" || el.isContentEditable ||
      (el.tagName === "INPUT" && !["radio", "checkbox", "button"].includes(el.type)));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && typing(e.target)) { e.target.blur(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || typing(e.target)) return;
    const k = e.key.toLowerCase();
    if (buttons[k]) {
      const el = document.getElementById(buttons[k]);
      if (el && !el.disabled) { e.preventDefault(); el.click(); }
    } else if (["1", "2", "3"].includes(k)) {
      const radios = document.querySelectorAll("#strength input[type=radio]");
      if (radios[+k - 1]) { e.preventDefault(); radios[+k - 1].click(); }
    } else if (k === "f") {
      const box = document.querySelector("#flag input[type=checkbox]");
      if (box) { e.preventDefault(); box.click(); }
    } else if (k === "c") {
      const acc = document.querySelector("#details > button");
      const area = document.querySelector("#comment textarea");
      if (area && area.offsetParent === null && acc) acc.click();
      e.preventDefault();
      setTimeout(() => document.querySelector("#comment textarea")?.focus(), 50);
    }
  });
})();
</script>
"""

SHORTCUT_HINT = (
    '<div class="cr-hint">Keyboard: <kbd>A</kbd> A better · <kbd>B</kbd> B better · <kbd>T</kbd> tie · '
    "<kbd>U</kbd> both unsafe · <kbd>1</kbd><kbd>2</kbd><kbd>3</kbd> strength · <kbd>F</kbd> flag for safety "
    "review · <kbd>C</kbd> comment · <kbd>Esc</kbd> leave a text box</div>")


@dataclass
class ReviewApp:
    """The Gradio Blocks plus what it serves from; `launch` starts it behind the login wall."""

    demo: Any
    queue: ReviewQueue
    users: UserBook | ArgillaAccounts

    def launch(self, *, host: str = "127.0.0.1", port: int = 7860, quiet: bool = True,
               public_url: str | None = None, session_idle_s: float = 30 * 60,
               session_max_age_s: float = 12 * 3600, trusted_proxies: Sequence[str] = ()) -> tuple[Any, str]:
        """`public_url`: the address clinicians use (e.g. https://review.hospital.example behind a
        reverse proxy); only it and the local development origins may send requests with cookies.
        `trusted_proxies`: addresses/networks of reverse proxies whose X-Forwarded-For is believed
        when sign-ins are counted per client address (otherwise the socket peer counts)."""
        from starlette.middleware import Middleware

        if public_url is not None and origin_of(public_url) is None:
            raise ValueError(f"public URL must be an http(s) URL, got {public_url!r}")
        parse_trusted_proxies(trusted_proxies)  # ValueError before anything starts
        secure_only = public_url is not None and urlsplit(public_url).scheme == "https"
        origin = Middleware(OriginPolicy, allowed=allowed_origins(public_url, port, host))
        login = Middleware(RequireLogin, secure_only=secure_only,
                           sessions=Sessions(idle_s=session_idle_s, max_age_s=session_max_age_s))
        client = Middleware(ClientAddress, trusted=tuple(trusted_proxies))
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
        _plots_off_screen()
        self.demo.queue(default_concurrency_limit=None, status_update_rate=10)
        with _uvicorn_trusts_no_proxy():
            app, url, _ = self.demo.launch(
                server_name=host, server_port=port, auth=self.users.acheck,
                auth_message=("clinalign blind review: sign in with the account your study lead gave you. After "
                              "5 failed sign-ins an account is locked for 15 minutes, and after 20 from one "
                              "network address that address is; your study lead can unlock either."),
                share=False, ssr_mode=False, mcp_server=False, prevent_thread_lock=True, quiet=quiet,
                show_error=True, enable_monitoring=False, footer_links=[], pwa=False,
                app_kwargs={"middleware": [origin, client, login], "lifespan": _outermost(origin)},
                theme=_theme(), css=CSS, head=SHORTCUTS_JS)
        if not _is_outermost(app):  # fail closed rather than serve with Gradio's CORS in front
            self.demo.close()
            raise RuntimeError("origin policy is not in front of Gradio's CORS middleware")
        if not _peer_untouched(getattr(self.demo, "server", None)):
            self.demo.close()
            raise RuntimeError("uvicorn rewrites client addresses from X-Forwarded-For; refusing to start")
        return app, url

    def close(self) -> None:
        self.demo.close()


def _outermost(policy: Any):
    """A lifespan hook that moves the origin policy in front of the middleware Gradio adds itself
    (CORS, compression). It runs before the server accepts its first connection."""

    @asynccontextmanager
    async def lifespan(app: Any):
        app.user_middleware.remove(policy)
        app.user_middleware.insert(0, policy)
        app.middleware_stack = app.build_middleware_stack()
        yield

    return lifespan


def _plots_off_screen() -> None:
    """Fix matplotlib's backend to Agg before serving. Gradio wraps every event in a context that
    asks matplotlib for its backend and switches to Agg and back; with the backend left on "auto" that
    resolves and switches pyplot backends on every vote (a third of the server's time under load)."""
    import matplotlib

    matplotlib.use("Agg")


_ENV_LOCK = threading.Lock()


@contextmanager
def _uvicorn_trusts_no_proxy() -> Iterator[None]:
    """Uvicorn believes X-Forwarded-For from 127.0.0.1 by default and overwrites the client address
    before any middleware runs, so a local client (or an undeclared proxy's client) could choose the
    address its sign-ins are counted under. `ClientAddress` decides instead (`--trusted-proxy`); here
    uvicorn is made to trust nobody. Gradio builds uvicorn's Config inside `launch`, from this variable."""
    with _ENV_LOCK:
        old = os.environ.get("FORWARDED_ALLOW_IPS")
        os.environ["FORWARDED_ALLOW_IPS"] = ""
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("FORWARDED_ALLOW_IPS", None)
            else:
                os.environ["FORWARDED_ALLOW_IPS"] = old


def _peer_untouched(server: Any) -> bool:
    """True if uvicorn's proxy-header layer (if any) trusts no loopback proxy, i.e. leaves the peer."""
    config = getattr(server, "config", None)
    if config is None:
        return False
    if not getattr(config, "proxy_headers", True):
        return True
    layer = getattr(config, "loaded_app", None)
    while layer is not None:
        hosts = getattr(layer, "trusted_hosts", None)
        if hosts is not None:
            return not any(probe in hosts for probe in ("127.0.0.1", "::1", "10.0.0.1", "192.168.0.1"))
        layer = getattr(layer, "app", None)
    return True


def _is_outermost(app: Any) -> bool:
    """True if the served stack reaches `OriginPolicy` before Gradio's CORS middleware."""
    layer = app.middleware_stack
    while layer is not None:
        if isinstance(layer, OriginPolicy):
            return True
        if type(layer).__name__ == "CustomCORSMiddleware":
            return False
        layer = getattr(layer, "app", None)
    return False


def _theme():
    import gradio as gr

    system = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
    return gr.themes.Default(primary_hue="blue", secondary_hue="slate", neutral_hue="slate",
                             radius_size="sm", font=system, font_mono=["ui-monospace", "monospace"])


# -- rendering -----------------------------------------------------------------------------------
def _header(user: str, role: str | None) -> str:
    badge = " (admin)" if role == "admin" else ""
    return (f'<div id="cr-header"><div class="brand">clinalign<small>blind side-by-side clinical review'
            f'</small></div><div class="who">Signed in as <b>{html.escape(user)}</b>{badge}'
            f'<form method="post" action="logout" class="cr-signout"><button type="submit">Sign out'
            f'</button></form></div></div>')


def _progress(done: int, total: int) -> str:
    pct = 100.0 * done / total if total else 100.0
    left = max(total - done, 0)
    return (f'<div class="cr-progress" id="progress">Reviewed <b>{done}</b> of <b>{total}</b> pairs · '
            f'{left} remaining<span class="cr-blind">Model identities are hidden until you vote; sides are '
            f'randomized.</span><div class="cr-bar"><div style="width:{pct:.1f}%"></div></div></div>')


def _reveal(result: VoteResult, choice: str) -> str:
    if not result.stored:
        head = "This pair already had your vote; nothing was changed."
    else:
        head = f"Vote recorded: *{CHOICE_WORDS.get(choice, choice)}*."
    return (f"**✓** {head} For that pair, **Answer A** came from `{result.model_shown_a}` and **Answer B** "
            f"from `{result.model_shown_b}`.")


def _md_text(text: str) -> str:
    """Escape HTML so a model's text cannot inject markup (Gradio sanitizes as well); Markdown
    formatting such as lists and bold stays, since models answer in it."""
    return html.escape(text).replace("\n", "  \n")


# -- the app -------------------------------------------------------------------------------------
def build_app(store: FeedbackStore, users: UserBook | ArgillaAccounts, *, queue: ReviewQueue | None = None,
              include_same_model: bool = False, leaderboard_bootstrap: int = 200,
              public_min_votes: int = 30, public_min_clinicians: int = 3,
              max_text_chars: int = MAX_TEXT_CHARS) -> ReviewApp:
    """`public_min_*`: clinicians see the leaderboard only once this many votes from this many
    clinicians are in, so that totals cannot be traced back to one colleague's votes (admins always)."""
    import gradio as gr

    queue = queue or ReviewQueue(store, include_same_model=include_same_model, max_text_chars=max_text_chars)

    def _user(request: gr.Request | None) -> str:
        user = getattr(request, "username", None)
        if not user:  # the login wall makes this unreachable; refuse rather than store anonymous votes
            raise gr.Error("Not signed in.")
        return user

    def _show(user: str, reveal: str) -> list:
        ticket = queue.next_ticket(user)
        done, total = queue.progress(user)
        if ticket is None:
            finished = "### All pairs reviewed\nThank you. New pairs appear here when the study lead adds them."
            off = gr.update(interactive=False)
            return [None, _progress(done, total), finished, "", "", off, off, off, off, reveal]
        left, right = ticket.displayed()
        on = gr.update(interactive=True)
        return [ticket.id, _progress(done, total), "#### Question\n" + _md_text(ticket.pair.prompt),
                _md_text(left), _md_text(right), on, on, on, on, reveal]

    def on_load(request: gr.Request):
        user = _user(request)
        return [_header(user, users.role(user)), *_show(user, "")]

    def on_vote(choice: str):
        def handler(ticket_id: str | None, strength: int, comment: str, correction: str,
                    correction_side: str | None, flagged: bool, request: gr.Request):
            return _vote(choice, ticket_id, strength, comment, correction, correction_side, flagged, request)

        return handler

    def _vote(choice: str, ticket_id: str | None, strength: int, comment: str, correction: str,
              correction_side: str | None, flagged: bool, request: gr.Request):
        user = _user(request)
        if not ticket_id:
            raise gr.Error("There is no pair open; reload the page.")
        try:
            # types are checked by the queue (no int()/bool() here: 2.7 or "no" must be refused)
            result = queue.vote(user, ticket_id, choice, strength=2 if strength is None else strength,
                                comment=comment or "", correction=correction or "",
                                correction_side=correction_side or "", flagged=False if flagged is None else flagged)
        except ReviewError as exc:
            raise gr.Error(str(exc)) from None
        return [*_show(user, _reveal(result, choice)),
                *_cleared_form(strength, comment, correction, correction_side, flagged)]

    def on_leaderboard(request: gr.Request):
        user = _user(request)
        return _leaderboard_views(store, leaderboard_bootstrap, admin=users.role(user) == "admin",
                                  min_votes=public_min_votes, min_clinicians=public_min_clinicians)

    # script endpoints (gradio_client): same queue, same rules, no model names before the vote
    def next_pair(request: gr.Request) -> dict:
        """The pair to review next for the signed-in clinician (no model names)."""
        user = _user(request)
        ticket = queue.next_ticket(user)
        done, total = queue.progress(user)
        return {"done": done, "total": total, **(_ticket_view(ticket) if ticket else {"ticket": None})}

    def vote(ticket: str, choice: str, strength: int = 2, comment: str = "", correction: str = "",
             correction_of: str = "", flagged: bool = False, request: gr.Request = None) -> dict:
        """Vote on a ticket from next_pair: choice A, B, tie or both_unsafe (displayed sides)."""
        user = _user(request)
        try:
            result = queue.vote(user, ticket, choice, strength=strength, comment=comment,
                                correction=correction, correction_side=correction_of, flagged=flagged)
        except ReviewError as exc:
            raise gr.Error(str(exc)) from None
        return result.to_dict()

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        ticket_state = gr.State(None)
        header = gr.HTML()
        with gr.Tabs():
            with gr.Tab("Review", id="review"):
                progress = gr.HTML()
                question = gr.Markdown(elem_id="question")
                with gr.Row(equal_height=True):
                    with gr.Column():
                        gr.HTML('<div class="side-label">Answer A</div>')
                        answer_a = gr.Markdown(elem_id="answer-a", elem_classes=["answer"], container=True, padding=True,
                                               min_height=240, max_height=480)
                    with gr.Column():
                        gr.HTML('<div class="side-label">Answer B</div>')
                        answer_b = gr.Markdown(elem_id="answer-b", elem_classes=["answer"], container=True, padding=True,
                                               min_height=240, max_height=480)
                with gr.Row(elem_id="vote-row"):
                    btn_a = gr.Button("◀ A is better", elem_id="vote-a", variant="primary")
                    btn_tie = gr.Button("Tie", elem_id="vote-tie", variant="secondary")
                    btn_b = gr.Button("B is better ▶", elem_id="vote-b", variant="primary")
                    btn_unsafe = gr.Button("⚠ Both unsafe", elem_id="vote-unsafe", variant="stop")
                with gr.Row():
                    strength = gr.Radio(STRENGTHS, value=2, label="Strength of preference", elem_id="strength",
                                        scale=2)
                    flag = gr.Checkbox(label="Flag this pair for safety review", elem_id="flag", scale=1)
                with gr.Accordion("Comment and correction (optional)", open=False, elem_id="details"):
                    comment = gr.Textbox(label="Comment: why you voted this way", lines=2, elem_id="comment")
                    with gr.Row():
                        correction = gr.Textbox(label="Corrected answer: rewrite one answer as it should read",
                                                lines=5, scale=4, elem_id="correction")
                        correction_side = gr.Radio(["A", "B"], label="Your correction rewrites answer",
                                                   elem_id="correction-side", scale=1)
                reveal = gr.Markdown(elem_id="reveal")
                gr.HTML(SHORTCUT_HINT)
            with gr.Tab("Leaderboard", id="leaderboard") as lb_tab:
                gr.Markdown("Bradley–Terry ratings with ties (Davidson), from all blind review votes. "
                            "Ratings are on an Elo-like scale; bars are 95% bootstrap intervals.")
                refresh = gr.Button("Refresh leaderboard", elem_id="lb-refresh")
                lb_table = gr.Dataframe(label="Models", interactive=False, elem_id="lb-models")
                lb_plot = gr.Plot(label="Ratings and win rates")
                win_table = gr.Dataframe(label="Win rate of row model against column model", interactive=False)
                voters_table = gr.Dataframe(label="Votes per clinician (admins only)", interactive=False, elem_id="lb-voters",
                                            visible=False)

        buttons = [btn_a, btn_b, btn_tie, btn_unsafe]
        shown = [ticket_state, progress, question, answer_a, answer_b, *buttons, reveal]  # what `_show` returns
        form = [strength, comment, correction, correction_side, flag]
        demo.load(on_load, None, [header, *shown], api_visibility="private")
        # Votes and the script endpoints skip Gradio's queue: one POST answered directly instead of a
        # queue join plus an event stream (about 3x lower latency with many clinicians). They are short,
        # thread-safe (ReviewQueue) and idempotent per ticket, so nothing needs the queue's ordering.
        for button, choice in zip(buttons, ("A", "B", "tie", "both_unsafe"), strict=True):
            button.click(on_vote(choice), [ticket_state, *form], [*shown, *form],
                         api_visibility="private", queue=False)
        for trigger in (refresh.click, lb_tab.select):
            trigger(on_leaderboard, None, [lb_table, lb_plot, win_table, voters_table],
                    api_visibility="private", concurrency_limit=2, concurrency_id="leaderboard")
        gr.api(next_pair, api_name="next_pair", queue=False)
        gr.api(vote, api_name="vote", queue=False)
    return ReviewApp(demo, queue, users)


def _cleared_form(strength, comment, correction, correction_side, flagged) -> list:
    """Reset only the fields the clinician changed. An update sent to a text box inside the closed
    accordion is applied when the accordion first opens, and there it can wipe what she has just
    started typing; a field already at its default gets no update at all."""
    import gradio as gr

    keep = gr.update()
    return [gr.update(value=2) if strength not in (None, 2) else keep,
            "" if comment else keep, "" if correction else keep,
            gr.update(value=None) if correction_side else keep, False if flagged else keep]


def _ticket_view(ticket: Ticket) -> dict:
    left, right = ticket.displayed()
    return {"ticket": ticket.id, "prompt": ticket.pair.prompt, "answer_a": left, "answer_b": right}


def _win_cell(lb, a: str, b: str) -> str:
    if a == b:
        return "—"
    rate = lb.win_rates[a].get(b)
    return "" if rate is None else f"{rate:.2f} (n={lb.games[a][b]})"


def _leaderboard_views(store: FeedbackStore, n_bootstrap: int, *, admin: bool, min_votes: int,
                       min_clinicians: int) -> list:
    import gradio as gr
    import pandas as pd

    pairs = {p.id: p for p in store.iter_pairs()}
    comps = comparisons_from_feedback(store.iter_feedback(), pairs)
    note = None
    if not comps:
        note = "No review votes between two different models yet."
    elif not admin and (len(comps) < min_votes or len({c.annotator for c in comps}) < min_clinicians):
        note = (f"The leaderboard opens to clinicians once {min_votes} votes from {min_clinicians} clinicians "
                f"are in ({len(comps)} so far).")
    if note:
        return [pd.DataFrame({"note": [note]}), None, pd.DataFrame(), gr.update(visible=False)]
    lb = build_leaderboard(comps, n_bootstrap=n_bootstrap)
    table = pd.DataFrame([{"rank": k + 1, "model": r.model, "rating": r.rating,
                           "95% CI": f"{r.ci_low:.0f} – {r.ci_high:.0f}", "votes": r.votes, "wins": r.wins,
                           "losses": r.losses, "ties": r.ties, "both unsafe": r.both_unsafe,
                           "flagged": r.flagged} for k, r in enumerate(lb.models)])
    names = [r.model for r in lb.models]
    wins = pd.DataFrame([{"model": a, **{b: _win_cell(lb, a, b) for b in names}} for a in names])
    fig = plot_leaderboard(lb)
    voters = gr.update(visible=False)
    if admin:  # per-clinician figures are for the study lead, never for other clinicians
        voters = gr.update(visible=True, value=pd.DataFrame([
            {"clinician": v.annotator, "votes": v.votes, "ties": v.ties, "both unsafe": v.both_unsafe,
             "flagged": v.flagged, "against consensus": v.against_consensus, "expected": v.expected_against,
             "z": v.z, "outlier": "YES" if v.outlier else "", "median s/vote": v.median_seconds}
            for v in lb.voters]))
    return [table, fig, wins, voters]
