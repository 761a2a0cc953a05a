"""fsspec storage options from ``-S/--storage-option KEY=VALUE`` (every command that opens a
store takes them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from anomalygen.errors import ConfigError

__all__ = ["STRING_OPTIONS", "parse_storage_options"]

#: ``--storage-option`` keys whose values stay strings even when they look like JSON numbers:
#: credentials and names (a secret of digits must not become an int).
STRING_OPTIONS = frozenset(
    {"key", "secret", "token", "password", "username", "profile", "endpoint_url", "region_name"}
)


def parse_storage_options(items: Sequence[str] | None) -> dict[str, Any] | None:
    """``["KEY=VALUE", ...]`` (``--storage-option``) -> fsspec storage options, or None if
    there are none.

    A VALUE that parses as JSON is used as such (``anon=true``, ``default_block_size=5242880``,
    ``client_kwargs={"region_name": "eu-west-1"}``), any other as a string
    (``endpoint_url=http://minio:9000``); keys in ``STRING_OPTIONS`` always keep a string.
    Raises :class:`ConfigError` for an item without ``=``.
    """
    options: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--storage-option: expected KEY=VALUE, got {item!r}")
        if key in STRING_OPTIONS:
            options[key] = value
            continue
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options or None
