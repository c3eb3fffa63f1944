"""`clinalign plan`, `clinalign launch`, `clinalign validate-configs`: DeepSpeed on GPU clusters."""

from __future__ import annotations

from typing import Annotated

import typer

from align.cli_groups import app
from align.stage_registry import names


@app.command("plan")
def plan_cmd(
    model: Annotated[str, typer.Option(help="me-llama-13b, me-llama-70b, or a folder with a LLaMA config.json.")],
    stage: Annotated[str, typer.Option(help=" | ".join(names(distributed=True)))] = "dpo",
    gpus: Annotated[int, typer.Option(help="GPUs in total (all nodes).")] = 8,
    gpu_mem: Annotated[float, typer.Option(help="Memory of one GPU in GB (2^30 bytes).")] = 80.0,
    nodes: Annotated[int, typer.Option(help="Nodes the GPUs are spread over.")] = 1,
    cpu_mem: Annotated[float | None, typer.Option(help="CPU memory per node in GB, to check offload.")] = None,
    lora: Annotated[bool, typer.Option("--lora/--full", help="LoRA (default) or full fine-tuning first.")] = True,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (all linear layers).")] = 16,
    micro_batch: Annotated[int, typer.Option(help="per_device_train_batch_size (pairs for reward/dpo).")] = 1,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence (max_length).")] = 2048,
    checkpointing: Annotated[bool, typer.Option("--checkpointing/--no-checkpointing",
                                                help="Gradient checkpointing.")] = True,
    reward_model: Annotated[str | None, typer.Option(help="PPO: reward model size (default: the policy's).")] = None,
    critic: Annotated[str, typer.Option(help="PPO: 'head' (value head on the policy) or 'model'.")] = "head",
) -> None:
    """Per-GPU memory of each ZeRO stage ± offload ± LoRA (DeepSpeed's estimators + activations + extra models)."""
    from align.distributed.plan import Workload, plan, render

    w = Workload(model=model, stage=stage, gpus=gpus, nodes=nodes, gpu_mem_gb=gpu_mem, cpu_mem_gb=cpu_mem, lora=lora,
                 lora_r=lora_r, micro_batch=micro_batch, seq_len=seq_len, gradient_checkpointing=checkpointing,
                 reward_model=reward_model, critic=critic)
    if render(w, plan(w)) is None:
        raise typer.Exit(1)


@app.command("launch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def launch_cmd(
    ctx: typer.Context,
    stage: Annotated[str, typer.Option(help=" | ".join(names(distributed=True)))],
    config: Annotated[str, typer.Option(help="Stage YAML (e.g. configs/me-llama-70b/dpo.yaml).")],
    nodes: Annotated[int, typer.Option(help="Number of nodes.")] = 1,
    gpus_per_node: Annotated[int, typer.Option(help="GPUs used on each node.")] = 8,
    hostfile: Annotated[str | None, typer.Option(help="DeepSpeed hostfile: 'hostname slots=N' lines.")] = None,
    launcher: Annotated[str, typer.Option(help="accelerate (one per node) or deepspeed (ssh to hosts).")] = "accelerate",
    master_addr: Annotated[str | None, typer.Option(help="Rendezvous host (default: $MASTER_ADDR, hostfile).")] = None,
    master_port: Annotated[int | None, typer.Option(help="Rendezvous port (default: $MASTER_PORT or 29500).")] = None,
    node_rank: Annotated[int | None, typer.Option(help="This node's rank (default: $NODE_RANK/$SLURM_NODEID).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print checks and the command; run nothing.")] = False,
) -> None:
    """Check the environment and the configs, then start the stage on every GPU. Extra args go to the stage."""
    from align.distributed.launch import LaunchRequest, launch

    req = LaunchRequest(stage=stage, config=config, nodes=nodes, gpus_per_node=gpus_per_node, hostfile=hostfile,
                        launcher=launcher, master_addr=master_addr, master_port=master_port, node_rank=node_rank,
                        extra_args=list(ctx.args))
    rc = launch(req, dry_run=dry_run)
    if rc:
        raise typer.Exit(rc)


@app.command("validate-configs")
def validate_configs_cmd() -> None:
    """Validate every shipped DeepSpeed JSON (and each Me LLaMA stage YAML) with DeepSpeedConfig."""
    from rich.console import Console
    from rich.text import Text

    from align.distributed.ds_config import describe, validate_all

    console = Console(markup=False)
    results = validate_all()  # raises ClinalignError on the first invalid one
    for v in results:
        console.print(Text.assemble(("ok", "green"), f" {describe(v)}"), highlight=False)
    console.print(f"{len(results)} checks passed")
