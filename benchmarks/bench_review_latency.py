"""Vote round-trip latency of the review app under 50 concurrent simulated clinicians.

Launches the real app with `clinalign review` in its own process (login wall, queue, SQLite store),
logs in N clinicians, then they vote: each vote is `next_pair` + `vote`, with a seeded exponential
pause between a clinician's votes (`--think-s`; 0 = none, a saturation test). Prints p50/p95/max of
the vote round trip (and of next_pair), throughput and the load average, and checks that every vote
was stored exactly once.

  .venv/bin/python benchmarks/bench_review_latency.py [--clients 50] [--votes 10] [--client httpx|gradio]
      [--think-s 2.0]

`httpx` (default): one asyncio plain HTTP client, a page session per clinician, posting to
/gradio_api/run/<name>, the route the browser's vote buttons use (they skip Gradio's queue), so the
benchmark's own CPU stays small. `gradio`: gradio_client in threads (what scripts use).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import annotation  # noqa: E402,F401  (offline defaults)
from annotation.sqlite_store import SQLiteStore  # noqa: E402
from tests.review_support import PASSWORD, free_port, make_pairs, make_users  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serve(tmp: Path, n_pairs: int, users: list[str]):
    """Yield (url, store path) of `clinalign review` running in a subprocess."""
    store = tmp / "store.sqlite"
    with SQLiteStore(store) as s:
        s.add_pairs(make_pairs(n_pairs))
    make_users(tmp / "users.json", users)
    port = free_port()
    proc = subprocess.Popen([str(REPO / ".venv/bin/clinalign"), "review", "--store", str(store), "--users",
                             str(tmp / "users.json"), "--port", str(port)], cwd=REPO,
                            env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    try:
        import httpx

        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit("the review app did not start")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", store
    finally:
        proc.terminate()
        proc.wait(30)


class AsyncClinician:
    """The same calls on one asyncio loop (httpx.AsyncClient): 50 clinicians cost the benchmark process
    little CPU, so on a 2-core machine most of the time measured is the server's."""

    def __init__(self, url: str, user: str):
        import httpx

        self.url, self.user = url, user
        self.http = httpx.AsyncClient(base_url=url, timeout=120)
        self.session = secrets.token_hex(8)

    async def login(self) -> None:
        r = await self.http.post("/login", data={"username": self.user, "password": PASSWORD})
        r.raise_for_status()

    async def call(self, api: str, *data):
        r = await self.http.post(f"/gradio_api/run/{api}", json={"data": list(data), "session_hash": self.session})
        r.raise_for_status()
        return r.json()["data"][0]


async def run_async(url: str, users: list[str], votes: int, think_s: float) -> tuple[list, list, float]:
    import asyncio

    clinicians = [AsyncClinician(url, u) for u in users]
    await asyncio.gather(*(c.login() for c in clinicians))
    print(f"{len(users)} clinicians logged in (httpx, asyncio); load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    vote_ms: list[float] = []
    next_ms: list[float] = []

    async def run(i: int, c: AsyncClinician) -> None:
        pause = random.Random(i)
        for k in range(votes):
            if think_s > 0:
                await asyncio.sleep(pause.expovariate(1 / think_s))
            t = time.perf_counter()
            item = await c.call("next_pair")
            t_next = time.perf_counter()
            await c.call("vote", item["ticket"], ("A", "B", "tie")[k % 3], 2, "", "", "", False)
            next_ms.append(1000 * (t_next - t))
            vote_ms.append(1000 * (time.perf_counter() - t_next))

    t0 = time.perf_counter()
    await asyncio.gather(*(run(i, c) for i, c in enumerate(clinicians)))
    wall = time.perf_counter() - t0
    await asyncio.gather(*(c.http.aclose() for c in clinicians))
    return vote_ms, next_ms, wall


class GradioClinician:
    def __init__(self, url: str, user: str):
        from gradio_client import Client

        self.client = Client(url, auth=(user, PASSWORD), verbose=False, httpx_kwargs={"timeout": 300})

    def call(self, api: str, *data):
        return self.client.predict(*data, api_name=f"/{api}")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--votes", type=int, default=10, help="votes per clinician")
    ap.add_argument("--client", choices=("gradio", "httpx"), default="httpx")
    ap.add_argument("--think-s", type=float, default=2.0,
                    help="mean pause between a clinician's votes (exponential, seeded); a clinician reading "
                         "two answers takes 20-60 s, so 2 s is already a panel voting 10-30x faster than people "
                         "do. 0 = no pause: a saturation test of throughput, not of latency")
    args = ap.parse_args()
    users = [f"dr_{k:03d}" for k in range(args.clients)]
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), args.votes, users) as (url, store_path):
        if args.client == "httpx":
            import asyncio

            vote_ms, next_ms, wall = asyncio.run(run_async(url, users, args.votes, args.think_s))
            report(args, store_path, vote_ms, next_ms, wall)
            return
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            clinicians = list(pool.map(lambda u: GradioClinician(url, u), users))
        print(f"{args.clients} clinicians logged in ({args.client}) in {time.perf_counter() - t0:.1f} s; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        start = threading.Barrier(args.clients)
        vote_ms: list[float] = []
        next_ms: list[float] = []
        lock = threading.Lock()

        def run(c) -> None:
            pause = random.Random(hash(id(c)) & 0xFFFF)
            start.wait()
            for k in range(args.votes):
                if args.think_s > 0:
                    time.sleep(pause.expovariate(1 / args.think_s))
                t = time.perf_counter()
                item = c.call("next_pair")
                t_next = time.perf_counter()
                c.call("vote", item["ticket"], ("A", "B", "tie")[k % 3], 2, "", "", "", False)
                t_vote = time.perf_counter()
                with lock:
                    next_ms.append(1000 * (t_next - t))
                    vote_ms.append(1000 * (t_vote - t_next))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(run, clinicians))
        wall = time.perf_counter() - t0
        report(args, store_path, vote_ms, next_ms, wall)


def report(args, store_path: Path, vote_ms: list[float], next_ms: list[float], wall: float) -> None:
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    with SQLiteStore(store_path) as s:
        stored = list(s.iter_feedback())
    keys = {(f.annotator_id, f.pair_id) for f in stored}
    total = args.clients * args.votes
    print(f"think time: mean {args.think_s:g} s between votes (offered load ~"
          f"{args.clients / args.think_s if args.think_s else float('inf'):.0f} votes/s)")
    print(f"votes: {len(vote_ms)} in {wall:.1f} s ({len(vote_ms) / wall:.1f} votes/s); "
          f"stored {len(stored)} rows, {len(keys)} distinct (expected {total})")
    for name, ms in (("vote round trip", vote_ms), ("next_pair", next_ms)):
        print(f"{name:>16}: p50 {statistics.median(ms):7.1f} ms   p95 {pct(ms, 0.95):7.1f} ms   "
              f"max {max(ms):7.1f} ms")
    if len(stored) != total or len(keys) != total:
        sys.exit("MISMATCH: not every vote was stored exactly once")


if __name__ == "__main__":
    main()
