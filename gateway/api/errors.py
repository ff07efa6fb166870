"""The API's error body and the exception every route raises to send one.

Every error answer carries the body ``{"code", "uuid", "message", "timestamp"}``: ``code``
is the HTTP status times 100 plus a detail number (``40401``: no such vehicle), ``uuid``
identifies this answer, ``timestamp`` is RFC 3339.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from gateway.errors import GatewayError
from gateway.store import rfc3339

__all__ = ["ApiError", "error_body"]


def error_body(status: int, detail: int, message: str, now_ms: int | None = None) -> dict[str, Any]:
    """The reference's error body for HTTP ``status`` with detail number ``detail`` (0-99)."""
    if not 0 <= detail <= 99:
        raise ValueError(f"detail must be 0..99, not {detail}")
    stamp = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return {
        "code": status * 100 + detail,
        "uuid": str(uuid.uuid4()),
        "message": message,
        "timestamp": rfc3339(stamp),
    }


class ApiError(GatewayError):
    """An API request refused: HTTP ``status``, a detail number, a message, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        detail: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.message = message
        self.headers = dict(headers or {})

    def body(self, now_ms: int | None = None) -> dict[str, Any]:
        """The error body of this refusal."""
        return error_body(self.status, self.detail, self.message, now_ms)
