"""The stage registry is the one list of training stages, and its readers follow it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from align import stage_registry
from clinalign_base.errors import ClinalignError

REPO = Path(__file__).resolve().parents[1]
NAMES = set(stage_registry.STAGES)


def _literal_lists_of_stages(path: Path) -> list[int]:
    """Lines where a tuple/list/set literal or dict keys name two or more stages."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if not isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) or items is None:
            continue
        named = {x.value for x in items if isinstance(x, ast.Constant) and x.value in NAMES}
        if len(named) >= 2:
            lines.append(node.lineno)
    return lines


def test_no_module_but_the_registry_lists_stage_names():
    offenders = {}
    for package in ("align", "annotation", "reward_models", "clinalign_base"):
        for path in (REPO / package).rglob("*.py"):
            if path.name != "stage_registry.py" and (lines := _literal_lists_of_stages(path)):
                offenders[str(path.relative_to(REPO))] = lines
    assert not offenders, f"stage names listed outside align/stage_registry.py: {offenders}"


def test_the_checker_sees_a_hard_coded_list(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('STAGES = ("dpo", "ppo")\nOK = ("dpo",)\n')
    assert _literal_lists_of_stages(bad) == [1]


def test_launch_runs_each_distributed_stage_by_its_registered_command():
    from align.distributed.launch import LaunchRequest, build_command

    for name in stage_registry.names(distributed=True):
        argv = build_command(LaunchRequest(stage=name, config=f"configs/me-llama-13b/{name}.yaml", launcher="accelerate"))
        cmd = list(stage_registry.get(name).command)
        i = argv.index(cmd[0])
        assert argv[i:i + len(cmd) + 2] == [*cmd, "--config", f"configs/me-llama-13b/{name}.yaml"]


def test_unknown_or_unsupported_stages_name_the_known_ones():
    from align.distributed.launch import LaunchRequest, build_command
    from align.distributed.plan import Workload

    with pytest.raises(ClinalignError, match="use one of reward, dpo, ppo, grpo, rloo"):
        build_command(LaunchRequest(stage="sft", config="x.yaml"))
    with pytest.raises(ClinalignError, match="unknown stage 'kto'"):
        Workload(model="me-llama-13b", stage="kto", gpus=8)


def test_round_policy_stages_come_from_the_registry(tmp_path):
    from align.round_config import RoundConfig
    from clinalign_base.errors import InputError

    assert stage_registry.names(round_policy=True) == ("dpo", "ppo")
    with pytest.raises(InputError, match="policy_stage must be one of dpo, ppo"):
        RoundConfig.load(str(REPO / "configs/demo/round.yaml"), {"policy_stage": "grpo"})


def test_config_files_map_to_their_stage():
    assert stage_registry.for_config("reward_medical").name == "reward"
    assert stage_registry.for_config("dpo").name == "dpo"
    assert stage_registry.for_config("round") is None
    assert stage_registry.for_config("rewardish") is None
