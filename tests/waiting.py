"""Bounded waits on the wall clock, for what only the network decides (a PUBACK, a CONNACK)."""

from __future__ import annotations

import time
from collections.abc import Callable

WAIT = 10.0


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
