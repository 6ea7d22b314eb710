"""The ``qualflow`` command. Each area registers its commands from its own module."""

from __future__ import annotations

import typer

from qualflow.cli import coding, demo, exchange, retrieval, review, runs, training, workspace
from qualflow.cli import eval as eval_cli

app = typer.Typer(
    name="qualflow",
    help="LLM-assisted qualitative coding: ingest, propose, review, measure agreement.",
    no_args_is_help=True,
    add_completion=False,
)

for module in (demo, workspace, retrieval, training, coding, runs, review, eval_cli, exchange):
    module.register(app)


def main() -> None:
    app()
