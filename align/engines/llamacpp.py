"""Batched sampling on llama.cpp (through llama-cpp-python's low-level C API), continuous batching.

One llama.cpp context holds `n_seq` sequences, each in its own KV stream (`kv_unified=False`: a
token attends only to its own sequence, so the attention cost does not grow with the batch). Every
decode step carries one new token for each running sequence plus the whole prompt of any sequence
that just took a free slot (continuous batching): a finished answer frees its slot at once instead
of riding along as padding until the longest answer of its batch ends, as in `model.generate`. The
samples of one prompt share one prefill: the prompt is decoded once and its KV copied into the other
samples' streams (prompt tokens were ~40% of the demo's compute). Running sequences are kept in
slots 0..k-1 (llama.cpp cuts a batch into one micro-batch per run of consecutive stream ids).

Sampling is ours, in numpy on llama.cpp's logits, in transformers' order: temperature, then top-p
(nucleus) on the tempered distribution, then a draw; temperature 0 is greedy (argmax). Every
(prompt, sample) draw has its own random stream seeded from (seed, prompt index, sample index), so an
answer does not depend on which other prompts share its batch or in which order they run. (llama.cpp's
own sampler chain costs ~2 ms a token at this vocabulary, 40% of the time; the numpy nucleus below
looks only at tokens within e^-12 of the best one unless they hold less than top-p of the mass.)
Token ids in, token ids out: tokenizing and decoding stay with the Hugging Face tokenizer, so both
backends see the same ids.

The engine runs in a worker process (`python -m align.engines.llamacpp`, JSON lines over a pipe) that
never imports torch: torch's libgomp has the same soname as llama.cpp's, so in one process llama.cpp
would inherit the OpenMP settings torch started with. Its threads spin at every barrier by default,
which on a shared 2-core machine starves the working thread (measured under load: 1.8 tokens/s with
libgomp's default spinning, 33 passive); the worker starts with a short spin (`GOMP_SPINCOUNT=20000`,
then sleep: 504 tokens/s vs 355 passive at load 1.7) unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT.
`LlamaCppClient` is the handle `align.generate.Generator` holds.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from clinalign_base.errors import ClinalignError

INSTALL_HINT = ("llama-cpp-python is not installed in this venv: run `bash scripts/setup-llamacpp.sh .venv` "
                "(part of `make setup` unless CLINALIGN_LLAMACPP=0); it compiles once for this CPU and caches the "
                "wheel in ~/.cache/clinalign/wheels")


# OpenMP threads of the worker spin this many times at a barrier, then sleep (libgomp's default, 300000,
# starves the working thread when other jobs share the 2 cores; fully passive costs ~25% on a quiet one)
SPINCOUNT = "20000"


def llama_cpp_module():
    """The low-level binding module, or a ClinalignError naming how to install it."""
    try:
        import llama_cpp.llama_cpp as lib
    except (ImportError, OSError) as exc:
        raise ClinalignError(f"{INSTALL_HINT} ({type(exc).__name__}: {exc})") from None
    return lib


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of one draw: a function of (seed, prompt index, sample index) only."""
    digest = hashlib.sha256(f"clinalign:{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF  # 0xFFFFFFFF would mean "random" to llama.cpp


_QUIET = None


def _silence(lib) -> None:
    """Keep llama.cpp's load-time chatter off stderr (errors still print)."""
    global _QUIET
    if _QUIET is not None:
        return

    @lib.llama_log_callback
    def _log(level, text, _user):  # GGML_LOG_LEVEL_ERROR = 4
        if level == 4 and os.environ.get("CLINALIGN_LLAMACPP_QUIET") != "2":
            os.write(2, text)

    _QUIET = _log
    if os.environ.get("CLINALIGN_LLAMACPP_VERBOSE") != "1":
        lib.llama_log_set(_QUIET, ctypes.c_void_p(0))


@dataclass
class Job:
    prompt_index: int
    sample_index: int
    tokens: list[int]
    seed: int


@dataclass
class _Slot:
    job: Job
    rng: object  # numpy Generator of this (prompt, sample)
    pos: int
    out: list[int] = field(default_factory=list)


def sample_rows(logits, temperature: float, top_p: float, uniforms) -> list[int]:
    """One token per row of `logits` (rows x vocab, float32): temperature, top-p, inverse-CDF draw with `uniforms`."""
    import numpy as np

    if temperature <= 0:
        return logits.argmax(axis=1).tolist()
    e = logits - logits.max(axis=1, keepdims=True)
    e *= np.float32(1.0 / temperature)
    np.exp(e, out=e)
    z = e.sum(axis=1, dtype=np.float64)
    out = []
    for r, u in enumerate(uniforms):
        row = e[r]
        if top_p >= 1.0:  # no nucleus: inverse CDF in token-id order
            cum = np.cumsum(row, dtype=np.float64)
            out.append(int(min(np.searchsorted(cum, u * cum[-1], side="right"), row.size - 1)))
            continue
        idx = np.flatnonzero(row >= np.float32(6e-6))  # within e^-12 of the most likely token
        if row[idx].sum(dtype=np.float64) < top_p * z[r]:
            idx = np.arange(row.size)  # the nucleus may reach further: use every token
        probs = row[idx].astype(np.float64) / z[r]
        order = np.lexsort((idx, -probs))  # most likely first, ties by token id
        probs, idx = probs[order], idx[order]
        cum = np.cumsum(probs)
        # the smallest set of most likely tokens holding >= top_p of the mass
        keep = int(np.searchsorted(cum, top_p * cum[-1] if idx.size == row.size else top_p)) + 1
        probs, idx, cum = probs[:keep], idx[:keep], cum[:keep]
        k = int(np.searchsorted(cum, u * cum[-1], side="right"))
        out.append(int(idx[min(k, idx.size - 1)]))
    return out


@dataclass
class LlamaCppEngine:
    """One GGUF model in memory; `generate` runs any number of jobs through `n_seq` parallel slots."""

    gguf_path: str
    n_seq: int = 64
    n_ctx_seq: int = 512  # KV cells per sequence: longest prompt + max_new_tokens
    threads: int | None = None
    _lib: object = field(default=None, init=False, repr=False)
    _model: object = field(default=None, init=False, repr=False)
    _ctx: object = field(default=None, init=False, repr=False)
    _n_batch: int = field(default=0, init=False, repr=False)

    def load(self, n_ctx_seq: int | None = None, n_batch: int | None = None) -> LlamaCppEngine:
        lib = self._lib = llama_cpp_module()
        _silence(lib)
        lib.llama_backend_init()
        if self._model is None:
            mp = lib.llama_model_default_params()
            mp.n_gpu_layers = 0
            self._model = lib.llama_model_load_from_file(str(self.gguf_path).encode(), mp)
            if not self._model:
                raise ClinalignError(f"llama.cpp could not load {self.gguf_path}")
        self._new_context(n_ctx_seq or self.n_ctx_seq, n_batch or 512)
        return self

    def _new_context(self, n_ctx_seq: int, n_batch: int) -> None:
        lib = self._lib
        if self._ctx is not None:
            lib.llama_free(self._ctx)
            self._ctx = None
        threads = self.threads or _default_threads()
        cp = lib.llama_context_default_params()
        cp.n_seq_max = self.n_seq
        cp.n_ctx = n_ctx_seq * self.n_seq
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = False
        cp.flash_attn_type = 1  # on: 350 vs 228 tokens/s without (measured); KV cache stays f16 (f32: 207)
        cp.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise ClinalignError(f"llama.cpp could not make a context ({self.n_seq} x {n_ctx_seq} cells)")
        self.n_ctx_seq, self._n_batch = n_ctx_seq, n_batch

    def close(self) -> None:
        if self._lib is None:
            return
        if self._ctx is not None:
            self._lib.llama_free(self._ctx)
        if self._model is not None:
            self._lib.llama_model_free(self._model)
        self._ctx = self._model = None

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

    def generate(self, jobs: Sequence[Job], *, temperature: float, top_p: float, max_new_tokens: int,
                 eos: set[int], on_done: Callable[[Job, list[int], bool], None]) -> None:
        """Run every job; `on_done(job, new_ids, finished)` as each ends (ids include the end-of-turn id)."""
        if self._lib is None:
            self.load()
        if not jobs:
            return
        import numpy as np

        lib = self._lib
        n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model))
        longest = max(len(j.tokens) for j in jobs)
        need_ctx = _round_up(longest + max_new_tokens + 1, 256)
        need_batch = max(512, _round_up(longest + self.n_seq, 64))
        if need_ctx > self.n_ctx_seq or need_batch > self._n_batch:
            self._new_context(max(need_ctx, self.n_ctx_seq), max(need_batch, self._n_batch))
        mem = lib.llama_get_memory(self._ctx)
        lib.llama_memory_clear(mem, True)
        batch = lib.llama_batch_init(self._n_batch, 0, 1)
        pending = deque(_groups(jobs))  # the samples of one prompt share one prefill
        slots: list[_Slot | None] = [None] * self.n_seq
        try:
            while pending or any(slots):
                n = 0
                rows: list[tuple[int, int]] = []  # (slot, output row whose logits it samples from)
                n_out = 0
                for s, slot in enumerate(slots):
                    if slot is not None:  # one new token for each running sequence
                        _put(batch, n, slot.out[-1], slot.pos, s, True)
                        rows.append((s, n_out))
                        slot.pos += 1
                        n += 1
                        n_out += 1
                copies: list[tuple[int, int]] = []
                free = [s for s in range(self.n_seq) if slots[s] is None]
                while pending and free and n + len(pending[0][0].tokens) <= self._n_batch:
                    group = pending.popleft()  # free slots take waiting prompts while the batch has room
                    if len(group) > len(free):
                        pending.appendleft(group[len(free):])
                        group = group[:len(free)]
                    prompt = group[0].tokens
                    first = free[0]
                    for k, tok in enumerate(prompt):
                        _put(batch, n, tok, k, first, k == len(prompt) - 1)
                        n += 1
                    for job in group:
                        s = free.pop(0)
                        slots[s] = _Slot(job, np.random.default_rng(job.seed), len(prompt))
                        rows.append((s, n_out))
                        if s != first:
                            copies.append((first, s))
                    n_out += 1
                batch.n_tokens = n
                rc = lib.llama_decode(self._ctx, batch)
                if rc != 0:
                    raise ClinalignError(f"llama_decode failed (code {rc})")
                for src, dst in copies:  # the prompt's KV into its other samples' streams (at the next decode)
                    lib.llama_memory_seq_cp(mem, src, dst, -1, -1)
                # the outputs' logits, in batch order
                logits = np.ctypeslib.as_array(lib.llama_get_logits(self._ctx), shape=(n_out, n_vocab))
                if copies:
                    logits = logits[[r for _, r in rows]]
                uniforms = [slots[s].rng.random() for s, _ in rows] if temperature > 0 else [0.0] * len(rows)
                for (s, _), tok in zip(rows, sample_rows(logits, temperature, top_p, uniforms), strict=True):
                    slot = slots[s]
                    slot.out.append(tok)
                    finished = tok in eos
                    if finished or len(slot.out) >= max_new_tokens:
                        on_done(slot.job, slot.out, finished)
                        lib.llama_memory_seq_rm(mem, s, -1, -1)
                        slots[s] = None
                if not pending and not copies:
                    _compact(lib, mem, slots)
        finally:
            lib.llama_batch_free(batch)

    def logprobs(self, tokens: Sequence[int]):
        """Log-softmax of the next-token logits at every position of one sequence (for fidelity checks)."""
        import numpy as np

        if self._lib is None:
            self.load()
        lib = self._lib
        if len(tokens) > self._n_batch or len(tokens) > self.n_ctx_seq:
            self._new_context(max(self.n_ctx_seq, _round_up(len(tokens) + 1, 256)),
                              max(self._n_batch, _round_up(len(tokens), 64)))
        mem = lib.llama_get_memory(self._ctx)
        lib.llama_memory_clear(mem, True)
        batch = lib.llama_batch_init(self._n_batch, 0, 1)
        try:
            for k, tok in enumerate(tokens):
                _put(batch, k, tok, k, 0, True)
            batch.n_tokens = len(tokens)
            if lib.llama_decode(self._ctx, batch) != 0:
                raise ClinalignError("llama_decode failed")
            n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model))
            rows = []
            for k in range(len(tokens)):
                ptr = lib.llama_get_logits_ith(self._ctx, k)
                row = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64)
                row -= row.max()
                rows.append(row - np.log(np.exp(row).sum()))
            return np.stack(rows)
        finally:
            lib.llama_batch_free(batch)
            lib.llama_memory_clear(mem, True)


