"""Per-GPU memory plan for a training stage under each ZeRO stage, ± offload, ± LoRA.

Model states (parameters, gradients, optimizer states) come from DeepSpeed's own cold estimators,
the functions its `estimate_zero{2,3}_model_states_mem_needs_all_cold` print from: they take a
parameter count, so they work for a 70B model that is not (and cannot be) loaded here. The `_live`
variants count the parameters of a built model and miscount meta-device models, so they are not used.

On top of the trained model's states, the plan adds what each stage keeps resident:
  reward  a sequence-classification model (score head instead of the LM head); chosen + rejected
  dpo     a frozen reference policy (free with LoRA: TRL disables the adapter instead)
  ppo     a frozen reference (free with LoRA), a frozen reward model, a value head on the policy
          (or, with `critic="model"`, a separate trained critic the size of the reward model)
  grpo / rloo  as ppo without a value model (TRL's trainers; group baselines instead of a critic)
and activations (bf16, gradient checkpointing on by default, flash attention; Korthikanti et al.
2022, "Reducing Activation Recomputation in Large Transformer Models": 34·s·b·h bytes for one
layer's working set, 2·s·b·h bytes per checkpointed layer input) plus fp32 logits and their gradient.
Units: GB = 2**30 bytes, as DeepSpeed prints them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from align import stage_registry
from clinalign_base.errors import ClinalignError

GB = 2**30


@dataclass(frozen=True)
class Architecture:
    """The LLaMA-family shape numbers a parameter count needs."""

    name: str
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    heads: int
    kv_heads: int
    tied_embeddings: bool = False

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads


# Me LLaMA 13B/70B are LLaMA-2 13B/70B continued-pretrained with the LLaMA-2 tokenizer (32k vocab);
# the numbers are those of their config.json (Meta's Llama-2-13b-hf / Llama-2-70b-hf).
KNOWN_MODELS: dict[str, Architecture] = {
    "me-llama-13b": Architecture("me-llama-13b", hidden=5120, layers=40, vocab=32000, intermediate=13824,
                                 heads=40, kv_heads=40),
    "me-llama-70b": Architecture("me-llama-70b", hidden=8192, layers=80, vocab=32000, intermediate=28672,
                                 heads=64, kv_heads=8),
}


def architecture(spec: str) -> Architecture:
    """A known model name, or a local Hugging Face folder / config.json with a LLaMA-style config."""
    if spec in KNOWN_MODELS:
        return KNOWN_MODELS[spec]
    path = Path(spec).expanduser()
    cfg_path = path / "config.json" if path.is_dir() else path
    if not cfg_path.is_file():
        raise ClinalignError(f"unknown model '{spec}': use one of {', '.join(KNOWN_MODELS)} "
                             f"or a folder with a config.json")
    cfg = json.loads(cfg_path.read_text())
    try:
        heads = cfg["num_attention_heads"]
        return Architecture(
            name=path.name or spec, hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
            vocab=cfg["vocab_size"], intermediate=cfg["intermediate_size"], heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)))
    except KeyError as exc:
        raise ClinalignError(f"{cfg_path}: no '{exc.args[0]}' (the planner needs a LLaMA-style config)") from None


def linear_shapes(arch: Architecture) -> list[tuple[int, int]]:
    """(in, out) of every linear layer of one decoder block, in LLaMA order."""
    h, kv, i = arch.hidden, arch.kv_dim, arch.intermediate
    return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]


def param_counts(arch: Architecture, *, head: str = "lm") -> tuple[int, int]:
    """(total parameters, largest single layer's parameters) for a causal LM or a 1-label classifier."""
    h = arch.hidden
    block = sum(a * b for a, b in linear_shapes(arch)) + 2 * h  # two RMSNorms
    embed = arch.vocab * h
    out_head = h if head == "score" else (0 if arch.tied_embeddings else embed)
    total = embed + arch.layers * block + h + out_head
    largest = max(embed, max(a * b for a, b in linear_shapes(arch)))
    return total, largest


def lora_counts(arch: Architecture, r: int) -> tuple[int, int]:
    """(LoRA parameters on every linear of every block, largest LoRA matrix): r·(in+out) per linear."""
    per_block = sum(r * (a + b) for a, b in linear_shapes(arch))
    largest = max(r * max(a, b) for a, b in linear_shapes(arch))
    return arch.layers * per_block, largest


def zero_model_states(total_params: int, largest_layer: int, *, stage: int, gpus: int, nodes: int,
                      offload_optimizer: bool, offload_param: bool) -> tuple[int, int]:
    """(bytes per GPU, bytes per node's CPU) from DeepSpeed's estimators for trained parameters."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    per_node = gpus // nodes
    if stage == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total_params=total_params, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=offload_optimizer)
        return gpu, cpu
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
        total_params=total_params, largest_layer_params=largest_layer, num_gpus_per_node=per_node,
        num_nodes=nodes, cpu_offload=offload_optimizer, cpu_offload_params=offload_param, zero_init=True)
    return gpu, cpu


@dataclass(frozen=True)
class Option:
    """One DeepSpeed set-up the planner compares; `config` is the shipped JSON that implements it."""

    stage: int
    offload_optimizer: bool
    offload_param: bool
    config: str

    @property
    def label(self) -> str:
        off = [n for n, on in (("opt", self.offload_optimizer), ("param", self.offload_param)) if on]
        return f"ZeRO-{self.stage}" + (f" offload {'+'.join(off)}" if off else "")


# In order of preference (throughput): the recommendation is the first that fits.
OPTIONS = (
    Option(2, False, False, "configs/deepspeed/zero2.json"),
    Option(3, False, False, "configs/deepspeed/zero3.json"),
    Option(2, True, False, "configs/deepspeed/zero2_offload.json"),
    Option(3, True, False, "configs/deepspeed/zero3_offload.json"),
    Option(3, True, True, "configs/deepspeed/zero3_offload.json (offload_param.device=cpu)"),
)


@dataclass
class Workload:
    model: str
    stage: str
    gpus: int
    nodes: int = 1
    gpu_mem_gb: float = 80.0
    cpu_mem_gb: float | None = None  # per node; None: not checked
    lora: bool = True
    lora_r: int = 16
    micro_batch: int = 1
    seq_len: int = 2048
    gradient_checkpointing: bool = True
    reward_model: str | None = None  # PPO: defaults to the policy's size
    critic: str = "head"  # PPO: "head" (value head on the policy) or "model" (separate critic)
    headroom: float = 0.10  # share of GPU memory kept free (CUDA context, NCCL buffers, fragmentation)

    def __post_init__(self) -> None:
        stage_registry.get(self.stage, distributed=True)  # an unknown stage names the known ones
        if self.gpus < 1 or self.nodes < 1 or self.gpus % self.nodes:
            raise ClinalignError(f"{self.gpus} GPUs cannot be split evenly over {self.nodes} node(s)")
        if self.critic not in ("head", "model"):
            raise ClinalignError(f"critic must be 'head' or 'model', not '{self.critic}'")


@dataclass
class PlanRow:
    option: Option
    lora: bool
    states: int  # trained model's params + grads + optimizer states on one GPU (bytes)
    frozen: int  # frozen base weights of the trained model (LoRA) on one GPU
    reference: int
    reward: int
    value: int
    activations: int
    cpu_per_node: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.states + self.frozen + self.reference + self.reward + self.value + self.activations


def _frozen_bytes(params: int, opt: Option, gpus: int) -> tuple[int, int]:
    """(GPU, CPU total) bytes of a frozen bf16 model: replicated under ZeRO-2, sharded under ZeRO-3."""
    if opt.stage == 2:
        return 2 * params, 0
    if opt.offload_param:
        return 0, 2 * params
    return 2 * params // gpus, 0


def _trained_states(arch: Architecture, head: str, w: Workload, opt: Option) -> tuple[int, int, int]:
    """(states per GPU, frozen base per GPU, CPU per node) for the model being trained."""
    total, largest = param_counts(arch, head=head)
    if not w.lora:
        gpu, cpu = zero_model_states(total, largest, stage=opt.stage, gpus=w.gpus, nodes=w.nodes,
                                     offload_optimizer=opt.offload_optimizer, offload_param=opt.offload_param)
        return gpu, 0, cpu
    trainable, _ = lora_counts(arch, w.lora_r)
    trainable += arch.hidden if head == "score" else 0  # the score head is trained too
    # ZeRO-3 gathers whole (frozen) layers for forward/backward: pass the base's largest layer.
    gpu, cpu = zero_model_states(trainable, largest, stage=opt.stage, gpus=w.gpus, nodes=w.nodes,
                                 offload_optimizer=opt.offload_optimizer, offload_param=opt.offload_param)
    frozen_gpu, frozen_cpu = _frozen_bytes(total, opt, w.gpus)
    return gpu, frozen_gpu, cpu + frozen_cpu // w.nodes


def activation_bytes(arch: Architecture, *, sequences: int, seq_len: int, checkpointing: bool,
                     logits: bool = True) -> int:
    """Training activations of one micro-batch of `sequences` sequences (bf16, flash attention)."""
    sbh = sequences * seq_len * arch.hidden
    layer = 34 * sbh
    body = 2 * sbh * arch.layers + layer if checkpointing else layer * arch.layers
    head = 8 * sequences * seq_len * arch.vocab if logits else 0  # fp32 logits + their gradient
    return body + head


def kv_cache_bytes(arch: Architecture, *, sequences: int, seq_len: int) -> int:
    """bf16 key/value cache of a generation batch (PPO rollouts)."""
    return 2 * 2 * arch.layers * sequences * seq_len * arch.kv_dim


def plan_row(w: Workload, opt: Option, *, lora: bool | None = None) -> PlanRow:
    w = replace(w, lora=w.lora if lora is None else lora)
    arch = architecture(w.model)
    stage = stage_registry.get(w.stage)
    head = stage.head
    states, frozen, cpu = _trained_states(arch, head, w, opt)
    reference = reward = value = 0
    extra_cpu = 0
    if head == "lm" and not w.lora:
        reference, ref_cpu = _frozen_bytes(param_counts(arch)[0], opt, w.gpus)
        extra_cpu += ref_cpu
    sequences = stage.sequences_per_example * w.micro_batch
    act = activation_bytes(arch, sequences=sequences, seq_len=w.seq_len,
                           checkpointing=w.gradient_checkpointing, logits=head == "lm")
    if stage.online:
        rm_arch = architecture(w.reward_model) if w.reward_model else arch
        reward, rm_cpu = _frozen_bytes(param_counts(rm_arch, head="score")[0], opt, w.gpus)
        extra_cpu += rm_cpu
        if w.critic == "model" and w.stage == "ppo":
            v_states, v_frozen, v_cpu = _trained_states(rm_arch, "score", w, opt)
            value, cpu = v_states + v_frozen, cpu + v_cpu
            act += activation_bytes(rm_arch, sequences=w.micro_batch, seq_len=w.seq_len,
                                    checkpointing=w.gradient_checkpointing, logits=False)
        # else: a hidden→1 value head on the policy, a few KB: nothing to add.
        act = max(act, kv_cache_bytes(arch, sequences=w.micro_batch, seq_len=w.seq_len))
    return PlanRow(opt, w.lora, states, frozen, reference, reward, value, act, cpu + extra_cpu // w.nodes)


def fits(row: PlanRow, w: Workload) -> bool:
    ok = row.total <= w.gpu_mem_gb * GB * (1 - w.headroom)
    if w.cpu_mem_gb is not None:
        ok = ok and row.cpu_per_node <= w.cpu_mem_gb * GB
    return ok


def plan(w: Workload) -> list[PlanRow]:
    """Every option, with and without LoRA (the workload's own LoRA setting first)."""
    return [plan_row(w, opt, lora=lora) for lora in (w.lora, not w.lora) for opt in OPTIONS]


def recommend(w: Workload, rows: list[PlanRow]) -> PlanRow | None:
    """The fastest option that fits, with the workload's own LoRA setting; None when nothing fits."""
    for row in rows:
        if row.lora == w.lora and fits(row, w):
            return row
    return None


def render(w: Workload, rows: list[PlanRow], console=None) -> PlanRow | None:
    """Print the plan as a rich table and the recommendation; returns the recommended row."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    arch = architecture(w.model)
    total, _ = param_counts(arch, head=stage_registry.get(w.stage).head)
    table = Table(title=Text(f"{w.model} · {w.stage} · {w.gpus} GPU(s) on {w.nodes} node(s) · "
                        f"{w.gpu_mem_gb:g} GB/GPU · micro-batch {w.micro_batch} × {w.seq_len} tokens "
                        f"· {total / 1e9:.2f}B params"))
    for col in ("setup", "LoRA", "states", "frozen", "ref", "RM", "value", "activ.", "total/GPU",
                "CPU/node", "fits"):
        table.add_column(col, justify="left" if col in ("setup", "LoRA", "fits") else "right",
                         no_wrap=col == "setup")
    for row in rows:
        ok = fits(row, w)
        table.add_row(Text(row.option.label), f"r={w.lora_r}" if row.lora else "full",
                      *(f"{v / GB:.1f}" for v in (row.states, row.frozen, row.reference, row.reward,
                                                   row.value, row.activations, row.total, row.cpu_per_node)),
                      Text("yes", style="green") if ok else Text("no", style="red"))
    console.print(table)
    console.print("GB = 2^30 bytes. states: trained params + grads + optimizer (DeepSpeed's cold "
                  "estimators); frozen: LoRA base weights; ref/RM: frozen reference / reward model; "
                  "activations: bf16, "
                  f"gradient checkpointing {'on' if w.gradient_checkpointing else 'off'}, flash attention; "
                  f"{w.headroom:.0%} of each GPU kept free.", style="dim")
    best = recommend(w, rows)
    if best is None:
        console.print(Text.assemble(("Nothing fits", "bold red"), f" {w.gpus} × {w.gpu_mem_gb:g} GB: add GPUs, "
                                    "shorten sequences, lower the micro-batch, or use LoRA."))
    else:
        console.print(Text.assemble(("Recommended:", "bold green"), f" {best.option.label} "
                                    f"({'LoRA' if best.lora else 'full fine-tuning'}), {best.total / GB:.1f} GB/GPU → "
                                    f"deepspeed: {best.option.config}"))
    return best
