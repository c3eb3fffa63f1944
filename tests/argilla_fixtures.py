"""A real Argilla stack for the test session: scripts/argilla-up with a temp data dir and free ports.

Not a mock: Redis, the noida-db search engine and argilla-server 2.8 run as real processes (the
first start installs the server venv if it is missing). Teardown runs scripts/argilla-down and
checks that every process the stack started is gone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UP = REPO / "scripts" / "argilla-up"
DOWN = REPO / "scripts" / "argilla-down"


@dataclass
class ArgillaStack:
    url: str
    api_key: str = field(repr=False)
    data_dir: Path = Path()
    first_up_output: str = field(default="", repr=False)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for clinalign commands talking to this stack as its owner."""
        return {**os.environ, "ARGILLA_API_URL": self.url, "ARGILLA_API_KEY": self.api_key, **extra}

    def pids(self) -> dict[str, int]:
        out = {}
        for f in (self.data_dir / "run").glob("*.pid"):
            out[f.stem] = int(f.read_text().split()[0])
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


# One stack per test process, however many modules bind the fixture: each module that does
# `argilla_stack = argilla_fixtures.argilla_stack` gets its own session-scoped fixture definition
# from pytest, so the stack is shared here and stopped when the last user finalises.
_SHARED: dict = {"stack": None, "users": 0}


def _start(tmp_path_factory) -> ArgillaStack:
    data = tmp_path_factory.mktemp("argilla-stack")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_OWNER_")}  # let it generate them
    done = subprocess.run([sys.executable, str(UP), "--data-dir", str(data), "--port", str(port),
                           "--search-port", str(free_port()), "--redis-port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        subprocess.run([sys.executable, str(UP), "down", "--data-dir", str(data)], capture_output=True)
        pytest.fail(f"scripts/argilla-up failed:\n{done.stdout}\n{done.stderr}")
    creds = json.loads((data / "owner-credentials.json").read_text())
    return ArgillaStack(url=f"http://127.0.0.1:{port}", api_key=creds["api_key"], data_dir=data,
                        first_up_output=done.stdout)


def _stop_and_check(stack: ArgillaStack, started: dict[str, int]) -> None:
    down = subprocess.run([str(DOWN), "--data-dir", str(stack.data_dir)], capture_output=True, text=True,
                          timeout=120)
    left = {name: pid for name, pid in started.items() if pid_alive(pid)}
    assert down.returncode == 0, down.stderr
    assert not left, f"processes left after argilla-down: {left}"


@pytest.fixture(scope="session")
def argilla_stack(tmp_path_factory) -> ArgillaStack:
    if _SHARED["stack"] is None:
        _SHARED["stack"] = _start(tmp_path_factory)
        _SHARED["pids"] = _SHARED["stack"].pids()
    _SHARED["users"] += 1
    try:
        yield _SHARED["stack"]
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            stack, _SHARED["stack"] = _SHARED["stack"], None
            _stop_and_check(stack, _SHARED["pids"])
