"""The typer apps every command module attaches to (and the options several share).
`align/cli.py` discovers the modules."""

from typing import Annotated

import typer

app = typer.Typer(
    name="clinalign",
    help="RLHF workbench for medical LLMs: clinician feedback -> reward model -> DPO/PPO -> blind review.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
annotate_app = typer.Typer(help="Clinician feedback: import, push, users, status, agreement, export, select.",
                           no_args_is_help=True)
reward_app = typer.Typer(help="Reward models: train, evaluate, score.", no_args_is_help=True)
app.add_typer(annotate_app, name="annotate")
app.add_typer(reward_app, name="reward")

Store = Annotated[str, typer.Option("--store", help="Embedded store (SQLite path) or argilla:<dataset>.")]
