"""The ``resynth`` command: train ReSynthDetect from a store, evaluate, predict anomaly maps."""

from __future__ import annotations

import typer

from anomalygen_cli.common import Command, Group, run_app

app = typer.Typer(
    name="resynth",
    help="Train and run ReSynthDetect (reconstruction features + localisation network).",
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Each command's parsing lives in its own module; registration order is the order in --help.
from anomalygen_cli import evaluate_cmd, train_cmd  # noqa: E402

app.command("train", cls=Command)(train_cmd.train)
app.command("evaluate", cls=Command)(evaluate_cmd.evaluate)
app.command("predict", cls=Command)(evaluate_cmd.predict)


def main() -> None:
    run_app(app, "resynth")


if __name__ == "__main__":
    main()