def _groups(jobs: Sequence[Job]) -> list[list[Job]]:
    """Consecutive jobs of the same prompt, as one group."""
    groups: list[list[Job]] = []
    for job in jobs:
        if groups and groups[-1][0].prompt_index == job.prompt_index and groups[-1][0].tokens == job.tokens:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def _compact(lib, mem, slots: list) -> None:
    """Move the last running sequences into free low slots, so the running ones are slots 0..k-1.

    With one KV stream per sequence llama.cpp splits a batch into micro-batches of consecutive sequence
    ids; gaps left by finished answers would cut every later step into several small (slow) ones.
    """
    lo, hi = 0, len(slots) - 1
    while True:
        while lo < len(slots) and slots[lo] is not None:
            lo += 1
        while hi >= 0 and slots[hi] is None:
            hi -= 1
        if lo >= hi:
            return
        lib.llama_memory_seq_cp(mem, hi, lo, -1, -1)  # the buffer copy runs at the next decode
        lib.llama_memory_seq_rm(mem, hi, -1, -1)
        slots[lo], slots[hi] = slots[hi], None


def _put(batch, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = logits


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _default_threads() -> int:
    torch = sys.modules.get("torch")  # the parent's torch thread setting (OMP_NUM_THREADS, set_num_threads)
    if torch is not None:
        return max(1, torch.get_num_threads())
    return max(1, int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))


