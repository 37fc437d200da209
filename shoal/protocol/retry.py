"""Connecting to a scheduler that may not be up yet: retries with backoff.

Workers and clients start in any order, and a scheduler may restart. A refused
or unreachable address is tried again, waiting twice as long each time (with
jitter, up to MAX_DELAY_S), until `retry_for` seconds have passed. A refused
handshake (a wrong token, another protocol version) is final at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from shoal.errors import CommClosedError
from shoal.protocol.comm import Comm, connect

log = logging.getLogger(__name__)

FIRST_DELAY_S = 0.05
MAX_DELAY_S = 2.0


async def connect_retrying(address: str, *, retry_for: float, **options: Any) -> Comm:
    """`connect(address, **options)`, tried again while the address does not answer.

    Raises:
        OSError: nothing answered at `address` within `retry_for` seconds; the
            message names the address, the time and the last error.
        HandshakeError: the peer refused us (not retried).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    delay = FIRST_DELAY_S
    attempts = 0
    while True:
        attempts += 1
        try:
            return await connect(address, **options)
        except (OSError, TimeoutError, CommClosedError) as exc:
            left = deadline - loop.time()
            if left <= 0:
                raise OSError(
                    f"no scheduler answered at {address} within {retry_for:g} s "
                    f"({attempts} attempts; last: {exc or type(exc).__name__})"
                ) from exc
            if attempts == 1:
                log.info("%s does not answer yet (%s); retrying for %g s", address, exc, left)
            await asyncio.sleep(min(delay * random.uniform(0.8, 1.2), left))
            delay = min(delay * 2, MAX_DELAY_S)
