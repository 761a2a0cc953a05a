"""The ``anomalygen`` command: render synthetic lesions into stores, preview, inspect, verify,
export, convert."""

from __future__ import annotations

import typer

from anomalygen_cli.common import Command, Group, run_app

app = typer.Typer(
    name="anomalygen",
    help="Fundus-consistent synthetic lesions (ReSynthDetect's anomaly generator), rendered into "
    "sharded Zarr stores.",
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Each command's parsing lives in its own module; registration order is the order in --help.
from anomalygen_cli import convert_cmd, export_cmd, preview_cmd, render_cmd  # noqa: E402

app.command("render", cls=Command)(render_cmd.render)
app.command("preview", cls=Command)(preview_cmd.preview)
app.command("info", cls=Command)(render_cmd.info)
app.command("verify", cls=Command)(render_cmd.verify)
app.command("export", cls=Command)(export_cmd.export)
app.command("convert", cls=Command)(convert_cmd.convert)


def main() -> None:
    run_app(app, "anomalygen")


if __name__ == "__main__":
    main()