class LlamaCppClient:
    """A `LlamaCppEngine` in a worker process; same `generate` / `logprobs` interface."""

    def __init__(self, gguf_path: str, *, n_seq: int = 64, threads: int | None = None):
        llama_cpp_module_available()
        env = dict(os.environ)
        if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
            env["GOMP_SPINCOUNT"] = SPINCOUNT
        self.threads = threads or _default_threads()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "align.engines.llamacpp", str(gguf_path), str(n_seq), str(self.threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        self._lock = threading.Lock()
        self._read()  # {"ready": true} once the model is loaded

    def _send(self, msg: dict) -> None:
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()

    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            raise ClinalignError(f"the llama.cpp worker exited (code {code}); see its error above")
        msg = json.loads(line)
        if "error" in msg:
            raise ClinalignError(f"llama.cpp worker: {msg['error']}")
        return msg

    def generate(self, jobs: Sequence[Job], *, temperature: float, top_p: float, max_new_tokens: int,
                 eos: set[int], on_done: Callable[[Job, list[int], bool], None]) -> None:
        by_key = {(j.prompt_index, j.sample_index): j for j in jobs}
        with self._lock:
            self._send({"op": "generate", "temperature": temperature, "top_p": top_p,
                        "max_new_tokens": max_new_tokens, "eos": sorted(eos),
                        "jobs": [[j.prompt_index, j.sample_index, j.tokens, j.seed] for j in jobs]})
            while True:
                msg = self._read()
                if msg.get("end"):
                    return
                pi, si, ids, finished = msg["done"]
                on_done(by_key[(pi, si)], ids, finished)

    def logprobs(self, tokens: Sequence[int]):
        """Next-token log-probs at every position (numpy array, positions x vocab)."""
        import tempfile

        import numpy as np

        with self._lock, tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "logprobs.npy")
            self._send({"op": "logprobs", "tokens": list(tokens), "out": out})
            self._read()
            return np.load(out)

    def close(self) -> None:
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is None or proc.poll() is not None:
            return
        try:
            self._send_to(proc, {"op": "exit"})
            proc.wait(timeout=10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    @staticmethod
    def _send_to(proc, msg: dict) -> None:
        proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()
        proc.stdin.close()

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass


def llama_cpp_module_available() -> None:
    """Raise the install hint when llama-cpp-python is missing (without loading it in this process)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise ClinalignError(INSTALL_HINT)


def _worker(argv: list[str]) -> None:
    """`python -m align.engines.llamacpp GGUF N_SEQ THREADS`: JSON lines on stdin → JSON lines on stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the C library prints goes to stderr, never into the protocol

    def reply(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")

    try:
        engine = LlamaCppEngine(argv[0], n_seq=int(argv[1]), threads=int(argv[2])).load()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
        reply({"error": f"{type(exc).__name__}: {exc}"})
        return
    reply({"ready": True})
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "exit":
                break
            if msg["op"] == "generate":
                jobs = [Job(pi, si, toks, seed) for pi, si, toks, seed in msg["jobs"]]
                engine.generate(jobs, temperature=msg["temperature"], top_p=msg["top_p"],
                                max_new_tokens=msg["max_new_tokens"], eos=set(msg["eos"]),
                                on_done=lambda j, ids, fin: reply({"done": [j.prompt_index, j.sample_index, ids, fin]}))
                reply({"end": True})
            elif msg["op"] == "logprobs":
                import numpy as np

                np.save(msg["out"], np.asarray(engine.logprobs(msg["tokens"]), dtype=np.float64))
                reply({"ok": True})
        except Exception as exc:  # noqa: BLE001
            reply({"error": f"{type(exc).__name__}: {exc}"})
    engine.close()


if __name__ == "__main__":
    _worker(sys.argv[1:])
