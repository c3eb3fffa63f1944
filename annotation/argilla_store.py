"""FeedbackStore on a real Argilla 2.8 server: pairs are records, clinicians' submitted responses
are feedback.

- Record `external_id` = pair id (a content hash), so pushing the same pairs again, or re-running
  a push that was interrupted, adds only what is missing: no duplicates, nothing lost. Records
  already on the server are never rewritten by a push (their responses stay untouched).
- Reading goes through the owner/admin record listing (database-backed, paginated), so progress
  and counts are computed from records, not from the server's metrics endpoint (which counts 0
  submitted with the noida search engine).
- Each feedback is its clinician's own response; what the rubric has no question for (origin,
  the review app's side mapping and timing) is JSON in that response's details answer, so several
  processes can add feedback to one dataset at once without overwriting each other.
- The SDK (`argilla`) creates workspaces, datasets and settings; records and responses go through
  its authenticated HTTP client, because the SDK's record iterator drops response timestamps and
  its `log()` overwrites existing records.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import httpx

from annotation.argilla_settings import (
    CORRECTION_OF_Q,
    CORRECTION_Q,
    DEFAULT_STRENGTH,
    DETAILS_Q,
    FIELDS,
    PAIR_META_KEY,
    PREFERENCE_Q,
    PRIORITY_META,
    PRIORITY_TITLE,
    RATIONALE_Q,
    SAFETY_FLAG_Q,
    SAFETY_REASONS,
    STRENGTH_Q,
    build_settings,
    check_name,
    legacy_rating_question_name,
    question_names,
    rating_question_name,
    required_question_names,
)
from annotation.errors import ClinalignError, InputError
from annotation.records import RATING_KEYS, CandidatePair, Feedback

# Datasets made before the details question kept feedback details (origin, flag, meta) per
# annotator in the record's hidden metadata: still read, and still written there for such datasets.
FEEDBACK_META_KEY = "clinalign_feedback"
_SAFETY_TO_HARM = 6  # safety 1..5 (5 = no risk) <-> harm 5..1 (5 = severe harm)
_HIDDEN_FROM_CLINICIAN = ("model_a", "model_b")  # kept on the record (hidden), not in the response
DEFAULT_WORKSPACE = "clinalign"
DEFAULT_BATCH = 100
_PAGE = 1000  # the server's maximum page size for record listing
_UPSERT_MAX = 500  # the server's maximum bulk size


def _connect(api_url: str, api_key: str, timeout: float = 60.0) -> Any:
    """An authenticated `argilla.Argilla` client, or a ClinalignError that says what is wrong."""
    import argilla as rg
    from argilla._exceptions import ArgillaCredentialsError, ArgillaError

    try:
        return rg.Argilla(api_url=api_url, api_key=api_key, timeout=timeout, retries=2)
    except ArgillaCredentialsError:
        raise ClinalignError(f"the Argilla server at {api_url} rejected the API key (401): check "
                             "ARGILLA_API_KEY") from None
    except httpx.ConnectError as exc:
        raise ClinalignError(f"cannot reach an Argilla server at {api_url} ({exc}): is it running? "
                             "(`clinalign argilla status`; check ARGILLA_API_URL)") from None
    except httpx.TimeoutException:
        raise ClinalignError(f"the Argilla server at {api_url} did not answer within {timeout:.0f} s") from None
    except (httpx.HTTPError, ArgillaError) as exc:
        raise ClinalignError(f"{api_url} does not answer like an Argilla server "
                             f"(GET /api/v1/me: {exc}); check ARGILLA_API_URL") from None


def _utc_iso(stamp: str) -> str:
    """Server timestamps are naive UTC; give them an explicit offset like the other stores."""
    dt = datetime.fromisoformat(stamp)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.isoformat(timespec="seconds")


def pair_to_record(pair: CandidatePair) -> dict[str, Any]:
    """The bulk-upsert item for a pair (fields the clinicians see; provenance hidden in metadata)."""
    provenance = {k: v for k, v in pair.to_dict().items() if k not in ("id", *FIELDS)}
    try:
        json.dumps(provenance)
    except (TypeError, ValueError) as exc:
        raise InputError(f"pair provenance is not JSON-serialisable: {exc}", record=pair.id) from None
    return {
        "external_id": pair.id,
        "fields": {name: getattr(pair, name) for name in FIELDS},
        "metadata": {
            "pair_id": pair.id,
            "model_a": pair.model_a,
            "model_b": pair.model_b,
            "source": pair.source,
            PAIR_META_KEY: provenance,
        },
    }


def record_to_pair(record: dict[str, Any]) -> CandidatePair:
    meta = record.get("metadata") or {}
    prov = dict(meta.get(PAIR_META_KEY) or {})
    prov.setdefault("model_a", meta.get("model_a", "unknown"))
    prov.setdefault("model_b", meta.get("model_b", "unknown"))
    fields = record.get("fields") or {}
    try:
        return CandidatePair.from_dict({**prov, **{k: fields.get(k, "") for k in FIELDS}})
    except (TypeError, ValueError) as exc:
        raise InputError(f"Argilla record is not a valid pair: {exc}",
                         record=str(record.get("external_id") or record.get("id"))) from None


def feedback_to_values(fb: Feedback, questions: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """A Feedback as Argilla response values for a dataset with these questions (default: the
    current rubric). Strength is left out after tie/both bad (the rubric asks it only when a side
    is preferred); origin, flag reasons and meta go to the clinician's own details answer."""
    questions = question_names() if questions is None else questions
    values: dict[str, Any] = {PREFERENCE_Q: fb.preference}
    if fb.preference in ("a", "b"):
        values[STRENGTH_Q] = fb.strength
    for side, ratings in fb.ratings.items():
        for key, value in ratings.items():
            current, legacy = rating_question_name(side, key), legacy_rating_question_name(side, key)
            if current == legacy or current not in questions:
                values[legacy] = value
            else:  # harm asked as safety: 1 = severe harm ... 5 = no risk
                values[current] = _SAFETY_TO_HARM - value
    if fb.correction:
        values[CORRECTION_Q] = fb.correction
        values[CORRECTION_OF_Q] = fb.correction_of
    if fb.rationale:
        values[RATIONALE_Q] = fb.rationale
    if SAFETY_FLAG_Q in questions and fb.flagged:
        reasons = [r for r in (fb.meta.get("safety_reasons") or []) if r in SAFETY_REASONS]
        values[SAFETY_FLAG_Q] = reasons or ["other"]
    if DETAILS_Q in questions:
        details = feedback_details(fb)
        if details:
            values[DETAILS_Q] = json.dumps(details, sort_keys=True, separators=(",", ":"))
    return {name: {"value": value} for name, value in values.items()}


