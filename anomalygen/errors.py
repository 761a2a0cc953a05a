"""The project's exceptions.

Every error a user can cause (a bad image, a bad option, an incompatible store) is an
:class:`AnomalygenError`. Its message is one line that names the thing at fault and the reason;
the command-line shells print it as it is, without a traceback, and exit non-zero.
"""

from __future__ import annotations


class AnomalygenError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is a complete one-line message."""


class ImageError(AnomalygenError):
    """A file is not a usable image (unreadable, truncated, too large, no field of view)."""


class StoreError(AnomalygenError):
    """A store is missing, of an unknown format version, corrupt, or locked by another writer."""


class ConfigError(AnomalygenError, ValueError):
    """An option or configuration value is out of range or inconsistent."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line, for error reports: an OSError's reason and file
    ("No such file or directory (x.png)"), else its text with newlines folded, else its type."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror + (f" ({err.filename})" if err.filename else "")
    return " ".join(str(err).split()) or type(err).__name__
