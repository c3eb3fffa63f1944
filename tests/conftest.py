"""Shared test set-up: offline, few threads, a repo-root working directory, small helpers."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
import annotation  # noqa: E402,F401  (offline / telemetry-off defaults)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def repo_root(monkeypatch) -> Path:
    monkeypatch.chdir(REPO)
    return REPO


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def make_pair(i: int = 0, **kw):
    from annotation.records import CandidatePair

    base = dict(prompt=f"What is the usual adult dose of drug {i}?", response_a=f"Answer A number {i}.",
                response_b=f"Answer B number {i}.", model_a="model-x", model_b="model-y")
    base.update(kw)
    return CandidatePair(**base)


# Headless Chromium for the browser tests (Debian's package, installed by scripts/setup-system.sh).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    import shutil

    if not shutil.which(CHROMIUM):
        pytest.skip("Debian chromium is not installed (run scripts/setup-system.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
