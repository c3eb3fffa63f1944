"""20 clinicians voting at the same moment through gradio_client, each vote also retried:
every (clinician, pair) vote is stored exactly once, nothing is lost."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.review_support import PASSWORD, running_app

N_CLIENTS = 20
N_PAIRS = 5


def test_twenty_clients_every_vote_stored_exactly_once(tmp_path):
    from gradio_client import Client

    users = [f"dr_{k:02d}" for k in range(N_CLIENTS)]
    with running_app(tmp_path, n_pairs=N_PAIRS, users=users) as app:
        clients = {u: Client(app.url, auth=(u, PASSWORD), verbose=False) for u in users}
        start = threading.Barrier(N_CLIENTS)

        def clinician(user: str) -> list[dict]:
            client = clients[user]
            start.wait()  # all 20 begin together
            results = []
            for k in range(N_PAIRS):
                item = client.predict(api_name="/next_pair")
                assert item["ticket"], f"{user} ran out of pairs after {k}"
                choice = ("A", "B", "tie", "both_unsafe")[(k + len(user)) % 4]
                job = client.submit(item["ticket"], choice, 2, api_name="/vote")
                retry = client.submit(item["ticket"], choice, 2, api_name="/vote")  # a retried request
                results += [job.result(timeout=120), retry.result(timeout=120)]
            assert client.predict(api_name="/next_pair")["ticket"] is None  # queue done for this user
            return results

        with ThreadPoolExecutor(N_CLIENTS) as pool:
            per_user = dict(zip(users, pool.map(clinician, users), strict=True))

        stored = list(app.store.iter_feedback())
        keys = Counter((f.annotator_id, f.pair_id) for f in stored)
        assert len(stored) == N_CLIENTS * N_PAIRS
        assert max(keys.values()) == 1
        assert {u for u, _ in keys} == set(users)
        assert all(len({p for u, p in keys if u == user}) == N_PAIRS for user in users)
        # of each vote and its retry exactly one reports "stored"
        for results in per_user.values():
            assert sum(r["stored"] for r in results) == N_PAIRS
        assert all(f.origin == "review" and f.meta["shown_left"] in ("a", "b") for f in stored)
