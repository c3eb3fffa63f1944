"""Build, check and run the command that trains a stage on a GPU cluster.

    clinalign launch --stage dpo --config configs/me-llama-70b/dpo.yaml --nodes 8 --gpus-per-node 8 \
        --hostfile /etc/clinalign/hostfile [--launcher accelerate|deepspeed] [--dry-run]

Every rank runs the stage's own CLI command (`python -m align.cli dpo --config ...`), so a launched run
and a local one read the same YAML the same way. Two launchers:
  accelerate  `accelerate launch` (torchrun underneath) on *each* node: single node as is; multi-node
              once per node with its --machine_rank (Slurm: scripts/slurm/clinalign-multinode.sbatch)
  deepspeed   the `deepspeed` launcher, started once, reaching every host of the hostfile over ssh/pdsh
Before anything starts, the environment is checked (GPUs visible vs requested, NCCL variables,
MASTER_ADDR/PORT and node rank for multi-node, the hostfile) and the stage YAML + its DeepSpeed JSON
are validated at the requested world size, batch arithmetic included. `--dry-run` prints the command
and the checks without failing on them (so it works on a login node without GPUs).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from align import stage_registry
from align.distributed.ds_config import REPO_ROOT, validate_stage
from clinalign_base.errors import ClinalignError, InputError

LAUNCHERS = ("accelerate", "deepspeed")
ACCELERATE_CONFIGS = {False: REPO_ROOT / "configs/accelerate/single_node.yaml",
                      True: REPO_ROOT / "configs/accelerate/multi_node.yaml"}
NCCL_DEBUG_LEVELS = {"VERSION", "WARN", "INFO", "TRACE"}
NCCL_BOOL_VARS = ("NCCL_IB_DISABLE", "NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE", "NCCL_NET_GDR_READ",
                  "TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT")


@dataclass
class Check:
    ok: bool
    name: str
    message: str
    fatal: bool = True  # a failed non-fatal check is a warning


@dataclass
class LaunchRequest:
    stage: str
    config: str
    nodes: int = 1
    gpus_per_node: int = 8
    hostfile: str | None = None
    launcher: str = "accelerate"
    master_addr: str | None = None
    master_port: int | None = None
    node_rank: int | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1


def read_hostfile(path: str | Path) -> list[tuple[str, int]]:
    """DeepSpeed hostfile lines `hostname slots=N` (comments and blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("hostfile not found", path=str(path))
    hosts: list[tuple[str, int]] = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("slots=") or not parts[1][6:].isdigit():
            raise InputError(f"expected 'hostname slots=N', got {raw.strip()!r}", path=str(path), line=lineno)
        if any(h == parts[0] for h, _ in hosts):
            raise InputError(f"host {parts[0]!r} listed twice", path=str(path), line=lineno)
        hosts.append((parts[0], int(parts[1][6:])))
    if not hosts:
        raise InputError("hostfile lists no hosts", path=str(path))
    return hosts


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver reads as no GPU; the check message says what to look at
        return 0


def _interfaces() -> set[str]:
    try:
        return {name for _, name in socket.if_nameindex()}
    except OSError:
        return set()


def check_gpus(req: LaunchRequest, visible: int | None = None) -> Check:
    visible = _visible_gpus() if visible is None else visible
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = f" (CUDA_VISIBLE_DEVICES={cvd!r})" if cvd is not None else ""
    if visible < req.gpus_per_node:
        return Check(False, "GPUs", f"--gpus-per-node {req.gpus_per_node} but this node sees {visible} CUDA "
                                    f"GPU(s){hint}; check nvidia-smi, the Slurm --gpus-per-node, or lower it")
    return Check(True, "GPUs", f"{visible} visible, {req.gpus_per_node} used per node{hint}")


def check_nccl(req: LaunchRequest, env: dict[str, str] | None = None,
               interfaces: set[str] | None = None) -> list[Check]:
    env = dict(os.environ if env is None else env)
    interfaces = _interfaces() if interfaces is None else interfaces
    out: list[Check] = []
    debug = env.get("NCCL_DEBUG")
    if debug is not None and debug.upper() not in NCCL_DEBUG_LEVELS:
        out.append(Check(False, "NCCL_DEBUG", f"NCCL_DEBUG={debug!r} is not one of {sorted(NCCL_DEBUG_LEVELS)}"))
    for var in NCCL_BOOL_VARS:
        if var in env and env[var] not in ("0", "1"):
            out.append(Check(False, var, f"{var}={env[var]!r} must be 0 or 1"))
    if "NCCL_ASYNC_ERROR_HANDLING" in env:
        out.append(Check(False, "NCCL_ASYNC_ERROR_HANDLING", "renamed in PyTorch 2.2+: set "
                                                            "TORCH_NCCL_ASYNC_ERROR_HANDLING instead", fatal=False))
    ifname = env.get("NCCL_SOCKET_IFNAME")
    if ifname:
        # NCCL syntax: comma-separated prefixes; "^" excludes, "=" means an exact name.
        wanted = [p for p in ifname.split(",") if p]
        if not ifname.startswith("^") and interfaces and not any(
                (n == p[1:]) if p.startswith("=") else n.startswith(p) for p in wanted for n in interfaces):
            out.append(Check(False, "NCCL_SOCKET_IFNAME", f"NCCL_SOCKET_IFNAME={ifname!r} matches no network "
                                                          f"interface here ({', '.join(sorted(interfaces))})"))
    elif req.multi_node:
        out.append(Check(False, "NCCL_SOCKET_IFNAME", "not set: NCCL picks an interface itself; on clusters "
                                                      "with several networks set it (e.g. ib0 or ^lo,docker)",
                         fatal=False))
    if not out:
        out.append(Check(True, "NCCL", "variables well-formed" + (f" (NCCL_SOCKET_IFNAME={ifname})" if ifname else "")))
    return out


def rendezvous(req: LaunchRequest, env: dict[str, str] | None = None) -> tuple[str | None, int, int | None]:
    """(master address, port, this node's rank) from the flags, then the environment, then the hostfile."""
    env = dict(os.environ if env is None else env)
    addr = req.master_addr or env.get("MASTER_ADDR")
    if addr is None and req.hostfile and Path(req.hostfile).is_file():
        addr = read_hostfile(req.hostfile)[0][0]
    port = req.master_port or int(env.get("MASTER_PORT", "29500") or 29500)
    rank = req.node_rank
    if rank is None:
        for var in ("NODE_RANK", "SLURM_NODEID", "GROUP_RANK"):
            if env.get(var, "").isdigit():
                rank = int(env[var])
                break
    return addr, port, rank


def check_rendezvous(req: LaunchRequest, env: dict[str, str] | None = None) -> list[Check]:
    if not req.multi_node:
        return [Check(True, "rendezvous", "single node: localhost")]
    out: list[Check] = []
    try:
        addr, port, rank = rendezvous(req, env)
    except ValueError:
        return [Check(False, "MASTER_PORT", "MASTER_PORT must be an integer")]
    if not addr:
        out.append(Check(False, "MASTER_ADDR", f"{req.nodes} nodes need a rendezvous host: export MASTER_ADDR "
                                               "(node 0's hostname), pass --master-addr, or give --hostfile"))
    else:
        try:
            socket.getaddrinfo(addr, port)
            out.append(Check(True, "MASTER_ADDR", f"{addr}:{port}"))
        except socket.gaierror:
            out.append(Check(False, "MASTER_ADDR", f"MASTER_ADDR {addr!r} does not resolve from this node"))
    if not 1024 <= port <= 65535:
        out.append(Check(False, "MASTER_PORT", f"MASTER_PORT {port} is outside 1024-65535"))
    if req.launcher == "accelerate":
        if rank is None:
            out.append(Check(False, "node rank", "accelerate runs once per node: pass --node-rank or set "
                                                 "NODE_RANK (Slurm sets SLURM_NODEID)"))
        elif not 0 <= rank < req.nodes:
            out.append(Check(False, "node rank", f"node rank {rank} is not in 0..{req.nodes - 1}"))
    return out


def check_hostfile(req: LaunchRequest) -> list[Check]:
    if not req.hostfile:
        if req.multi_node and req.launcher == "deepspeed":
            return [Check(False, "hostfile", "the deepspeed launcher needs --hostfile for more than one node")]
        return []
    try:
        hosts = read_hostfile(req.hostfile)
    except InputError as exc:
        return [Check(False, "hostfile", str(exc))]
    out = []
    if len(hosts) < req.nodes:
        out.append(Check(False, "hostfile", f"{req.hostfile} lists {len(hosts)} host(s), --nodes is {req.nodes}"))
    short = [h for h, slots in hosts[:req.nodes] if slots < req.gpus_per_node]
    if short:
        out.append(Check(False, "hostfile", f"{', '.join(short)} offer fewer than {req.gpus_per_node} slots"))
    return out or [Check(True, "hostfile", f"{len(hosts)} host(s): {', '.join(h for h, _ in hosts[:req.nodes])}")]


def check_config(req: LaunchRequest) -> Check:
    try:
        v = validate_stage(req.config, nodes=req.nodes, gpus_per_node=req.gpus_per_node)
    except ClinalignError as exc:
        return Check(False, "config", str(exc))
    return Check(True, "config", f"{v.ds_path.name} ZeRO-{v.zero_stage} valid at world size {v.world_size}, "
                                 f"train_batch_size {v.train_batch_size}")


def run_checks(req: LaunchRequest) -> list[Check]:
    return [check_config(req), check_gpus(req), *check_nccl(req), *check_rendezvous(req), *check_hostfile(req)]


def build_command(req: LaunchRequest) -> list[str]:
    """The argv to run on this node (accelerate) or once for the cluster (deepspeed)."""
    stage = stage_registry.get(req.stage, distributed=True)
    if req.launcher not in LAUNCHERS:
        raise ClinalignError(f"unknown launcher '{req.launcher}'; use one of {', '.join(LAUNCHERS)}")
    stage_args = [*stage.command, "--config", req.config, *req.extra_args]
    bindir = Path(sys.executable).parent
    if req.launcher == "deepspeed":
        cmd = [str(bindir / "deepspeed"), "--num_nodes", str(req.nodes), "--num_gpus", str(req.gpus_per_node)]
        if req.hostfile:
            cmd += ["--hostfile", req.hostfile]
        addr, port, _ = rendezvous(req)
        if req.multi_node and addr:
            cmd += ["--master_addr", addr]
        cmd += ["--master_port", str(port), "--no_local_rank", "--module", "align.cli", *stage_args]
        return cmd
    cmd = [str(bindir / "accelerate"), "launch", "--config_file", str(ACCELERATE_CONFIGS[req.multi_node]),
           "--num_machines", str(req.nodes), "--num_processes", str(req.world_size)]
    if req.multi_node:
        addr, port, rank = rendezvous(req)
        cmd += ["--machine_rank", str(rank if rank is not None else "$NODE_RANK"),
                "--main_process_ip", addr or "$MASTER_ADDR", "--main_process_port", str(port)]
    return [*cmd, "--module", "align.cli", *stage_args]


def launch(req: LaunchRequest, *, dry_run: bool = False, console=None) -> int:
    """Check, print, and (unless dry-run) run; returns the launcher's exit code."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    if not Path(req.config).is_file():
        raise InputError("stage config not found", path=req.config)
    # Ranks run from the repo root (the YAMLs name configs/deepspeed/*.json relative to it).
    req.config = str(Path(req.config).resolve())
    checks = run_checks(req)
    for c in checks:
        mark = ("  ok", "green") if c.ok else (("FAIL", "red") if c.fatal else ("warn", "yellow"))
        console.print(Text.assemble(mark, f" {c.name}: {c.message}"), highlight=False)
    cmd = build_command(req)
    failed = [c for c in checks if not c.ok and c.fatal]
    if dry_run:
        console.print(Text.assemble(("would run:", "bold"), " " + display(cmd)), highlight=False, soft_wrap=True)
        return 0
    if failed:
        raise ClinalignError(f"{len(failed)} pre-launch check(s) failed: "
                             + "; ".join(f"{c.name}: {c.message}" for c in failed))
    console.print(Text.assemble(("running:", "bold"), " " + display(cmd)), highlight=False, soft_wrap=True)
    return subprocess.run(cmd, cwd=REPO_ROOT).returncode


def display(cmd: list[str]) -> str:
    """Shell-quoted, except $VARIABLE placeholders a per-node script fills in."""
    return " ".join(a if a.startswith("$") and a[1:].replace("_", "").isalnum() else shlex.quote(a) for a in cmd)
