"""Thin command-line shells: parse, call the libraries, print. No logic lives here.

This folder (``cli/`` in the repository) installs as the package ``anomalygen_cli``
(``pyproject.toml``: ``package-dir``), so that it never clashes with another project's ``cli``;
import it by that name: ``python -m anomalygen_cli.resynth_cli train ...`` works from any folder.
"""
