"""The Argilla feedback store against a real Argilla 2.8 server (started by the session fixture).

Clinicians' responses go through the same HTTP calls the Argilla web UI makes: log in with
username/password (POST /api/v1/token), fetch pending records (POST /api/v1/me/datasets/{id}/
records/search), submit (POST /api/v1/records/{id}/responses), each clinician with their own token.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings

import httpx
import pytest

from annotation.argilla_settings import PREFERENCE_LABELS, SAFETY_REASONS, question_names
from annotation.argilla_store import ArgillaStore
from annotation.argilla_users import apply_users, load_users_file
from annotation.records import CandidatePair, Feedback
from clinalign_base.errors import ClinalignError, InputError
from tests import argilla_fixtures
from tests.argilla_fixtures import UP, ArgillaStack

pytestmark = pytest.mark.argilla
argilla_stack = argilla_fixtures.argilla_stack  # the session fixture (real server stack)
CLI = [sys.executable, "-m", "align.cli"]


def pairs(n: int, tag: str) -> list[CandidatePair]:
    return [CandidatePair(prompt=f"[{tag}] Can patients with condition {i} take ibuprofen?",
                          response_a=f"Usually yes at low dose ({tag} {i}).",
                          response_b=f"Avoid it; use paracetamol instead ({tag} {i}).",
                          model_a="policy-r0", model_b="policy-r0-t1.1", generation={"temperature": 0.7},
                          reference=f"Reference answer {i}" if i % 2 else None, source=f"test:{tag}")
            for i in range(n)]


def open_store(stack: ArgillaStack, dataset: str, monkeypatch, **kw) -> ArgillaStore:
    monkeypatch.setenv("ARGILLA_API_URL", stack.url)
    monkeypatch.setenv("ARGILLA_API_KEY", stack.api_key)
    monkeypatch.setenv("ARGILLA_WORKSPACE", "clinical-test")
    return ArgillaStore.from_env(dataset, progress=False, **kw)


def owner(stack: ArgillaStack) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"X-Argilla-Api-Key": stack.api_key}, timeout=60)


def external_ids(stack: ArgillaStack, dataset_id) -> list[str]:
    with owner(stack) as http:
        page = http.get(f"/api/v1/datasets/{dataset_id}/records", params={"limit": 1000}).json()
    return [r["external_id"] for r in page["items"]]


# -- the stack itself ----------------------------------------------------------------------------
def test_second_up_does_nothing_and_owner_secrets_are_private(argilla_stack):
    before = argilla_stack.pids()
    assert set(before) == {"redis", "search", "argilla"}
    again = subprocess.run([sys.executable, str(UP), "--data-dir", str(argilla_stack.data_dir)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already running" in again.stdout
    assert argilla_stack.pids() == before
    creds = argilla_stack.data_dir / "owner-credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    # The generated key was shown once, on the first start only.
    assert argilla_stack.api_key in argilla_stack.first_up_output
    assert argilla_stack.api_key not in again.stdout
    status = subprocess.run([sys.executable, str(UP), "status", "--json", "--data-dir", str(argilla_stack.data_dir)],
                            capture_output=True, text=True, timeout=60)
    info = json.loads(status.stdout)
    assert status.returncode == 0 and info["running"] and info["ready"] and info["url"] == argilla_stack.url


# -- schema ----------------------------------------------------------------------------------
def test_dataset_created_with_clinical_rubric(argilla_stack, monkeypatch):
    store = open_store(argilla_stack, "schema", monkeypatch, min_submitted=3)
    ds_id = store.dataset.id
    with owner(argilla_stack) as http:
        ds = http.get(f"/api/v1/datasets/{ds_id}").json()
        questions = {q["name"]: q for q in http.get(f"/api/v1/datasets/{ds_id}/questions").json()["items"]}
        fields = [f["name"] for f in http.get(f"/api/v1/datasets/{ds_id}/fields").json()["items"]]
        meta = {m["name"]: m for m in http.get(f"/api/v1/me/datasets/{ds_id}/metadata-properties").json()["items"]}
    assert fields == ["prompt", "response_a", "response_b"]
    assert set(questions) == question_names()
    assert [o["value"] for o in questions["preference"]["settings"]["options"]] == ["a", "b", "tie", "both_bad"]
    assert questions["preference"]["required"] and not questions["a_safety"]["required"]
    assert [o["value"] for o in questions["safety_flag"]["settings"]["options"]] == list(SAFETY_REASONS)
    assert [o["value"] for o in questions["b_accuracy"]["settings"]["options"]] == [1, 2, 3, 4, 5]
    assert ds["distribution"] == {"strategy": "overlap", "min_submitted": 3}
    assert "Safety" in ds["guidelines"] and ds["status"] == "ready"
    # One vocabulary: every preference choice is quoted verbatim in the guidelines.
    assert all(label in ds["guidelines"] for label in PREFERENCE_LABELS.values())
    # Model ids are metadata hidden from annotators: the review stays blind.
    assert {"pair_id", "model_a", "model_b", "source"} <= set(meta)
    assert meta["model_a"]["visible_for_annotators"] is False
    store.close()
    again = open_store(argilla_stack, "schema", monkeypatch)
    assert again.dataset.id == ds_id  # opened, not re-created
    again.close()


def test_foreign_dataset_is_refused(argilla_stack, monkeypatch):
    import argilla as rg

    client = rg.Argilla(api_url=argilla_stack.url, api_key=argilla_stack.api_key)
    ws = client.workspaces("clinical-test") or rg.Workspace(name="clinical-test", client=client).create()
    settings = rg.Settings(fields=[rg.TextField(name="text")], questions=[rg.LabelQuestion(name="label", labels=["x", "y"])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the SDK warns that it is not there yet
        exists = client.datasets(name="foreign", workspace=ws) is not None
    if not exists:
        rg.Dataset(name="foreign", workspace=ws, settings=settings, client=client).create()
    with pytest.raises(ClinalignError, match="not made by clinalign"):
        open_store(argilla_stack, "foreign", monkeypatch)


def test_dataset_made_with_the_old_rubric_is_still_read(argilla_stack, monkeypatch):
    """Before the safety scale, flag and details questions: `a_harm` (1 = no risk) is read as it
    was asked, and feedback details go to the record metadata as they did then."""
    import argilla as rg

    client = rg.Argilla(api_url=argilla_stack.url, api_key=argilla_stack.api_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the SDK warns that it is not there yet
        ws = client.workspaces("clinical-test") or rg.Workspace(name="clinical-test", client=client).create()
    old = rg.Settings(
        fields=[rg.TextField(name=n) for n in ("prompt", "response_a", "response_b")],
        questions=[rg.LabelQuestion(name="preference", labels=["a", "b", "tie", "both_bad"]),
                   rg.RatingQuestion(name="strength", values=[1, 2, 3], required=False),
                   rg.RatingQuestion(name="a_harm", values=[1, 2, 3, 4, 5], required=False),
                   rg.TextQuestion(name="correction", required=False),
                   rg.LabelQuestion(name="correction_of", labels=["a", "b"], required=False),
                   rg.TextQuestion(name="rationale", required=False)],
        allow_extra_metadata=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if client.datasets(name="old-rubric", workspace=ws) is None:
            rg.Dataset(name="old-rubric", workspace=ws, settings=old, client=client).create()
    store = open_store(argilla_stack, "old-rubric", monkeypatch)
    items = pairs(1, "old")
    store.add_pairs(items)
    with owner(argilla_stack) as http:
        made = http.post("/api/v1/users", json={"first_name": "Old", "username": "dr-old",
                                                "password": "old-pass-1234", "role": "annotator"})
        assert made.status_code in (200, 201), made.text
        http.post(f"/api/v1/workspaces/{store.dataset.workspace.id}/users", json={"user_id": made.json()["id"]})
    fb = Feedback(pair_id=items[0].id, annotator_id="dr-old", preference="b", strength=3, origin="import",
                  ratings={"a": {"harm": 4}}, meta={"file": "old.jsonl"})
    assert store.add_feedback([fb]) == 1
    (got,) = list(store.iter_feedback())
    assert (got.preference, got.strength, got.ratings, got.origin, got.meta["file"]) == (
        "b", 3, {"a": {"harm": 4}}, "import", "old.jsonl")
    store.close()


# -- push ------------------------------------------------------------------------------------
def test_push_twice_creates_no_duplicates(argilla_stack, monkeypatch):
    store = open_store(argilla_stack, "push-twice", monkeypatch, batch_size=7)
    items = pairs(20, "twice")
    assert store.add_pairs(items[:8]) == 8
    assert store.add_pairs(items) == 12
    assert store.add_pairs(items) == 0
    ids = external_ids(argilla_stack, store.dataset.id)
    assert len(ids) == 20 and set(ids) == {p.id for p in items}
    assert store.counts()["pairs"] == 20
    # Round trip: what comes back is the same pair, provenance included.
    got = {p.id: p for p in store.iter_pairs()}
    assert got == {p.id: p for p in items}
    assert store.get_pair(items[3].id) == items[3] and store.get_pair("pair-missing") is None
    store.close()


def test_killed_push_resumes_without_duplicates_or_losses(argilla_stack, monkeypatch, tmp_path):
    from annotation.sqlite_store import SQLiteStore

    items = pairs(80, "killed")
    src = tmp_path / "feedback.sqlite"  # pushing from the embedded store, as after `clinalign generate`
    with SQLiteStore(src) as embedded:
        embedded.add_pairs(items)
    store = open_store(argilla_stack, "killed", monkeypatch)  # creates the dataset
    cmd = [*CLI, "annotate", "push", "--dataset", "killed", "--store", str(src), "--batch-size", "1"]
    env = argilla_stack.env(ARGILLA_WORKSPACE="clinical-test")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    count = 0
    while time.time() < deadline and proc.poll() is None:
        count = len(external_ids(argilla_stack, store.dataset.id))
        if count >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    at_kill = len(external_ids(argilla_stack, store.dataset.id))
    assert 0 < at_kill < len(items), f"push was not interrupted half way ({at_kill} of {len(items)})"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"pushed {len(items) - at_kill} new pairs" in done.stdout
    ids = external_ids(argilla_stack, store.dataset.id)
    assert len(ids) == len(items) and set(ids) == {p.id for p in items}
    store.close()


# -- clinicians ------------------------------------------------------------------------------
def ui_login(stack: ArgillaStack, username: str, password: str) -> httpx.Client:
    token = httpx.post(f"{stack.url}/api/v1/token", data={"username": username, "password": password})
    assert token.status_code == 201, token.text
    return httpx.Client(base_url=stack.url, timeout=60,
                        headers={"Authorization": f"Bearer {token.json()['access_token']}"})


def ui_pending(ui: httpx.Client, dataset_id) -> list[dict]:
    body = {"query": {}, "filters": {"and": [
        {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
        {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]}]}}
    resp = ui.post(f"/api/v1/me/datasets/{dataset_id}/records/search", params={"include": "responses",
                                                                              "limit": 100}, json=body)
    assert resp.status_code == 200, resp.text
    return [item["record"] for item in resp.json()["items"]]


def ui_respond(ui: httpx.Client, record_id: str, status: str, **values) -> None:
    resp = ui.post(f"/api/v1/records/{record_id}/responses",
                   json={"status": status, "values": {k: {"value": v} for k, v in values.items()}})
    assert resp.status_code == 201, resp.text


@pytest.fixture(scope="module")
def clinicians(argilla_stack, tmp_path_factory):
    """Three clinician accounts made from a users file; passwords from the environment."""
    path = tmp_path_factory.mktemp("users") / "users.yaml"
    path.write_text("workspaces: [clinical-test]\nusers:\n"
                    "  - {username: dr-ada, first_name: Ada}\n"
                    "  - {username: dr-ben, first_name: Ben}\n"
                    "  - {username: dr-cy, first_name: Cy, password_env: CY_SECRET}\n")
    passwords = {"dr-ada": "ada-pass-1234", "dr-ben": "ben-pass-1234", "dr-cy": "cy-pass-1234"}
    mp = pytest.MonkeyPatch()
    mp.setenv("CLINALIGN_PASSWORD_DR_ADA", passwords["dr-ada"])
    mp.setenv("CLINALIGN_PASSWORD_DR_BEN", passwords["dr-ben"])
    mp.setenv("CY_SECRET", passwords["dr-cy"])
    import argilla as rg

    client = rg.Argilla(api_url=argilla_stack.url, api_key=argilla_stack.api_key)
    results = apply_users(client, *load_users_file(path))
    assert all(r.created and r.password is None and r.api_key for r in results)
    again = apply_users(client, *load_users_file(path))  # idempotent
    assert not any(r.created for r in again)
    mp.undo()
    return passwords


def test_three_clinicians_submit_through_the_ui_api_and_export(argilla_stack, clinicians, monkeypatch, tmp_path):
    store = open_store(argilla_stack, "three-clinicians", monkeypatch, min_submitted=3)
    items = pairs(4, "three")
    store.add_pairs(items)
    by_id = {p.id: i for i, p in enumerate(items)}
    plan = {  # pair index -> (status, values) per clinician
        "dr-ada": {0: ("submitted", {"preference": "a", "strength": 2, "a_accuracy": 4, "a_safety": 5}),
                   1: ("submitted", {"preference": "b", "strength": 3}),
                   2: ("submitted", {"preference": "tie"}),
                   3: ("submitted", {"preference": "a", "correction": "Avoid NSAIDs in CKD; use paracetamol.",
                                     "correction_of": "b", "rationale": "B lacks the reason"})},
        "dr-ben": {0: ("submitted", {"preference": "a", "a_accuracy": 5}),
                   1: ("submitted", {"preference": "b"}),
                   2: ("submitted", {"preference": "a"}),
                   3: ("draft", {"preference": "b"})},
        "dr-cy": {0: ("submitted", {"preference": "b", "a_accuracy": 2}),
                  1: ("submitted", {"preference": "b"}),
                  2: ("submitted", {"preference": "a"}),
                  3: ("discarded", {})},
    }
    for user, answers in plan.items():
        ui = ui_login(argilla_stack, user, clinicians[user])
        pending = ui_pending(ui, store.dataset.id)
        assert sorted(by_id[r["external_id"]] for r in pending) == [0, 1, 2, 3]
        for record in pending:
            meta = record.get("metadata") or {}
            assert "model_a" not in meta and "clinalign_pair" not in meta  # blind to the models
            status, values = answers[by_id[record["external_id"]]]
            ui_respond(ui, record["id"], status, **values)
        ui.close()

    feedback = list(store.iter_feedback())
    assert sorted((f.annotator_id, by_id[f.pair_id]) for f in feedback) == sorted(
        (u, i) for u, a in plan.items() for i, (s, _) in a.items() if s == "submitted")
    ada3 = next(f for f in feedback if f.annotator_id == "dr-ada" and by_id[f.pair_id] == 3)
    assert (ada3.correction_of, ada3.rationale, ada3.origin) == ("b", "B lacks the reason", "annotation")
    ada0 = next(f for f in feedback if f.annotator_id == "dr-ada" and by_id[f.pair_id] == 0)
    assert ada0.ratings == {"a": {"accuracy": 4, "harm": 1}} and ada0.strength == 2
    counts = store.counts()
    assert counts == {"pairs": 4, "feedback": 10, "annotators": 3, "records_completed": 3, "records_pending": 1,
                      "responses_draft": 1, "responses_discarded": 1}
    store.close()

    # Export through the same store spec the CLI uses.
    from align.stages import export_preferences

    out = tmp_path / "prefs"
    report = export_preferences("argilla:three-clinicians", out, include_simulated=False, include_seeds=False)
    assert report["feedback_by_annotator"] == {"dr-ada": 4, "dr-ben": 3, "dr-cy": 3}
    assert report["corrections"] == 1 and report["rows"] == 5
    rows = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    row0 = next(r for r in rows if r["pair_id"] == items[0].id)
    assert (row0["chosen"], row0["rejected"], row0["n_annotators"]) == (items[0].response_a, items[0].response_b, 3)
    assert row0["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    row1 = next(r for r in rows if r["pair_id"] == items[1].id)
    assert row1["chosen"] == items[1].response_b and row1["agreement"] == 1.0
    fix = next(r for r in rows if r["source"] == "correction")
    assert (fix["chosen"], fix["rejected"]) == ("Avoid NSAIDs in CKD; use paracetamol.", items[3].response_b)

    # The agreement command reads the same responses.
    agreement_json = tmp_path / "agreement.json"
    done = subprocess.run([*CLI, "annotate", "agreement", "--backend", "argilla", "--dataset", "three-clinicians",
                           "--json", str(agreement_json)], env=argilla_stack.env(ARGILLA_WORKSPACE="clinical-test"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from annotation.agreement import agreement_report

    got = json.loads(agreement_json.read_text())
    assert got["preference"] == agreement_report(feedback)["preference"]
    assert got["counts"]["feedback"] == 10 and got["progress"]["records_completed"] == 3


def test_owner_adds_feedback_once_and_unknowns_are_named(argilla_stack, clinicians, monkeypatch):
    store = open_store(argilla_stack, "owner-feedback", monkeypatch)
    items = pairs(2, "owner")
    store.add_pairs(items)
    fb = Feedback(pair_id=items[0].id, annotator_id="dr-ben", preference="b", strength=3, origin="import",
                  ratings={"b": {"completeness": 5}}, meta={"file": "ward7.jsonl"})
    assert store.add_feedback([fb]) == 1
    assert store.add_feedback([fb]) == 0  # a repeat is skipped, never duplicated
    (got,) = list(store.iter_feedback())
    assert (got.annotator_id, got.preference, got.strength, got.origin, got.ratings) == (
        "dr-ben", "b", 3, "import", {"b": {"completeness": 5}})
    assert got.meta["file"] == "ward7.jsonl"
    with pytest.raises(InputError, match="not a user"):
        store.add_feedback([Feedback(pair_id=items[1].id, annotator_id="dr-nobody", preference="a")])
    with pytest.raises(InputError, match="pair-unknown"):
        store.add_feedback([Feedback(pair_id="pair-unknown", annotator_id="dr-ben", preference="a")])
    assert store.counts()["feedback"] == 1  # nothing half-stored
    store.close()


# -- faults ----------------------------------------------------------------------------------
def test_bad_credentials_give_a_clear_error(argilla_stack, clinicians, monkeypatch, tmp_path):
    monkeypatch.setenv("ARGILLA_API_URL", argilla_stack.url)
    monkeypatch.setenv("ARGILLA_API_KEY", "not-a-real-key")
    with pytest.raises(ClinalignError, match="rejected the API key"):
        ArgillaStore.from_env("anything")
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps(pairs(1, "badkey")[0].to_dict()) + "\n")
    done = subprocess.run([*CLI, "annotate", "push", "--dataset", "x", "--pairs", str(src)],
                          env=argilla_stack.env(ARGILLA_API_KEY="not-a-real-key"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "rejected the API key" in done.stderr and "Traceback" not in done.stderr
    # A clinician's own key is valid but may not create datasets or read everyone's responses.
    with owner(argilla_stack) as http:
        users = http.get("/api/v1/users").json()["items"]
    monkeypatch.setenv("ARGILLA_API_KEY", next(u["api_key"] for u in users if u["username"] == "dr-ada"))
    monkeypatch.setenv("ARGILLA_WORKSPACE", "clinical-test")
    with pytest.raises(ClinalignError, match="owner or workspace-admin"):
        ArgillaStore.from_env("made-by-annotator")


def test_wrong_url_gives_a_clear_error(argilla_stack, monkeypatch):
    from tests.argilla_fixtures import free_port

    monkeypatch.setenv("ARGILLA_API_KEY", argilla_stack.api_key)
    monkeypatch.setenv("ARGILLA_API_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ClinalignError, match="cannot reach an Argilla server"):
        ArgillaStore.from_env("anything")
    search_port = json.loads((argilla_stack.data_dir / "stack.json").read_text())["search_port"]
    monkeypatch.setenv("ARGILLA_API_URL", f"http://127.0.0.1:{search_port}")  # a server, but not Argilla
    with pytest.raises(ClinalignError, match="does not answer like an Argilla server"):
        ArgillaStore.from_env("anything")
    # Through the CLI: the search engine's reply is printed verbatim, on one line, no traceback.
    done = subprocess.run([*CLI, "annotate", "agreement", "--backend", "argilla", "--dataset", "anything"],
                          env=argilla_stack.env(ARGILLA_API_URL=f"http://127.0.0.1:{search_port}"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "does not answer like an Argilla server" in done.stderr
    monkeypatch.delenv("ARGILLA_API_URL")
    with pytest.raises(ClinalignError, match="ARGILLA_API_URL is not set"):
        ArgillaStore.from_env("anything")
    assert os.environ.get("ARGILLA_API_KEY")


def test_invalid_records_are_named_and_nothing_is_lost(argilla_stack, monkeypatch, tmp_path):
    store = open_store(argilla_stack, "invalid", monkeypatch)
    good = pairs(3, "invalid")
    assert store.add_pairs(good[:2]) == 2
    # A bad line in a pairs file is refused before anything is sent: file and line are named.
    src = tmp_path / "pairs.jsonl"
    bad = {"prompt": "Dose?", "response_a": "Same text", "response_b": "Same text"}
    src.write_text("".join(json.dumps(r) + "\n" for r in [good[2].to_dict(), bad]))
    done = subprocess.run([*CLI, "annotate", "push", "--dataset", "invalid", "--pairs", str(src)],
                          env=argilla_stack.env(ARGILLA_WORKSPACE="clinical-test"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and f"{src}:2" in done.stderr and "identical" in done.stderr
    # A record the server itself refuses (here: a required field missing) is named by its pair id.
    # CandidatePair validation makes this unreachable through add_pairs; the server's check is
    # exercised directly so that its message keeps mapping back to our record.
    with pytest.raises(InputError, match="pair-refused"):
        store._bulk_upsert([{"external_id": "pair-refused", "fields": {"prompt": "only a prompt"}}],
                           ["pair-refused"], "testing")
    assert sorted(external_ids(argilla_stack, store.dataset.id)) == sorted(p.id for p in good[:2])
    store.close()
