#!/usr/bin/env python3
"""Start argilla-server 2.8 with the search-engine fix the embedded stack needs.

Run by scripts/argilla-up with the *server* venv's python, in place of `python -m argilla_server`:

    <server-venv>/bin/python scripts/argilla_server_launch.py start --host 127.0.0.1 --port 6900

Why. Argilla maps each record's responses as a `nested` field with `"include_in_root": true` and
then relies on that flag in two places: the per-user progress (`GET /api/v1/me/datasets/<id>/metrics`,
the UI's "My progress") aggregates `responses.status` on the root documents, and the UI's "Pending"
queue excludes the records a user answered with a root-level `must_not: {term: responses.user_id}`.
The noida-db engine of the embedded stack accepts the mapping but ignores `include_in_root`
(root-level terms on nested fields match nothing; nested queries and nested aggregations work).
So the metrics counted 0 submitted and the pending queue served finished pairs. The index itself
is right: the server's painless update of the responses and its `refresh=true` both work there.

The fix replaces those two root-level uses with the equivalent `nested` query and `nested`
aggregation. On a real Elasticsearch 8 / OpenSearch 2 they return the same records (and per-user
counts that are exact: the root-level aggregation mixes every user's statuses of a record); a
production deployment with the official server needs no patch. Nothing is written to the venv:
the methods are replaced in this process before the server imports its app, so the fix is applied
on every start and never twice. `CLINALIGN_ARGILLA_SEARCH_COMPAT=0` starts the server unpatched.
"""

from __future__ import annotations

import os
import sys

PATCHED_VERSION = "2.8.0"


def apply() -> bool:
    """Patch the search engine base class; False (with a note on stderr) when it does not apply."""
    from argilla_server._version import __version__ as version
    from argilla_server.enums import ResponseStatusFilter
    from argilla_server.search_engine import commons

    engine = commons.BaseElasticAndOpenSearchEngine
    if version != PATCHED_VERSION or getattr(engine, "_clinalign_nested_fix", False):
        if version != PATCHED_VERSION:
            print(f"clinalign: argilla-server {version} is not {PATCHED_VERSION}: search fix not applied",
                  file=sys.stderr, flush=True)
        return False
    field = commons.es_field_for_response_property

    def user_responses(user_id: str) -> dict:
        return commons.es_nested_query("responses", commons.es_term_query(field("user_id"), str(user_id)))

    async def get_dataset_user_progress(self, dataset, user) -> dict:
        if dataset.is_draft:
            return {}
        index = commons.es_index_name_for_dataset(dataset)
        aggs = {"responses": {"nested": {"path": "responses"}, "aggs": {"mine": {
            "filter": commons.es_term_query(field("user_id"), str(user.id)),
            "aggs": {"status": {"terms": {"field": field("status"), "size": 10}}}}}}}
        result = await self._index_search_request(index, query={"match_all": {}}, aggregations=aggs, size=0)
        mine = result["aggregations"]["responses"]["mine"]
        return {"total": mine["doc_count"], **{b["key"]: b["doc_count"] for b in mine["status"]["buckets"]}}

    original_status_filter = engine._response_status_filter_to_es_filter

    def _response_status_filter_to_es_filter(self, filter) -> dict:
        if ResponseStatusFilter.pending not in filter.values:
            return original_status_filter(self, filter)
        # "pending" = no response (of this user, or of anyone without a user scope) on the record
        answered = (user_responses(filter.scope.user.id) if filter.scope.user
                    else commons.es_nested_query("responses", {"match_all": {}}))
        pending = commons.es_bool_query(must_not=answered)
        filter.values.remove(ResponseStatusFilter.pending)
        if not filter.values:
            return pending
        return commons.es_bool_query(should=[pending, original_status_filter(self, filter)],
                                     minimum_should_match=1)

    engine.get_dataset_user_progress = get_dataset_user_progress
    engine._response_status_filter_to_es_filter = _response_status_filter_to_es_filter
    engine._clinalign_nested_fix = True
    return True


def main() -> None:
    if os.environ.get("CLINALIGN_ARGILLA_SEARCH_COMPAT", "1") != "0":
        apply()
    from argilla_server.cli import app

    sys.argv[0] = "argilla_server"
    app()


if __name__ == "__main__":
    main()
