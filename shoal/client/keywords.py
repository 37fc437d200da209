"""What a Client and its methods accept, checked where it enters.

The keywords of Client itself, the token it reads from the environment, and
the keywords dask.distributed reserves on submit() and map(), which shoal
refuses by name rather than pass to the user's function.
"""

from __future__ import annotations

import math
import os
from typing import Any

# The environment variable that holds the cluster token, as for the `shoal` command.
TOKEN_ENV = "SHOAL_TOKEN"
# submit() and map() keywords that dask.distributed reserves and shoal does not
# support: refused by name rather than passed to the user's function. Each maps
# to the one value that means what shoal always does (accepted), or None.
DASK_ONLY: dict[str, object] = {
    "actor": False,
    "actors": False,
    "allow_other_workers": False,
    "fifo_timeout": None,
    "batch_size": None,
}


def client_token(address: str | None, token: str | bytes | None) -> str | bytes | None:
    """The token a client uses: the one given, or `$SHOAL_TOKEN` for a scheduler at
    an address."""
    if address is not None and token is None:
        return os.environ.get(TOKEN_ENV) or None
    return token


def local_token(token: str | bytes | None) -> str | None:
    """The token for a LocalCluster, which hands it to its processes in the environment."""
    return token.decode() if isinstance(token, bytes) else token


def checked_reconnect_timeout(value: object) -> float | None:
    """`reconnect_timeout` as given, once checked.

    Raises:
        TypeError: neither None nor a number.
        ValueError: negative, infinite or NaN (None means for ever).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"reconnect_timeout must be seconds (a number) or None, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"reconnect_timeout must be a finite number of seconds at least 0, or None "
            f"for ever, not {value!r}"
        )
    return float(value)


def refuse_dask_keywords(method: str, kwargs: dict[str, Any]) -> None:
    """Take out of `kwargs` the keywords dask reserves that shoal does not support.

    One given the value that means what shoal always does (allow_other_workers=False,
    actor=False) is dropped; any other is refused.

    Raises:
        TypeError: naming the keyword.
    """
    for name, harmless in DASK_ONLY.items():
        if name not in kwargs:
            continue
        value = kwargs.pop(name)
        if value is not harmless or harmless is None:
            raise TypeError(
                f"{method}() got {name}={value!r}: a dask.distributed keyword that shoal "
                f"does not support (its keywords are never passed to the function; use "
                f"functools.partial to give the function a keyword named {name!r})"
            )
