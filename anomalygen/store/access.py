"""One-line errors for a store that cannot be reached, with a hint where credentials look
missing or refused (fsspec and cloud SDKs raise their own types, not only ``OSError``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from anomalygen.errors import AnomalygenError, StoreError, one_line
from anomalygen.store.location import StoreLocation

__all__ = ["access_error", "access_errors", "access_hint"]

_CREDENTIAL_WORDS = (
    "credential",
    "accessdenied",
    "access denied",
    "forbidden",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "expiredtoken",
    "permission",
)


def access_hint(loc: StoreLocation, err: BaseException) -> str:
    """A hint to append to an error reaching a URL store: how to pass credentials, where the
    error looks like missing or refused ones (``""`` otherwise, and for local stores)."""
    if loc.local_path is not None:
        return ""
    text = f"{type(err).__name__} {err}".lower()
    if not any(word in text for word in _CREDENTIAL_WORDS):
        return ""
    return (
        "; give credentials with --storage-option (e.g. key=... secret=..., or profile=NAME) "
        "or in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in "
        "~/.aws) where the command and every worker run"
    )


def access_error(loc: StoreLocation, err: BaseException, doing: str) -> StoreError:
    """A one-line :class:`StoreError` for an exception raised while ``doing`` something to the
    store at ``loc``."""
    return StoreError(f"{loc}: cannot {doing} ({one_line(err)}){access_hint(loc, err)}")


@contextlib.contextmanager
def access_errors(loc: StoreLocation, doing: str) -> Iterator[None]:
    """Turn anything but our own errors raised inside into :func:`access_error`."""
    try:
        yield
    except AnomalygenError:
        raise
    except Exception as err:
        raise access_error(loc, err, doing) from None