def feedback_details(fb: Feedback) -> dict[str, Any]:
    """What the rubric has no question for: origin and meta (model ids stay on the hidden record)."""
    meta = {k: v for k, v in fb.meta.items() if k not in (*_HIDDEN_FROM_CLINICIAN, "safety_reasons")}
    details: dict[str, Any] = {}
    if fb.origin != "annotation":
        details["origin"] = fb.origin
    if meta:
        details["meta"] = meta
    if fb.flagged and not details:
        details["flagged"] = True  # keeps the flag on datasets whose rubric has no flag question
    return details


def _parse_details(text: Any) -> tuple[dict[str, Any], str | None]:
    """(details, leftover text): a clinician who typed into the details box keeps the text in meta."""
    if not isinstance(text, str) or not text.strip():
        return {}, None
    try:
        got = json.loads(text)
    except ValueError:
        return {}, text.strip()
    if not isinstance(got, dict):
        return {}, text.strip()
    return got, None


def response_to_feedback(pair_id: str, username: str, response: dict[str, Any],
                         extra: dict[str, Any] | None = None,
                         record_meta: dict[str, Any] | None = None) -> Feedback:
    """One submitted Argilla response as a Feedback (InputError naming record and user if invalid).

    `extra` is the annotator's entry in the record's legacy feedback metadata (older datasets);
    the response's own details answer takes precedence over it."""
    vals = {k: (v or {}).get("value") for k, v in (response.get("values") or {}).items()}
    text = {k: (vals.get(k) or "").strip() or None for k in (CORRECTION_Q, RATIONALE_Q)}
    ratings: dict[str, dict[str, int]] = {}
    for side in ("a", "b"):
        got: dict[str, int] = {}
        for key in RATING_KEYS:
            current, legacy = rating_question_name(side, key), legacy_rating_question_name(side, key)
            if current != legacy and isinstance(vals.get(current), int):
                got[key] = _SAFETY_TO_HARM - vals[current]
            elif vals.get(legacy) is not None:
                got[key] = vals[legacy]
        if got:
            ratings[side] = got
    meta: dict[str, Any] = {"argilla_record_id": response.get("record_id"),
                            "argilla_response_id": response.get("id")}
    preference = vals.get(PREFERENCE_Q)
    strength = vals.get(STRENGTH_Q)
    if preference not in ("a", "b"):
        if strength is not None:
            meta["strength_ignored"] = strength  # asked only when a side is preferred
        strength = None
    correction_of = vals.get(CORRECTION_OF_Q)
    if text[CORRECTION_Q] and correction_of not in ("a", "b"):
        # The guidelines: an unassigned correction rewrites the preferred answer (A on tie/both bad).
        correction_of = preference if preference in ("a", "b") else "a"
        meta["correction_of_inferred"] = True
    details, typed = _parse_details(vals.get(DETAILS_Q))
    extra = {**(extra or {}), **details}
    if typed:
        meta["details_text"] = typed
    if extra.get("origin") == "review" and record_meta:
        meta.update({k: record_meta[k] for k in _HIDDEN_FROM_CLINICIAN if k in record_meta})
    meta.update(extra.get("meta") or {})
    reasons = [r for r in (vals.get(SAFETY_FLAG_Q) or []) if isinstance(r, str)]
    if reasons:
        meta["safety_reasons"] = reasons
    try:
        return Feedback(
            pair_id=pair_id, annotator_id=username, preference=preference,
            strength=strength or DEFAULT_STRENGTH, ratings=ratings, correction=text[CORRECTION_Q],
            correction_of=correction_of if text[CORRECTION_Q] else None, rationale=text[RATIONALE_Q],
            origin=extra.get("origin", "annotation"), flagged=bool(reasons or extra.get("flagged", False)),
            meta=meta,
            submitted_at=_utc_iso(response["updated_at"]) if response.get("updated_at") else
            datetime.now(timezone.utc).isoformat(timespec="seconds"))
    except ValueError as exc:
        raise InputError(f"submitted response is not valid feedback: {exc}",
                         record=f"{pair_id} by {username}") from None


class ArgillaStore:
    """FeedbackStore on one Argilla dataset (created with the clinical settings when missing)."""

    def __init__(self, client: Any, dataset: str, workspace: str = DEFAULT_WORKSPACE, *,
                 min_submitted: int = 2, create: bool = True, batch_size: int = DEFAULT_BATCH,
                 progress: bool = True):
        self.client = client
        self.api_url = str(client.api.http_client.base_url).rstrip("/")
        self.dataset_name, self.workspace_name = dataset, workspace
        self.batch_size = max(1, min(int(batch_size), _UPSERT_MAX))
        self.progress = progress
        self._http: httpx.Client = client.api.http_client
        self.dataset = self._open_dataset(min_submitted, create)
        self._pairs_cache: dict[str, CandidatePair] | None = None

    @classmethod
    def from_env(cls, dataset: str, *, create: bool = True, **kwargs: Any) -> ArgillaStore:
        """Connect with ARGILLA_API_URL / ARGILLA_API_KEY; workspace from ARGILLA_WORKSPACE."""
        if not dataset or not dataset.strip():
            raise ClinalignError("an Argilla store needs a dataset name (argilla:<dataset>)")
        if create:  # refused before connecting, so nothing is created under a mangled name
            _check_names(dataset.strip(), os.environ.get("ARGILLA_WORKSPACE", "").strip() or DEFAULT_WORKSPACE)
        url = os.environ.get("ARGILLA_API_URL", "").strip()
        key = os.environ.get("ARGILLA_API_KEY", "").strip()
        if not url:
            raise ClinalignError("ARGILLA_API_URL is not set (e.g. http://127.0.0.1:6900; "
                                 "`clinalign argilla up` prints it)")
        if not key:
            raise ClinalignError("ARGILLA_API_KEY is not set (the owner's key is in the stack's "
                                 "owner-credentials file; see `clinalign argilla status`)")
        workspace = os.environ.get("ARGILLA_WORKSPACE", "").strip() or DEFAULT_WORKSPACE
        if "min_submitted" not in kwargs and os.environ.get("CLINALIGN_ARGILLA_MIN_SUBMITTED"):
            kwargs["min_submitted"] = int(os.environ["CLINALIGN_ARGILLA_MIN_SUBMITTED"])
        return cls(_connect(url, key), dataset.strip(), workspace, create=create, **kwargs)

    # -- dataset ----------------------------------------------------------------------------------
    def _open_dataset(self, min_submitted: int, create: bool) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the SDK warns on every "not found"
            return self._open_dataset_quiet(min_submitted, create)

    def _open_dataset_quiet(self, min_submitted: int, create: bool) -> Any:
        import argilla as rg

        if create:
            _check_names(self.dataset_name, self.workspace_name)
        ws = self._call(lambda: self.client.workspaces(self.workspace_name), "look up the workspace")
        if ws is None:
            if not create:
                raise ClinalignError(f"workspace '{self.workspace_name}' does not exist on {self.api_url}")
            ws = self._call(lambda: rg.Workspace(name=self.workspace_name, client=self.client).create(),
                            f"create workspace '{self.workspace_name}'")
        ds = self._call(lambda: self.client.datasets(name=self.dataset_name, workspace=ws), "look up the dataset")
        if ds is None:
            if not create:
                raise ClinalignError(f"dataset '{self.dataset_name}' does not exist in workspace "
                                     f"'{self.workspace_name}' on {self.api_url}")
            ds = self._call(lambda: rg.Dataset(name=self.dataset_name, workspace=ws,
                                               settings=build_settings(min_submitted),
                                               client=self.client).create(),
                            f"create dataset '{self.dataset_name}'")
        self.questions = {q.name for q in ds.settings.questions}
        missing = required_question_names() - self.questions
        if missing:
            raise ClinalignError(f"dataset '{self.dataset_name}' exists but was not made by clinalign "
                                 f"(missing questions: {', '.join(sorted(missing))})")
        return ds

    def _call(self, fn, what: str):
        from argilla._exceptions import ArgillaAPIError, ForbiddenError

        try:
            return fn()
        except ForbiddenError:
            raise ClinalignError(f"cannot {what} on {self.api_url}: this API key's user is not allowed "
                                 "(use an owner or workspace-admin key)") from None
        except ArgillaAPIError as exc:
            raise ClinalignError(f"cannot {what} on {self.api_url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ClinalignError(f"cannot {what}: lost the Argilla server at {self.api_url} ({exc})") from None

    def _request(self, method: str, url: str, what: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise ClinalignError(f"cannot {what}: lost the Argilla server at {self.api_url} ({exc})") from None
        if resp.status_code in (401, 403):
            raise ClinalignError(f"cannot {what}: the server answered {resp.status_code} (this API key's "
                                 "user needs the owner or workspace-admin role)")
        if resp.status_code >= 400:
            raise ClinalignError(f"cannot {what}: the server answered {resp.status_code}: {resp.text[:300]}")
        return resp.json() if resp.content else None

    # -- records ---------------------------------------------------------------------------------
    def _iter_records(self, with_responses: bool) -> Iterator[dict[str, Any]]:
        offset = 0
        params: dict[str, Any] = {"limit": _PAGE}
        if with_responses:
            params["include"] = "responses"
        while True:
            page = self._request("GET", f"/api/v1/datasets/{self.dataset.id}/records", "list records",
                                 params={**params, "offset": offset})
            items = page.get("items") or []
            yield from items
            offset += len(items)
            if not items or offset >= int(page.get("total", 0)):
                return

    def _existing_ids(self) -> set[str]:
        return {r["external_id"] for r in self._iter_records(False) if r.get("external_id")}

    def _bulk_upsert(self, items: list[dict[str, Any]], ids: list[str], what: str) -> None:
        try:
            resp = self._http.put(f"/api/v1/datasets/{self.dataset.id}/records/bulk", json={"items": items})
        except httpx.HTTPError as exc:
            raise ClinalignError(f"lost the Argilla server at {self.api_url} while {what} ({exc}); "
                                 "what was sent before is kept: re-run the same command to finish") from None
        if resp.status_code == 422:
            detail = resp.json().get("detail", resp.text) if resp.content else ""
            position = _position_in(detail)
            record = ids[position] if position is not None and position < len(ids) else None
            raise InputError(f"the Argilla server refused it: {detail}", record=record)
        if resp.status_code >= 400:
            raise ClinalignError(f"the Argilla server answered {resp.status_code} while {what}: {resp.text[:300]}")

    def add_pairs(self, pairs: Sequence[CandidatePair]) -> int:
        unique: dict[str, CandidatePair] = {}
        for pair in pairs:
            if not isinstance(pair, CandidatePair):
                raise InputError(f"expected a CandidatePair, got {type(pair).__name__}")
            unique.setdefault(pair.id, pair)
        existing = self._existing_ids()
        todo = [p for pid, p in unique.items() if pid not in existing]
        if not todo:
            return 0
        self._pairs_cache = None
        for start in self._progress_range(len(todo), f"pushing pairs to {self.dataset_name}"):
            batch = todo[start:start + self.batch_size]
            self._bulk_upsert([pair_to_record(p) for p in batch], [p.id for p in batch],
                              f"pushing pairs {start + 1}-{start + len(batch)} of {len(todo)}")
        return len(todo)

    def _progress_range(self, total: int, label: str) -> Iterator[int]:
        starts = range(0, total, self.batch_size)
        if not self.progress:
            yield from starts
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task(label, total=total)
            for start in starts:
                yield start
                bar.update(task, advance=min(self.batch_size, total - start))

    def get_pair(self, pair_id: str) -> CandidatePair | None:
        if self._pairs_cache is None or pair_id not in self._pairs_cache:
            # Records may have been added by another process since the cache was filled.
            self._pairs_cache = {p.id: p for p in self.iter_pairs()}
        return self._pairs_cache.get(pair_id)

    def iter_pairs(self) -> Iterator[CandidatePair]:
        for record in self._iter_records(False):
            yield record_to_pair(record)

    # -- feedback --------------------------------------------------------------------------------
    def _users_by_id(self) -> dict[str, str]:
        data = self._request("GET", "/api/v1/users", "list users") if self._is_owner() else \
            self._request("GET", f"/api/v1/workspaces/{self.dataset.workspace.id}/users", "list users")
        return {u["id"]: u["username"] for u in data.get("items", [])}

    def _is_owner(self) -> bool:
        return str(getattr(self.client.me.role, "value", self.client.me.role)) == "owner"

    def iter_feedback(self) -> Iterator[Feedback]:
        """Every submitted response from every user (drafts and discarded ones are left out)."""
        users = self._users_by_id()
        records = list(self._iter_records(True))
        items: list[Feedback] = []
        for record in records:
            pair_id = record.get("external_id") or record["id"]
            metadata = record.get("metadata") or {}
            extras = metadata.get(FEEDBACK_META_KEY) or {}
            for response in record.get("responses") or []:
                if response.get("status") != "submitted":
                    continue
                username = users.get(response["user_id"]) or self._username(response["user_id"], users)
                items.append(response_to_feedback(pair_id, username, response, extras.get(username), metadata))
        items.sort(key=lambda f: (f.submitted_at, f.pair_id, f.annotator_id))
        yield from items

    def _username(self, user_id: str, cache: dict[str, str]) -> str:
        resp = self._http.get(f"/api/v1/users/{user_id}")
        cache[user_id] = resp.json()["username"] if resp.status_code == 200 else f"argilla-user:{user_id}"
        return cache[user_id]

    def add_feedback(self, items: Sequence[Feedback]) -> int:
        """Store feedback as submitted responses of existing Argilla users (owner key needed).

        A (pair, annotator) that already has a response on the server is skipped, never
        overwritten. Origin, safety flag and meta go into the clinician's own response (see
        `_feedback_item`), so several processes may add feedback to one dataset at once.
        """
        if not items:
            return 0
        users = {name: uid for uid, name in self._users_by_id().items()}
        records = {r.get("external_id"): r for r in self._iter_records(True)}
        todo: dict[str, list[Feedback]] = {}
        seen: set[tuple[str, str]] = set()
        for fb in items:
            record = records.get(fb.pair_id)
            if record is None:
                raise InputError("feedback refers to a pair that is not in the Argilla dataset",
                                 record=f"{fb.pair_id} by {fb.annotator_id}")
            if fb.annotator_id not in users:
                raise InputError(f"annotator '{fb.annotator_id}' is not a user on {self.api_url} "
                                 "(create clinicians with `clinalign annotate users FILE`)",
                                 record=f"{fb.pair_id} by {fb.annotator_id}")
            uid = users[fb.annotator_id]
            key = (fb.pair_id, fb.annotator_id)
            if key in seen or any(r["user_id"] == uid for r in record.get("responses") or []):
                continue
            seen.add(key)
            todo.setdefault(fb.pair_id, []).append(fb)
        batch: list[dict[str, Any]] = []
        ids: list[str] = []
        for pair_id, fbs in todo.items():
            batch.append(self._feedback_item(records[pair_id], fbs, users))
            ids.append(pair_id)
            if len(batch) >= self.batch_size:
                self._bulk_upsert(batch, ids, "storing feedback")
                batch, ids = [], []
        if batch:
            self._bulk_upsert(batch, ids, "storing feedback")
        return sum(len(v) for v in todo.values())

    def _feedback_item(self, record: dict[str, Any], fbs: list[Feedback], users: dict[str, str]) -> dict[str, Any]:
        """The upsert item adding these clinicians' responses to a record.

        With the details question (datasets made by this version) everything a feedback carries is
        in its own clinician's response, and the item names the record by external id only: the
        record's fields and metadata are not sent, so concurrent writers (several review-app
        processes on one dataset) never overwrite each other (the server upserts responses per
        record and user). Older datasets keep origin/flag/meta in the record's metadata, written
        read-then-write: one writer process at a time there.
        """
        item: dict[str, Any] = {
            "external_id": record["external_id"],
            "responses": [{"user_id": users[fb.annotator_id], "status": "submitted",
                           "values": feedback_to_values(fb, self.questions)} for fb in fbs],
        }
        if DETAILS_Q in self.questions:
            return item
        metadata = dict(record.get("metadata") or {})
        extras = dict(metadata.get(FEEDBACK_META_KEY) or {})
        for fb in fbs:
            if fb.origin != "annotation" or fb.flagged or fb.meta:
                extras[fb.annotator_id] = {"origin": fb.origin, "flagged": fb.flagged, "meta": fb.meta}
        if extras:
            metadata[FEEDBACK_META_KEY] = extras
            item["metadata"] = metadata
        return item

    # -- label-first order (active selection) ------------------------------------------------------
    def set_priorities(self, ranks: Mapping[str, int], *, values: Mapping[str, float] | None = None,
                       selection: str = "") -> int:
        """Replace the label-first order: each ranked record gets `priority` = its rank in its
        metadata, records of the previous selection lose it. Only records whose priority changes are
        written (their metadata read then written whole: the server replaces metadata on upsert;
        feedback never writes metadata on datasets with the details question, so votes are safe)."""
        self._ensure_priority_property()
        records = {r.get("external_id"): r for r in self._iter_records(False)}
        unknown = sorted(set(ranks) - set(records))
        if unknown:
            raise InputError(f"{len(unknown)} prioritised pair(s) are not in Argilla dataset "
                             f"'{self.dataset_name}'", record=unknown[0])
        items, ids = [], []
        for pair_id, record in records.items():
            meta = dict(record.get("metadata") or {})
            new = ranks.get(pair_id)
            if meta.get(PRIORITY_META) == new:
                continue
            if new is None:
                meta.pop(PRIORITY_META, None)
            else:
                meta[PRIORITY_META] = int(new)
            items.append({"external_id": pair_id, "metadata": meta})
            ids.append(pair_id)
        for start in range(0, len(items), self.batch_size):
            self._bulk_upsert(items[start:start + self.batch_size], ids[start:start + self.batch_size],
                              "setting priorities")
        return len(ranks)

    def priorities(self) -> dict[str, int]:
        out = {}
        for record in self._iter_records(False):
            rank = (record.get("metadata") or {}).get(PRIORITY_META)
            if isinstance(rank, int) and record.get("external_id"):
                out[record["external_id"]] = rank
        return out

    def _ensure_priority_property(self) -> None:
        """Datasets made before the priority field get it now (clinicians sort by it)."""
        have = self._request("GET", f"/api/v1/me/datasets/{self.dataset.id}/metadata-properties",
                             "list metadata properties") or {}
        if any(m.get("name") == PRIORITY_META for m in have.get("items", [])):
            return
        self._request("POST", f"/api/v1/datasets/{self.dataset.id}/metadata-properties",
                      "add the priority metadata property",
                      json={"name": PRIORITY_META, "title": PRIORITY_TITLE, "settings": {"type": "integer"},
                            "visible_for_annotators": True})

    # -- progress --------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Pairs, submitted feedback and annotators, plus progress computed from the records."""
        records = list(self._iter_records(True))
        statuses = [r.get("status") for r in records]
        by_status: dict[str, int] = {"submitted": 0, "draft": 0, "discarded": 0}
        annotators: set[str] = set()
        for record in records:
            for response in record.get("responses") or []:
                by_status[response["status"]] = by_status.get(response["status"], 0) + 1
                if response["status"] == "submitted":
                    annotators.add(response["user_id"])
        return {"pairs": len(records), "feedback": by_status["submitted"], "annotators": len(annotators),
                "records_completed": statuses.count("completed"), "records_pending": statuses.count("pending"),
                "responses_draft": by_status["draft"], "responses_discarded": by_status["discarded"]}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ArgillaStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_names(dataset: str, workspace: str) -> None:
    try:
        check_name(dataset, "dataset")
        check_name(workspace, "workspace (ARGILLA_WORKSPACE)")
    except ValueError as exc:
        raise ClinalignError(str(exc)) from None


def _position_in(detail: str) -> int | None:
    """The failing item's index from the server's 'Record at position N is not valid' message."""
    import re

    match = re.search(r"position (\d+)", str(detail))
    return int(match.group(1)) if match else None
